"""Forecast skill: metrics per lead time, bootstrap confidence intervals and naive baselines.

A forecast is scored per *lead* (1 = the first future period) on the valid target pixels only:
mean squared error, mean absolute error, and the intersection over union (IoU) and F1 score of
the snow mask ``value ≥ threshold``. Every score is a ratio of sums over pixels, so the scores
of a set of samples are computed from per-sample sums; that makes the bootstrap cheap (resample
samples, add their sums) and keeps it *paired*: the model and the baselines are resampled with
the same draws, which gives confidence intervals of the skill ``1 − MSE_model / MSE_baseline``.

Baselines (all scored on the same samples and pixels as the model):

``persistence``
    The last input period repeated for every lead.
``seasonal_naive``
    The value one seasonal cycle before the target, from data available when the forecast is
    made: for lead ``k`` the target at period ``t`` is forecast by the value at
    ``t − period × ceil(k / period)`` (Hyndman & Athanasopoulos, *Forecasting: Principles and
    Practice*, § 5.2). ``period`` is the number of periods per year: for 3-monthly composites 4,
    for monthly ones 12. It is taken from ``attrs["months"]`` when present (``12 / months``),
    else from the median spacing of the time coordinate (``round(365.25 days / spacing)``).
``climatology``
    The mean of the valid values of the same period of the year over the training periods
    (``period_of_year``: the month-based phase ``(month − 1) × period // 12`` when ``period``
    divides 12, else the day-of-year phase).
``anomaly_persistence``
    Damped anomaly persistence: the climatology of the target period plus the anomaly of the
    last input period (its value minus its climatology) multiplied by ``phi ** lead``, where
    ``phi`` is the lag-1 regression of the anomalies on the training periods
    (:func:`fit_damping`). ``phi = 0`` is climatology, ``phi = 1`` keeps the anomaly for ever.

:func:`evaluate` also names the **best baseline** (lowest pooled MSE on the scored split) and
gives every forecaster's skill against it (``skill_vs_best_baseline``): beating the weakest
baseline says little.

Empty masks: IoU and F1 are 1 where both the predicted and the observed mask are empty (nothing
to find, nothing wrongly found) and 0 where only one of them is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import dask
import numpy as np
import pandas as pd
import xarray as xr

from glacierxr import _cf
from glacierxr._range import clip_to_range, range_attrs, valid_range
from glacierxr._validate import require_dims, require_monotonic_time
from glacierxr.errors import ConfigError, DataTypeError, DimensionError, GridError

__all__ = [
    "metrics",
    "bootstrap_ci",
    "skill",
    "persistence",
    "seasonal_naive",
    "climatology",
    "anomaly_persistence",
    "fit_damping",
    "damping_of",
    "damping_sums",
    "damping_from_sums",
    "best_baseline",
    "window_arrays",
    "WindowCutter",
    "train_periods",
    "scene_mean",
    "steps_per_year",
    "period_of_year",
    "evaluate",
    "to_markdown",
]

METRICS: tuple[str, ...] = ("mse", "mae", "iou", "f1")
BASELINES: tuple[str, ...] = ("persistence", "seasonal_naive", "climatology", "anomaly_persistence")
# per-sample sums: squared error, absolute error, valid pixels, true/false positives, false negatives
_SUMS = ("sse", "sae", "n", "tp", "fp", "fn")


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def _as_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _on_grid_of(prediction, other, name: str):
    """``other`` in the dimension order of ``prediction`` when both are DataArrays, after
    checking that they share dimensions and coordinate values (no silent misalignment)."""
    if not (isinstance(prediction, xr.DataArray) and isinstance(other, xr.DataArray)):
        return other
    if set(prediction.dims) != set(other.dims):
        raise DimensionError(
            f"prediction has dims {prediction.dims} but {name} has {other.dims}. Rename or "
            f"select so that both have the same dimensions."
        )
    for dim in prediction.dims:
        if dim in prediction.coords and dim in other.coords:
            mine, theirs = prediction[dim].values, other[dim].values
            same = mine.shape == theirs.shape and (
                np.array_equal(mine, theirs)
                if mine.dtype.kind not in "fc"
                else np.allclose(mine, theirs, rtol=1e-9, atol=0, equal_nan=True)
            )
            if not same:
                raise GridError(
                    f"prediction and {name} are on different grids: their {dim!r} coordinates "
                    f"differ (prediction {_span(mine)}, {name} {_span(theirs)}). Reproject or "
                    f"select {name} onto the prediction's grid first (e.g. {name}.sel({dim}=prediction.{dim}) "
                    "or .interp_like(prediction))."
                )
    return other.transpose(*prediction.dims)


def _span(values: np.ndarray) -> str:
    if values.size == 0:
        return "empty"
    return f"{values.size} values from {values.flat[0]} to {values.flat[-1]}"


def _lead_first(values, lead_dim: str, name: str) -> np.ndarray:
    """``(sample, lead, …)`` NumPy view of an array, a tensor or a DataArray with ``lead_dim``."""
    if isinstance(values, xr.DataArray):
        if lead_dim not in values.dims:
            raise DimensionError(f"{name} has dims {values.dims} but no lead dimension {lead_dim!r}; pass lead_dim=.")
        return values.transpose(lead_dim, ...).to_numpy()[None]
    array = _as_numpy(values)
    if array.ndim < 2:
        raise DimensionError(f"{name} must be (sample, lead, …), got shape {array.shape}.")
    return array


def _sample_sums(prediction: np.ndarray, target: np.ndarray, valid: np.ndarray | None, threshold: float) -> np.ndarray:
    """Per sample and lead sums ``(N, T, 6)`` (see ``_SUMS``) over the valid, finite pixels."""
    if prediction.shape != target.shape:
        raise DimensionError(f"prediction {prediction.shape} and target {target.shape} must have the same shape.")
    ok = np.isfinite(prediction) & np.isfinite(target)
    if valid is not None:
        if valid.shape != target.shape:
            raise DimensionError(f"valid {valid.shape} must have the target's shape {target.shape}.")
        ok &= valid.astype(bool)
    axes = tuple(range(2, target.ndim))
    error = np.where(ok, prediction.astype(np.float64) - target, 0.0)
    predicted = ok & (prediction >= threshold)
    observed = ok & (target >= threshold)
    sums = np.stack(
        [
            (error**2).sum(axes),
            np.abs(error).sum(axes),
            ok.sum(axes),
            (predicted & observed).sum(axes),
            (predicted & ~observed).sum(axes),
            (~predicted & observed).sum(axes),
        ],
        axis=-1,
    )
    return sums.astype(np.float64)


def _scores(sums: np.ndarray) -> np.ndarray:
    """Scores ``(…, 4)`` (mse, mae, iou, f1) from summed statistics ``(…, 6)``."""
    sse, sae, n, tp, fp, fn = np.moveaxis(sums, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mse = np.where(n > 0, sse / n, np.nan)
        mae = np.where(n > 0, sae / n, np.nan)
        union = tp + fp + fn
        iou = np.where(union > 0, tp / union, np.where(n > 0, 1.0, np.nan))
        f1 = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), np.where(n > 0, 1.0, np.nan))
    return np.stack([mse, mae, iou, f1], axis=-1)


def _with_pooled(sums: np.ndarray) -> np.ndarray:
    """Append a pooled-over-leads entry along the lead axis (second to last)."""
    return np.concatenate([sums, sums.sum(axis=-2, keepdims=True)], axis=-2)


def _lead_labels(n_leads: int) -> list:
    return [*range(1, n_leads + 1), "all"]


def metrics(
    prediction,
    target,
    *,
    valid=None,
    threshold: float = 0.3,
    lead_dim: str = "lead",
) -> pd.DataFrame:
    """MSE, MAE, IoU and F1 per lead time, on the valid pixels only.

    Parameters
    ----------
    prediction, target : array-like, torch.Tensor or xarray.DataArray
        Arrays and tensors are ``(sample, lead, …)``; DataArrays have a ``lead_dim`` dimension.
    valid : same shape, optional
        True (or 1) where the target is a real observation. Non-finite pixels of either input
        are always left out.
    threshold : float
        Snow mask threshold for IoU and F1 (``value ≥ threshold`` is snow).
    lead_dim : str
        Name of the lead dimension of DataArrays.

    Returns
    -------
    pandas.DataFrame
        Index ``lead`` (1 … T and ``"all"``, pooled over leads), columns ``mse``, ``mae``,
        ``iou``, ``f1``, ``n_valid``.

    Raises
    ------
    DimensionError
        The inputs do not have the same shape (or, as DataArrays, the same dimensions).
    GridError
        DataArrays whose coordinates differ (another grid, other times).

    Examples
    --------
    >>> prediction = np.array([[[0.0, 0.5], [1.0, 0.2]]])  # 1 sample, 2 leads, 2 pixels
    >>> target = np.array([[[0.0, 1.0], [1.0, 0.4]]])
    >>> table = metrics(prediction, target)
    >>> table.index.tolist()
    [1, 2, 'all']
    >>> table["mse"].round(4).tolist(), table["iou"].round(3).tolist()
    ([0.125, 0.02, 0.0725], [1.0, 0.5, 0.667])
    """
    target = _on_grid_of(prediction, target, "target")
    valid = valid if valid is None else _on_grid_of(prediction, valid, "valid")
    pred = _lead_first(prediction, lead_dim, "prediction")
    targ = _lead_first(target, lead_dim, "target")
    mask = None if valid is None else _lead_first(valid, lead_dim, "valid")
    sums = _with_pooled(_sample_sums(pred, targ, mask, threshold).sum(axis=0))
    table = pd.DataFrame(_scores(sums), columns=list(METRICS), index=pd.Index(_lead_labels(pred.shape[1]), name="lead"))
    table["n_valid"] = sums[:, 2].astype(np.int64)
    return table


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------
def _resampled_sums(sums: Mapping[str, np.ndarray], groups: np.ndarray | None, n_resamples: int, seed: int):
    """Sums of ``n_resamples`` cluster-bootstrap draws: ``{name: (R, T, 6)}`` (same draws for all)."""
    first = next(iter(sums.values()))
    n = first.shape[0]
    if groups is None:
        codes, n_groups = np.arange(n), n
    else:
        codes, uniques = pd.factorize(np.asarray(groups))
        n_groups = len(uniques)
    grouped = {name: _group_sums(s, codes, n_groups) for name, s in sums.items()}
    rng = np.random.default_rng(seed)
    out = {name: np.empty((n_resamples, *g.shape[1:])) for name, g in grouped.items()}
    for r in range(n_resamples):
        counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups).astype(np.float64)
        for name, g in grouped.items():
            out[name][r] = np.tensordot(counts, g, axes=(0, 0))
    return out


def _group_sums(sums: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    flat = sums.reshape(sums.shape[0], -1)
    grouped = np.zeros((n_groups, flat.shape[1]))
    np.add.at(grouped, codes, flat)
    return grouped.reshape(n_groups, *sums.shape[1:])


def bootstrap_ci(
    prediction,
    target,
    *,
    valid=None,
    threshold: float = 0.3,
    groups=None,
    n_resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Percentile bootstrap confidence intervals of :func:`metrics`, resampling samples.

    Parameters
    ----------
    prediction, target, valid, threshold
        As for :func:`metrics` (arrays / tensors ``(sample, lead, …)``).
    groups : array-like (sample,), optional
        Resample whole groups (a cluster bootstrap), e.g. a spatial block label, so that
        overlapping windows, which are not independent, are drawn together. Default: samples.
    n_resamples : int
        Number of bootstrap draws.
    confidence : float
        Coverage of the interval (0.95: the 2.5 and 97.5 percentiles).
    seed : int
        Seed of the draws (the same seed gives the same interval).

    Returns
    -------
    pandas.DataFrame
        Index ``lead`` (1 … T, ``"all"``), columns ``<metric>``, ``<metric>_low``,
        ``<metric>_high`` for mse, mae, iou and f1.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> target = rng.random((50, 2, 8, 8))
    >>> ci = bootstrap_ci(target + rng.normal(0, 0.1, target.shape), target, n_resamples=100)
    >>> bool((ci["mse_low"] <= ci["mse"]).all() and (ci["mse"] <= ci["mse_high"]).all())
    True
    """
    _check_bootstrap(n_resamples, confidence)
    pred, targ = _as_numpy(prediction), _as_numpy(target)
    mask = None if valid is None else _as_numpy(valid)
    sums = _sample_sums(pred, targ, mask, threshold)
    if groups is not None and len(groups) != sums.shape[0]:
        raise DimensionError(f"groups has {len(groups)} labels for {sums.shape[0]} samples.")
    point = _scores(_with_pooled(sums.sum(axis=0)))
    draws = _scores(_with_pooled(_resampled_sums({"m": sums}, groups, n_resamples, seed)["m"]))
    low, high = _percentiles(draws, confidence)
    index = pd.Index(_lead_labels(sums.shape[1]), name="lead")
    columns = {}
    for j, metric in enumerate(METRICS):
        columns[metric] = point[:, j]
        columns[f"{metric}_low"] = low[:, j]
        columns[f"{metric}_high"] = high[:, j]
    return pd.DataFrame(columns, index=index)


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    import warnings

    alpha = (1 - confidence) / 2
    draws = np.where(np.isinf(draws), np.nan, draws) if np.isinf(draws).any() else draws
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN draws (e.g. a zero baseline MSE)
        return np.nanquantile(draws, alpha, axis=0), np.nanquantile(draws, 1 - alpha, axis=0)


