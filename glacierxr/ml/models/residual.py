"""Residual forecasting: any model of the zoo forecasts a correction on top of a baseline.

A naive forecast that knows the seasons (climatology) or the seasons plus the persistence of the
current anomaly (damped anomaly persistence, :mod:`glacierxr.evaluate`) is hard to beat; a
network that must learn the whole seasonal cycle from raw masks spends its capacity on what the
baseline already knows. :class:`ResidualForecaster` wraps any model so that

    forecast = baseline + scale * model(anomalies of the inputs / scale)

where the anomalies are the inputs minus their climatology (or minus a constant, the training
mean, for ``baseline="none"``, which is the plain model). The model then starts from the
baseline (a zero output *is* the baseline) and learns only what the baseline misses.

With ``context`` the model also sees what a forecaster knows besides the patch's own past:

* ``"climatology"``: the climatology of the input months and the baseline forecast of the target
  months. An anomaly only matters where the climatology is between "always snow" and "never
  snow", and that transition zone moves with the season, so a model that knows it can place a
  persisting anomaly where it will act rather than where it was seen (damped anomaly
  persistence keeps it in place);
* ``"scene_anomaly"``: the mean anomaly of the whole scene in each input month (a frame of one
  value). A snow-line anomaly is regional, but a patch far from the current snow line shows none
  of it, although the snow line may reach the patch within the forecast.

Call convention: the wrapper still maps ``(batch, T, 1, H, W)`` to ``(batch, steps, 1, H, W)``,
with the inputs *packed*: ``input_steps`` frames of scaled anomalies, then the context frames
(already scaled), then ``steps`` frames of the baseline forecast in data units.
:func:`residual_dataset` builds such inputs (and targets in data units) from
:func:`glacierxr.evaluate.window_arrays`, so the :class:`~glacierxr.ml.train.Trainer` trains it
unchanged. The inner model receives :func:`inner_steps` frames (a U-Net must be built with
``input_steps`` set to that number).

Examples
--------
>>> import torch
>>> from glacierxr.ml.models import get_model
>>> inner = get_model("convlstm", hidden_channels=(4,))
>>> model = ResidualForecaster(inner, input_steps=2, baseline="climatology", scale=0.2)
>>> packed = torch.zeros(3, 2 + 4, 1, 8, 8)
>>> packed[:, 2:] = 0.5  # the baseline forecast
>>> model(packed, steps=4).shape
torch.Size([3, 4, 1, 8, 8])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from glacierxr.errors import ConfigError, DimensionError

__all__ = ["CONTEXTS", "RESIDUAL_BASELINES", "ResidualForecaster", "ResidualWindows", "from_config", "inner_steps",
           "residual_dataset", "baseline_forecast", "forecast_arrays", "residual_scaling", "scene_inputs",
           "unpack_inputs", "window_inputs"]

#: Baselines a model can forecast a residual on ("none": the plain model; "snow_state": the
#: forecast of :class:`glacierxr.ml.snowstate.SnowStateModel`, put into the arrays by the caller).
RESIDUAL_BASELINES: tuple[str, ...] = ("none", "climatology", "anomaly_persistence", "snow_state")


class ResidualForecaster(nn.Module):
    """``baseline + scale * model(anomalies / scale [, context])`` for any model of the zoo.

    Parameters
    ----------
    model : torch.nn.Module
        A model with the zoo's call convention (``model(inputs, steps, targets,
        teacher_forcing)``), taking :func:`inner_steps` input frames.
    input_steps : int
        Number of past frames at the front of the packed inputs.
    baseline : {"none", "climatology", "anomaly_persistence", "snow_state"}
        The baseline the packed inputs carry (recorded in :meth:`get_config`).
    scale : float
        Data units per model unit (e.g. the standard deviation of the training anomalies).
    context : tuple of str
        The context the packed inputs carry, from :data:`CONTEXTS` (``residual_dataset(...,
        context=...)`` with the same value). With any context, the model also sees the baseline
        forecast, as ``(baseline - offset) / scale``.
    offset : float
        Subtracted from the baseline before scaling it for the model (e.g. the training mean).
    """

    #: Prefix of the inner model's parameter names (a Trainer's ``freeze=("encoder",)`` freezes
    #: ``model.encoder.*``, as for the bare model).
    inner_prefix = "model."

    def __init__(self, model: nn.Module, *, input_steps: int, baseline: str, scale: float,
                 context: tuple[str, ...] = (), offset: float = 0.0) -> None:
        super().__init__()
        self.context = _check_context(baseline, context)
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ConfigError(f"scale={scale!r} must be a positive number (data units per model unit).")
        self.model, self.input_steps, self.baseline, self.scale = model, int(input_steps), baseline, float(scale)
        self.offset = float(offset)
        self.model_name = "+".join([getattr(model, "model_name", type(model).__name__), baseline, *self.context])

    def forward(self, inputs: torch.Tensor, steps: int | None = None, targets: torch.Tensor | None = None,
                teacher_forcing: float = 0.0) -> torch.Tensor:
        seen, base = unpack_inputs(inputs, self.input_steps, steps, context=self.context)
        if self.context:
            seen = torch.cat([seen, (base - self.offset) / self.scale], dim=1)
        residual_targets = None if targets is None else (targets - base) / self.scale
        residual = self.model(seen, steps=base.shape[1], targets=residual_targets, teacher_forcing=teacher_forcing)
        return base + self.scale * residual

    def get_config(self) -> dict[str, Any]:
        inner = self.model.get_config() if hasattr(self.model, "get_config") else {}
        return {"name": self.model_name, "model": inner, "input_steps": self.input_steps,
                "baseline": self.baseline, "scale": self.scale, "context": list(self.context), "offset": self.offset}


#: Context a :class:`ResidualForecaster` can be shown (see the module docstring).
CONTEXTS: tuple[str, ...] = ("climatology", "scene_anomaly")


def context_frames(input_steps: int, context: tuple[str, ...]) -> int:
    """Number of packed context frames between the anomalies and the baseline."""
    return input_steps * len(context)


def inner_steps(input_steps: int, steps: int, *, context: tuple[str, ...] = ()) -> int:
    """Number of frames the inner model of a :class:`ResidualForecaster` receives.

    >>> inner_steps(4, 4, context=("climatology", "scene_anomaly"))
    16
    """
    extra = context_frames(input_steps, tuple(context)) + steps if context else 0
    return input_steps + extra


def _check_context(baseline: str, context) -> tuple[str, ...]:
    if baseline not in RESIDUAL_BASELINES:
        raise ConfigError(f"baseline={baseline!r} is unknown; choose one of {RESIDUAL_BASELINES}.")
    context = (context,) if isinstance(context, str) else tuple(context)
    unknown = [c for c in context if c not in CONTEXTS]
    if unknown or len(set(context)) != len(context):
        raise ConfigError(f"context={context!r}: give each of {CONTEXTS} at most once.")
    if context and baseline == "none":
        raise ConfigError("context needs a baseline ('climatology' or 'anomaly_persistence'): with "
                          "baseline='none' there is no climatology to show the model.")
    return context


def unpack_inputs(inputs: torch.Tensor, input_steps: int, steps: int | None = None, *, context=()):
    """Split packed inputs into ``(anomalies and context frames, baseline)``; checks the shapes."""
    front = input_steps + context_frames(input_steps, tuple(context))
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 5 or inputs.shape[1] <= front:
        found = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
        raise DimensionError(
            f"ResidualForecaster: inputs must be packed (batch, {front} + steps, 1, H, W) with "
            f"input_steps={input_steps} and context={tuple(context)}; found {found}. Build them with "
            f"residual_dataset(..., context={tuple(context)})."
        )
    carried = inputs.shape[1] - front
    if steps is not None and steps != carried:
        raise DimensionError(f"ResidualForecaster: steps={steps} but the inputs carry a baseline of {carried} steps.")
    return inputs[:, :front], inputs[:, front:]


def baseline_forecast(arrays: dict, baseline: str, offset: float) -> np.ndarray:
    """The forecast a residual model corrects, ``(N, T_out, P, P)`` float32: ``arrays[baseline]``
    (``offset`` where it is missing: a pixel never observed in that season), or ``offset``
    everywhere for ``"none"``."""
    if baseline == "none":
        return np.full(arrays["targets"].shape, offset, np.float32)
    return np.where(np.isfinite(arrays[baseline]), arrays[baseline], offset).astype(np.float32)


def residual_dataset(arrays: dict, baseline: str, scale: float, *, offset: float = 0.0, context=()):
    """A ``TensorDataset`` ``(packed inputs, targets, valid)`` for :class:`ResidualForecaster`.

    Parameters
    ----------
    arrays : dict
        From :func:`glacierxr.evaluate.window_arrays` (it must hold ``baseline`` unless "none",
        and ``scene_anomaly`` for that context).
    baseline : {"none", "climatology", "anomaly_persistence", "snow_state"}
    scale : float
        Divides the anomalies (and, inside the model, multiplies its output).
    offset : float
        For ``"none"``: the constant subtracted from the inputs and used as the baseline (e.g.
        the training mean), which makes the wrapper the plain, normalised model. Otherwise the
        baseline (and climatology) where it is missing (a pixel without climatology; such pixels
        are not scored by :func:`glacierxr.evaluate.evaluate`, where every forecast must be finite).
    context : tuple of str
        Context frames to pack (:data:`CONTEXTS`), each scaled like the model sees it: the
        climatology as ``(value - offset) / scale``, the scene anomaly as ``value / scale``.
    """
    from torch.utils.data import TensorDataset

    context = _check_context(baseline, context)
    if baseline != "none" and baseline not in arrays:
        raise ConfigError(f"The arrays hold no {baseline!r} forecasts; add them first (for 'snow_state': "
                          "arrays['snow_state'] = SnowStateModel().fit(sequences).window_forecasts(sequences, split)).")
    inputs, targets = arrays["inputs"], arrays["targets"]
    base = baseline_forecast(arrays, baseline, offset)
    if baseline == "none":
        anomalies = inputs - offset
    else:  # a pixel without climatology (never observed in that season): anomaly 0
        anomalies = np.nan_to_num(inputs - arrays["clim_inputs"], nan=0.0)
    frames = [anomalies / scale]
    if "climatology" in context:
        frames.append((np.where(np.isfinite(arrays["clim_inputs"]), arrays["clim_inputs"], offset) - offset) / scale)
    if "scene_anomaly" in context:
        frames.append(np.broadcast_to(np.nan_to_num(arrays["scene_anomaly"])[:, :, None, None] / scale, inputs.shape))
    packed = np.concatenate([*frames, base], axis=1)[:, :, None].astype(np.float32)
    valid = arrays["valid"]
    return TensorDataset(torch.from_numpy(np.ascontiguousarray(packed)),
                         torch.from_numpy(np.where(valid, targets, 0.0).astype(np.float32)[:, :, None]),
                         torch.from_numpy(valid[:, :, None].copy()))


def window_inputs(sequences, split: str | None, baseline: str, *, snow_state=None, arrays: dict | None = None) -> dict:
    """:func:`glacierxr.evaluate.window_arrays` of ``split``, with what a ``baseline`` residual reads.

    For ``"snow_state"`` the arrays also hold the snow-state forecasts of the windows, from
    ``snow_state`` (a fitted :class:`~glacierxr.ml.snowstate.SnowStateModel`) or from one sized
    and fitted on the training periods here (:func:`glacierxr.ml.snowstate.fit_for`).
    ``arrays``: the split's window arrays when they were read already (they are not changed).
    """
    from glacierxr.evaluate import window_arrays

    arrays = dict(window_arrays(sequences, split=split) if arrays is None else arrays)
    if baseline == "snow_state":
        from glacierxr.ml.snowstate import fit_for

        snow_state = snow_state or fit_for(sequences, required="A residual on 'snow_state'")
        arrays["snow_state"] = snow_state.window_forecasts(sequences, split)
    return arrays


def from_config(config: dict) -> ResidualForecaster:
    """Rebuild a :class:`ResidualForecaster` (untrained) from its :meth:`~ResidualForecaster.get_config`."""
    from glacierxr.ml.models import get_model

    config = dict(config)
    inner = dict(config.pop("model"))
    config.pop("name", None)
    model = get_model(inner.pop("name"), **inner)
    return ResidualForecaster(model, input_steps=int(config["input_steps"]), baseline=config["baseline"],
                              scale=float(config["scale"]), context=tuple(config.get("context", ())),
                              offset=float(config.get("offset", 0.0)))


def forecast_arrays(model: ResidualForecaster, arrays: dict, *, batch_size: int = 256) -> np.ndarray:
    """The model's forecasts of the windows of ``arrays`` (:func:`glacierxr.evaluate.window_arrays`),
    ``(N, T_out, P, P)`` float64 in data units (eval mode, no gradients, on the model's device).

    For windows cut batch by batch, use :meth:`ResidualWindows.forecast`.
    """
    packed = residual_dataset(arrays, model.baseline, model.scale, offset=model.offset, context=model.context).tensors[0]
    steps = arrays["targets"].shape[1]
    out = [_forecast_packed(model, packed[i : i + batch_size], steps) for i in range(0, len(packed), batch_size)]
    return np.concatenate(out) if out else np.empty(arrays["targets"].shape)


def _forecast_packed(model: ResidualForecaster, packed: torch.Tensor, steps: int) -> np.ndarray:
    """``model`` on packed inputs, ``(N, steps, P, P)`` float64 (eval mode, no gradients, its device)."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    model.eval()
    with torch.no_grad():
        return model(packed.to(device), steps=steps)[:, :, 0].float().cpu().numpy().astype(np.float64)


def residual_scaling(train) -> tuple[float, float]:
    """``(scale, offset)`` of a residual model: the spread of the training anomalies, the training mean.

    ``train``: the training windows' arrays (:func:`glacierxr.evaluate.window_arrays`), or a
    :class:`ResidualWindows` of the training split, read batch by batch (float64 sums either way).
    """
    parts = [train] if isinstance(train, dict) else (train.arrays(batch) for batch in train.batches())
    sums = np.zeros(5)  # anomalies: count, sum, sum of squares; inputs: count, sum
    for arrays in parts:
        anomaly = (arrays["inputs"] - arrays["clim_inputs"]).astype(np.float64)
        inputs = arrays["inputs"].astype(np.float64)
        known, seen = np.isfinite(anomaly), np.isfinite(inputs)
        sums += [known.sum(), anomaly.sum(where=known), np.square(anomaly).sum(where=known), seen.sum(),
                 inputs.sum(where=seen)]
    n, total, squares, n_inputs, inputs_total = sums
    variance = squares / n - (total / n) ** 2 if n else np.nan
    scale = float(np.sqrt(max(variance, 0.0))) if n else np.nan
    offset = float(inputs_total / n_inputs) if n_inputs else np.nan
    return (scale if np.isfinite(scale) and scale > 0 else 1.0), offset


class ResidualWindows(Dataset):
    """The packed windows of a split for a :class:`ResidualForecaster`, cut batch by batch.

    Sample for sample what ``residual_dataset(window_inputs(sequences, split, baseline), ...)``
    holds, without holding every window: overlapping patches (``stride < patch``) put each pixel
    in many windows, so those arrays grow to hundreds of times the cube (``patch=50, stride=10``).
    Here the cube is held once (:class:`glacierxr.evaluate.WindowCutter`, 1.25 times it), with the
    snow-state forecasts of the split's issue periods (``steps`` frames each), and a batch of
    windows is cut and packed when a loader asks for it (``__getitems__``).

    Parameters
    ----------
    sequences : glacierxr.ml.PatchSequences
        The sequences; ``split`` names the view.
    split : {"train", "val", "test"} or None
        The split (``None``: every window of ``sequences``).
    baseline, scale, offset, context
        As in :func:`residual_dataset` (or take them from a model: :meth:`for_model`).
    snow_state : SnowStateModel, optional
        For ``baseline="snow_state"``: the fitted model (default: one fitted here,
        :func:`glacierxr.ml.snowstate.fit_for`).
    cutter : glacierxr.evaluate.WindowCutter, optional
        A cutter of ``sequences`` to share (the cube is then held once for every split).

    Raises
    ------
    DataTypeError
        ``sequences`` is not a :class:`~glacierxr.ml.PatchSequences`.
    ConfigError
        An unknown baseline, context or split.
    """

    def __init__(self, sequences, split: str | None, *, baseline: str, scale: float, offset: float = 0.0,
                 context=(), snow_state=None, cutter=None, batch_size: int = 256) -> None:
        from glacierxr.evaluate import WindowCutter, _require_sequences

        _require_sequences(sequences)
        self.context = _check_context(baseline, context)
        self.baseline, self.scale, self.offset, self.batch_size = baseline, float(scale), float(offset), int(batch_size)
        view = sequences if split is None else sequences.split(split, shuffle=False)
        self.view, self.ids = view, view.window_ids  # the order of window_arrays
        self.cutter = cutter if cutter is not None else WindowCutter(sequences)
        self.snow_state = None
        if baseline == "snow_state":
            from glacierxr.ml.snowstate import fit_for

            self.snow_state = snow_state or fit_for(sequences, required="A residual on 'snow_state'")

    @classmethod
    def for_model(cls, sequences, split: str | None, model: ResidualForecaster, **kwargs) -> ResidualWindows:
        """The windows ``model`` reads (its baseline, scale, offset and context)."""
        return cls(sequences, split, baseline=model.baseline, scale=model.scale, offset=model.offset,
                   context=model.context, **kwargs)

    def __len__(self) -> int:
        return int(self.ids.size)

    def batches(self) -> list[np.ndarray]:
        """Positions ``0 … len - 1`` in batches of ``batch_size``, in order."""
        return [np.arange(first, min(first + self.batch_size, len(self))) for first in range(0, len(self), self.batch_size)]

    def arrays(self, positions) -> dict:
        """:func:`window_inputs`' arrays of the windows at ``positions`` (in that order)."""
        positions = np.asarray(positions, dtype=np.int64)
        arrays = self.cutter.cut(self.ids[positions])
        if self.snow_state is not None:  # its scene forecast of each issue period, cropped
            arrays["snow_state"] = self.snow_state.window_forecasts(self.view, positions=positions)
        return arrays

    def forecast(self, model: ResidualForecaster, positions) -> np.ndarray:
        """``model``'s forecasts of the windows at ``positions``, ``(N, T_out, P, P)`` float64 in data
        units (eval mode, no gradients, on the model's device)."""
        return _forecast_packed(model, self.tensors(positions)[0], self.view.target_steps)

    def tensors(self, positions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(packed inputs, targets, valid)`` of the windows at ``positions``, batched."""
        return residual_dataset(self.arrays(positions), self.baseline, self.scale, offset=self.offset,
                                context=self.context).tensors

    def __getitems__(self, positions) -> list:
        return list(zip(*self.tensors(positions)))  # the samples, for the loader's collation

    def __getitem__(self, position: int):
        if not -len(self) <= int(position) < len(self):
            raise IndexError(f"window {position} out of range for {len(self)} windows.")
        return self.__getitems__([int(position) % len(self)])[0]


def scene_inputs(da, model: ResidualForecaster, steps: int, *, dims=("time", "y", "x"), months: int | None = None):
    """The packed inputs of ``model`` for a whole scene, from the series' own history (lazy).

    The climatology is the mean of each period of the year over all of ``da``; the damping of
    anomaly persistence is fitted on all of its consecutive anomalies, the snow-state model
    (:func:`glacierxr.ml.snowstate.fit_for`) on all of its periods; the last ``input_steps``
    periods are the inputs and the baseline covers the ``steps`` periods after them. Returns a
    ``(frames, y, x)`` DataArray (Dask-backed when ``da`` is: the snow-state model is fitted when
    it is computed) to cut into patches like any input (with no normalisation: the model works
    in data units).
    """
    import xarray as xr

    from glacierxr._range import clip_to_range, valid_range
    from glacierxr.evaluate import climatology, period_of_year, steps_per_year
    from glacierxr.ml.predict import future_times

    if model.baseline == "none":
        raise ConfigError("scene_inputs: a model with baseline 'none' has no baseline to build from the history; "
                          "predict it without packing.")
    time_dim, y_dim, x_dim = dims
    da = da.transpose(time_dim, y_dim, x_dim).astype(np.float32).reset_coords(drop=True)  # the values only
    times = da[time_dim].to_index()
    period = steps_per_year(da, time_dim=time_dim)
    clim = climatology(da, period=period, time_dim=time_dim).rename(period_of_year=time_dim)
    phases_in = period_of_year(times[-model.input_steps :], period)
    phases_out = period_of_year(future_times(times, int(steps), months=months), period)
    seen = da.isel({time_dim: slice(-model.input_steps, None)})
    clim_in = clim.isel({time_dim: phases_in}).drop_vars(time_dim, errors="ignore")
    clim_out = clim.isel({time_dim: phases_out}).drop_vars(time_dim, errors="ignore")
    departure = seen.drop_vars(time_dim) - clim_in
    anomalies = departure.fillna(0.0)
    base = clim_out
    if model.baseline == "anomaly_persistence":
        decay = _lazy_damping(da, clim, period, time_dim) ** xr.DataArray(np.arange(1, int(steps) + 1), dims=time_dim)
        base = clim_out + decay * anomalies.isel({time_dim: -1})
    elif model.baseline == "snow_state":
        base = _snow_state_forecast(da, model.input_steps, int(steps))
    base = clip_to_range(base.fillna(model.offset), valid_range(da))
    frames = [anomalies / model.scale]
    if "climatology" in model.context:
        frames.append((clim_in.fillna(model.offset) - model.offset) / model.scale)
    if "scene_anomaly" in model.context:
        frames.append(xr.zeros_like(anomalies) + departure.mean((y_dim, x_dim)).fillna(0.0) / model.scale)
    packed = xr.concat([f.transpose(time_dim, y_dim, x_dim) for f in [*frames, base]], dim=time_dim)
    return packed.astype(np.float32)


def _snow_state_forecast(da, input_steps: int, steps: int):
    """``(steps, y, x)``: the snow-state forecast after the last period of ``da`` (a SnowStateModel
    fitted on all of its periods; lazy where ``da`` is Dask-backed, read whole when computed)."""
    import xarray as xr

    time_dim, y_dim, x_dim = da.dims
    side = min(da.sizes[y_dim], da.sizes[x_dim])
    if da.sizes[time_dim] < input_steps + steps:
        raise DimensionError(f"The snow-state baseline is fitted on the history: it needs at least "
                             f"{input_steps + steps} periods, the series has {da.sizes[time_dim]}.")

    def fit_and_forecast(values: np.ndarray) -> np.ndarray:
        from glacierxr.ml.patches import PatchSequences
        from glacierxr.ml.snowstate import fit_for

        cube = da.copy(data=values)
        history = PatchSequences(cube, input_steps=input_steps, target_steps=steps, patch=side, stride=side,
                                 val_fraction=0.0, test_fraction=0.0, time_dim=time_dim, y_dim=y_dim, x_dim=x_dim)
        model = fit_for(history, required="A residual on 'snow_state'")
        return model.forecast(values.shape[0] - 1, steps).astype(np.float32)

    import dask
    import dask.array as dsa

    shape = (steps, da.sizes[y_dim], da.sizes[x_dim])
    if dask.is_dask_collection(da.data):
        forecast = dsa.from_delayed(dask.delayed(fit_and_forecast)(da.data), shape=shape, dtype=np.float32)
    else:
        forecast = fit_and_forecast(np.asarray(da.data))
    return xr.DataArray(forecast, dims=(time_dim, y_dim, x_dim), coords={y_dim: da[y_dim], x_dim: da[x_dim]})


def _lazy_damping(da, clim, period: int, time_dim: str):
    """The anomaly-persistence damping of ``da`` (lag-1 least squares of its anomalies), as a lazy 0-d array."""
    import xarray as xr

    from glacierxr.evaluate import damping_of, period_of_year

    phases = period_of_year(da[time_dim].to_index(), period)
    return xr.DataArray(damping_of(da.data - clim.data[phases]))
