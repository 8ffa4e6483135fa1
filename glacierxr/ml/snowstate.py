"""A statistical snow forecaster: one regional snow state, a response per pixel, a local level.

Where a mountain scene has snow is governed, to first order, by the altitude of the regional
snow line: when it rises, every pixel below it melts out, whatever patch it lies in. A forecast
that keeps each pixel's anomaly in place (damped anomaly persistence) cannot move a late spring
from the valley floor, where it shows now, to the slopes above, where it will show next month.
:class:`SnowStateModel` forecasts the scene-wide state instead and lets each pixel respond to it.
It is fitted by least squares on the periods the training windows cover (no gradient descent,
seconds on a CPU), needs no elevation model, and can serve as the baseline of a network's
residual (:class:`glacierxr.ml.models.residual.ResidualForecaster` with ``baseline="snow_state"``).

The model, with ``t`` a period (e.g. a month) and ``p`` a pixel:

1. **State** ``S(t)``: the scene's mean value (the climatology's scene mean plus the mean
   departure from the climatology over the observed pixels, so clouds do not bias it). It falls
   as the snow line rises. Pixels whose departures carry a significant linear trend over the
   training periods (a retreating terminus, a growing lake) are left out of both means: their
   slow change would otherwise read as a lasting change of the snow cover, and shift where every
   other pixel seems to turn snow-free. The test is a least-squares slope whose standard error
   is inflated by ``(1 + r) / (1 − r)``, ``r`` the lag-1 autocorrelation of the pixel's
   residuals (the usual correction for autocorrelated series); ``|t| > trend_t`` leaves a pixel
   out.
2. **Response** ``g_p(S)``: the mean value of pixel ``p`` over the training periods in each of
   ``bins`` quantile bins of ``S``, linear between bin centres: at which state a pixel turns
   snow-free, learnt from the data. With ``monotone`` (default) it is made non-decreasing in
   ``S`` by a weighted isotonic fit: a pixel's bin means are averages of a few months each, and
   where they dip the dip is noise, not a pixel that loses snow as the scene gains it. A pixel
   left out of the state for its trend has changed its regime (ice that is rock now), so its
   response is fitted on the latest ``recent`` share of the training periods only.
3. **State anomaly** ``a(t) = z(S(t)) − mean of z(S) in the same period of the year``, with ``z``
   the probit for values in [0, 1] (the identity otherwise), forecast ``k`` periods ahead by a
   least-squares regression on ``a(t), …, a(t − lags + 1)``, one per lead. The regression's
   training errors are kept as ``members`` quantiles, and the forecast of ``g_p`` is its mean
   over them: a pixel near the expected snow line gets a probability, not a hard edge.
4. **Local level** ``l_p(t)``: what the response misses at the pixel (``value − g_p(S)``) averaged
   over the last ``level`` periods (slow change such as a retreating terminus or a growing lake),
   shrunk towards 0 where that mean does not stand out of the pixel's noise (a level is carried
   only where there is one), plus the latest departure from it, damped by ``damping ** k``
   (fitted on the training periods like :func:`glacierxr.evaluate.fit_damping`).

The forecast is ``mean over members of g_p(z⁻¹(ẑ(t + k) + e)) + l_p(t) + damping ** k ·
(value_p(t) − g_p(S(t)) − l_p(t))``, clipped to the variable's valid range.

Memory: the whole cube is read once, straight into one ``(time, y, x)`` float32 array, which
becomes the residuals the model keeps, in place; beside it the model keeps ``bins`` frames of
response. Fitting works frame by frame, bin by bin and in blocks of pixels: it peaks at about 1.4
times the cube, 1.5 for a Dask-backed cube whose chunks are made as they are read (measured on 58
million values by ``benchmarks/snowstate.py``; three times before the residuals replaced the
values in place, thirteen in the first whole-cube version).

Examples
--------
>>> import numpy as np
>>> from glacierxr.ml import PatchSequences
>>> from glacierxr.testing import make_series
>>> rng = np.random.default_rng(0)
>>> cube = make_series(rng.random((60, 20, 20)), freq="MS")
>>> ds = PatchSequences(cube, patch=10, stride=10)
>>> model = SnowStateModel(bins=8).fit(ds)
>>> model.forecast(ds.split_info["time_ranges"]["test"][0], 4).shape
(4, 20, 20)
>>> model.window_forecasts(ds, "test").shape[1:]
(4, 10, 10)
>>> model.predict().dims, model.predict()["time"].dt.strftime("%Y-%m").values.tolist()
(('time', 'y', 'x'), ['2025-01', '2025-02', '2025-03', '2025-04'])
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

from glacierxr._range import clip_to_range, valid_range
from glacierxr._validate import require_positive
from glacierxr.errors import ConfigError, DimensionError

__all__ = ["SnowStateModel", "fit_for"]

_PROBIT_CLIP = 0.005  # states within this of 0 or 1 are clipped before the probit
#: A local level of k standard errors keeps the weight k² / (k² + _LEVEL_SHRINK): half at two.
#: (Chosen on the validation years of benchmarks/skill.py: 4 scored better than 1 on all three seeds.)
_LEVEL_SHRINK = 4.0
#: Values per block when fitting works on part of the pixels at a time (memory, not results).
_BLOCK_VALUES = 1_000_000


class SnowStateModel:
    """Regional snow state + per-pixel response + local level (see the module docstring).

    Parameters
    ----------
    bins : int
        Quantile bins of the scene state for the per-pixel response (≥ 2).
    lags : int
        Past state anomalies the state forecast regresses on (≥ 1).
    level : int
        Periods averaged for each pixel's local level (≥ 1; 24 months are two years).
    members : int
        Quantiles of the state forecast's training errors averaged over (1: no spread).
    trend_t : float or None
        Pixels whose departures from the climatology trend over the training periods with a
        t statistic beyond this (AR(1)-corrected) are left out of the scene state (``None``
        keeps every pixel). See the module docstring, step 1.
    monotone : bool
        Make each pixel's response non-decreasing in the state (weighted isotonic regression
        over the bins): more snow in the scene never means less at a pixel. It removes the noise
        of bins seen a few times only (step 2).
    recent : float or None
        Share of the training periods, the latest ones, that the response of a trending pixel
        (one left out of the state) is fitted on, at least ``2 * bins`` periods; ``None`` fits it
        on all of them like the others. The default, a quarter, was chosen on the validation
        years of ``benchmarks/skill.py``: validation skill against anomaly persistence 0.382 →
        0.427, 0.316 → 0.360, 0.079 → 0.093 on its three seeds (a half and a third gave less on
        every seed; the shortest, ``2 * bins`` periods, within 0.005 either way).

    Attributes (after :meth:`fit`)
    ------------------------------
    state_pixels_ : numpy.ndarray
        ``(y, x)`` bool: the pixels the scene state is measured on.
    coefficients_ : numpy.ndarray
        ``(lead, lags)`` regression of the future state anomaly on the past ones.
    damping_ : float
        Damping of a pixel's departure from its local level.
    """

    def __init__(self, *, bins: int = 24, lags: int = 2, level: int = 24, members: int = 25,
                 trend_t: float | None = 3.0, monotone: bool = True, recent: float | None = 0.25) -> None:
        self.bins = require_positive(bins, name="bins", integer=True, example=24)
        self.lags = require_positive(lags, name="lags", integer=True, example=2)
        self.level = require_positive(level, name="level", integer=True, example=24)
        self.members = require_positive(members, name="members", integer=True, example=25)
        self.trend_t = require_positive(trend_t, name="trend_t", allow_none=True, example=3.0)
        if not isinstance(monotone, (bool, np.bool_)):
            raise ConfigError(f"monotone must be True or False, got {monotone!r}.")
        self.monotone = bool(monotone)
        self.recent = require_positive(recent, name="recent", allow_none=True, example=0.25)
        if self.recent is not None and self.recent > 1:
            raise ConfigError(f"recent={recent!r} is a share of the training periods (0 < recent <= 1).")
        if self.bins < 2:
            raise ConfigError(f"bins={bins!r}: the response needs at least 2 bins of the scene state.")
        self._fitted = None
        self._scenes: dict[tuple[int, int], np.ndarray] = {}  # scene forecasts kept for batches of windows

    # ------------------------------------------------------------------ fitting
    def fit(self, sequences) -> SnowStateModel:
        """Learn the response, the state regression and the level damping from the training periods.

        Parameters
        ----------
        sequences : glacierxr.ml.PatchSequences
            Its cube is read whole; the periods its ``train`` windows cover are the training data.
        """
        from glacierxr.evaluate import _observed, period_of_year, steps_per_year, train_periods

        layout = sequences._layout
        time_dim = layout.dims[0]
        train = train_periods(sequences)
        if train.size < 2 * self.bins:
            raise DimensionError(f"SnowStateModel: the train split covers {train.size} periods, too few for "
                                 f"bins={self.bins}; use fewer bins or a longer series.")
        period = steps_per_year(sequences.data, time_dim=time_dim)
        self.times_ = sequences.data[time_dim].to_index()
        self._phase = period_of_year(self.times_, period)
        values = _observed(layout, np.arange(len(self.times_)), np.float32)  # the one read; ours to overwrite
        clim, self.state_pixels_ = _climatology_and_trend(values, self.times_[train], train, self._phase, period,
                                                          self.trend_t)
        if not self.state_pixels_.any():  # every pixel trends: a state of the whole scene beats none
            self.state_pixels_[:] = True
        state = self._state(values, clim)
        self.centers_, self._response = self._binned_response(state[train], values, train)
        self._refit_trending(state[train], values, train)
        self._probit = bool(0.0 <= state[train].min() and state[train].max() <= 1.0)
        anomaly = self._anomaly(state, train, period)
        issues = np.unique(layout.decompose(layout.split_ids["train"])[0]) + sequences.input_steps - 1
        self._fit_regression(anomaly, issues, sequences.target_steps)
        self._anomaly_series = anomaly
        for t in range(len(values)):  # the residuals replace the values frame by frame: one cube in memory
            values[t] -= self.response(state[t : t + 1])[0]
        self._residual = values
        self._noise = self._fit_noise(train)
        self.damping_ = self._fit_damping(issues)
        self.bounds_ = valid_range(sequences.data)
        self._fitted = (layout.data.shape, sequences.target_steps)
        self._scenes = {}
        self._data, self._dims = sequences.data, tuple(layout.dims)
        return self

    def _state(self, values: np.ndarray, clim: np.ndarray) -> np.ndarray:
        """``S(t)``: the climatology's mean plus the mean departure, over the state pixels that are
        observed (a frame without any: its climatology's mean), frame by frame."""
        pixels = self.state_pixels_
        clim_mean = np.array([_finite_mean(c[pixels]) for c in clim])
        departure = np.array([_finite_mean(values[t][pixels] - clim[phase][pixels])
                              for t, phase in enumerate(self._phase)])
        return clim_mean[self._phase] + departure

    def _refit_trending(self, state: np.ndarray, values: np.ndarray, train: np.ndarray) -> None:
        """Refit the response of the trending pixels on the latest ``recent`` share of ``train``,
        read at the centres of the full fit's bins (``state`` holds the states of ``train``)."""
        trending = ~self.state_pixels_
        latest = len(train) if self.recent is None else max(round(self.recent * len(train)), 2 * self.bins)
        if not trending.any() or latest >= len(train):
            return
        centers, response = self._binned_response(state[-latest:], values, train[-latest:], pixels=trending)
        self._response[:, trending] = _piecewise(centers, response, self.centers_)

    def _binned_response(self, state: np.ndarray, values: np.ndarray, train: np.ndarray,
                         pixels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(centers, response)``: per-pixel mean of ``values`` (at the periods ``train``, whose
        states are ``state``) in quantile bins of the state (bins without data left out, bins of
        equal centres merged), made non-decreasing in the state with ``monotone``; over the
        ``(y, x)`` mask ``pixels`` only when given (``response`` then ``(bins, pixels.sum())``).
        Beyond ``values``, memory stays about two float64 frames per bin."""
        edges = np.quantile(state, np.linspace(0.0, 1.0, self.bins + 1))
        which = np.clip(np.searchsorted(edges, state, side="right") - 1, 0, self.bins - 1)
        used = np.unique(which)
        centers = np.array([state[which == b].mean() for b in used])
        keep = np.concatenate([[True], np.diff(centers) > 0])
        response = np.zeros((int(keep.sum()), *(values.shape[1:] if pixels is None else (int(pixels.sum()),))))
        counts = np.zeros(response.shape, np.int32)
        for row, b in zip(np.cumsum(keep) - 1, used):  # one bin's periods at a time (float64 sums)
            block = values[train[which == b]]
            block = block if pixels is None else block[:, pixels]
            finite = np.isfinite(block)
            response[row] += np.sum(block, axis=0, where=finite, dtype=np.float64)
            counts[row] += finite.sum(axis=0, dtype=np.int32)
        with np.errstate(invalid="ignore"):
            response /= counts  # NaN where the pixel was never seen in the bin (0 / 0)
        fallback = _nanmean(response)  # a pixel never seen in a bin: its mean over the others
        if not np.isfinite(fallback).all():  # a pixel never seen at all: the mean of every training value
            sums = np.array([(np.sum(values[t], where=np.isfinite(values[t]), dtype=np.float64),
                              np.isfinite(values[t]).sum()) for t in train])
            fallback = np.where(np.isfinite(fallback), fallback, sums[:, 0].sum() / sums[:, 1].sum()
                                if sums[:, 1].sum() else 0.0)
        np.copyto(response, np.broadcast_to(fallback, response.shape), where=~np.isfinite(response))
        if self.monotone:  # pixel block by pixel block: the isotonic fit holds a few copies of its input
            flat, weights = response.reshape(len(response), -1), counts.reshape(len(counts), -1)
            step = max(1, _BLOCK_VALUES // (8 * len(flat)))  # ~8 float64 copies: ~8 MB
            for first in range(0, flat.shape[1], step):
                flat[:, first : first + step] = _isotonic(flat[:, first : first + step], weights[:, first : first + step])
        return centers[keep], response.astype(np.float32)

    def response(self, state) -> np.ndarray:
        """``g_p(S)`` for each state of ``state`` (1-D): ``(len(state), y, x)``."""
        return _piecewise(self.centers_, self._response, state)

    def _z(self, state):
        return ndtri(np.clip(state, _PROBIT_CLIP, 1.0 - _PROBIT_CLIP)) if self._probit else np.asarray(state)

    def _z_inverse(self, z):
        return ndtr(z) if self._probit else np.asarray(z)

    def _anomaly(self, state: np.ndarray, train: np.ndarray, period: int) -> np.ndarray:
        z = self._z(state)
        self._z_clim = np.full(period, z[train].mean())
        for phase in np.unique(self._phase[train]):
            self._z_clim[phase] = z[train][self._phase[train] == phase].mean()
        return z - self._z_clim[self._phase]

    def _predictors(self, anomaly: np.ndarray, issues: np.ndarray) -> np.ndarray:
        """``(len(issues), lags)``: ``a(t), a(t - 1), …`` (0 before the first period)."""
        index = issues[:, None] - np.arange(self.lags)
        return np.where(index >= 0, anomaly[np.clip(index, 0, None)], 0.0)

    def _fit_regression(self, anomaly: np.ndarray, issues: np.ndarray, steps: int) -> None:
        """One least-squares regression per lead; its errors' quantiles are the ensemble members."""
        quantiles = (np.arange(self.members) + 0.5) / self.members if self.members > 1 else np.array([0.5])
        self.coefficients_ = np.zeros((steps, self.lags))
        self._members = np.zeros((steps, self.members))
        for k in range(1, steps + 1):
            usable = issues[issues + k < anomaly.size]
            if not usable.size:
                continue
            design, target = self._predictors(anomaly, usable), anomaly[usable + k]
            self.coefficients_[k - 1] = np.linalg.lstsq(design, target, rcond=None)[0]
            errors = target - design @ self.coefficients_[k - 1]
            self._members[k - 1] = np.quantile(errors, quantiles) if self.members > 1 else 0.0

    def _level(self, t: int) -> np.ndarray:
        """Mean of the last ``level`` residuals at ``t``, shrunk where it does not stand out of the noise.

        ``mean * mean² / (mean² + 4 noise / n)`` with ``n`` the residuals averaged and ``noise``
        the pixel's residual variance (half the mean squared change between consecutive training
        periods): a mean two standard errors from 0 keeps half its weight. 0 where a pixel has no
        residual.
        """
        recent = self._residual[max(0, t - self.level + 1) : t + 1]
        mean = np.nan_to_num(_nanmean(recent))
        count = np.maximum(np.isfinite(recent).sum(axis=0), 1)
        return mean * mean**2 / np.maximum(mean**2 + _LEVEL_SHRINK * self._noise / count, 1e-12)

    def _departure(self, t: int, level: np.ndarray) -> np.ndarray:
        """The residual at ``t`` minus ``level`` (its local level at ``t``); 0 where unobserved."""
        return np.nan_to_num(self._residual[t] - level)

    def _fit_noise(self, train: np.ndarray) -> np.ndarray:
        """Per pixel, half the mean squared change of the residual between consecutive training
        periods (a level shift counts once); 0 where no pair is observed."""
        total = np.zeros(self._residual.shape[1:])
        count = np.zeros(self._residual.shape[1:])
        for t in train[:-1][np.diff(train) == 1]:
            change = self._residual[t + 1].astype(np.float64) - self._residual[t]
            observed = np.isfinite(change)
            total += np.where(observed, change**2, 0.0)
            count += observed
        return np.where(count > 0, 0.5 * total / np.maximum(count, 1), 0.0)

    def _fit_damping(self, issues: np.ndarray) -> float:
        """Lag-1 least squares of the departure from the local level (as
        :func:`glacierxr.evaluate.fit_damping`), summed issue by issue."""
        from glacierxr.evaluate import damping_from_sums, damping_sums

        sums = np.zeros(2)
        for t in issues[issues + 1 < len(self.times_)]:
            level = self._level(t)
            sums += damping_sums(self._departure(t, level), self._residual[t + 1] - level)
        return float(damping_from_sums(*sums))

    # ---------------------------------------------------------------- forecasting
    def forecast(self, issue: int, steps: int | None = None) -> np.ndarray:
        """Forecast of the ``steps`` periods after position ``issue`` on the time axis: ``(steps, y, x)``.

        Uses only the periods up to ``issue`` (and what :meth:`fit` learnt).
        """
        self._check_fitted()
        steps = self._fitted[1] if steps is None else require_positive(steps, name="steps", integer=True)
        if steps > self.coefficients_.shape[0]:
            raise ConfigError(f"steps={steps}: this model was fitted for {self.coefficients_.shape[0]} leads.")
        issue = int(issue)
        if not 0 <= issue < len(self.times_):
            raise ConfigError(f"issue={issue} is not a position on the time axis (0 … {len(self.times_) - 1}).")
        predictors = self._predictors(self._anomaly_series, np.array([issue]))[0]
        level = self._level(issue)
        departure = self._departure(issue, level)
        period = self._z_clim.size
        out = np.empty((steps, *self._response.shape[1:]))
        for k in range(1, steps + 1):
            z = self._z_clim[(self._phase[issue] + k) % period] + predictors @ self.coefficients_[k - 1]
            out[k - 1] = self.response(self._z_inverse(z + self._members[k - 1])).mean(axis=0)
            out[k - 1] += level + self.damping_**k * departure
        return clip_to_range(out, self.bounds_)

    def predict(self, issue_time=None, steps: int | None = None):
        """The forecast as a labelled DataArray on the scene's grid.

        Parameters
        ----------
        issue_time : date, optional
            Forecast from the last period at or before this date (default: the last period of
            the fitted cube, i.e. the next ``steps`` periods after the data).
        steps : int, optional
            Periods ahead (default: the sequences' ``target_steps``).

        Returns
        -------
        xarray.DataArray
            ``(time, y, x)``: the dates of the forecast periods, a ``lead`` coordinate, the
            cube's ``y``/``x``/``spatial_ref``, CF attributes and the model's settings.
        """
        import pandas as pd
        import xarray as xr

        from glacierxr import _cf
        from glacierxr.ml.predict import forecast_coords

        self._check_fitted()
        issue = len(self.times_) - 1
        if issue_time is not None:
            issue = int(self.times_.searchsorted(pd.Timestamp(issue_time), side="right")) - 1
            if issue < 0:
                raise ConfigError(f"issue_time={issue_time!r} is before the first period ({self.times_[0].date()}).")
        steps = self._fitted[1] if steps is None else steps
        values = self.forecast(issue, steps)
        time_dim, y_dim, x_dim = self._dims
        history = self._data.isel({time_dim: slice(0, issue + 1)})
        coords = forecast_coords(history, values.shape[0], self._dims, months=self._data.attrs.get("months"))
        settings = dict(bins=self.bins, lags=self.lags, level=self.level, members=self.members, trend_t=self.trend_t,
                        monotone=self.monotone)
        shown = {k: int(v) if isinstance(v, bool) else v for k, v in settings.items() if v is not None}  # netCDF: no None/bool
        attrs = {"units": self._data.attrs.get("units", "1"), "model": "snow_state", "issue_time": str(self.times_[issue].date()),
                 "long_name": f"snow-state forecast of {self._data.attrs.get('long_name', self._data.name or 'the input')}",
                 **shown}
        out = xr.DataArray(values.astype(np.float32), dims=self._dims, coords=coords, attrs=attrs,
                           name=f"{self._data.name or 'snow_mask'}_forecast")
        call = f"SnowStateModel({', '.join(f'{k}={v}' for k, v in settings.items())}).predict(steps={values.shape[0]})"
        return _cf.finalize(_cf.describe_known(out), call, x_dim=str(x_dim), y_dim=str(y_dim), time_dim=str(time_dim))

    def window_forecasts(self, sequences, split: str | None = None, positions=None) -> np.ndarray:
        """Forecasts of the windows of ``sequences`` (of ``split``), ``(N, T_out, P, P)`` float32.

        In the order of ``sequences.split(split, shuffle=False).windows`` (that of
        :func:`glacierxr.evaluate.window_arrays`); ``sequences`` must be on the fitted cube. With
        ``positions``, only the windows at those positions of that order (a batch): the scene
        forecast of each issue period is then computed once and kept (``T_out`` float32 frames an
        issue), so that batch after batch costs a crop.
        """
        self._check_fitted()
        if sequences._layout.data.shape != self._fitted[0]:
            raise DimensionError("window_forecasts: these sequences are not on the cube the model was fitted on.")
        if split is not None:
            sequences = sequences.split(split, shuffle=False)
        ids = sequences.window_ids if positions is None else sequences.window_ids[np.asarray(positions, np.int64)]
        t0, y0, x0 = sequences._layout.decompose(ids)
        issues = t0 + sequences.input_steps - 1
        patch, steps = sequences.patch, sequences.target_steps
        out = np.empty((len(t0), steps, patch, patch), np.float32)
        for issue in np.unique(issues):
            scene = self.forecast(issue, steps) if positions is None else self._kept_scene(int(issue), steps)
            for i in np.flatnonzero(issues == issue):
                out[i] = scene[:, y0[i] : y0[i] + patch, x0[i] : x0[i] + patch]
        return out

    def _kept_scene(self, issue: int, steps: int) -> np.ndarray:
        """:meth:`forecast` of ``issue`` as float32, computed once (what a crop of it is stored as)."""
        if (issue, steps) not in self._scenes:
            self._scenes[issue, steps] = self.forecast(issue, steps).astype(np.float32)
        return self._scenes[issue, steps]

    def _check_fitted(self) -> None:
        if self._fitted is None:
            raise ConfigError("SnowStateModel: call fit(sequences) before forecasting.")


#: Response bins when they follow the length of the series: one per this many training periods,
#: at least MIN_BINS (else the series is too short for a response per pixel), at most MAX_BINS.
PERIODS_PER_BIN, MIN_BINS, MAX_BINS = 4, 3, 24


def fit_for(sequences, *, required: str | None = None) -> SnowStateModel | None:
    """A :class:`SnowStateModel` with as many response bins as the training periods of
    ``sequences`` support (one per 4 periods, at most 24), fitted on them.

    ``None`` when there are fewer than 12 training periods, unless ``required`` names what needs
    the model: then a :class:`~glacierxr.errors.DimensionError` says so.
    """
    from glacierxr.evaluate import train_periods

    periods = train_periods(sequences).size
    bins = min(MAX_BINS, periods // PERIODS_PER_BIN)
    if bins >= MIN_BINS:
        return SnowStateModel(bins=bins).fit(sequences)
    if required is None:
        return None
    raise DimensionError(f"{required} needs the snow-state model, which needs at least "
                         f"{MIN_BINS * PERIODS_PER_BIN} training periods; the train split covers {periods}. "
                         "Use a longer series or another baseline (e.g. 'anomaly_persistence').")


def _isotonic(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit along the first axis, for every pixel at once.

    The min-max form of isotonic regression: the fit at ``i`` is the largest, over blocks
    starting at ``j <= i``, of the smallest weighted mean of ``values[j : k + 1]`` over ``k >= i``.
    ``O(n²)`` vector operations for ``n`` bins (a few dozen), exact. A weight of 0 (a bin the
    pixel was never seen in) counts as a tiny one, so that bin follows its neighbours.

    >>> _isotonic(np.array([[0.0], [0.5], [0.2], [1.0]]), np.array([[1], [1], [1], [1]])).ravel().tolist()
    [0.0, 0.35, 0.35, 1.0]
    """
    weights = np.maximum(np.asarray(weights, np.float64), 1e-6)
    zero = np.zeros((1, *values.shape[1:]))
    total = np.concatenate([zero, np.cumsum(weights * values, axis=0)])
    weight = np.concatenate([zero, np.cumsum(weights, axis=0)])
    fit = np.full(values.shape, -np.inf)
    for j in range(values.shape[0]):
        means = (total[j + 1 :] - total[j]) / (weight[j + 1 :] - weight[j])  # blocks j..k, k = j, j+1, …
        lowest = np.minimum.accumulate(means[::-1], axis=0)[::-1]  # min over k >= i, for i = j, j+1, …
        fit[j:] = np.maximum(fit[j:], lowest)
    return fit


def _piecewise(centers: np.ndarray, table: np.ndarray, state) -> np.ndarray:
    """``table`` (``(bins, …)``, one row per centre) linear between ``centers``, flat beyond them,
    at each state of ``state`` (1-D): ``(len(state), …)``."""
    state = np.atleast_1d(np.asarray(state, dtype=np.float64))
    if centers.size == 1:
        return np.repeat(table[:1], state.size, axis=0)
    low = np.clip(np.searchsorted(centers, state) - 1, 0, centers.size - 2)
    weight = np.clip((state - centers[low]) / (centers[low + 1] - centers[low]), 0.0, 1.0)
    weight = weight.reshape((-1,) + (1,) * (table.ndim - 1))
    return (1.0 - weight) * table[low] + weight * table[low + 1]


def _climatology_and_trend(values: np.ndarray, times, train: np.ndarray, phase: np.ndarray, period: int,
                           t_max: float | None) -> tuple[np.ndarray, np.ndarray]:
    """``(clim, untrended)``: the climatology ``(period, y, x)`` of ``values`` at the periods
    ``train`` (:func:`glacierxr.evaluate.climatology`, whose labels are ``times``) and the
    :func:`_untrended` mask of their departures from it, over blocks of rows (about
    ``_BLOCK_VALUES`` values each) so that no copy of the training values is held whole."""
    import xarray as xr

    from glacierxr.evaluate import climatology

    height, width = values.shape[1:]
    rows = max(1, _BLOCK_VALUES // max(1, train.size * width))
    clim = np.empty((period, height, width), np.float32)
    untrended = np.ones((height, width), bool)
    for top in range(0, height, rows):
        band = slice(top, top + rows)
        departures = values[train, band]  # a copy: the band's training values
        series = xr.DataArray(departures, dims=("time", "y", "x"), coords={"time": times})
        clim[:, band] = climatology(series, period=period).transpose("period_of_year", ...).to_numpy()
        departures -= clim[phase[train], band]
        untrended[band] = _untrended(departures, train, t_max)
    return clim, untrended


def _finite_mean(values: np.ndarray) -> float:
    """Mean of the finite values (float64), 0 when there is none."""
    finite = np.isfinite(values)
    count = int(finite.sum())
    return float(np.sum(values, where=finite, dtype=np.float64)) / count if count else 0.0


def _untrended(departures: np.ndarray, positions: np.ndarray, t_max: float | None) -> np.ndarray:
    """``(y, x)`` bool: pixels whose ``departures`` (``(time, y, x)`` at time ``positions``) do not trend.

    Per pixel, the least-squares slope of the finite departures on ``positions``; its t statistic
    uses the residual variance inflated by ``(1 + r) / (1 - r)`` (``r``: lag-1 autocorrelation of
    the residuals, clipped to [0, 0.99]). A pixel with ``|t| > t_max`` is trending; one with fewer
    than three observations is kept. ``t_max=None`` keeps every pixel.

    >>> rng = np.random.default_rng(0)
    >>> noise = rng.standard_normal((60, 1, 2))
    >>> noise[:, 0, 1] += np.linspace(0, 6, 60)  # the second pixel drifts
    >>> _untrended(noise, np.arange(60), 3.0).tolist()
    [[True, False]]
    """
    shape = departures.shape[1:]
    if t_max is None:
        return np.ones(shape, bool)
    finite = np.isfinite(departures)
    count = finite.sum(axis=0)
    x = np.where(finite, np.asarray(positions, np.float64)[:, None, None], 0.0)
    y = np.where(finite, departures, 0.0).astype(np.float64)
    n = np.maximum(count, 1)
    xc = np.where(finite, x - x.sum(axis=0) / n, 0.0)
    yc = np.where(finite, y - y.sum(axis=0) / n, 0.0)
    sxx = np.maximum((xc**2).sum(axis=0), 1e-12)
    slope = (xc * yc).sum(axis=0) / sxx
    residual = np.where(finite, yc - slope * xc, 0.0)
    power = np.maximum((residual**2).sum(axis=0), 1e-12)
    r = np.clip((residual[1:] * residual[:-1]).sum(axis=0) / power, 0.0, 0.99)
    variance = power / np.maximum(count - 2, 1) * (1.0 + r) / (1.0 - r)
    t = slope / np.sqrt(variance / sxx)
    return (np.abs(t) <= t_max) | (count < 3)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the first axis of the finite values (NaN where none), without a warning."""
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    total = np.where(finite, values, 0.0).sum(axis=0, dtype=np.float64)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
