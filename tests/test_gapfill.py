"""Tests of glacierxr.gapfill: normalised-convolution gap filling."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import glacierxr  # noqa: F401  (registers .glacier)
from glacierxr.errors import ConfigError, DataTypeError, DimensionError
from glacierxr.gapfill import fill_gaps, filled_fraction, make_kernel
from glacierxr.testing import make_series, raise_if_dask_computes


def _fill_gaps_loop(image: np.ndarray, kernel: np.ndarray, max_iter: int = 1) -> np.ndarray:
    """Reference: the per-pixel Python loop of the seed paper's code, generalised.

    For every missing pixel, the weighted average of the valid neighbours in the window centred
    on it (pixels outside the image do not exist). Each pass reads the previous pass's image.
    """
    current = np.asarray(image, dtype=np.float64).copy()
    height, width = current.shape
    ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
    for _ in range(max_iter):
        previous = current.copy()
        for i in range(height):
            for j in range(width):
                if not np.isnan(previous[i, j]):
                    continue
                total = norm = 0.0
                for di in range(-ry, ry + 1):
                    for dj in range(-rx, rx + 1):
                        ii, jj = i + di, j + dj
                        if 0 <= ii < height and 0 <= jj < width and np.isfinite(previous[ii, jj]):
                            weight = kernel[di + ry, dj + rx]
                            total += weight * previous[ii, jj]
                            norm += weight
                if norm > 0:
                    current[i, j] = total / norm
    return current


def holey(shape=(3, 12, 14), *, seed=0, fraction=0.4, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.random(shape).astype(dtype)
    values[rng.random(shape) < fraction] = np.nan
    return values


# ---------------------------------------------------------------- kernels


def test_make_kernel__triangular_is_outer_product_of_paper_profile():
    kernel = make_kernel("triangular", size=5)
    np.testing.assert_array_equal(kernel, np.outer([1, 2, 3, 2, 1], [1, 2, 3, 2, 1]))
    np.testing.assert_array_equal(make_kernel("triangular", size=7)[3], 4 * np.array([1, 2, 3, 4, 3, 2, 1]))


def test_make_kernel__uniform_and_gaussian():
    np.testing.assert_array_equal(make_kernel("uniform", size=3), np.ones((3, 3)))
    gauss = make_kernel("gaussian", size=5)
    assert gauss.shape == (5, 5)
    assert gauss[2, 2] == gauss.max() and np.allclose(gauss, gauss.T)
    sigma = 0.3 * ((5 - 1) * 0.5 - 1) + 0.8  # OpenCV's default for ksize=5
    np.testing.assert_allclose(gauss[2, 0] / gauss[2, 2], np.exp(-4 / (2 * sigma**2)))


@pytest.mark.parametrize(
    "weights, size, message",
    [
        ("triangular", 4, "odd integer"),
        ("triangular", 1, "odd integer"),
        ("box", 5, "Unknown weights"),
        (np.ones((4, 5)), 5, "odd side lengths"),
        (np.ones(5), 5, "odd side lengths"),
        (-np.ones((3, 3)), 3, "non-negative"),
        (np.full((3, 3), np.nan), 3, "non-negative"),
    ],
)
def test_make_kernel__bad_arguments(weights, size, message):
    with pytest.raises(ConfigError, match=message):
        make_kernel(weights, size=size)


# ---------------------------------------------------------------- known truth


def test_fill_gaps__single_hole_gets_hand_computed_weighted_mean():
    values = np.arange(9, dtype=np.float32).reshape(1, 3, 3)
    values[0, 1, 1] = np.nan
    filled = fill_gaps(make_series(values), size=3)
    # triangular size 3: corners weigh 1, edge neighbours 2 (sum 12)
    corners, edges = 0 + 2 + 6 + 8, 1 + 3 + 5 + 7
    assert filled.values[0, 1, 1] == pytest.approx((corners + 2 * edges) / 12)


def test_fill_gaps__outside_of_the_image_counts_as_missing():
    values = np.array([[[np.nan, 2.0, 10.0], [4.0, 8.0, 10.0], [10.0, 10.0, 10.0]]])
    filled = fill_gaps(make_series(values), size=3)
    # corner (0, 0) sees only (0, 1) w=2, (1, 0) w=2, (1, 1) w=1 inside the image
    assert filled.values[0, 0, 0] == pytest.approx((2 * 2 + 2 * 4 + 8) / 5)


def test_fill_gaps__constant_field_fills_with_the_constant():
    values = np.full((2, 10, 10), 0.7, np.float32)
    values[0, 2:8, 3:9] = np.nan
    values[1, ::2] = np.nan
    filled = fill_gaps(make_series(values))
    np.testing.assert_allclose(filled.values, 0.7, rtol=1e-6)


@pytest.mark.parametrize(
    "weights",
    ["triangular", "uniform", "gaussian", np.array([[0.0, 1.0, 3.0], [2.0, 0.0, 0.5], [1.0, 4.0, 0.0]])],
    ids=["triangular", "uniform", "gaussian", "asymmetric"],
)
def test_fill_gaps__single_pass_agrees_with_per_pixel_loop(weights):
    values = holey(seed=1)
    kernel = make_kernel(weights, size=5)
    filled = fill_gaps(make_series(values), weights=weights, max_iter=1).values
    for t in range(values.shape[0]):
        expected = _fill_gaps_loop(values[t], kernel, max_iter=1)
        np.testing.assert_allclose(filled[t], expected.astype(np.float32), rtol=1e-6, equal_nan=True)


def test_fill_gaps__several_passes_agree_with_per_pixel_loop():
    values = holey(shape=(1, 16, 16), seed=2, fraction=0.2)
    values[0, 3:13, 2:12] = np.nan  # a hole wider than the window
    kernel = make_kernel("triangular", size=3)
    for passes in (1, 2, 4):
        filled = fill_gaps(make_series(values), size=3, max_iter=passes, max_distance=None).values[0]
        expected = _fill_gaps_loop(values[0], kernel, max_iter=passes)
        np.testing.assert_allclose(filled, expected.astype(np.float32), rtol=1e-6, equal_nan=True)


def test_fill_gaps__large_hole_needs_enough_passes():
    values = np.ones((1, 15, 15), np.float32)
    values[0, 2:13, 2:13] = np.nan  # centre is 6 px from valid data
    one = fill_gaps(make_series(values), size=5, max_iter=1, max_distance=None)
    assert np.isnan(one.values[0, 7, 7]) and not np.isnan(one.values[0, 3, 7])
    three = fill_gaps(make_series(values), size=5, max_iter=3, max_distance=None)
    assert not np.isnan(three.values).any()
    assert not bool(three.observed[0, 7, 7]) and bool(three.observed[0, 0, 0])


def test_fill_gaps__all_missing_scene_stays_missing():
    values = holey(shape=(2, 6, 6))
    values[1] = np.nan
    filled = fill_gaps(make_series(values))
    assert np.isnan(filled.values[1]).all()
    assert not np.isnan(filled.values[0]).any()


def test_fill_gaps__observed_coord_metadata_and_attrs():
    values = holey(shape=(3, 8, 8))
    series = make_series(values, name="snow_mask")
    series.attrs["threshold"] = 0.3
    filled = fill_gaps(series, size=3, weights="uniform", max_iter=2)
    assert filled.name == "snow_mask" and filled.dtype == np.float32
    assert filled.dims == series.dims
    np.testing.assert_array_equal(filled.observed.values, ~np.isnan(values))
    assert filled.observed.dims == ("time", "y", "x") and filled.observed.dtype == bool
    assert filled.attrs["threshold"] == 0.3 and filled.attrs["units"] == "1"
    assert filled.attrs["fill_gaps_size"] == 3
    assert filled.attrs["fill_gaps_weights"] == "uniform"
    assert filled.attrs["fill_gaps_max_iter"] == 2
    assert filled.rio.crs.to_epsg() == 32643
    custom = fill_gaps(series, weights=np.ones((3, 5)))
    assert custom.attrs["fill_gaps_weights"] == "custom" and len(custom.attrs["fill_gaps_kernel"]) == 15


def test_fill_gaps__existing_observed_coord_is_anded():
    values = holey(shape=(2, 8, 8), fraction=0.3)
    once = fill_gaps(make_series(values), max_iter=1)
    again = once.copy(data=np.where(np.random.default_rng(5).random(values.shape) < 0.2, np.nan, once.values))
    twice = fill_gaps(again)
    np.testing.assert_array_equal(twice.observed.values, ~np.isnan(values) & ~np.isnan(again.values))


def test_fill_gaps__dimension_order_does_not_matter():
    values = holey(shape=(2, 9, 7))
    series = make_series(values)
    flipped = fill_gaps(series.transpose("x", "time", "y"))
    assert flipped.dims == ("x", "time", "y")
    xr.testing.assert_identical(flipped.transpose("time", "y", "x"), fill_gaps(series))


def test_fill_gaps__accessor_forwards_keywords():
    series = make_series(holey())
    xr.testing.assert_identical(series.glacier.fill_gaps(size=3), fill_gaps(series, size=3))


# ---------------------------------------------------------------- invariants


@st.composite
def gappy_arrays(draw):
    times = draw(st.integers(1, 2))
    height = draw(st.integers(3, 10))
    width = draw(st.integers(3, 10))
    values = draw(
        hnp.arrays(
            np.float32,
            (times, height, width),
            elements=st.floats(-1, 1, width=32) | st.just(np.nan),
        )
    )
    chunk_y = draw(st.integers(1, height))
    chunk_x = draw(st.integers(1, width))
    return values, {"time": 1, "y": chunk_y, "x": chunk_x}


@given(
    case=gappy_arrays(),
    size=st.sampled_from([3, 5]),
    max_iter=st.integers(1, 3),
    max_distance=st.sampled_from([None, 1.0, 2.5, 4.0]),
)
@settings(max_examples=25, deadline=None)
def test_fill_gaps__observed_unchanged_and_chunking_independent(case, size, max_iter, max_distance):
    values, chunks = case
    kwargs = dict(size=size, max_iter=max_iter, max_distance=max_distance)
    eager = fill_gaps(make_series(values), **kwargs)
    lazy = fill_gaps(make_series(values, chunks=chunks), **kwargs)
    observed = ~np.isnan(values)
    np.testing.assert_array_equal(eager.values[observed], values[observed])
    assert lazy.chunks == make_series(values, chunks=chunks).chunks
    np.testing.assert_array_equal(lazy.values, eager.values)
    np.testing.assert_array_equal(lazy.observed.values, observed)
    # filled values stay inside the range of the data they average
    if observed.any():
        filled = eager.values[~observed & ~np.isnan(eager.values)]
        assert np.all(filled >= values[observed].min()) and np.all(filled <= values[observed].max())


def test_fill_gaps__lazy_for_many_chunkings_and_equal_to_numpy():
    values = holey(shape=(3, 23, 17), fraction=0.5)
    values[1, 3:15, 2:12] = np.nan
    eager = fill_gaps(make_series(values), max_iter=3)
    for chunks in ({"time": 1}, {"time": 1, "y": 4, "x": 5}, {"y": 7, "x": 3}, {"y": 2, "x": 1}):
        series = make_series(values, chunks=chunks)
        with raise_if_dask_computes():
            lazy = fill_gaps(series, max_iter=3)
        assert lazy.chunks == series.chunks
        xr.testing.assert_identical(lazy.compute(), eager)


# ---------------------------------------------------------------- bad input


def test_fill_gaps__missing_spatial_dim():
    with pytest.raises(DimensionError, match=r"\['x'\]"):
        fill_gaps(xr.DataArray(np.zeros((2, 3)), dims=("time", "y")))


def test_fill_gaps__integer_data_is_type_error():
    with pytest.raises(DataTypeError, match="astype"):
        fill_gaps(make_series(np.zeros((1, 3, 3), np.int16)))


@pytest.mark.parametrize(
    "kwargs",
    [{"max_iter": 0}, {"max_iter": 1.5}, {"size": 6}, {"weights": "mean"}, {"max_distance": 0},
     {"max_distance": float("nan")}, {"max_distance": "far"}],
)
def test_fill_gaps__bad_parameters(kwargs):
    with pytest.raises(ConfigError):
        fill_gaps(make_series(holey()), **kwargs)


# ---------------------------------------------------------------- large holes against the truth


def _disc(shape, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - shape[0] // 2) ** 2 + (xx - shape[1] // 2) ** 2 < radius**2


def _linear_reference(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Reference written here: piecewise-linear interpolation over a Delaunay triangulation."""
    from scipy.interpolate import griddata

    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    return griddata(np.argwhere(~hole), image[~hole], (yy, xx), method="linear")


