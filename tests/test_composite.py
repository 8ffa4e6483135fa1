"""Tests of glacierxr.composite: N-month composites, counts and temporal interpolation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import glacierxr  # noqa: F401  (registers .glacier)
from glacierxr.composite import monthly, period_starts
from glacierxr.errors import ConfigError, DataTypeError, DimensionError, NoScenesError
from glacierxr.gapfill import fill_gaps
from glacierxr.indices import ndsi
from glacierxr.qa import mask
from glacierxr.testing import make_series, raise_if_dask_computes
from yatsm_data import yatsm_cube  # noqa: F401


def series_at(dates, values, *, chunks=None, name="snow_mask") -> xr.DataArray:
    """A (time, y, x) series at explicit dates."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 1:
        values = values.reshape(-1, 1, 1)
    da = make_series(values, name=name)
    da = da.assign_coords(time=pd.DatetimeIndex(dates))
    return da.chunk(chunks) if chunks else da


def expected_period_start(date: pd.Timestamp, months: int, anchor: int) -> pd.Timestamp:
    """Period start by plain calendar arithmetic (independent of the library's month numbers)."""
    offset = (date.month - anchor) % months
    month, year = date.month - offset, date.year
    if month < 1:
        month, year = month + 12, year - 1
    return pd.Timestamp(year, month, 1)


# ---------------------------------------------------------------- known truth


def test_monthly__mean_median_max_min_per_month():
    dates = ["2020-01-03", "2020-01-19", "2020-01-28", "2020-02-10", "2020-03-01", "2020-03-31"]
    values = [1.0, 5.0, 3.0, 7.0, np.nan, 2.0]
    da = series_at(dates, values)
    expected = {"mean": [3.0, 7.0, 2.0], "median": [3.0, 7.0, 2.0], "max": [5.0, 7.0, 2.0], "min": [1.0, 7.0, 2.0]}
    for how, want in expected.items():
        out = monthly(da, how=how)
        np.testing.assert_allclose(out.values.ravel(), want)
        assert out.attrs["composite_how"] == how
    out = monthly(da)
    assert out.time.values.tolist() == pd.DatetimeIndex(["2020-01-01", "2020-02-01", "2020-03-01"]).asi8.tolist()
    np.testing.assert_array_equal(out.period_start.values, out.time.values)
    np.testing.assert_array_equal(
        out.period_end.values, pd.DatetimeIndex(["2020-02-01", "2020-03-01", "2020-04-01"]).values
    )
    assert out.observation_count.values.ravel().tolist() == [3, 1, 1]
    assert out.observation_count.dims == ("time", "y", "x")
    assert not out.interpolated.values.any()


def test_monthly__quarters_start_in_january_april_july_october():
    dates = pd.date_range("2019-11-15", "2020-08-20", freq="10D")
    out = monthly(series_at(dates, np.arange(len(dates))), months=3)
    assert [t.strftime("%Y-%m") for t in pd.DatetimeIndex(out.time.values)] == [
        "2019-10", "2020-01", "2020-04", "2020-07"
    ]
    assert [t.strftime("%Y-%m-%d") for t in pd.DatetimeIndex(out.period_end.values)][-1] == "2020-10-01"
    labels = [expected_period_start(d, 3, 1) for d in dates]
    counts = pd.Series(labels).value_counts().sort_index().tolist()
    assert out.observation_count.values.ravel().tolist() == counts
    assert out.attrs["composite_months"] == 3


@pytest.mark.parametrize("anchor", [10, "OCT", "October", "YS-OCT", "as-oct"])
def test_monthly__hydrological_years_from_anchor(anchor):
    dates = ["2019-09-30", "2019-10-01", "2020-09-30", "2020-10-01"]
    out = monthly(series_at(dates, [1.0, 2.0, 4.0, 8.0]), months=12, anchor=anchor)
    assert [t.strftime("%Y-%m-%d") for t in pd.DatetimeIndex(out.time.values)] == [
        "2018-10-01", "2019-10-01", "2020-10-01"
    ]
    np.testing.assert_allclose(out.values.ravel(), [1.0, 3.0, 8.0])
    assert out.attrs["composite_anchor_month"] == 10