def _check_bootstrap(n_resamples: int, confidence: float) -> None:
    if n_resamples < 0 or int(n_resamples) != n_resamples:
        raise ConfigError(f"n_resamples must be a non-negative integer, got {n_resamples!r}.")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}.")


def skill(mse_model, mse_baseline):
    """Skill score ``1 − MSE_model / MSE_baseline`` (1 perfect, 0 as good as the baseline, < 0 worse).

    Examples
    --------
    >>> skill(0.01, 0.04)
    0.75
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        result = 1 - np.asarray(mse_model, dtype=np.float64) / np.asarray(mse_baseline, dtype=np.float64)
    return float(result) if result.ndim == 0 else result


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------
def persistence(inputs, steps: int, *, axis: int = 1, time_dim: str = "time", lead_dim: str = "lead"):
    """Repeat the last input period ``steps`` times: the no-change forecast.

    Parameters
    ----------
    inputs : array-like, torch.Tensor or xarray.DataArray
        Arrays and tensors ``(sample, time, …)`` (time on ``axis``); a DataArray with
        ``time_dim``.
    steps : int
        Number of leads.

    Returns
    -------
    Same type as ``inputs``
        ``(sample, lead, …)`` for arrays and tensors; a DataArray with ``lead_dim`` (1 … steps)
        in place of ``time_dim`` (with coordinate ``issue_time``, the last input time).

    Examples
    --------
    >>> persistence(np.array([[1.0, 2.0, 3.0]]), 2)
    array([[3., 3.]])
    """
    _check_steps(steps)
    if isinstance(inputs, xr.DataArray):
        last = inputs.isel({time_dim: -1})
        if time_dim in last.coords:
            last = last.rename({time_dim: "issue_time"})
        out = last.expand_dims({lead_dim: np.arange(1, steps + 1)})
        out.name = f"{inputs.name}_persistence" if inputs.name else "persistence"
        out.attrs = {**inputs.attrs, "long_name": "persistence forecast", "baseline": "persistence"}
        return out
    if hasattr(inputs, "detach"):
        import torch

        last = inputs.narrow(axis, inputs.shape[axis] - 1, 1)
        return torch.repeat_interleave(last, steps, dim=axis)
    array = np.asarray(inputs)
    last = np.take(array, [-1], axis=axis)
    return np.repeat(last, steps, axis=axis)


def _check_steps(steps: int) -> None:
    if int(steps) != steps or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}.")


def steps_per_year(series_or_time, *, time_dim: str = "time") -> int:
    """Number of periods per year of a regular series (4 for 3-monthly composites).

    Uses ``attrs["months"]`` (``12 / months``) when the series has it (as written by
    ``.glacier.monthly``), else the median spacing of the time coordinate.

    Raises
    ------
    ConfigError
        If the spacing is not close to a whole number of periods per year; pass ``period=``.

    Examples
    --------
    >>> import pandas as pd
    >>> steps_per_year(pd.date_range("2020-01-01", periods=9, freq="QS"))
    4
    """
    if isinstance(series_or_time, xr.DataArray) and series_or_time.attrs.get("months"):
        months = float(series_or_time.attrs["months"])
        if (12 / months).is_integer():
            return int(12 / months)
    if isinstance(series_or_time, (xr.DataArray, xr.Dataset)) and time_dim in series_or_time.coords:
        time = series_or_time[time_dim].to_index()
    else:
        time = pd.DatetimeIndex(series_or_time)
    if len(time) < 2:
        raise ConfigError("At least two time steps are needed to infer the period; pass period= explicitly.")
    spacing = np.median(np.diff(time.asi8)) / 86400e9
    exact = 365.25 / spacing
    period = max(int(round(exact)), 1)
    if abs(exact - period) / period > 0.05:
        raise ConfigError(
            f"The time steps are {spacing:.1f} days apart, {exact:.2f} per year, not a whole number; "
            "pass period= (periods per year) explicitly."
        )
    return period


def period_of_year(time, period: int) -> np.ndarray:
    """Phase of each time within the year, ``0 … period − 1``.

    Month-based ``(month − 1) × period // 12`` when ``period`` divides 12 (so 3-monthly periods
    starting in January, April, July and October are 0, 1, 2, 3); else day-of-year based.

    Examples
    --------
    >>> period_of_year(pd.date_range("2020-01-01", periods=5, freq="QS"), 4).tolist()
    [0, 1, 2, 3, 0]
    """
    index = pd.DatetimeIndex(time)
    if 12 % period == 0:
        return ((index.month.to_numpy() - 1) * period // 12).astype(np.int64)
    return np.minimum((index.dayofyear.to_numpy() - 1) * period // 365, period - 1).astype(np.int64)


def seasonal_naive(
    series: xr.DataArray,
    *,
    steps: int,
    period: int | None = None,
    time_dim: str = "time",
    lead_dim: str = "lead",
) -> xr.DataArray:
    """Seasonal-naive forecasts of every period of a series, for leads ``1 … steps`` (lazy).

    The forecast of the value at period ``t`` made ``k`` periods ahead is the value at
    ``t − period × ceil(k / period)``: the same period of the last seasonal cycle that was
    already observed when the forecast was made. Periods without such a past are NaN.

    Returns
    -------
    xarray.DataArray
        ``(lead, time, …)``: for each lead, the forecast *valid at* each time.

    Examples
    --------
    >>> from glacierxr.testing import make_series
    >>> cycle = np.tile([0.0, 0.2, 0.9, 0.4], 3)[:, None, None]
    >>> forecast = seasonal_naive(make_series(cycle, freq="QS"), steps=2)
    >>> forecast.isel(lead=0, y=0, x=0).values.tolist()[:6]
    [nan, nan, nan, nan, 0.0, 0.2]
    """
    _check_steps(steps)
    require_dims(series, [time_dim], what="seasonal_naive")
    require_monotonic_time(series, time_dim, what="seasonal_naive")  # "a year earlier" needs order
    period = period or steps_per_year(series, time_dim=time_dim)
    leads = [series.shift({time_dim: period * math.ceil(k / period)}) for k in range(1, steps + 1)]
    out = xr.concat(leads, dim=pd.Index(np.arange(1, steps + 1), name=lead_dim), coords="minimal", compat="override")
    out.name = f"{series.name}_seasonal_naive" if series.name else "seasonal_naive"
    out.attrs = {**series.attrs, "long_name": "seasonal-naive forecast", "baseline": "seasonal_naive", "period": period}
    return _cf.finalize(out, f"seasonal_naive(steps={steps}, period={period})", time_dim=time_dim)


def climatology(
    train_series: xr.DataArray,
    *,
    period: int | None = None,
    valid: xr.DataArray | None = None,
    time_dim: str = "time",
) -> xr.DataArray:
    """Mean of each period of the year over the training series (lazy), ignoring missing values.

    Parameters
    ----------
    train_series : xarray.DataArray
        The training periods only (``(time, …)``).
    period : int, optional
        Periods per year; inferred with :func:`steps_per_year`.
    valid : xarray.DataArray, optional
        True where a value is a real observation (e.g. the ``observed`` coordinate); others
        are left out. NaN values are always left out.

    Returns
    -------
    xarray.DataArray
        ``(period_of_year, …)``: phase ``0 … period − 1`` (see :func:`period_of_year`).

    Examples
    --------
    >>> from glacierxr.testing import make_series
    >>> series = make_series(np.arange(8.0)[:, None, None], freq="QS")
    >>> climatology(series).isel(y=0, x=0).values.tolist()
    [2.0, 3.0, 4.0, 5.0]
    """
    require_dims(train_series, [time_dim], what="climatology")
    require_monotonic_time(train_series, time_dim, what="climatology")  # duplicates would weigh twice
    period = period or steps_per_year(train_series, time_dim=time_dim)
    values = train_series if valid is None else train_series.where(valid)
    phase = xr.DataArray(period_of_year(train_series[time_dim].to_index(), period), dims=time_dim, name="period_of_year")
    out = values.groupby(phase).mean(time_dim)
    out = out.reindex(period_of_year=np.arange(period))
    out.name = f"{train_series.name}_climatology" if train_series.name else "climatology"
    out.attrs = {**train_series.attrs, "long_name": "climatology (mean of each period of the year)",
                 "baseline": "climatology", "period": period}
    return _cf.finalize(out, f"climatology(period={period})", time_dim=time_dim)


def fit_damping(anomalies, *, time_dim: str = "time") -> float:
    """Damping factor of anomaly persistence: lag-1 least squares of the anomalies, in [0, 1].

    ``phi = Σ a_t a_(t+1) / Σ a_t²`` over consecutive pairs where both anomalies are finite
    (any other axes are pooled). 0 when there is no pair.

    Parameters
    ----------
    anomalies : array-like or xarray.DataArray
        ``(time, …)``: values minus their climatology, on consecutive periods (NaN: missing).

    Examples
    --------
    >>> fit_damping(np.array([1.0, 0.5, 0.25, 0.125]))
    0.5
    """
    if isinstance(anomalies, xr.DataArray):
        anomalies = anomalies.transpose(time_dim, ...).to_numpy()
    return float(damping_of(np.asarray(anomalies, dtype=np.float64)))


def damping_of(anomalies):
    """:func:`fit_damping`'s value for a NumPy or Dask ``(time, …)`` array, as a 0-d array of the
    same kind (lazy for Dask: nothing is read until it is computed)."""
    return damping_from_sums(*damping_sums(anomalies[:-1], anomalies[1:]))


def damping_sums(now, after):
    """``(Σ now·after, Σ now²)`` over the elements where both are finite, float64 (NumPy or Dask).

    The two sums of :func:`fit_damping`'s least squares; sums of several pieces (a series read
    frame by frame) add up to those of the whole, and :func:`damping_from_sums` turns them into
    the damping.
    """
    ok = np.isfinite(now) & np.isfinite(after)  # np.where and sum dispatch to Dask
    return (np.where(ok, now * after, 0.0).sum(dtype=np.float64),
            np.where(ok, now * now, 0.0).sum(dtype=np.float64))


def damping_from_sums(numerator, denominator):
    """``numerator / denominator`` clipped to [0, 1]; 0 where ``denominator`` is 0 (no pair)."""
    return np.where(denominator > 0, np.clip(numerator / np.where(denominator > 0, denominator, 1.0), 0.0, 1.0), 0.0)


def anomaly_persistence(last, clim_last, clim_future, damping: float):
    """Damped anomaly persistence: ``clim_future[k] + damping ** (k + 1) * (last − clim_last)``.

    Parameters
    ----------
    last : array-like
        The last input period, ``(sample, …)``.
    clim_last : array-like
        Its climatology, same shape.
    clim_future : array-like
        The climatology of each lead, ``(sample, lead, …)``.
    damping : float
        ``phi`` (see :func:`fit_damping`).

    Returns
    -------
    numpy.ndarray
        ``(sample, lead, …)``.

    Examples
    --------
    >>> anomaly_persistence(np.array([0.9]), np.array([0.5]), np.array([[0.6, 0.7]]), 0.5)
    array([[0.8, 0.8]])
    """
    last, clim_last = np.asarray(last, dtype=np.float64), np.asarray(clim_last, dtype=np.float64)
    clim_future = np.asarray(clim_future, dtype=np.float64)
    steps = clim_future.shape[1]
    decay = float(damping) ** np.arange(1, steps + 1)
    decay = decay.reshape((1, steps) + (1,) * (clim_future.ndim - 2))
    return clim_future + decay * (last - clim_last)[:, None]


def best_baseline(table: pd.DataFrame, baselines: Iterable[str] | None = None) -> str:
    """The baseline with the lowest pooled MSE in a table of :func:`evaluate`.

    Examples
    --------
    >>> table = pd.DataFrame({"model": ["a", "b"], "lead": ["all", "all"], "mse": [0.2, 0.1]})
    >>> best_baseline(table, ["a", "b"])
    'b'
    """
    pooled = table[table["lead"].astype(str) == "all"].set_index("model")["mse"]
    names = [b for b in (BASELINES if baselines is None else baselines) if b in pooled.index]
    if not names:
        raise ConfigError("The table has no baseline row; evaluate with baselines=.")
    return str(pooled[names].astype(float).idxmin())


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------
def evaluate(
    model_or_predictions,
    sequences,
    *,
    split: str | None = None,
    baselines: Sequence[str] = BASELINES,
    threshold: float = 0.3,
    batch_size: int = 64,
    n_resamples: int = 200,
    confidence: float = 0.95,
    bootstrap_by: Literal["sample", "block", "time"] = "block",
    period: int | None = None,
    seed: int = 0,
    name: str | None = None,
    device: str | None = None,
    others: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Score a model (or precomputed predictions) and the baselines on the same patch sequences.

    Parameters
    ----------
    model_or_predictions : torch.nn.Module, callable, array or None
        A model called as ``model(inputs, steps=target_steps)`` on normalised inputs
        ``(B, T_in, 1, P, P)`` (batched, ``torch.no_grad()``, ``eval()`` mode; outputs are
        de-normalised with the sequences' statistics); or predictions in data units shaped
        ``(len(sequences), target_steps[, 1], P, P)`` in the order of ``sequences.windows``;
        or ``None`` to score the baselines only.
    sequences : glacierxr.ml.PatchSequences
        The sequences to score on (a split view, or the whole set with ``split=``).
    split : {"train", "val", "test"}, optional
        Take this split of ``sequences`` first.
    baselines : sequence of str
        Any of ``"persistence"``, ``"seasonal_naive"``, ``"climatology"``,
        ``"anomaly_persistence"`` (damped; its factor is fitted on the training periods).
    threshold : float
        Snow threshold of IoU and F1.
    batch_size : int
        Samples per batch (streamed tile by tile; memory stays bounded).
    n_resamples, confidence, seed
        Paired bootstrap (see :func:`bootstrap_ci`); ``n_resamples=0`` skips it.
    bootstrap_by : {"block", "time", "sample"}
        ``"block"`` resamples patch-sized spatial blocks (windows overlapping each other are
        drawn together, so intervals are not too narrow); ``"time"`` resamples the years of
        the issue times (all windows issued in one year together: for a few pixels and a long
        series); ``"sample"`` resamples windows.
    period : int, optional
        Periods per year for the seasonal baselines (default :func:`steps_per_year`).
    name : str, optional
        Row label of the model (default its ``model_name`` or class name, or ``"predictions"``).
    device : str, optional
        Torch device for the model (default: the device of its parameters).
    others : mapping of str to model or predictions, optional
        More forecasters scored beside the model, on the same pixels (rows after the model's,
        named by their keys), e.g. ``{"snow_state": SnowStateModel().fit(seq).window_forecasts(seq, "test")}``
        (:class:`glacierxr.ml.snowstate.SnowStateModel`).

    Returns
    -------
    pandas.DataFrame
        One row per forecaster (model, then baselines) and lead (1 … T and ``"all"``, pooled):
        columns ``model``, ``lead``, ``mse``, ``mae``, ``iou``, ``f1`` with ``_low``/``_high``
        bounds, ``skill_vs_<baseline>`` (``1 − MSE / MSE_baseline``) with bounds,
        ``skill_vs_best_baseline`` (against the baseline of lowest pooled MSE) with bounds,
        ``n_samples`` and ``n_valid``. ``attrs`` holds the settings, ``best_baseline`` and the
        fitted ``damping`` of anomaly persistence.

    Notes
    -----
    Every forecaster is scored on the same pixels: valid targets where all forecasts are
    finite. Persistence and seasonal-naive take the inputs as the model sees them (a missing
    input pixel is the training mean, or 0 without normalisation). Samples whose seasonal-naive
    source period lies before the start of the series are left out for every forecaster when
    ``"seasonal_naive"`` is asked for. The climatology is the mean over the periods covered by
    training windows; with ``split="spatial"`` those are all periods (targets included), which
    favours that baseline. Every forecast, the model's and the baselines', is clipped to the
    variable's valid range (``[0, 1]`` for a snow mask; :mod:`glacierxr._range`) before it is
    scored: the metrics are those of what is delivered. ``attrs`` record it as
    ``valid_min``/``valid_max``. (Persistence, seasonal-naive and the climatology copy or
    average the data, so they are inside the range whenever the data are; damped anomaly
    persistence can overshoot and is clipped.)
    """
    _require_sequences(sequences)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"Unknown baselines {unknown}; choose from {list(BASELINES)}.")
    if bootstrap_by not in ("block", "sample", "time"):
        raise ConfigError(f"bootstrap_by must be 'block', 'time' or 'sample', got {bootstrap_by!r}.")
    _check_bootstrap(n_resamples, confidence)
    if split is not None:
        sequences = sequences.split(split, shuffle=False)
    if len(sequences) == 0:
        raise DimensionError(f"The {sequences.name!r} sequences are empty; nothing to evaluate.")
    reference = _Baselines(sequences, baselines, period)

    if type(model_or_predictions).__name__ == "ResidualForecaster":  # it reads packed inputs, not the patches
        from glacierxr.ml.models.residual import ResidualWindows

        windows = ResidualWindows.for_model(sequences, None, model_or_predictions)  # packed batch by batch
        model_or_predictions = _ByPosition(functools.partial(windows.forecast, model_or_predictions),
                                           name or model_or_predictions.model_name)
    forecasters = [_Forecaster(model_or_predictions, sequences, name, device)]
    forecasters += [_Forecaster(other, sequences, str(key), device) for key, other in (others or {}).items()]
    forecasters = [f for f in forecasters if f.active]
    names = [f.name for f in forecasters] + list(baselines)
    if not names:
        raise ConfigError("Nothing to evaluate: no model or predictions and no baselines.")
    if len(set(names)) != len(names):
        raise ConfigError(f"Two forecasters share a name in {names}; give the model and others distinct names.")
    sums, ids = _score_batches(sequences, forecasters, reference, names, baselines, batch_size, threshold)
    groups = _bootstrap_groups(sequences, ids, bootstrap_by)
    table = _table(sums, names, list(baselines), groups, n_resamples, confidence, seed, sequences.target_steps)
    table.attrs.update(
        split=sequences.name, threshold=threshold, n_resamples=n_resamples, confidence=confidence,
        bootstrap_by=bootstrap_by, period=reference.period, n_sequences=int(ids.size),
        damping=reference.damping, **range_attrs(reference.bounds),
        best_baseline=best_baseline(table, baselines) if len(baselines) else None,
    )
    return table


