"""Tests of glacierxr.tracking, the NumPy / OpenCV kernel of flow(method="ncc"): sub-pixel peak
estimators on known shifts, the coarse pass on large shifts, the outlier filter, hole filling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from glacierxr.tracking import (
    SUBPIXEL,
    TrackingParams,
    _subpixel,
    fill_holes,
    match_points,
    median_test,
    posting,
    track_pair,
)

cv2 = pytest.importorskip("cv2")


def texture(seed: int, size: int = 200, sigma: float = 1.5) -> np.ndarray:
    return ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal((size, size)), sigma)


def shifted(image: np.ndarray, dx: float, dy: float, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """``image`` with its content moved by (+dx columns, +dy rows), periodic, plus noise."""
    moved = ndimage.shift(image, (dy, dx), mode="wrap", order=5)
    return moved + np.random.default_rng(seed).normal(0, noise * image.std(), image.shape)


def test_subpixel__gaussian_peak_is_exact_for_a_gaussian_correlation_surface():
    rows, cols = np.mgrid[-3:4, -3:4]
    for dx, dy in [(0.0, 0.0), (0.3, -0.15), (-0.45, 0.2)]:
        surface = np.exp(-((cols - dx) ** 2 + (rows - dy) ** 2) / (2 * 1.5**2)).astype(np.float32)
        assert _subpixel(surface, 3, 3, "gaussian") == pytest.approx((dx, dy), abs=1e-4)
        parabolic = _subpixel(surface, 3, 3, "parabolic")
        assert abs(parabolic[0] - dx) < 0.05 and abs(parabolic[1] - dy) < 0.05


def test_subpixel__measured_on_textures_shifted_by_known_fractions():
    """The measurement behind flow's default (numbers in flow's docstring)."""
    rng = np.random.default_rng(1)
    errors = {how: [] for how in SUBPIXEL}
    rows = cols = posting(200, 10)[2:-2]
    for trial in range(4):
        image = texture(trial)
        dx, dy = rng.uniform(-3, 3, 2)
        moved = shifted(image, dx, dy, noise=0.05, seed=trial)
        for how in SUBPIXEL:
            out = track_pair(image.astype(np.float32), moved.astype(np.float32), rows, cols,
                             TrackingParams(subpixel=how, search=8))
            errors[how].append(np.hypot(out[0] - dx, out[1] - dy).ravel())
    median = {how: float(np.nanmedian(np.concatenate(e))) for how, e in errors.items()}
    assert median["gaussian"] <= 0.04 and median["parabolic"] <= 0.04, median
    assert max(median["gaussian"], median["parabolic"]) < median["oversample"], median


def test_match_points__equals_a_plain_opencv_match_for_an_integer_shift():
    image = texture(0).astype(np.float32)
    moved = shifted(image, 5, -3).astype(np.float32)
    rows, cols = np.array([60, 100, 140]), np.array([70, 100, 120])
    valid = np.ones(image.shape, np.float32)
    out = match_points(image, moved, valid, rows, cols, np.zeros((2, 3)), half=10, search=8,
                       subpixel="parabolic", min_valid=0.9)
    np.testing.assert_allclose(out[0], 5, atol=0.03)
    np.testing.assert_allclose(out[1], -3, atol=0.03)
    for k, (row, col) in enumerate(zip(rows, cols)):
        template = image[row - 10 : row + 11, col - 10 : col + 11]
        window = moved[row - 18 : row + 19, col - 18 : col + 19]
        best = cv2.minMaxLoc(cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED))[1]
        assert out[2, k] == pytest.approx(best, abs=1e-6)
    assert (out[3] > 1).all() and (out[4] == 0).all()  # peak ratio, not on the search edge
    # a chip without enough valid pixels is not matched
    half_valid = valid.copy()
    half_valid[:, :100] = 0
    out = match_points(image, moved, half_valid, rows, cols, np.zeros((2, 3)), half=10, search=8,
                       subpixel="parabolic", min_valid=0.9)
    assert np.isnan(out[0, 0]) and np.isfinite(out[0, 2])


def test_track_pair__the_coarse_pass_finds_40_pixels_that_a_small_search_cannot():
    image = texture(2, size=240)
    moved = shifted(image, 40.3, -12.6, noise=0.02)
    rows = cols = posting(240, 8)[8:-8]
    out = track_pair(image.astype(np.float32), moved.astype(np.float32), rows, cols, TrackingParams(search=48))
    assert np.nanmedian(out[0]) == pytest.approx(40.3, abs=0.05)
    assert np.nanmedian(out[1]) == pytest.approx(-12.6, abs=0.05)
    assert np.isfinite(out[0]).mean() > 0.95
    small = track_pair(image.astype(np.float32), moved.astype(np.float32), rows, cols, TrackingParams(search=16))
    assert not np.nanmedian(np.abs(small[0] - 40.3)) < 1


def test_median_test__rejects_an_outlier_and_keeps_its_neighbours():
    rows, cols = np.mgrid[0:9, 0:9].astype(float)
    dx, dy = 0.1 * cols, 0.05 * rows  # smooth field
    dx[4, 4] += 3.0
    fails = median_test(dx, dy)
    assert fails[4, 4] and fails.sum() == 1
    dx[4, 4] -= 3.0
    dx[2, 6] = np.nan  # a hole is not an outlier and does not make one
    assert not median_test(dx, dy).any()


def test_fill_holes__fills_only_fillable_points_with_enough_neighbours():
    field = np.stack([np.full((6, 6), 2.0), np.full((6, 6), -1.0)])
    field[:, 2, 2] = np.nan  # 8 valid neighbours
    field[:, 5, 5] = np.nan  # corner: 3 valid neighbours
    field[:, 0, 5] = np.nan  # not fillable (no data there)
    fillable = np.ones((6, 6), bool)
    fillable[0, 5] = False
    filled = fill_holes(field, fillable, min_neighbours=4, passes=2)
    assert filled[2, 2] and field[0, 2, 2] == 2.0 and field[1, 2, 2] == -1.0
    assert not filled[5, 5] and np.isnan(field[0, 5, 5])
    assert not filled[0, 5] and np.isnan(field[0, 0, 5])
