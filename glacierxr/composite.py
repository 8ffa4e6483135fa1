"""N-month composites on a regular calendar grid, with empty periods interpolated in time.

Landsat scenes arrive at irregular dates (16-day revisits, minus clouds), while forecasting
models want a regular time axis. :func:`monthly` reduces every period of ``months`` calendar
months to one image and linearly interpolates, per pixel, the periods that saw no valid
observation, so the output has exactly one step per period and no holes in time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from typing import Literal

import dask
import numpy as np
import pandas as pd
import xarray as xr

from glacierxr.errors import ConfigError, DataTypeError, DimensionError, NoScenesError

__all__ = ["monthly", "period_starts"]

Reduction = Literal["mean", "median", "max", "min"]
_REDUCTIONS = ("mean", "median", "max", "min")
_VALID_MONTHS = (1, 2, 3, 4, 6, 12)
_MONTH_NAMES = {
    name: number
    for number in range(1, 13)
    for name in (
        pd.Timestamp(2000, number, 1).strftime("%b").upper(),
        pd.Timestamp(2000, number, 1).strftime("%B").upper(),
    )
}
_GROUP = "__glacierxr_period__"
_NUMPY_REDUCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "mean": np.nanmean,
    "median": np.nanmedian,
    "max": np.nanmax,
    "min": np.nanmin,
}


def _reduce_time(values: np.ndarray, *, how: str) -> np.ndarray:
    """NaN-skipping reduction over the last axis; all-NaN pixels give NaN without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice", "Mean of empty slice"
        return _NUMPY_REDUCTIONS[how](values, axis=-1).astype(values.dtype, copy=False)


def _reduce_group(group: xr.DataArray, *, how: str, time_dim: Hashable) -> xr.DataArray:
    # One period's scenes (a handful) are brought into one time chunk for the reduction.
    return xr.apply_ufunc(
        _reduce_time,
        group,
        input_core_dims=[[time_dim]],
        kwargs={"how": how},
        dask="parallelized",
        output_dtypes=[group.dtype],
        dask_gufunc_kwargs={"allow_rechunk": True},
        keep_attrs=True,
    )


def _anchor_month(anchor: int | str) -> int:
    """First month (1–12) of the period grid from ``anchor`` (see :func:`monthly`)."""
    if isinstance(anchor, (int, np.integer)) and not isinstance(anchor, bool):
        if 1 <= anchor <= 12:
            return int(anchor)
    elif isinstance(anchor, str):
        text = anchor.strip().upper()
        for prefix in ("YS-", "AS-"):
            if text.startswith(prefix):
                text = text[len(prefix) :]
        if text in ("YS", "AS"):
            return 1
        if text in _MONTH_NAMES:
            return _MONTH_NAMES[text]
    raise ConfigError(
        f"anchor must name the month periods start from: 'YS' (January), 'YS-OCT' / 'OCT' / "
        f"'October' / 10 (October, e.g. hydrological years); got {anchor!r}."
    )


def _month_number(times: pd.DatetimeIndex) -> np.ndarray:
    return np.asarray(times.year, dtype=np.int64) * 12 + np.asarray(times.month, dtype=np.int64) - 1


