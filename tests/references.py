"""Reference methods and readers shared by the tests and the benchmarks (a plain module, not a
test module, like ``yahtse_data.py``).

The reference methods are independent of the glacierxr code they check: a Lucas-Kanade shift
and AROSICS-style tie points (scipy) for co-registration, a plain OpenCV template-matching loop
for velocity, and a reader of a sample's COGs with pystac and rioxarray in place of
:func:`glacierxr.load`. The sample helpers (``load_sample``, ``shift_rmse``, ``sample_errors``)
run glacierxr itself and score it against the sample's exact truth.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

import glacierxr as gx
from glacierxr.flow import flow
from glacierxr.landsat import SR_NODATA, SR_OFFSET, SR_SCALE


def lucas_kanade_shift(reference: np.ndarray, image: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Content displacement (dx, dy) of ``image`` relative to ``reference`` (independent method).

    Gauss-Newton on ``image(p + d) = gain * reference(p) + offset`` with cubic-spline
    resampling (scipy), not OpenCV's ECC: a reference written here to check align against.
    """
    import scipy.ndimage as ndi

    reference = reference.astype(np.float64)
    grad_y, grad_x = np.gradient(reference)
    inner = (slice(4, -4), slice(4, -4))
    design = np.c_[grad_x[inner].ravel(), grad_y[inner].ravel(), reference[inner].ravel(),
                   np.ones(reference[inner].size)]
    shift = np.zeros(2)
    for _ in range(iterations):
        back = ndi.shift(image.astype(np.float64), (-shift[1], -shift[0]), order=3, mode="nearest")
        coefficients = np.linalg.lstsq(design, back[inner].ravel(), rcond=None)[0]
        step = -coefficients[:2] / coefficients[2]
        shift += step
        if np.hypot(*step) < 1e-4:
            break
    return shift


def yahtse_tie_points(first: np.ndarray, second: np.ndarray, chip: int = 96, step: int = 48):
    """Per-chip displacement of ``second`` relative to ``first`` and the robust offset of the rock.

    Returns ``(chips, offset)``: rows ``(row, col, correlation, dx, dy)`` of every chip (the
    correlation of the two scenes' raw values; dx, dy only where it is >= 0.9, texture that is
    the same in both, else NaN), and the median displacement of those within 3 MAD of their
    median (moving ice and changing snow are the outliers), AROSICS-style.
    """
    chips = []
    for row in range(0, first.shape[0] - chip + 1, step):
        for col in range(0, first.shape[1] - chip + 1, step):
            a, b = first[row:row + chip, col:col + chip], second[row:row + chip, col:col + chip]
            correlation = np.corrcoef(a.ravel(), b.ravel())[0, 1]
            shift = lucas_kanade_shift(a, b) if correlation >= 0.9 else (np.nan, np.nan)
            chips.append((row, col, correlation, *shift))
    chips = np.array(chips)
    matched = chips[chips[:, 2] >= 0.9, 3:]
    median = np.median(matched, axis=0)
    mad = 1.4826 * np.median(np.abs(matched - median), axis=0)
    inliers = np.all(np.abs(matched - median) <= 3 * mad + 1e-3, axis=1)
    return chips, np.median(matched[inliers], axis=0)


def cloud_blobs(shape, fraction: float, seed: int) -> np.ndarray:
    """True on smooth random blobs covering ``fraction`` of the pixels."""
    import scipy.ndimage as ndi

    field = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 25)
    return field > np.quantile(field, 1 - fraction)


def residual_rmse(out: xr.DataArray, truth: np.ndarray) -> float:
    """RMSE of recovered minus true shifts after removing the common offset."""
    error = np.stack([out.shift_x.values, out.shift_y.values], axis=1) - np.asarray(truth)
    error -= error.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(error**2, axis=1))))


def load_sample(catalog) -> xr.Dataset:
    """The sample catalog's items read with pystac and loaded with :func:`glacierxr.load`."""
    import pystac

    items = sorted(pystac.read_file(str(catalog)).get_items(recursive=True), key=lambda i: i.datetime)
    return gx.load(items, resolution=30)


def truth_for(truth: xr.Dataset, ids) -> xr.Dataset:
    """The truth rows of the scenes ``ids`` (scene ids survive masking as a coordinate)."""
    order = {scene: i for i, scene in enumerate(truth.id.values)}
    return truth.isel(time=[order[scene] for scene in ids])


def shift_rmse(out: xr.DataArray, catalog) -> float:
    """RMSE (px) of the recovered vs the true misregistration of every scene of ``out``."""
    truth = truth_for(gx.sample.open_truth(catalog), out.id.values)
    return residual_rmse(out, np.stack([truth.shift_x.values, truth.shift_y.values], axis=1))


def on_grid(result: xr.Dataset, cube: xr.DataArray, field: np.ndarray) -> np.ndarray:
    """A (y, x) field of the input grid, at the output's points (chip centres are input pixels)."""
    rows = np.searchsorted(-cube.y.values, -result.y.values)
    cols = np.searchsorted(cube.x.values, result.x.values)
    np.testing.assert_array_equal(cube.y.values[rows], result.y.values)
    return np.asarray(field)[np.ix_(rows, cols)]


def end_point_error(result: xr.Dataset, cube, d_col, d_row) -> np.ndarray:
    first = result.isel(time=0)
    return np.hypot(first.dx.values - on_grid(result, cube, d_col), first.dy.values - on_grid(result, cube, d_row))


