"""Residual forecasting: any model of the zoo forecasts a correction on top of a baseline.

A naive forecast that knows the seasons (climatology) or the seasons plus the persistence of the
current anomaly (damped anomaly persistence, :mod:`glacierxr.evaluate`) is hard to beat; a
network that must learn the whole seasonal cycle from raw masks spends its capacity on what the
baseline already knows. :class:`ResidualForecaster` wraps any model so that

    forecast = baseline + scale * model(anomalies of the inputs / scale)

where the anomalies are the inputs minus their climatology (or minus a constant, the training
mean, for ``baseline="none"``, which is the plain model). The model then starts from the
baseline (a zero output *is* the baseline) and learns only what the baseline misses.

Call convention: the wrapper still maps ``(batch, T, 1, H, W)`` to ``(batch, steps, 1, H, W)``,
with the inputs *packed*: the first ``input_steps`` frames are the scaled anomalies, the next
``steps`` frames the baseline forecast in data units. :func:`residual_dataset` builds such
inputs (and targets in data units) from :func:`glacierxr.evaluate.window_arrays`, so the
:class:`~glacierxr.ml.train.Trainer` trains it unchanged.

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

from glacierxr.errors import ConfigError, DimensionError

__all__ = ["RESIDUAL_BASELINES", "ResidualForecaster", "residual_dataset", "unpack_inputs"]

#: Baselines a model can forecast a residual on ("none": the plain model).
RESIDUAL_BASELINES: tuple[str, ...] = ("none", "climatology", "anomaly_persistence")


class ResidualForecaster(nn.Module):
    """``baseline + scale * model(anomalies / scale)`` for any model of the zoo.

    Parameters
    ----------
    model : torch.nn.Module
        A model with the zoo's call convention (``model(inputs, steps, targets,
        teacher_forcing)``).
    input_steps : int
        Number of past frames at the front of the packed inputs.
    baseline : {"none", "climatology", "anomaly_persistence"}
        The baseline the packed inputs carry (recorded in :meth:`get_config`).
    scale : float
        Data units per model unit (e.g. the standard deviation of the training anomalies).
    """

    def __init__(self, model: nn.Module, *, input_steps: int, baseline: str, scale: float) -> None:
        super().__init__()
        if baseline not in RESIDUAL_BASELINES:
            raise ConfigError(f"baseline={baseline!r} is unknown; choose one of {RESIDUAL_BASELINES}.")
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ConfigError(f"scale={scale!r} must be a positive number (data units per model unit).")
        self.model, self.input_steps, self.baseline, self.scale = model, int(input_steps), baseline, float(scale)
        self.model_name = f"{getattr(model, 'model_name', type(model).__name__)}+{baseline}"

    def forward(self, inputs: torch.Tensor, steps: int | None = None, targets: torch.Tensor | None = None,
                teacher_forcing: float = 0.0) -> torch.Tensor:
        anomalies, base = unpack_inputs(inputs, self.input_steps, steps)
        residual_targets = None if targets is None else (targets - base) / self.scale
        residual = self.model(anomalies, steps=base.shape[1], targets=residual_targets,
                              teacher_forcing=teacher_forcing)
        return base + self.scale * residual

    def get_config(self) -> dict[str, Any]:
        inner = self.model.get_config() if hasattr(self.model, "get_config") else {}
        return {"name": self.model_name, "model": inner, "input_steps": self.input_steps,
                "baseline": self.baseline, "scale": self.scale}


def unpack_inputs(inputs: torch.Tensor, input_steps: int, steps: int | None = None):
    """Split packed inputs into ``(anomalies, baseline)``; checks the shapes."""
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 5 or inputs.shape[1] <= input_steps:
        found = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
        raise DimensionError(
            f"ResidualForecaster: inputs must be packed (batch, input_steps + steps, 1, H, W) with "
            f"input_steps={input_steps}; found {found}. Build them with residual_dataset()."
        )
    carried = inputs.shape[1] - input_steps
    if steps is not None and steps != carried:
        raise DimensionError(f"ResidualForecaster: steps={steps} but the inputs carry a baseline of {carried} steps.")
    return inputs[:, :input_steps], inputs[:, input_steps:]


def residual_dataset(arrays: dict, baseline: str, scale: float, *, offset: float = 0.0):
    """A ``TensorDataset`` ``(packed inputs, targets, valid)`` for :class:`ResidualForecaster`.

    Parameters
    ----------
    arrays : dict
        From :func:`glacierxr.evaluate.window_arrays` (it must hold ``baseline`` unless "none").
    baseline : {"none", "climatology", "anomaly_persistence"}
    scale : float
        Divides the anomalies (and, inside the model, multiplies its output).
    offset : float
        For ``"none"``: the constant subtracted from the inputs and used as the baseline (e.g.
        the training mean), which makes the wrapper the plain, normalised model. Otherwise the
        baseline where it is missing (a pixel without climatology; such pixels are not scored
        by :func:`glacierxr.evaluate.evaluate`, where every forecast must be finite).
    """
    from torch.utils.data import TensorDataset

    if baseline not in RESIDUAL_BASELINES:
        raise ConfigError(f"baseline={baseline!r} is unknown; choose one of {RESIDUAL_BASELINES}.")
    inputs, targets = arrays["inputs"], arrays["targets"]
    if baseline == "none":
        anomalies, base = inputs - offset, np.full(targets.shape, offset, np.float32)
    else:  # a pixel without climatology (never observed in that season): anomaly 0, baseline offset
        anomalies = np.nan_to_num(inputs - arrays["clim_inputs"], nan=0.0)
        base = np.where(np.isfinite(arrays[baseline]), arrays[baseline], offset)
    packed = np.concatenate([anomalies / scale, base], axis=1)[:, :, None].astype(np.float32)
    valid = arrays["valid"]
    return TensorDataset(torch.from_numpy(np.ascontiguousarray(packed)),
                         torch.from_numpy(np.where(valid, targets, 0.0).astype(np.float32)[:, :, None]),
                         torch.from_numpy(valid[:, :, None].copy()))
