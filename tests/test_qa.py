"""Tests of glacierxr.qa: QA_PIXEL decoding, missing fraction, masking and scene dropping."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import glacierxr  # noqa: F401  (registers .glacier)
from glacierxr.errors import (
    ConfigError,
    DataTypeError,
    DimensionError,
    MissingBandError,
    NoScenesError,
)
from glacierxr.landsat import DEFAULT_MASKED_FLAGS, QA_BITS
from glacierxr.qa import decode_qa, mask, missing_fraction, qa_flags
from glacierxr.testing import count_computes, make_scene_cube, raise_if_dask_computes
from yatsm_data import FMASK_CLOUD, FMASK_FILL, FMASK_SHADOW, FMASK_SNOW, NODATA, yatsm_cube  # noqa: F401

CLEAR = 1 << 6
CLOUD = (1 << 3) | (1 << 1)
SHADOW = 1 << 4
SNOW = (1 << 5) | (1 << 6)
WATER = (1 << 7) | (1 << 6)
CIRRUS = 1 << 2
FILL = 1


def tiny_cube(qa: np.ndarray, green: np.ndarray | None = None, chunks: dict | None = None) -> xr.Dataset:
    """A (time, 2, 2) cube with given QA values; green = 0.5, swir = 0.1 unless given."""
    qa = np.asarray(qa, dtype=np.uint16)
    times = qa.shape[0]
    if green is None:
        green = np.full(qa.shape, 0.5, np.float32)
    ds = xr.Dataset(
        {
            "green": (("time", "y", "x"), np.asarray(green, np.float32), {"units": "1", "long_name": "green"}),
            "swir16": (("time", "y", "x"), np.full(qa.shape, 0.1, np.float32)),
            "qa_pixel": (("time", "y", "x"), qa),
        },
        coords={
            "time": pd.date_range("2021-01-01", periods=times, freq="16D"),
            "y": [45.0, 15.0][: qa.shape[1]],
            "x": [15.0, 45.0][: qa.shape[2]],
            "id": ("time", [f"S{i}" for i in range(times)]),
        },
        attrs={"collection": "landsat-c2-l2"},
    ).rio.write_crs(32643)
    if chunks:
        ds = ds.chunk(chunks)
    return ds


# ---------------------------------------------------------------- decode_qa / qa_flags


def test_decode_qa__default_flags_mask_cloud_like_and_fill_but_not_snow_or_water():
    qa = xr.DataArray(np.array([CLEAR, CLOUD, SHADOW, SNOW, WATER, CIRRUS, FILL, 1 << 1], np.uint16))
    assert decode_qa(qa).values.tolist() == [False, True, True, False, False, True, True, True]
    assert decode_qa(qa).dtype == bool
    assert decode_qa(qa).name == "qa_flagged"


@pytest.mark.parametrize("flag, bit", sorted(QA_BITS.items()))
def test_decode_qa__each_flag_reads_its_own_bit(flag, bit):
    values = np.array([1 << b for b in range(16)] + [0, 0xFFFF], np.uint16)
    got = decode_qa(xr.DataArray(values), flags=flag).values
    expected = (values >> bit) & 1 == 1
    np.testing.assert_array_equal(got, expected)


def test_decode_qa__float_qa_nan_reads_as_fill():
    qa = xr.DataArray(np.array([np.nan, 64.0, 8.0]))
    assert decode_qa(qa, flags="fill").values.tolist() == [True, False, False]
    assert decode_qa(qa, flags="cloud").values.tolist() == [False, False, True]


def test_decode_qa__unknown_flag_lists_valid_flags():
    qa = xr.DataArray(np.array([0], np.uint16))
    with pytest.raises(ConfigError, match="Valid flags") as info:
        decode_qa(qa, flags=("cloud", "clouds"))
    assert "clouds" in str(info.value) and "cloud_shadow" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_decode_qa__non_numeric_qa_is_a_type_error():
    with pytest.raises(DataTypeError, match="integers"):
        decode_qa(xr.DataArray(np.array(["a"])))


def test_decode_qa__is_lazy():
    cube = make_scene_cube(times=3, height=8, width=8, chunks={"time": 1})
    with raise_if_dask_computes():
        flagged = decode_qa(cube.qa_pixel)
    assert flagged.chunks == cube.qa_pixel.chunks


def test_qa_flags__one_boolean_per_bit():
    qa = xr.DataArray(np.array([SNOW, CLOUD], np.uint16), dims="x")
    flags = qa_flags(qa)
    assert list(flags.data_vars) == list(QA_BITS)
    assert [n for n in flags.data_vars if bool(flags[n][0])] == ["snow", "clear"]
    assert [n for n in flags.data_vars if bool(flags[n][1])] == ["dilated_cloud", "cloud"]


# ---------------------------------------------------------------- missing_fraction


def test_missing_fraction__dataarray_and_dataset_any_band():
    da = xr.DataArray([[[1.0, np.nan], [np.nan, np.nan]], [[1.0, 1.0], [1.0, 1.0]]], dims=("time", "y", "x"))
    assert missing_fraction(da).values.tolist() == [0.75, 0.0]
    ds = xr.Dataset({"a": da, "b": da.fillna(0).where(da.time == 0, np.nan)})
    assert missing_fraction(ds).values.tolist() == [0.75, 1.0]
    assert missing_fraction(ds, bands=["a"]).values.tolist() == [0.75, 0.0]


def test_missing_fraction__missing_dim_is_dimension_error():
    with pytest.raises(DimensionError, match="lacks dimension"):
        missing_fraction(xr.DataArray(np.zeros((2, 3)), dims=("time", "y")))


# ---------------------------------------------------------------- mask: known truth


def test_mask__masks_flagged_pixels_and_keeps_snow_and_water():
    qa = np.array([[[CLEAR, CLOUD], [SNOW, WATER]], [[SHADOW, CIRRUS], [FILL, CLEAR]]])
    out = mask(tiny_cube(qa), drop=False)
    expected_nan = np.array([[[0, 1], [0, 0]], [[1, 1], [1, 0]]], bool)
    for band in ("green", "swir16"):
        np.testing.assert_array_equal(np.isnan(out[band].values), expected_nan)
        assert out[band].dtype == np.float32
    np.testing.assert_array_equal(out.qa_pixel.values, qa)  # QA band untouched
    np.testing.assert_allclose(out.missing_fraction.values, [0.25, 0.75])
    assert out.missing_fraction.dims == ("time",)


def test_mask__existing_nan_counts_as_missing():
    qa = np.full((1, 2, 2), CLEAR)
    green = np.array([[[np.nan, 0.5], [0.5, 0.5]]])
    out = mask(tiny_cube(qa, green=green), drop=False)
    assert float(out.missing_fraction[0]) == 0.25
    assert not np.isnan(out.swir16.values[0, 0, 0])  # the other band keeps its value


def test_mask__drops_scenes_over_max_missing_and_records_parameters():
    qa = np.array(
        [
            [[CLEAR, CLEAR], [CLEAR, CLOUD]],  # 0.25
            [[CLOUD, CLOUD], [CLOUD, CLEAR]],  # 0.75 -> dropped
            [[CLOUD, CLOUD], [CLEAR, CLEAR]],  # 0.50 -> kept (not > 0.5)
        ]
    )
    out = mask(tiny_cube(qa), max_missing=0.5)
    assert out.id.values.tolist() == ["S0", "S2"]
    np.testing.assert_allclose(out.missing_fraction.values, [0.25, 0.5])
    assert out.attrs["masked_flags"] == " ".join(DEFAULT_MASKED_FLAGS)
    assert out.attrs["max_missing"] == 0.5
    assert out.attrs["dropped_scenes"] == 1
    assert out.attrs["collection"] == "landsat-c2-l2"
    assert out.green.attrs["long_name"] == "green"
    assert out.rio.crs.to_epsg() == 32643


def test_mask__all_nan_scene_is_dropped():
    qa = np.full((2, 2, 2), CLEAR)
    green = np.full((2, 2, 2), 0.5)
    green[1] = np.nan
    out = mask(tiny_cube(qa, green=green))
    assert out.id.values.tolist() == ["S0"]


def test_mask__custom_flags_can_mask_snow():
    qa = np.array([[[CLEAR, SNOW], [CLOUD, CLEAR]]])
    out = mask(tiny_cube(qa), flags=["snow"], drop=False)
    np.testing.assert_array_equal(np.isnan(out.green.values[0]), [[False, True], [False, False]])
    assert out.attrs["masked_flags"] == "snow"


def test_mask__accessor_forwards_keywords():
    cube = make_scene_cube(times=4, height=8, width=8, seed=3)
    xr.testing.assert_identical(cube.glacier.mask(max_missing=0.9), mask(cube, max_missing=0.9))


def test_mask__other_variables_pass_through():
    ds = tiny_cube(np.array([[[CLOUD, CLEAR], [CLEAR, CLEAR]]]))
    ds["elevation"] = (("y", "x"), np.ones((2, 2)))
    out = mask(ds, drop=False)
    xr.testing.assert_identical(out.elevation, ds.elevation)


@given(
    qa=hnp.arrays(np.uint16, (3, 4, 5), elements=st.integers(0, 2**16 - 1)),
    holes=hnp.arrays(bool, (3, 4, 5)),
)
@settings(max_examples=40, deadline=None)
def test_mask__nan_exactly_where_flagged_or_missing(qa, holes):
    green = np.where(holes, np.nan, 0.3).astype(np.float32)
    ds = xr.Dataset(
        {
            "green": (("time", "y", "x"), green),
            "swir16": (("time", "y", "x"), np.full(qa.shape, 0.1, np.float32)),
            "qa_pixel": (("time", "y", "x"), qa),
        },
        coords={"time": pd.date_range("2020-01-01", periods=3)},
    )
    bitmask = sum(1 << QA_BITS[f] for f in DEFAULT_MASKED_FLAGS)
    flagged = (qa & bitmask) != 0
    out = mask(ds, drop=False)
    np.testing.assert_array_equal(np.isnan(out.green.values), flagged | holes)
    np.testing.assert_array_equal(np.isnan(out.swir16.values), flagged)
    np.testing.assert_allclose(out.missing_fraction.values, (flagged | holes).mean(axis=(1, 2)))


# ---------------------------------------------------------------- mask: laziness


def test_mask__drop_false_computes_nothing():
    cube = make_scene_cube(times=4, height=8, width=8, chunks={"time": 1})
    with raise_if_dask_computes():
        out = mask(cube, drop=False)
    assert out.green.chunks == cube.green.chunks
    assert out.missing_fraction.chunks is not None  # still a lazy coordinate


def test_mask__drop_true_computes_exactly_the_per_scene_vector_once():
    cube = make_scene_cube(times=6, height=8, width=8, chunks={"time": 1}, cloud_fraction=0.3)
    with count_computes() as scheduler:
        out = mask(cube, max_missing=0.35)
    assert scheduler.total_computes == 1
    assert out.green.chunks is not None  # bands stay lazy
    assert out.missing_fraction.chunks is None  # the vector that was computed
    assert out.sizes["time"] < cube.sizes["time"]


def test_mask__numpy_and_dask_agree():
    eager = mask(make_scene_cube(times=5, height=8, width=8, cloud_fraction=0.3), max_missing=0.4)
    lazy = mask(make_scene_cube(times=5, height=8, width=8, cloud_fraction=0.3, chunks={"time": 2}), max_missing=0.4)
    xr.testing.assert_identical(eager, lazy.compute())


def stacked_like_load(**kwargs) -> xr.Dataset:
    """Bands cut out of one Dask array (like stackstac output split by band): the variables are
    intermediates of a shared graph, not leaves."""
    cube = make_scene_cube(**kwargs)
    stack = xr.concat(
        [cube[name].astype("float64") for name in ("green", "swir16", "qa_pixel")], dim="band"
    ).assign_coords(band=["green", "swir16", "qa_pixel"])
    ds = stack.chunk({"time": 1, "band": 1}).to_dataset("band")
    ds["qa_pixel"] = ds.qa_pixel.astype("uint16")
    return ds


@pytest.mark.parametrize("drop", [False, True])
def test_mask__dask_compute_of_the_whole_dataset_works(drop):
    # The QA band is returned *and* used to mask the bands; without care one output variable is an
    # intermediate of another, which breaks dask.compute(ds) (pydata/xarray#11329).
    ds = stacked_like_load(times=6, height=8, width=8, cloud_fraction=0.3)
    out = mask(ds, drop=drop, max_missing=0.4)
    (computed,) = dask.compute(out)
    expected = mask(ds.compute(), drop=drop, max_missing=0.4)
    xr.testing.assert_allclose(computed, expected)


@pytest.mark.slow
def test_mask__on_a_distributed_cluster(local_cluster):
    ds = stacked_like_load(times=6, height=8, width=8, cloud_fraction=0.3)
    for drop in (False, True):
        out = mask(ds, drop=drop, max_missing=0.4)
        computed = local_cluster.compute(out).result()
        xr.testing.assert_allclose(computed, mask(ds.compute(), drop=drop, max_missing=0.4))


# ---------------------------------------------------------------- mask: bad input


def test_mask__missing_qa_band_names_available_and_parameter():
    cube = make_scene_cube(times=2, height=4, width=4).rename(qa_pixel="QA_PIXEL")
    with pytest.raises(MissingBandError, match="QA band 'qa_pixel' not found") as info:
        mask(cube)
    assert "'QA_PIXEL'" in str(info.value) and "qa='QA_PIXEL'" in str(info.value)
    assert "green" in str(info.value)
    assert isinstance(info.value, KeyError)
    assert mask(cube, qa="QA_PIXEL", max_missing=1).sizes["time"] == 2


def test_mask__missing_qa_without_alias_names_the_parameter():
    cube = make_scene_cube(times=2, height=4, width=4).drop_vars("qa_pixel")
    with pytest.raises(MissingBandError, match="Pass qa="):
        mask(cube)


def test_mask__unknown_band_is_missing_band_error():
    with pytest.raises(MissingBandError, match="Band 'red' not found"):
        mask(make_scene_cube(times=2, height=4, width=4), bands=["red"])


def test_mask__wrong_dims_is_dimension_error():
    cube = make_scene_cube(times=2, height=4, width=4).rename(y="row")
    with pytest.raises(DimensionError, match=r"lacks dimension\(s\) \['y'\]"):
        mask(cube)
    assert mask(cube, y_dim="row", max_missing=1).sizes["row"] == 4


def test_mask__every_scene_over_threshold_says_raise_max_missing():
    qa = np.full((3, 2, 2), CLOUD)
    with pytest.raises(NoScenesError, match="Raise max_missing") as info:
        mask(tiny_cube(qa))
    assert "All 3 scenes" in str(info.value)


def test_mask__empty_time_axis_is_no_scenes_error():
    cube = make_scene_cube(times=2, height=4, width=4).isel(time=slice(0, 0))
    with pytest.raises(NoScenesError, match="no scene"):
        mask(cube, drop=False)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_mask__max_missing_outside_unit_interval(bad):
    with pytest.raises(ConfigError, match="max_missing"):
        mask(make_scene_cube(times=2, height=4, width=4), max_missing=bad)


def test_mask__unknown_flag_is_config_error():
    with pytest.raises(ConfigError, match="Valid flags"):
        mask(make_scene_cube(times=2, height=4, width=4), flags=["shadow"])


def test_mask__dataarray_input_is_type_error():
    with pytest.raises(DataTypeError, match="Dataset"):
        mask(make_scene_cube(times=2, height=4, width=4).green)


# ---------------------------------------------------------------- real data


def test_mask__missing_fraction_matches_fmask_on_real_series(yatsm_cube):
    fmask = yatsm_cube.fmask.values
    out = mask(yatsm_cube, drop=False)
    # Independent truth from the Fmask classes and the nodata value of the reflectance bands.
    flagged = np.isin(fmask, [FMASK_CLOUD, FMASK_SHADOW, FMASK_FILL, NODATA])
    nodata = np.isnan(yatsm_cube.green.values) | np.isnan(yatsm_cube.swir16.values)
    expected = (flagged | nodata).mean(axis=(1, 2))
    np.testing.assert_allclose(out.missing_fraction.values, expected)
    # Fmask snow is kept (never masked by default), clouds are removed.
    snow = fmask == FMASK_SNOW
    assert snow.sum() > 1000
    assert np.isfinite(out.green.values[snow]).all()
    assert np.isnan(out.green.values[fmask == FMASK_CLOUD]).all()

    dropped = mask(yatsm_cube)  # default max_missing=0.5
    assert dropped.sizes["time"] == int((expected <= 0.5).sum())
    assert dropped.attrs["dropped_scenes"] == int((expected > 0.5).sum()) > 50
    assert (dropped.missing_fraction <= 0.5).all()