def _score_batches(sequences, forecasters, reference, names, baselines, batch_size, threshold):
    """Per-sample sums of every forecaster on the pixels all of them cover, and the kept window ids."""
    t_in, history = sequences.input_steps, reference.history
    stats = {n: [] for n in names}
    kept_ids = []
    for batch in sequences._stream(batch_size=batch_size, mode="raw", history=history):
        raw, valid = batch.arrays
        keep = batch.has_history if "seasonal_naive" in baselines else np.ones(len(batch.ids), bool)
        if not keep.any():
            continue
        raw, valid, ids, positions = raw[keep], valid[keep], batch.ids[keep], batch.positions[keep]
        seen = np.where(np.isnan(raw[:, history : history + t_in]), reference.fill, raw[:, history : history + t_in])
        target = raw[:, history + t_in :]
        target_valid = valid[:, history + t_in :]
        forecasts = {f.name: f(seen, positions) for f in forecasters}
        forecasts.update(reference(raw, seen, ids))
        # scored as delivered: every forecast within the variable's valid range (glacierxr._range)
        forecasts = {key: clip_to_range(values, reference.bounds) for key, values in forecasts.items()}
        joint = target_valid.copy()
        for values in forecasts.values():
            joint &= np.isfinite(values)
        for n in names:
            stats[n].append(_sample_sums(forecasts[n], target, joint, threshold))
        kept_ids.append(ids)
    if not kept_ids:
        raise DimensionError(
            "No sequence has the history the seasonal-naive baseline needs "
            f"({history} periods before its first input); drop 'seasonal_naive' from baselines."
        )
    return {n: np.concatenate(s) for n, s in stats.items()}, np.concatenate(kept_ids)