def test_monthly__empty_periods_interpolated_linearly_in_time():
    # January and April have data; February and March have no scene at all.
    da = series_at(["2021-01-10", "2021-04-20"], [[[0.0, 1.0]], [[0.9, np.nan]]])
    out = monthly(da)
    assert out.sizes["time"] == 4
    assert out.interpolated.values.tolist() == [False, True, True, False]
    starts = pd.DatetimeIndex(out.time.values).asi8.astype(float)
    weight = (starts - starts[0]) / (starts[3] - starts[0])  # by days, not by step number
    np.testing.assert_allclose(out.values[:, 0, 0], 0.9 * weight, rtol=1e-6)
    assert weight[1] != pytest.approx(1 / 3)  # months have unequal length
    # pixel (0, 1) has no data after January: no extrapolation
    np.testing.assert_array_equal(np.isnan(out.values[:, 0, 1]), [False, True, True, True])
    assert out.observation_count.values[:, 0, :].tolist() == [[1, 1], [0, 0], [0, 0], [1, 0]]


def test_monthly__pixel_gaps_in_periods_with_data_are_interpolated_too():
    da = series_at(
        ["2021-01-10", "2021-02-10", "2021-03-10"],
        [[[1.0, 1.0]], [[np.nan, 2.0]], [[3.0, 3.0]]],
    )
    out = monthly(da)
    assert out.interpolated.values.tolist() == [False, False, False]
    assert out.observation_count.values[1, 0].tolist() == [0, 1]
    starts = pd.DatetimeIndex(out.time.values).asi8.astype(float)
    expected = 1.0 + 2.0 * (starts[1] - starts[0]) / (starts[2] - starts[0])
    assert out.values[1, 0, 0] == pytest.approx(expected)
    assert out.values[1, 0, 1] == 2.0


def test_monthly__no_interpolation_keeps_gaps_and_flags_nothing():
    da = series_at(["2021-01-10", "2021-03-10"], [1.0, 3.0])
    out = monthly(da, interpolate=False)
    assert np.isnan(out.values[1]).all()
    assert not out.interpolated.values.any()
    assert out.attrs["composite_interpolate"] == 0


def test_monthly__min_count():
    da = series_at(["2021-01-01", "2021-01-02", "2021-02-01", "2021-03-01", "2021-03-02"], [1, 3, 10, 5, 7])
    out = monthly(da, min_count=2)
    assert out.interpolated.values.tolist() == [False, True, False]
    starts = pd.DatetimeIndex(out.time.values).asi8.astype(float)
    assert out.values[1, 0, 0] == pytest.approx(2 + 4 * (starts[1] - starts[0]) / (starts[2] - starts[0]))
    assert out.observation_count.values.ravel().tolist() == [2, 1, 2]


def test_monthly__metadata_survives_and_per_scene_coords_dropped():
    da = make_series(np.random.default_rng(0).random((12, 3, 4)), start="2020-01-05", freq="20D")
    da = da.assign_coords(id=("time", [f"S{i}" for i in range(12)]))
    da.attrs["threshold"] = 0.3
    out = monthly(da, months=2)
    assert out.name == "snow_mask" and out.attrs["threshold"] == 0.3 and out.attrs["units"] == "1"
    assert "id" not in out.coords
    assert out.rio.crs.to_epsg() == 32643
    assert out.dims == ("time", "y", "x")


def test_monthly__observed_count_after_gap_filling():
    values = np.ones((4, 6, 6), np.float32)  # four scenes, all in January 2021
    values[0, :3] = np.nan
    values[2, :, :2] = np.nan
    filled = fill_gaps(make_series(values, start="2021-01-01", freq="10D"))
    out = monthly(filled)
    assert out.sizes["time"] == 1
    np.testing.assert_array_equal(out.observation_count.values[0], np.full((6, 6), 4))
    np.testing.assert_array_equal(out.observed_count.values[0], (~np.isnan(values)).sum(axis=0))
    assert out.observed_count.values[0].min() == 2


def test_monthly__integer_input_becomes_float32():
    da = series_at(["2021-01-01", "2021-01-02"], [1.0, 2.0]).astype(np.int16)
    out = monthly(da)
    assert out.dtype == np.float32 and out.values.ravel().tolist() == [1.5]