def _month_to_timestamp(month_number: np.ndarray) -> pd.DatetimeIndex:
    month_number = np.asarray(month_number, dtype=np.int64)
    return pd.to_datetime(
        {"year": month_number // 12, "month": month_number % 12 + 1, "day": 1}
    ).pipe(pd.DatetimeIndex)


def period_starts(
    times, *, months: int = 1, anchor: int | str = "YS"
) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    """The period start of each time, and every period start from the first to the last.

    Parameters
    ----------
    times
        Datetime-like values.
    months, anchor
        As in :func:`monthly`.

    Returns
    -------
    labels, grid : pandas.DatetimeIndex
        ``labels[i]`` is the start of the period holding ``times[i]``; ``grid`` lists the starts of
        all periods from the earliest to the latest label, contiguous.

    Examples
    --------
    >>> labels, grid = period_starts(["2020-02-10", "2020-08-01"], months=3)
    >>> [t.strftime("%Y-%m") for t in grid]
    ['2020-01', '2020-04', '2020-07']
    >>> labels, grid = period_starts(["2020-09-30", "2020-10-01"], months=12, anchor="YS-OCT")
    >>> [t.strftime("%Y-%m") for t in labels]
    ['2019-10', '2020-10']
    """
    months = _check_months(months)
    first_month = _anchor_month(anchor) - 1
    index = pd.DatetimeIndex(times)
    number = _month_number(index)
    start = (number - first_month) // months * months + first_month
    labels = _month_to_timestamp(start)
    if len(start) == 0:
        return labels, labels
    grid = _month_to_timestamp(np.arange(start.min(), start.max() + 1, months))
    return labels, grid


def _check_months(months: int) -> int:
    if isinstance(months, bool) or not isinstance(months, (int, np.integer)) or months not in _VALID_MONTHS:
        raise ConfigError(
            f"months must divide the year into whole periods: one of {list(_VALID_MONTHS)}; "
            f"got {months!r}."
        )
    return int(months)


def monthly(
    da: xr.DataArray,
    *,
    months: int = 1,
    how: Reduction = "mean",
    anchor: int | str = "YS",
    time_dim: Hashable = "time",
    min_count: int = 1,
    interpolate: bool = True,
) -> xr.DataArray:
    """Composite a time series into periods of ``months`` calendar months.

    Every pixel of a period is reduced (``how``) over the valid (non-NaN) observations that fall
    in it. Periods follow a fixed calendar grid: they start at the ``anchor`` month and every
    ``months`` months after it (``months=3``: Jan, Apr, Jul, Oct), so the grid is the same every
    year. The output has exactly one step per period from the period of the first scene to the
    period of the last scene, with no missing periods; the range comes from the time coordinate,
    not from pixel values, so nothing is computed.

    With ``interpolate=True``, composite pixels with fewer than ``min_count`` observations —
    including whole periods without any scene — are linearly interpolated in time (per pixel,
    weighted by the distance between period starts) from the neighbouring periods. Pixels
    before the first or after the last period with data for that pixel stay NaN (no
    extrapolation).

    Laziness and chunking: nothing is computed, and any chunking works. Each period's few scenes
    are brought into one time chunk for its reduction (a small, per-period step), and the
    interpolation needs the (small) *composite* in one chunk along time, so the output has a
    single time chunk; ``y``/``x`` chunks are kept and the caller's data is never rechunked.
    Without ``interpolate`` the output keeps one chunk per period.

    Parameters
    ----------
    da
        Data with a datetime64 ``time_dim`` (e.g. a snow mask ``(time, y, x)``). Integer or
        boolean data are converted to float32.
    months
        Period length in months; must divide 12: 1, 2, 3, 4, 6 or 12.
    how
        Reduction within a period: ``"mean"``, ``"median"``, ``"max"`` or ``"min"`` (NaN skipped).
    anchor
        Month the period grid starts from: ``"YS"`` (January, the default), an integer 1–12, a
        month name (``"OCT"``, ``"October"``) or pandas' ``"YS-OCT"`` form. ``months=12,
        anchor="OCT"`` gives hydrological years starting on 1 October.
    time_dim
        Name of the time dimension.
    min_count
        Minimum valid observations for a composite pixel; below it the pixel is NaN (and then
        interpolated when ``interpolate``).
    interpolate
        Fill composite pixels below ``min_count`` by linear interpolation in time.

    Returns
    -------
    xarray.DataArray
        Same name, units and non-time coordinates (``spatial_ref``); ``time`` = period start.
        Coordinates: ``period_start``, ``period_end`` (exclusive), ``observation_count``
        (int, same dims as the output: valid observations per pixel and period),
        ``observed_count`` (only if ``da`` has an ``observed`` coordinate, e.g. after
        :func:`glacierxr.gapfill.fill_gaps`: valid observations that were observed, not filled),
        ``interpolated`` (bool per period: no pixel reached ``min_count``, so the period's values
        come from temporal interpolation — NaN where that is impossible; always False when
        ``interpolate=False``). Per-scene coordinates are dropped. Attrs add
        ``composite_months``, ``composite_how``, ``composite_anchor_month``,
        ``composite_min_count``, ``composite_interpolate`` (0/1).

    Raises
    ------
    DimensionError
        ``time_dim`` is not a dimension of ``da``.
    DataTypeError
        The time coordinate is not datetime64, or the data are not numeric.
    NoScenesError
        The time axis is empty.
    ConfigError
        ``months`` does not divide 12; unknown ``how`` or ``anchor``; ``min_count`` < 1.

    Examples
    --------
    >>> import numpy as np
    >>> from glacierxr.testing import make_series
    >>> series = make_series(np.arange(6.0).reshape(6, 1, 1), start="2020-01-01", freq="MS")
    >>> quarterly = monthly(series, months=3)
    >>> quarterly.values.ravel().tolist(), quarterly.observation_count.values.ravel().tolist()
    ([1.0, 4.0], [3, 3])
    >>> gappy = make_series(np.array([1.0, 5.0]).reshape(2, 1, 1), start="2020-01-15", freq="59D")
    >>> out = monthly(gappy)
    >>> out.time.dt.month.values.tolist(), out.interpolated.values.tolist()
    ([1, 2, 3], [False, True, False])
    """
    if not isinstance(da, xr.DataArray):
        raise DataTypeError(f"monthly expects an xarray.DataArray, got {type(da).__name__}.")
    if time_dim not in da.dims:
        raise DimensionError(
            f"monthly needs a time dimension {time_dim!r}; {da.name!r} has {list(da.dims)}. "
            "Pass time_dim= with the right name."
        )
    months = _check_months(months)
    if how not in _REDUCTIONS:
        raise ConfigError(f"how must be one of {list(_REDUCTIONS)}; got {how!r}.")
    first_month = _anchor_month(anchor)
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise ConfigError(f"min_count must be an integer >= 1; got {min_count!r}.")
    if da.sizes[time_dim] == 0:
        raise NoScenesError(
            f"No scene to composite: dimension {time_dim!r} has length 0. "
            "Check the search dates and mask(max_missing=...) settings."
        )
    if time_dim not in da.coords or not np.issubdtype(da[time_dim].dtype, np.datetime64):
        found = da[time_dim].dtype if time_dim in da.coords else "no coordinate"
        raise DataTypeError(
            f"monthly needs a datetime64 coordinate {time_dim!r}; found {found}. "
            "Convert it with da.assign_coords(time=pd.to_datetime(da.time.values)) "
            "(cftime calendars are not supported)."
        )
    if not np.issubdtype(da.dtype, np.number) and da.dtype != bool:
        raise DataTypeError(f"monthly needs numeric data; {da.name!r} has dtype {da.dtype}.")
    if not np.issubdtype(da.dtype, np.floating):
        da = da.astype(np.float32)

    labels, grid = period_starts(da[time_dim].values, months=months, anchor=first_month)
    per_scene = [name for name, c in da.coords.items() if time_dim in c.dims and name != time_dim]
    observed = da.coords["observed"] if "observed" in per_scene else None
    clean = da.reset_coords(per_scene, drop=True).assign_coords({_GROUP: (time_dim, labels)})
    valid = clean.notnull()

    def per_period(reduced: xr.DataArray) -> xr.DataArray:
        reduced = reduced.rename({_GROUP: time_dim})
        times = pd.DatetimeIndex(reduced[time_dim].values)
        return reduced.drop_vars(time_dim).assign_coords({time_dim: times})

    composite = per_period(
        clean.groupby(_GROUP).map(_reduce_group, how=how, time_dim=time_dim)
    ).reindex({time_dim: grid})
    count = per_period(valid.groupby(_GROUP).sum(time_dim))
    count = count.reindex({time_dim: grid}, fill_value=0).astype(np.int64)
    enough = count >= min_count
    composite = composite.where(enough)
    other_dims = [d for d in composite.dims if d != time_dim]
    empty_period = ~enough.any(other_dims) if other_dims else ~enough

    if interpolate:
        if dask.is_dask_collection(composite.data):
            composite = composite.chunk({time_dim: -1})
        composite = composite.interpolate_na(time_dim, method="linear", use_coordinate=True)
        interpolated = empty_period
    else:
        interpolated = xr.zeros_like(empty_period, dtype=bool)

    composite = composite.transpose(time_dim, *other_dims)
    count = count.transpose(*composite.dims)
    period_end = _month_to_timestamp(_month_number(grid) + months)
    coords = {
        "period_start": (time_dim, grid, {"long_name": "first day of the period"}),
        "period_end": (time_dim, period_end, {"long_name": "first day after the period (exclusive)"}),
        "observation_count": count.reset_coords(drop=True).assign_attrs(
            units="1", long_name="valid observations in the period"
        ),
        "interpolated": interpolated.reset_coords(drop=True).assign_attrs(
            long_name="period without valid observations, filled by interpolation in time"
        ),
    }
    if observed is not None:
        counted = (valid & observed.astype(bool).reset_coords(drop=True))
        observed_count = per_period(counted.groupby(_GROUP).sum(time_dim))
        observed_count = observed_count.reindex({time_dim: grid}, fill_value=0)
        coords["observed_count"] = (
            observed_count.astype(np.int64)
            .transpose(*composite.dims)
            .reset_coords(drop=True)
            .assign_attrs(units="1", long_name="observed (not gap-filled) valid observations")
        )
    result = composite.assign_coords(coords)
    result.name = da.name
    result.attrs = {
        **da.attrs,
        "composite_months": months,
        "composite_how": how,
        "composite_anchor_month": first_month,
        "composite_min_count": int(min_count),
        "composite_interpolate": int(bool(interpolate)),
    }
    return result