def _bootstrap_groups(sequences, ids, bootstrap_by: str):
    """The resampling unit of each kept window: its patch-sized block, its issue year, or itself."""
    layout, patch = sequences._layout, sequences.patch
    if bootstrap_by == "block":
        _, y0, x0 = layout.decompose(ids)
        return (y0 // patch) * (int(layout.x_starts[-1]) // patch + 1) + x0 // patch
    if bootstrap_by == "time":
        t0, _, _ = layout.decompose(ids)
        times = sequences.data[layout.dims[0]].to_index()
        return times[t0 + sequences.input_steps - 1].year.to_numpy()
    return None


class _Baselines:
    """The baselines' forecasts of a batch, with what they learn from the training periods."""

    def __init__(self, sequences, baselines: Sequence[str], period: int | None) -> None:
        layout = sequences._layout
        self.baselines, self.layout = list(baselines), layout
        self.t_in, self.t_out, self.patch = sequences.input_steps, sequences.target_steps, sequences.patch
        self.times = sequences.data[layout.dims[0]].to_index()
        seasonal = [b for b in baselines if b in ("seasonal_naive", "climatology", "anomaly_persistence")]
        self.period = period or (steps_per_year(sequences.data, time_dim=layout.dims[0]) if seasonal else None)
        # relative index (from the first input) of each lead's seasonal-naive source period
        self.sn_source = (np.array([self.t_in + k - 1 - self.period * math.ceil(k / self.period)
                                    for k in range(1, self.t_out + 1)]) if self.period else None)
        self.history = int(max(0, -self.sn_source.min())) if "seasonal_naive" in baselines else 0
        climatological = {"climatology", "anomaly_persistence"} & set(baselines)
        self.clim, self.damping = (_train_climatology(sequences, self.period, "anomaly_persistence" in baselines)
                                   if climatological else (None, None))
        stats = sequences.normalization
        self.fill = np.float32(stats["mean"] if stats else 0.0)
        self.bounds = valid_range(sequences.data)  # baselines stay within it, like the forecasts

    def __call__(self, raw: np.ndarray, seen: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        if "persistence" in self.baselines:
            out["persistence"] = persistence(seen, self.t_out)
        if "seasonal_naive" in self.baselines:
            source = raw[:, self.history + self.sn_source]
            out["seasonal_naive"] = np.where(np.isnan(source), self.fill, source)
        if self.clim is not None:
            t0, y0, x0 = self.layout.decompose(ids)
            index = (t0[:, None] + self.t_in - 1 + np.arange(self.t_out + 1)).ravel()
            phases = period_of_year(self.times[index], self.period).reshape(-1, self.t_out + 1)
            clim = _gather_climatology(self.clim, phases, y0, x0, self.patch)
            if "climatology" in self.baselines:
                out["climatology"] = clim[:, 1:]
            if "anomaly_persistence" in self.baselines:
                out["anomaly_persistence"] = anomaly_persistence(seen[:, -1], clim[:, 0], clim[:, 1:], self.damping)
        return {name: clip_to_range(values, self.bounds) for name, values in out.items()}


def _table(sums, names, baselines, groups, n_resamples, confidence, seed, t_out) -> pd.DataFrame:
    pooled = {n: _with_pooled(s.sum(axis=0)) for n, s in sums.items()}  # (T + 1, 6)
    point = {n: _scores(p) for n, p in pooled.items()}
    if n_resamples:
        draws = {n: _scores(_with_pooled(d)) for n, d in _resampled_sums(sums, groups, n_resamples, seed).items()}
    rows = []
    leads = _lead_labels(t_out)
    references = {f"skill_vs_{b}": b for b in baselines}
    if baselines:  # the best baseline: lowest pooled MSE (last row)
        references["skill_vs_best_baseline"] = min(baselines, key=lambda b: np.nan_to_num(point[b][-1, 0], nan=np.inf))
    for n in names:
        for i, lead in enumerate(leads):
            row: dict[str, Any] = {"model": n, "lead": lead}
            for j, metric in enumerate(METRICS):
                row[metric] = point[n][i, j]
                if n_resamples:
                    low, high = _percentiles(draws[n][:, i, j], confidence)
                    row[f"{metric}_low"], row[f"{metric}_high"] = float(low), float(high)
            for column, b in references.items():
                with np.errstate(divide="ignore", invalid="ignore"):
                    row[column] = 1 - point[n][i, 0] / point[b][i, 0]
                    if n_resamples:
                        low, high = _percentiles(1 - draws[n][:, i, 0] / draws[b][:, i, 0], confidence)
                        row[f"{column}_low"], row[f"{column}_high"] = float(low), float(high)
            row["n_samples"] = int(sums[n].shape[0])
            row["n_valid"] = int(pooled[n][i, 2])
            rows.append(row)
    return pd.DataFrame(rows)


class _ByPosition:
    """Forecasts of a view's windows made batch by batch from their positions (in the order of
    ``window_ids``) and never held whole: ``forecasts(positions) -> (N, T_out, P, P)``."""

    def __init__(self, forecasts, name: str) -> None:
        self.forecasts, self.name = forecasts, name


class _Forecaster:
    """Runs a torch model in batches, or slices precomputed predictions, in data units."""

    def __init__(self, model_or_predictions, sequences, name, device) -> None:
        self.sequences = sequences
        self.model = None
        self.predictions = None
        self.by_position = None
        self.active = model_or_predictions is not None
        if not self.active:
            self.name = name or "model"
            return
        if isinstance(model_or_predictions, _ByPosition):
            self.by_position, self.name = model_or_predictions.forecasts, name or model_or_predictions.name
            return
        if callable(model_or_predictions) and not isinstance(model_or_predictions, np.ndarray):
            import torch

            self.model = model_or_predictions
            self.name = name or getattr(self.model, "model_name", None) or type(self.model).__name__
            parameters = list(self.model.parameters()) if isinstance(self.model, torch.nn.Module) else []
            self.device = torch.device(device) if device else (parameters[0].device if parameters else torch.device("cpu"))
            if isinstance(self.model, torch.nn.Module):
                self.model.eval()
        else:
            predictions = _as_numpy(model_or_predictions)
            expected = (len(sequences), sequences.target_steps)
            if predictions.ndim == 5 and predictions.shape[2] == 1:
                predictions = predictions[:, :, 0]
            if predictions.ndim != 4 or predictions.shape[:2] != expected or predictions.shape[2:] != (sequences.patch,) * 2:
                raise DimensionError(
                    f"predictions must be (len(sequences), target_steps[, 1], patch, patch) = "
                    f"({expected[0]}, {expected[1]}, 1, {sequences.patch}, {sequences.patch}), got {predictions.shape}. "
                    "Order them like sequences.windows."
                )
            self.predictions = predictions
            self.name = name or "predictions"

    def __call__(self, seen: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if self.predictions is not None:
            return np.asarray(self.predictions[positions], dtype=np.float64)
        if self.by_position is not None:
            return np.asarray(self.by_position(positions), dtype=np.float64)
        import torch

        inputs = self.sequences.normalize_values(seen).astype(np.float32)
        with torch.no_grad():
            tensor = torch.from_numpy(np.ascontiguousarray(inputs[:, :, None])).to(self.device)
            output = self.model(tensor, steps=self.sequences.target_steps)
        output = _as_numpy(output).astype(np.float64)
        if output.ndim == 5:
            output = output[:, :, 0]
        expected = (len(positions), self.sequences.target_steps, self.sequences.patch, self.sequences.patch)
        if output.shape != expected:
            raise DimensionError(f"The model returned {output.shape}; expected {expected[:2]} + (1,) + {expected[2:]}.")
        return self.sequences.denormalize(output)


def window_arrays(sequences, *, split: str | None = None, baselines: Sequence[str] = ("climatology", "anomaly_persistence"),
                  period: int | None = None, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Inputs, targets and baseline forecasts of every window, in the order of ``sequences.windows``.

    What :func:`evaluate` scores, as arrays (data units), e.g. to train a model on the residual
    of a baseline (:class:`glacierxr.ml.models.residual.ResidualForecaster`).

    Returns
    -------
    dict
        ``inputs`` ``(N, T_in, P, P)`` (missing pixels filled like the model sees them: the
        training mean, or 0 without normalisation), ``targets`` ``(N, T_out, P, P)`` (NaN where
        missing), ``valid`` (bool, target observed and finite), ``clim_inputs`` (the
        climatology of the input periods), one ``(N, T_out, P, P)`` array per baseline,
        ``scene_anomaly`` ``(N, T_in)`` (the mean departure from the climatology over the whole
        scene in each input period: what the snow line does beyond the patch, known at issue
        time) and ``damping`` (0-d, the fitted anomaly-persistence factor, NaN if not asked for).
    """
    _require_sequences(sequences)
    _check_window_baselines(baselines)
    if split is not None:
        sequences = sequences.split(split, shuffle=False)
    reference = _Baselines(sequences, list(dict.fromkeys(["climatology", *baselines])), period)
    t_in, t_out, patch = sequences.input_steps, sequences.target_steps, sequences.patch
    n = len(sequences)
    out = {k: np.empty((n, t_in if k in ("inputs", "clim_inputs") else t_out, patch, patch), np.float32)
           for k in ("inputs", "clim_inputs", "targets", *baselines)}
    out["valid"] = np.empty((n, t_out, patch, patch), bool)
    inputs_at = reference.layout.decompose(sequences.window_ids)[0][:, None] + np.arange(t_in)  # (N, T_in)
    periods, where = np.unique(inputs_at, return_inverse=True)
    out["scene_anomaly"] = _scene_anomaly(reference, periods)[where.reshape(inputs_at.shape)]
    for batch in sequences._stream(batch_size=batch_size, mode="raw"):
        for name, values in _window_batch(reference, *batch.arrays, batch.ids, t_in, baselines).items():
            out[name][batch.positions] = values
    out["damping"] = np.array(np.nan if reference.damping is None else reference.damping)
    return out


def _require_sequences(sequences) -> None:
    from glacierxr.ml.patches import PatchSequences

    if not isinstance(sequences, PatchSequences):
        raise DataTypeError(f"sequences must be a glacierxr.ml.PatchSequences, got {type(sequences).__name__}.")


def _check_window_baselines(baselines: Sequence[str]) -> list[str]:
    """The baselines :func:`window_arrays` can give, as a list (``ConfigError`` for any other)."""
    unknown = [b for b in baselines if b not in BASELINES or b == "seasonal_naive"]
    if unknown:
        raise ConfigError(f"window_arrays cannot give {unknown}; choose from persistence, climatology, anomaly_persistence.")
    return list(baselines)


def _window_batch(reference: _Baselines, raw: np.ndarray, valid: np.ndarray, ids: np.ndarray, t_in: int,
                  baselines: Sequence[str]) -> dict[str, np.ndarray]:
    """:func:`window_arrays`' arrays (but the scene anomaly) of the windows ``ids``, from their raw
    values and validity ``(N, T_in + T_out, P, P)``."""
    seen = np.where(np.isnan(raw[:, :t_in]), reference.fill, raw[:, :t_in])
    forecasts = reference(raw, seen, ids)
    t0, y0, x0 = reference.layout.decompose(ids)
    index = (t0[:, None] + np.arange(t_in)).ravel()
    phases = period_of_year(reference.times[index], reference.period).reshape(-1, t_in)
    out = {"inputs": seen, "targets": raw[:, t_in:],
           "clim_inputs": _gather_climatology(reference.clim, phases, y0, x0, reference.patch),
           **{name: forecasts[name] for name in baselines}}
    out = {name: values.astype(np.float32, copy=False) for name, values in out.items()}  # window_arrays' dtype
    return {**out, "valid": valid[:, t_in:] & np.isfinite(raw[:, t_in:])}


class WindowCutter:
    """:func:`window_arrays` of any set of windows, cut when asked for from the cube held in memory.

    ``window_arrays`` fills an array per field for every window of a split: with overlapping
    patches (``stride < patch``) every pixel stands in many windows, and the arrays grow far beyond
    the cube (hundreds of times with ``patch=50, stride=10``). A cutter reads the cube once (its
    values and validity, 1.25 times the cube as float32 and bool), fits the baselines once, and
    :meth:`cut` gives the same arrays for a batch of window ids, bit for bit.

    Parameters
    ----------
    sequences : glacierxr.ml.PatchSequences
        The sequences (any view: the baselines learn from their training periods).
    baselines : sequence of str
        As in :func:`window_arrays`.

    Raises
    ------
    DataTypeError
        ``sequences`` is not a :class:`~glacierxr.ml.PatchSequences`.
    ConfigError
        A baseline :func:`window_arrays` cannot give.
    """

    def __init__(self, sequences, baselines: Sequence[str] = ("climatology", "anomaly_persistence"),
                 period: int | None = None) -> None:
        _require_sequences(sequences)
        self.baselines = _check_window_baselines(baselines)
        self.reference = _Baselines(sequences, list(dict.fromkeys(["climatology", *baselines])), period)
        layout = self.reference.layout
        self.t_in, self.patch, self.steps = sequences.input_steps, sequences.patch, layout.steps
        self.raw, self.valid = _read_cube(layout)
        self.scene_anomaly = _scene_anomaly(  # from the values held, not a second read of the cube
            self.reference, np.arange(self.raw.shape[0]),
            lambda t: np.where(self.valid[t : t + 1], self.raw[t : t + 1], np.float32(np.nan)))
        self.damping = np.array(np.nan if self.reference.damping is None else self.reference.damping)

    def cut(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays of the windows ``ids`` (in that order), as :func:`window_arrays` gives them."""
        ids = np.asarray(ids)
        t0, y0, x0 = self.reference.layout.decompose(ids)
        shape = (self.steps, self.patch, self.patch)
        raw, valid = (np.lib.stride_tricks.sliding_window_view(a, shape)[t0, y0, x0] for a in (self.raw, self.valid))
        out = _window_batch(self.reference, raw, valid, ids, self.t_in, self.baselines)
        out["scene_anomaly"] = self.scene_anomaly[t0[:, None] + np.arange(self.t_in)]
        out["damping"] = self.damping
        return out


def _read_cube(layout) -> tuple[np.ndarray, np.ndarray]:
    """The whole cube as patch windows read it (:func:`glacierxr.ml.patches._read_region`): float32
    values, NaN where missing (a finite value the valid mask calls unobserved stays), and validity."""
    from glacierxr.ml.patches import _read_region, _Region

    sizes = [layout.data.sizes[d] for d in layout.dims]
    return _read_region(layout, _Region(0, sizes[0], 0, sizes[1], 0, sizes[2]))


def _scene_anomaly(reference: _Baselines, periods: np.ndarray, observed=None) -> np.ndarray:
    """Mean departure from the climatology over the whole scene in each of ``periods`` (float32).

    ``periods`` are positions on the cube's time axis; only those periods are read, unless
    ``observed(k)`` gives the observed values of ``periods[k]`` (``(1, y, x)``) from memory.
    """
    if observed is None:
        values = _observed(reference.layout, periods, np.float32)
        observed = lambda k: values[k : k + 1]  # noqa: E731
    phases = period_of_year(reference.times[periods], reference.period)
    # frame by frame: a period's value does not depend on the others read with it, and no float64
    # copy of every departure is held
    return np.array([scene_mean(observed(k) - reference.clim[phase])[0] for k, phase in enumerate(phases)],
                    np.float32)


def scene_mean(values: np.ndarray) -> np.ndarray:
    """Mean of each frame of ``(time, y, x)`` over its finite pixels (float64; 0 for a frame without any).

    >>> scene_mean(np.array([[[1.0, np.nan]], [[np.nan, np.nan]]])).tolist()
    [1.0, 0.0]
    """
    observed = np.isfinite(values)
    total = np.where(observed, values, 0.0).sum(axis=(1, 2), dtype=np.float64)
    count = observed.sum(axis=(1, 2))
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def _observed(layout, periods: np.ndarray, dtype, block_bytes: int = 64 * 2**20) -> np.ndarray:
    """The cube's values at ``periods`` (positions on its time axis) in the layout's dim order, NaN
    where the layout's valid mask says unobserved (computed): a new array the caller may write into.

    The values are read straight into that array, about ``block_bytes`` at a time: a Dask-backed
    cube chunk by chunk (each chunk computed once, whatever its shape: ``time=-1`` stores are not
    read again for every group of periods), an in-memory one a group of periods at a time. So a
    read holds the values once, not every chunk and their concatenation beside them.
    """
    time_dim = layout.dims[0]
    periods = np.asarray(periods)
    values = np.empty((periods.size, *(layout.data.sizes[d] for d in layout.dims[1:])), dtype=dtype)

    def observed(index) -> xr.DataArray:  # lazily where the cube is
        take = periods[index]
        if take.size and np.array_equal(take, np.arange(take[0], take[0] + take.size)):
            take = slice(int(take[0]), int(take[0]) + take.size)  # a run of periods: views, not copies
        part = layout.data.isel({time_dim: take})
        if layout.valid is not None:
            valid = layout.valid
            part = part.where(valid.isel({time_dim: take}) if time_dim in valid.dims else valid)
        return part.transpose(*layout.dims)

    lazy = observed(slice(None)) if _is_lazy(layout) else None
    if lazy is None:
        step = max(1, block_bytes // max(1, values[:1].nbytes))
        for first in range(0, periods.size, step):
            values[first : first + step] = observed(slice(first, first + step)).to_numpy()
        return values
    blocks = lazy.data.astype(dtype).to_delayed().ravel()  # C order, like np.ndindex
    edges = [np.cumsum((0, *chunks)) for chunks in lazy.chunks]
    where = [tuple(slice(e[i], e[i + 1]) for e, i in zip(edges, index)) for index in np.ndindex(lazy.data.numblocks)]
    sizes = [values[w].nbytes for w in where]  # views: nothing is allocated
    group = np.cumsum(sizes) // max(1, block_bytes)  # consecutive blocks, about block_bytes a group
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        for k, block in zip(members, dask.compute(*blocks[members])):
            values[where[k]] = block
    return values


def _is_lazy(layout) -> bool:
    """Whether the cube (or its valid mask) is Dask-backed."""
    return dask.is_dask_collection(layout.data.data) or (
        layout.valid is not None and dask.is_dask_collection(layout.valid.data))


def train_periods(sequences) -> np.ndarray:
    """Positions on the time axis of the periods the training windows cover (inputs and targets).

    What the baselines and the statistical forecasters learn from: the climatology, the damping
    of anomaly persistence, :class:`glacierxr.ml.snowstate.SnowStateModel`.
    """
    layout = sequences._layout
    t0 = np.unique(layout.split_ids["train"] // layout.n_spatial)
    covered = np.zeros(layout.data.sizes[layout.dims[0]], bool)
    for start in layout.t_starts[t0]:
        covered[start : start + layout.steps] = True
    return np.flatnonzero(covered)


def _train_climatology(sequences, period: int, damping: bool = False) -> tuple[np.ndarray, float | None]:
    """Climatology ``(period, y, x)`` over the periods covered by training windows (computed).

    With ``damping``, also the damping factor of anomaly persistence fitted on the anomalies of
    those periods (pairs of consecutive covered periods only).
    """
    layout = sequences._layout
    time_dim = layout.dims[0]
    index = train_periods(sequences)
    if not index.size:
        raise DimensionError("The train split has no sequence, so there is no climatology; drop 'climatology' from baselines.")
    train = layout.data.isel({time_dim: index})
    valid = None
    if layout.valid is not None:
        valid = layout.valid.isel({time_dim: index}) if time_dim in layout.valid.dims else layout.valid
    clim = climatology(train.astype(np.float32), period=period, valid=valid, time_dim=time_dim)
    clim = np.asarray(clim.transpose("period_of_year", *layout.dims[1:]).to_numpy(), dtype=np.float64)
    if not damping:
        return clim, None
    values = _observed(layout, index, np.float32)  # the training periods, read once
    phases = period_of_year(train[time_dim].to_index(), period)
    sums = np.zeros(2)
    for i in np.flatnonzero(np.diff(index) == 1):  # consecutive periods, a pair of frames at a time
        now, after = (values[j] - clim[phases[j]] for j in (i, i + 1))  # float64 anomalies
        sums += damping_sums(now, after)
    return clim, float(damping_from_sums(*sums))


def _gather_climatology(clim: np.ndarray, phases: np.ndarray, y0: np.ndarray, x0: np.ndarray, patch: int) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(clim, (patch, patch), axis=(1, 2))  # (period, Y', X', P, P)
    return windows[phases, y0[:, None], x0[:, None]]  # one copy, no per-window Python


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------
def to_markdown(table: pd.DataFrame, *, digits: int = 4, columns: Iterable[str] | None = None, index: bool = False) -> str:
    """A Markdown (GitHub) table of a DataFrame, without the ``tabulate`` package.

    Floats are written with ``digits`` significant digits; NaN as an empty cell.

    Examples
    --------
    >>> print(to_markdown(pd.DataFrame({"model": ["a"], "mse": [0.012345]})))
    | model | mse |
    |---|---:|
    | a | 0.01235 |
    """
    frame = table if columns is None else table[list(columns)]
    if index:
        frame = frame.reset_index()

    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return "" if not np.isfinite(value) else f"{value:.{digits}g}"
        return str(value).replace("|", "\\|")

    header = [str(c) for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)