def test_fill_gaps__large_hole_is_bounded_and_star_free_on_smooth_terrain(sample_catalog):
    """Why large holes smeared: each pass copies the rim one ring inwards, so values run along
    straight rays and the fronts from opposite sides meet in seams (a star). On the sample's
    smooth terrain the unbounded fill is far worse than linear interpolation deep in a
    hole; the default (max_distance=4) fills only a thin rim, as well as the reference, and
    leaves the rest NaN for the composites to interpolate in time."""
    from scipy import ndimage

    import glacierxr as gx

    truth = gx.sample.open_truth(sample_catalog)["elevation"].values.astype(np.float64)
    hole = _disc(truth.shape, 20)
    holed = np.where(hole, np.nan, truth)[None]
    distance = ndimage.distance_transform_edt(hole)
    reference = _linear_reference(truth, hole)

    bounded = fill_gaps(make_series(holed)).values[0]
    filled = hole & np.isfinite(bounded)
    assert np.array_equal(filled, hole & (distance <= 4))  # exactly the rim, the rest stays NaN
    error = np.abs(bounded - truth)[filled].mean()
    assert error <= 1.2 * np.abs(reference - truth)[filled].mean()

    unbounded = fill_gaps(make_series(holed), max_distance=None).values[0]
    deep = hole & (distance > 8)
    assert np.isfinite(unbounded[deep]).all()
    assert np.abs(unbounded - truth)[deep].mean() > 1.5 * np.abs(reference - truth)[deep].mean()