def reference_ncc(first: np.ndarray, second: np.ndarray, rows, cols, half=24, search=24) -> np.ndarray:
    """Independent reference: a plain OpenCV loop, 48 px chips, +-24 px, parabolic peak.

    Returns ``(len(rows), len(cols), 3)``: displacement along columns and rows (pixels) and the
    peak correlation; NaN where the chip or its search window leaves the image.
    """
    import cv2

    def vertex(m, c, p):
        denominator = m - 2 * c + p
        return 0.0 if denominator == 0 else 0.5 * (m - p) / denominator

    out = np.full((len(rows), len(cols), 3), np.nan)
    for a, row in enumerate(rows):
        for b, col in enumerate(cols):
            if not (half + search <= row < first.shape[0] - half - search
                    and half + search <= col < first.shape[1] - half - search):
                continue
            template = first[row - half : row + half, col - half : col + half]
            window = second[row - half - search : row + half + search, col - half - search : col + half + search]
            score = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
            _, best, _, (j, i) = cv2.minMaxLoc(score)
            dx = j - search + (vertex(*score[i, j - 1 : j + 2]) if 0 < j < score.shape[1] - 1 else 0)
            dy = i - search + (vertex(*score[i - 1 : i + 2, j]) if 0 < i < score.shape[0] - 1 else 0)
            out[a, b] = dx, dy, best
    return out


def neighbour_consistent(field: np.ndarray, tolerance: float = 2.0) -> np.ndarray:
    """True where a vector is within ``tolerance`` px of the median of its 3 x 3 neighbours."""
    padded = np.pad(field[..., :2], ((1, 1), (1, 1), (0, 0)), constant_values=np.nan)
    rows, cols = field.shape[:2]
    around = np.stack([padded[1 + i : 1 + i + rows, 1 + j : 1 + j + cols]
                       for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods
        median = np.nanmedian(around, axis=0)
    return np.hypot(*(field[..., :2] - median).transpose(2, 0, 1)) <= tolerance


def sample_errors(catalog, stack, **options) -> tuple[np.ndarray, np.ndarray, float]:
    """flow() on every consecutive pair of a sample catalog against its exact truth.

    Returns the end-point errors (px) on bare, clear ice of every pair with at least 50 such
    points, the (dx, dy) residuals on clear stable ground, and the fastest true motion (px).
    """
    cube = stack(catalog).rio.write_crs(32643)
    truth = gx.sample.open_truth(catalog)
    clear = (cube.qa_pixel.values.astype(np.int64) & 0b11111) == 0  # not fill/cloud/shadow/cirrus
    stable = xr.DataArray(truth["stable"].values, dims=("y", "x"), coords={"y": cube.y, "x": cube.x})
    errors, still, fastest = [], [], 0.0
    for a in range(cube.sizes["time"] - 1):
        # bare ice (below both dates' snow line), clear in both scenes, away from edges
        snow_line = min(float(truth.snow_line[a]), float(truth.snow_line[a + 1])) - 150
        ice = truth["glacier"].values & (truth.elevation.values < snow_line) & clear[a] & clear[a + 1]
        rock = truth["stable"].values & clear[a] & clear[a + 1]
        result = flow(cube.green.isel(time=[a, a + 1]), stable=stable, **options).compute()
        years = float(result.date_dt[0]) / 365.25
        true_col = truth.u.values * years / truth.attrs["resolution"]
        true_row = -truth.v.values * years / truth.attrs["resolution"]  # v north, rows down
        ice = on_grid(result, cube, ndimage.binary_erosion(ice, iterations=8))
        rock = on_grid(result, cube, ndimage.binary_erosion(rock, iterations=8))
        if ice.sum() < 50:
            continue
        fastest = max(fastest, float(np.max(np.hypot(true_col, true_row))))
        errors.append(end_point_error(result, cube, true_col, true_row)[ice])
        still.append(np.stack([result.dx.values[0][rock], result.dy.values[0][rock]], axis=1))
    if not errors:
        return np.array([]), np.zeros((0, 2)), fastest
    return np.concatenate(errors), np.concatenate(still), fastest


def stack_sample_cogs(catalog) -> xr.Dataset:
    """A sample catalog's COGs stacked with pystac and rioxarray, not with :func:`glacierxr.load`.

    ``green`` and ``swir16`` as reflectance (NaN nodata), ``qa_pixel`` as stored, a per-time
    ``id``: a load()-like cube that does not depend on the loader.
    """
    import pystac

    import rioxarray
    items = sorted(pystac.read_file(str(catalog)).get_items(recursive=True), key=lambda i: i.datetime)

    def band(key, scale):
        arrays = []
        for item in items:
            raw = rioxarray.open_rasterio(item.assets[key].get_absolute_href()).squeeze("band", drop=True)
            reflectance = raw.where(raw != SR_NODATA).astype(np.float32) * SR_SCALE + SR_OFFSET
            arrays.append(reflectance if scale else raw)
        return xr.concat(arrays, "time")

    times = pd.DatetimeIndex([item.datetime.replace(tzinfo=None) for item in items])
    cube = xr.Dataset({"green": band("green", True), "swir16": band("swir16", True),
                       "qa_pixel": band("qa_pixel", False)})
    return cube.assign_coords(time=times, id=("time", [item.id for item in items]))
