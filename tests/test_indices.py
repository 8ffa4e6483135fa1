"""Tests of glacierxr.indices: NDSI and the NDSI snow mask."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import glacierxr  # noqa: F401  (registers .glacier)
from glacierxr.errors import ConfigError, DataTypeError, DimensionError, MissingBandError
from glacierxr.indices import ndsi, snow_mask
from glacierxr.qa import mask
from glacierxr.testing import make_scene_cube, make_series, raise_if_dask_computes
from yatsm_data import FMASK_CLEAR, FMASK_SNOW, yatsm_cube  # noqa: F401


def bands(green, swir, dtype=np.float64) -> xr.Dataset:
    return xr.Dataset(
        {"green": ("x", np.asarray(green, dtype)), "swir16": ("x", np.asarray(swir, dtype))}
    )


# ---------------------------------------------------------------- ndsi: known truth


def test_ndsi__known_values_and_undefined_cases():
    green = [0.6, 0.1, 0.3, 0.0, np.nan, 0.4, np.inf, 0.2, -0.02, -0.01]
    swir = [0.2, 0.3, 0.3, 0.0, 0.2, np.nan, 0.1, 0.0, -0.01, 0.04]
    got = ndsi(bands(green, swir)).values
    expected = [0.5, -0.5, 0.0, np.nan, np.nan, np.nan, np.nan, 1.0, np.nan, -1.0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, equal_nan=True)


def test_ndsi__negative_reflectance_reads_as_zero():
    # swir slightly negative: as if 0, so the index is exactly 1 (not 0.3 / 0.1 = 3 clipped).
    got = ndsi(bands([0.2], [-0.1])).values
    assert got.tolist() == [1.0]
    got = ndsi(bands([-0.1], [0.2])).values
    assert got.tolist() == [-1.0]


def test_ndsi__float32_named_with_units_and_coords():
    cube = mask(make_scene_cube(times=3, height=6, width=6), max_missing=1.0)
    index = ndsi(cube)
    assert index.name == "ndsi" and index.dtype == np.float32
    assert index.dims == ("time", "y", "x")
    assert index.attrs["units"] == "1" and "Snow" in index.attrs["long_name"]
    assert index.attrs["green_band"] == "green" and index.attrs["swir_band"] == "swir16"
    assert index.attrs["masked_flags"] == cube.attrs["masked_flags"]  # provenance carried on
    for coord in ("id", "cloud_cover", "platform", "missing_fraction", "spatial_ref"):
        assert coord in index.coords
    assert index.rio.crs.to_epsg() == 32643
    g, s = cube.green.values.astype(float), cube.swir16.values.astype(float)
    np.testing.assert_allclose(index.values, (g - s) / (g + s), rtol=1e-6)


def test_ndsi__deprecated_collection_band_names():
    cube = make_scene_cube(times=2, height=4, width=4).rename(green="SR_B3", swir16="SR_B6")
    index = ndsi(cube, green="SR_B3", swir="SR_B6")
    expected = ndsi(make_scene_cube(times=2, height=4, width=4))
    np.testing.assert_array_equal(index.values, expected.values)
    assert index.attrs["green_band"] == "SR_B3"


def test_ndsi__accessor_forwards_keywords():
    cube = make_scene_cube(times=2, height=4, width=4).rename(swir16="b6")
    xr.testing.assert_identical(cube.glacier.ndsi(swir="b6"), ndsi(cube, swir="b6"))


# ---------------------------------------------------------------- ndsi: invariants


reflectance = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.floats(-0.0625, 1.5, width=32),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38]),
)


@given(
    green=hnp.arrays(np.float32, 16, elements=reflectance),
    swir=hnp.arrays(np.float32, 16, elements=reflectance),
)
@settings(max_examples=150, deadline=None)
def test_ndsi__always_in_unit_interval_or_nan(green, swir):
    got = ndsi(bands(green, swir, np.float32)).values
    assert got.dtype == np.float32
    finite = ~np.isnan(got)
    assert np.all((got[finite] >= -1.0) & (got[finite] <= 1.0))
    # NaN exactly where undefined: a non-finite input, or both bands <= 0.
    undefined = ~(np.isfinite(green) & np.isfinite(swir)) | ((green <= 0) & (swir <= 0))
    np.testing.assert_array_equal(np.isnan(got), undefined)


@given(
    green=hnp.arrays(np.float64, 8, elements=st.floats(1e-4, 1.0)),
    swir=hnp.arrays(np.float64, 8, elements=st.floats(1e-4, 1.0)),
)
@settings(max_examples=50, deadline=None)
def test_ndsi__matches_formula_for_positive_reflectance(green, swir):
    got = ndsi(bands(green, swir)).values
    np.testing.assert_allclose(got, (green - swir) / (green + swir), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- ndsi: laziness, bad input


def test_ndsi__is_lazy_and_matches_numpy():
    lazy_cube = make_scene_cube(times=4, height=8, width=8, chunks={"time": 1})
    with raise_if_dask_computes():
        lazy = ndsi(lazy_cube)
        lazy_mask = snow_mask(lazy, threshold=0.3)
    assert lazy.chunks == lazy_cube.green.chunks
    eager = ndsi(make_scene_cube(times=4, height=8, width=8))
    xr.testing.assert_identical(lazy.compute(), eager)
    xr.testing.assert_identical(lazy_mask.compute(), snow_mask(eager, threshold=0.3))


def test_ndsi__missing_band_suggests_the_alias():
    cube = make_scene_cube(times=2, height=4, width=4)[["green", "swir16"]]
    cube = cube.rename(green="SR_B3", swir16="SR_B6")
    with pytest.raises(MissingBandError) as info:
        ndsi(cube, green="SR_B3")
    assert str(info.value) == "Band 'swir16' not found. Available: ['SR_B3', 'SR_B6']. Pass swir='SR_B6'."
    assert isinstance(info.value, KeyError)
    with pytest.raises(MissingBandError, match="Pass green='SR_B3'"):
        ndsi(cube)


def test_ndsi__missing_band_without_alias_names_parameter():
    ds = xr.Dataset({"b2": ("x", [0.1]), "b5": ("x", [0.2])})
    with pytest.raises(MissingBandError, match="Pass green= with the name of the green band"):
        ndsi(ds)


def test_ndsi__bands_on_different_dims():
    ds = xr.Dataset({"green": ("x", [0.1]), "swir16": ("y", [0.2])})
    with pytest.raises(DimensionError, match="different dimensions"):
        ndsi(ds)


def test_ndsi__dataarray_input_is_type_error():
    with pytest.raises(DataTypeError, match="Dataset"):
        ndsi(make_scene_cube(times=2, height=4, width=4).green)


# ---------------------------------------------------------------- snow_mask


def test_snow_mask__ndsi_at_or_above_threshold_else_zero():
    index = make_series(np.array([0.8, 0.3, 0.29, -0.5, np.nan], np.float32).reshape(5, 1, 1), name="ndsi")
    out = snow_mask(index)
    np.testing.assert_array_equal(out.values.ravel(), np.array([0.8, 0.3, 0.0, 0.0, np.nan], np.float32))
    assert out.name == "snow_mask" and out.dtype == np.float32
    assert out.attrs["threshold"] == 0.3 and out.attrs["binary"] == 0 and out.attrs["units"] == "1"
    assert out.rio.crs.to_epsg() == 32643


def test_snow_mask__binary_and_custom_threshold():
    index = xr.DataArray(np.array([0.8, 0.5, 0.4, np.nan], np.float32), dims="x")
    out = snow_mask(index, threshold=0.5, binary=True)
    np.testing.assert_array_equal(out.values, [1.0, 1.0, 0.0, np.nan])
    assert out.attrs["binary"] == 1 and out.attrs["threshold"] == 0.5
    assert out.dtype == np.float32


def test_snow_mask__accessor_forwards_keywords():
    index = ndsi(make_scene_cube(times=2, height=4, width=4))
    xr.testing.assert_identical(index.glacier.snow_mask(binary=True), snow_mask(index, binary=True))


@given(
    values=hnp.arrays(np.float32, 12, elements=st.floats(-1, 1, width=32) | st.just(np.nan)),
    threshold=st.floats(-1, 1),
    binary=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_snow_mask__values_are_zero_snow_or_nan(values, threshold, binary):
    out = snow_mask(xr.DataArray(values, dims="x"), threshold=threshold, binary=binary).values
    np.testing.assert_array_equal(np.isnan(out), np.isnan(values))
    snow = values >= np.float32(threshold)
    expected = np.where(snow, 1.0 if binary else values, 0.0)
    np.testing.assert_array_equal(out[~np.isnan(values)], expected[~np.isnan(values)])


@pytest.mark.parametrize("bad", [np.nan, np.inf, "high", None])
def test_snow_mask__bad_threshold(bad):
    with pytest.raises(ConfigError, match="threshold"):
        snow_mask(xr.DataArray([0.5]), threshold=bad)


def test_snow_mask__integer_input_is_type_error():
    with pytest.raises(DataTypeError, match="ndsi"):
        snow_mask(xr.DataArray([1, 2]))


# ---------------------------------------------------------------- real data


def test_ndsi__real_series_snow_high_in_late_winter_low_in_summer(yatsm_cube):
    index = ndsi(mask(yatsm_cube, drop=False))
    values = index.values
    assert np.nanmin(values) >= -1 and np.nanmax(values) <= 1
    month = index.time.dt.month.values[:, None, None] * np.ones(values.shape, int)
    fmask = yatsm_cube.fmask.values
    late_winter_snow = np.isin(month, [1, 2, 3]) & (fmask == FMASK_SNOW)
    summer_clear = np.isin(month, [6, 7, 8]) & (fmask == FMASK_CLEAR)
    assert late_winter_snow.sum() > 100 and summer_clear.sum() > 1000
    # Fmask snow in Jan-Mar: NDSI mostly above the 0.3 snow threshold.
    assert np.median(values[late_winter_snow]) >= 0.3
    assert (values[late_winter_snow] >= 0.3).mean() > 0.8
    # Clear summer ground (Colorado Park Range, vegetation/soil): NDSI negative.
    assert np.median(values[summer_clear]) < 0
    assert (values[summer_clear] < 0.3).mean() > 0.95
    # The snow mask follows: most late-winter Fmask-snow pixels are snow, summer ground is not.
    snow = snow_mask(index, binary=True).values
    assert snow[late_winter_snow].mean() > 0.8
    assert snow[summer_clear].mean() < 0.05