def test_fill_gaps__large_cloud_on_a_sample_scene_against_what_was_there(sample_catalog):
    """A cloud-free sample scene's NDSI with a synthetic 40-px cloud: the rim is filled about as
    well as linear interpolation does it, and the filled fraction reported is what was filled."""
    import glacierxr as gx

    items = gx.search(catalog=sample_catalog, datetime="2018-01-01/2020-01-01", max_cloud=100)
    ndsi = gx.load(items, resolution=30).glacier.mask(max_missing=1.0).glacier.ndsi()
    missing = ndsi.isnull().mean(("y", "x")).values
    scene = ndsi.isel(time=int(np.argmin(missing))).values.astype(np.float64)
    assert np.isnan(scene).mean() < 0.01
    hole = _disc(scene.shape, 20) & np.isfinite(scene)
    result = fill_gaps(make_series(np.where(hole, np.nan, scene)[None]))
    filled = hole & np.isfinite(result.values[0])
    assert 0.2 < filled.sum() / hole.sum() < 0.5  # the 4-px rim of a 20-px-radius disc
    error = np.abs(result.values[0] - scene)[filled].mean()
    reference = np.abs(_linear_reference(np.where(np.isnan(scene), 0, scene), hole) - scene)[filled].mean()
    assert error <= 1.2 * reference and error < 0.35
    assert float(filled_fraction(result)[0]) == pytest.approx(filled.sum() / scene.size)