def test_period_starts__contiguous_grid():
    labels, grid = period_starts(["2020-05-05", "2019-02-01"], months=4)
    assert [t.strftime("%Y-%m") for t in labels] == ["2020-05", "2019-01"]
    assert [t.strftime("%Y-%m") for t in grid] == ["2019-01", "2019-05", "2019-09", "2020-01", "2020-05"]


def test_monthly__accessor_forwards_months_and_keywords():
    da = make_series(np.random.default_rng(1).random((10, 2, 2)))
    xr.testing.assert_identical(da.glacier.monthly(months=2, how="max"), monthly(da, months=2, how="max"))


# ---------------------------------------------------------------- invariants


@given(
    days=st.lists(st.integers(0, 4 * 366), min_size=1, max_size=14),
    months=st.sampled_from([1, 2, 3, 4, 6, 12]),
    anchor=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_monthly__one_step_per_period_and_counts_add_up(days, months, anchor, seed):
    rng = np.random.default_rng(seed)
    dates = pd.Timestamp("2018-01-01") + pd.to_timedelta(days, unit="D")  # unsorted, maybe repeated
    values = rng.random((len(days), 2, 3))
    values[rng.random(values.shape) < 0.4] = np.nan
    da = series_at(dates, values)
    out = monthly(da, months=months, anchor=anchor)

    labels = [expected_period_start(d, months, anchor) for d in dates]
    first, last = min(labels), max(labels)
    spanned = ((last.year - first.year) * 12 + last.month - first.month) // months + 1
    assert out.sizes["time"] == spanned
    steps = pd.DatetimeIndex(out.time.values)
    assert steps[0] == first and steps[-1] == last
    assert all(steps[i] + pd.DateOffset(months=months) == steps[i + 1] for i in range(spanned - 1))
    np.testing.assert_array_equal(out.period_end.values[:-1], out.period_start.values[1:])

    valid = ~np.isnan(values)
    assert int(out.observation_count.sum()) == int(valid.sum())
    for k, start in enumerate(steps):
        inside = np.array([(start <= d) & (d < out.period_end.values[k]) for d in dates])
        np.testing.assert_array_equal(out.observation_count.values[k], valid[inside].sum(axis=0))
        if inside.any():
            counts = valid[inside].sum(axis=0)
            means = np.where(valid[inside], values[inside], 0).sum(axis=0) / np.maximum(counts, 1)
            np.testing.assert_allclose(out.values[k][counts > 0], means[counts > 0], rtol=1e-5)
        assert bool(out.interpolated.values[k]) == (valid[inside].sum() == 0)


# ---------------------------------------------------------------- laziness and chunking


def test_monthly__lazy_with_chunked_time_and_equal_to_numpy():
    values = np.random.default_rng(3).random((30, 4, 5)).astype(np.float32)
    values[values < 0.3] = np.nan
    values[10:14] = np.nan  # a month without valid data
    eager = monthly(make_series(values, freq="9D"), months=1, how="median")
    lazy_input = make_series(values, freq="9D", chunks={"time": 4, "x": 2})
    with raise_if_dask_computes():
        lazy = monthly(lazy_input, months=1, how="median")
    assert lazy.chunks[0] == (lazy.sizes["time"],)  # the small composite is one time chunk
    assert lazy.chunks[2] == (2, 2, 1)  # spatial chunks kept
    assert lazy.interpolated.values.any()
    xr.testing.assert_identical(lazy.compute(), eager)


@pytest.mark.slow
def test_monthly__whole_chain_on_a_distributed_cluster(local_cluster):
    from glacierxr.indices import snow_mask
    from glacierxr.testing import make_scene_cube

    def chain(cube):
        masked = mask(cube, max_missing=0.3)
        return monthly(fill_gaps(snow_mask(ndsi(masked))), months=1)

    kwargs = dict(times=10, height=24, width=20, cloud_fraction=0.25, seed=4)
    eager = chain(make_scene_cube(**kwargs))
    lazy = chain(make_scene_cube(**kwargs, chunks={"time": 1, "y": 12, "x": 10}))
    assert lazy.chunks is not None
    result = local_cluster.compute(lazy).result()
    xr.testing.assert_identical(result, eager)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("months", [5, 0, 24, 1.5, True])
def test_monthly__months_must_divide_the_year(months):
    with pytest.raises(ConfigError, match=r"one of \[1, 2, 3, 4, 6, 12\]"):
        monthly(make_series(np.ones((3, 2, 2))), months=months)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"how": "sum"}, "how must be"), ({"anchor": "Octember"}, "anchor"), ({"anchor": 13}, "anchor"), ({"min_count": 0}, "min_count")],
)
def test_monthly__bad_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        monthly(make_series(np.ones((3, 2, 2))), **kwargs)


