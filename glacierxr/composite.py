"""N-month composites on a regular calendar grid, with empty periods interpolated in time.

Landsat scenes arrive at irregular dates (16-day revisits, minus clouds), while forecasting
models want a regular time axis. :func:`monthly` reduces every period of ``months`` calendar
months to one image and linearly interpolates, per pixel, the periods that saw no valid
observation, so the output has exactly one step per period and no holes in time.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

import dask
import numpy as np
import pandas as pd
import xarray as xr

from glacierxr import _cf
from glacierxr._validate import require_choice, require_dataarray, require_dims, require_numeric, require_positive
from glacierxr.errors import ConfigError, DataTypeError, NoScenesError

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


def _reduce_block(block: np.ndarray, *, how: str, min_count: int = 1) -> np.ndarray:
    """Reduce axis 0 (the scenes of one period) to length 1, skipping NaN, without warnings.

    ``how`` is a reduction of :func:`monthly` (pixels with fewer than ``min_count`` valid values
    give NaN), ``"sum"`` (count of True in a boolean block) or ``"enough"`` (True where at
    least ``min_count`` values are True). numpy's nan-functions would warn on all-NaN pixels,
    and warning filters are not thread-safe under Dask's threaded scheduler, so the reductions
    are written warning-free.
    """
    values = np.asarray(block)
    if how == "sum":
        return values.sum(axis=0, keepdims=True, dtype=np.int64)
    if how == "enough":
        return values.sum(axis=0, keepdims=True, dtype=np.int64) >= min_count
    valid = ~np.isnan(values)
    count = valid.sum(axis=0, keepdims=True)
    if how == "mean":
        total = np.where(valid, values, 0).sum(axis=0, keepdims=True, dtype=np.float64)
        out = total / np.maximum(count, 1)
    elif how == "max":
        out = np.fmax.reduce(values, axis=0, keepdims=True)
    elif how == "min":
        out = np.fmin.reduce(values, axis=0, keepdims=True)
    else:  # median
        empty = count == 0
        out = np.nanmedian(np.where(empty, 0, values), axis=0, keepdims=True)
    out = np.where(count >= min_count, out, np.nan)
    return out.astype(values.dtype, copy=False)


def _per_period(data, sizes: tuple[int, ...], *, how: str, min_count: int, dtype) -> np.ndarray:
    """Apply :func:`_reduce_block` to consecutive runs of ``sizes`` scenes along axis 0."""
    if dask.is_dask_collection(data):
        # One chunk per period (neighbouring scene chunks merge, big ones split): the graph has
        # about one task per period and spatial chunk, whatever the input's time chunking.
        aligned = data.rechunk({0: sizes})
        return aligned.map_blocks(
            _reduce_block,
            how=how,
            min_count=min_count,
            chunks=((1,) * len(sizes),) + aligned.chunks[1:],
            dtype=dtype,
            meta=np.empty((0,) * data.ndim, dtype=dtype),
        )
    parts = np.split(np.asarray(data), np.cumsum(sizes)[:-1], axis=0)
    return np.concatenate([_reduce_block(p, how=how, min_count=min_count) for p in parts], axis=0)


def _interpolate_block(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Fill NaNs along the last axis linearly between the nearest valid neighbours; vectorised.

    ``positions`` are the (increasing) coordinates of the last axis. NaNs before the first or
    after the last valid value stay NaN (no extrapolation).
    """
    series = np.moveaxis(np.asarray(values), -1, 0)  # time first: contiguous for (time, y, x)
    steps = series.shape[0]
    valid = ~np.isnan(series)
    index = np.arange(steps, dtype=np.int32).reshape((steps,) + (1,) * (series.ndim - 1))
    before = np.maximum.accumulate(np.where(valid, index, -1), axis=0)
    after = np.minimum.accumulate(np.where(valid, index, steps)[::-1], axis=0)[::-1]
    gap = ~valid & (before >= 0) & (after < steps)
    if not gap.any():
        return np.asarray(values)
    where = np.nonzero(gap)
    rest = where[1:]
    t0_index, t1_index = before[where], after[where]
    start = series[(t0_index, *rest)].astype(np.float64)
    end = series[(t1_index, *rest)].astype(np.float64)
    t, t0, t1 = positions[where[0]], positions[t0_index], positions[t1_index]
    out = series.copy()
    out[where] = start + (end - start) * (t - t0) / (t1 - t0)
    return np.moveaxis(out, 0, -1)


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

    Laziness and chunking: nothing is computed, and any chunking works. Inside the graph the
    scenes are regrouped into one chunk per period (the caller's array is not changed) and
    each period is reduced by one task per spatial chunk. The interpolation needs the (small)
    *composite* in one chunk along time, so the output has a single time chunk; ``y``/``x``
    chunks are kept. Without ``interpolate`` the output keeps one chunk per period.

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
    da, months, first_month = _check_monthly(
        da, months=months, how=how, anchor=anchor, time_dim=time_dim, min_count=min_count
    )
    periods, clean, valid, valid_observed = _group(da, months=months, first_month=first_month,
                                                   time_dim=time_dim, min_count=min_count)
    # The composite, the counts and the per-period flag are built from the scenes side by side,
    # never one from another: a Dask variable that is also an intermediate of another variable of
    # the same object trips dask.compute on distributed clusters (pydata/xarray#11329).
    composite = periods.reduce(clean, how, clean.dtype, np.nan)
    enough = periods.reduce(valid, "enough", bool, False)
    if interpolate:
        composite = _interpolate(composite, periods)
        interpolated = ~enough.any(periods.other_dims) if periods.other_dims else ~enough
    else:
        interpolated = xr.DataArray(np.zeros(len(periods.grid), bool), dims=time_dim)
    counts = {
        "observation_count": periods.reduce(valid, "sum", np.int64, 0),
        "observed_count": None if valid_observed is None else periods.reduce(valid_observed, "sum", np.int64, 0),
    }
    parameters = {"composite_months": months, "months": months, "composite_how": how,
                  "composite_anchor_month": first_month, "composite_min_count": int(min_count),
                  "composite_interpolate": int(bool(interpolate))}
    return _describe(composite, da, periods, counts, interpolated, parameters)


# Output metadata of monthly(), in one place: coordinate name -> attrs.
_COORD_ATTRS = {
    "period_start": {"long_name": "first day of the period"},
    "period_end": {"long_name": "first day after the period (exclusive)"},
    "observation_count": {"units": "1", "long_name": "valid observations in the period"},
    "observed_count": {"units": "1", "long_name": "observed (not gap-filled) valid observations"},
    "interpolated": {"long_name": "period without valid observations, filled by interpolation in time"},
}


def _check_monthly(da, *, months, how, anchor, time_dim, min_count) -> tuple[xr.DataArray, int, int]:
    """Validate :func:`monthly`'s inputs (metadata only); return float data, months, anchor month."""
    require_dataarray(da, "monthly")
    require_dims(da, (time_dim,), what="monthly")
    months = _check_months(months)
    require_choice(how, _REDUCTIONS, name="how")
    first_month = _anchor_month(anchor)
    require_positive(min_count, name="min_count", integer=True, example=1)
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
    require_numeric(da, what="monthly")
    if not np.issubdtype(da.dtype, np.floating):
        da = da.astype(np.float32)
    return da, months, first_month


@dataclass
class _Periods:
    """The scenes grouped into calendar periods: how to reduce a per-scene array per period."""

    time_dim: Hashable
    other_dims: list
    sizes: tuple[int, ...]
    starts: np.ndarray
    grid: pd.DatetimeIndex
    fixed_coords: dict
    min_count: int

    def reduce(self, values: xr.DataArray, reduction: str, dtype, fill) -> xr.DataArray:
        """One step per period of the whole grid (``fill`` where a period has no scene)."""
        values = values.transpose(self.time_dim, *self.other_dims)
        reduced = _per_period(values.data, self.sizes, how=reduction, min_count=self.min_count, dtype=dtype)
        out = xr.DataArray(reduced, dims=values.dims, coords=self.fixed_coords)
        out = out.assign_coords({self.time_dim: pd.DatetimeIndex(self.starts)})
        return out.reindex({self.time_dim: self.grid}, fill_value=fill)


def _group(da, *, months, first_month, time_dim, min_count):
    """Scenes sorted by period (lazily), their validity, and the :class:`_Periods` grouping."""
    labels, grid = period_starts(da[time_dim].values, months=months, anchor=first_month)
    per_scene = [name for name, c in da.coords.items() if time_dim in c.dims and name != time_dim]
    observed = da.coords["observed"] if "observed" in per_scene else None
    clean = da.reset_coords(per_scene, drop=True)
    valid = clean.notnull()
    valid_observed = None if observed is None else valid & observed.reset_coords(drop=True).astype(bool)
    order = np.argsort(labels.asi8, kind="stable")
    if np.any(np.diff(order) < 0):  # scenes out of time order: sort them (lazily)
        labels = labels[order]
        clean, valid = clean.isel({time_dim: order}), valid.isel({time_dim: order})
        if valid_observed is not None:
            valid_observed = valid_observed.isel({time_dim: order})
    starts, sizes = np.unique(labels.values, return_counts=True)
    periods = _Periods(
        time_dim=time_dim,
        other_dims=[d for d in clean.dims if d != time_dim],
        sizes=tuple(int(n) for n in sizes),
        starts=starts,
        grid=grid,
        fixed_coords={k: v for k, v in clean.coords.items() if time_dim not in v.dims},
        min_count=min_count,
    )
    return periods, clean, valid, valid_observed


def _interpolate(composite: xr.DataArray, periods: _Periods) -> xr.DataArray:
    """Fill NaN composite pixels linearly in time (one time chunk; no extrapolation)."""
    time_dim = periods.time_dim
    if dask.is_dask_collection(composite.data):
        composite = composite.chunk({time_dim: -1})
    positions = (periods.grid.asi8 - periods.grid.asi8[0]).astype(np.float64)  # ns since the first
    return xr.apply_ufunc(
        _interpolate_block,
        composite,
        kwargs={"positions": positions},
        input_core_dims=[[time_dim]],
        output_core_dims=[[time_dim]],
        dask="parallelized",
        output_dtypes=[composite.dtype],
        keep_attrs=True,
    )


def _describe(composite, da, periods: _Periods, counts, interpolated, parameters) -> xr.DataArray:
    """The composite with its period coordinates, counts, CF metadata and parameters."""
    time_dim, grid = periods.time_dim, periods.grid
    composite = composite.transpose(time_dim, *periods.other_dims)
    period_end = _month_to_timestamp(_month_number(grid) + parameters["months"])
    coords = {
        "period_start": (time_dim, grid, _COORD_ATTRS["period_start"]),
        "period_end": (time_dim, period_end, _COORD_ATTRS["period_end"]),
    }
    for name, count in counts.items():  # observation_count, observed_count (when observed is known)
        if count is not None:
            coords[name] = count.transpose(*composite.dims).reset_coords(drop=True).assign_attrs(_COORD_ATTRS[name])
        if name == "observation_count":
            coords["interpolated"] = interpolated.reset_coords(drop=True).assign_attrs(_COORD_ATTRS["interpolated"])
    result = composite.assign_coords(coords)
    result.name = da.name
    result.attrs = {**da.attrs, **parameters}  # "months" is read by predict() and evaluate()
    how, months = parameters["composite_how"], parameters["months"]
    extra = {"cell_methods": method} if (method := _cf.cell_method(how, str(time_dim))) else {}
    call = (
        f"monthly(months={months}, how={how!r}, min_count={parameters['composite_min_count']}, "
        f"interpolate={bool(parameters['composite_interpolate'])})"
    )
    return _cf.finalize(_cf.describe_known(result, **extra), call, time_dim=str(time_dim))