def test_fill_gaps__composite_takes_deep_hole_pixels_from_the_other_scenes():
    """A big cloud in one of three scenes of a month: with the default bound, the composite deep
    inside the hole is exactly the mean of the two scenes that saw it; the unbounded fill mixes
    its smear into the composite instead."""
    from scipy import ndimage

    from glacierxr.composite import monthly

    rng = np.random.default_rng(4)
    scenes = np.stack([ndimage.gaussian_filter(rng.standard_normal((48, 48)), 3) for _ in range(3)])
    yy, xx = np.mgrid[:48, :48]
    hole = (yy - 24) ** 2 + (xx - 24) ** 2 < 15**2
    holed = scenes.copy()
    holed[1][hole] = np.nan
    deep = hole & (ndimage.distance_transform_edt(hole) > 4)
    series = make_series(holed.astype(np.float32), freq="7D")  # three scenes in January
    expected = scenes[[0, 2]].mean(axis=0)

    bounded = monthly(fill_gaps(series), months=1).isel(time=0).values
    np.testing.assert_allclose(bounded[deep], expected[deep], rtol=1e-5, atol=1e-6)
    unbounded = monthly(fill_gaps(series, max_distance=None), months=1).isel(time=0).values
    assert np.abs(unbounded[deep] - expected[deep]).mean() > 0.2 * np.abs(expected[deep]).mean()
    # and against the truth (the month's mean had the cloud not been there) the bound is closer
    truth = scenes.mean(axis=0)
    assert np.abs(bounded - truth)[deep].mean() < np.abs(unbounded - truth)[deep].mean()