def test_monthly__missing_time_dim():
    with pytest.raises(DimensionError, match="time_dim="):
        monthly(make_series(np.ones((3, 2, 2))).rename(time="date"))


def test_monthly__non_datetime_time():
    da = make_series(np.ones((3, 2, 2))).assign_coords(time=[1, 2, 3])
    with pytest.raises(DataTypeError, match="datetime64"):
        monthly(da)


def test_monthly__empty_time_axis():
    with pytest.raises(NoScenesError, match="length 0"):
        monthly(make_series(np.ones((3, 2, 2))).isel(time=slice(0, 0)))


# ---------------------------------------------------------------- real data


@pytest.mark.parametrize("months", [1, 3])
def test_monthly__real_series_mask_ndsi_composite(yatsm_cube, months):
    masked = mask(yatsm_cube)  # drops scenes over 50 % cloud / shadow / fill
    index = ndsi(masked)
    out = monthly(index, months=months)

    dates = pd.DatetimeIndex(masked.time.values)
    labels = [expected_period_start(d, months, 1) for d in dates]
    first, last = min(labels), max(labels)
    assert out.sizes["time"] == ((last.year - first.year) * 12 + last.month - first.month) // months + 1
    assert out.sizes["time"] == (350 if months == 1 else 117)  # 1984-04 .. 2013-05 of the real dates

    # Independent truth from Fmask: a pixel is a valid observation where Fmask says clear, water
    # or snow and the bands have data.
    fmask = masked.fmask.values
    valid = np.isin(fmask, [0, 1, 3]) & np.isfinite(masked.green.values) & np.isfinite(masked.swir16.values)
    np.testing.assert_array_equal(np.isfinite(index.values), valid)
    assert int(out.observation_count.sum()) == int(valid.sum())
    period_of_scene = pd.DatetimeIndex(labels)
    has_obs = {p for p, v in zip(period_of_scene, valid.any(axis=(1, 2))) if v}
    expected_flags = [t not in has_obs for t in pd.DatetimeIndex(out.time.values)]
    assert out.interpolated.values.tolist() == expected_flags
    assert 0 < sum(expected_flags) < len(expected_flags)

    # Every pixel is complete between its first and its last period with data, NaN outside
    # (no extrapolation); pixel (0, 0) is nodata in every scene.
    counts = out.observation_count.values
    ever = counts.sum(axis=0) > 0
    assert ever.sum() == 24 and not ever[0, 0]
    steps = np.arange(out.sizes["time"])[:, None, None]
    seen = np.where(counts > 0, steps, -1)
    first_seen = np.where(counts > 0, steps, 10**6).min(axis=0)
    inside = (steps >= first_seen) & (steps <= seen.max(axis=0))
    np.testing.assert_array_equal(np.isfinite(out.values), inside)
    assert (~inside[:, ever]).sum() > 0  # some pixels lose data before the end of the series

    # Real seasonality of the Colorado Park Range snow pack in the composites.
    season = out.where(~out.interpolated).mean(("y", "x")).groupby("time.month").mean()
    if months == 1:
        spring, summer = season.sel(month=[2, 3, 4]).mean(), season.sel(month=[6, 7, 8]).mean()
    else:
        spring, summer = season.sel(month=1), season.sel(month=7)
    assert float(spring) > 0.1 and float(summer) < -0.3


def test_monthly__interpolation_matches_xarray_interpolate_na():
    values = np.random.default_rng(7).random((40, 3, 4)).astype(np.float32)
    values[values < 0.5] = np.nan
    values[5:9] = np.nan
    series = make_series(values, freq="13D")
    ours = monthly(series)
    reference = monthly(series, interpolate=False).interpolate_na("time", method="linear", use_coordinate=True)
    np.testing.assert_allclose(ours.values, reference.values, rtol=1e-6, equal_nan=True)
    assert np.isnan(ours.values).sum() < np.isnan(monthly(series, interpolate=False).values).sum()
