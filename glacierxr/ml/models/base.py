"""What every glacierxr forecasting model shares: the call convention, the config, input checks.

Every model maps a sequence of past snow-mask patches to a sequence of future ones::

    model(inputs, steps=4, targets=None, teacher_forcing=0.0)
    inputs   (batch, input_steps, 1, height, width)   float, NaN-free (fill gaps first)
    targets  (batch, steps, 1, height, width)         optional, for teacher forcing in training
    returns  (batch, steps, 1, height, width)

Outputs come from a linear head, with no final activation: snow masks are NDSI values in
``{0} ∪ [threshold, 1]`` (or 0/1 when binary) and the models are trained with a (masked) MSE
loss, under which an unbounded output is the unbiased choice.  Clip with ``.clamp(0, 1)`` where a
valid mask is needed.

Teacher forcing: where ``targets`` are given and ``teacher_forcing`` > 0, each autoregressive step
feeds the true frame instead of the model's own prediction with probability ``teacher_forcing``
(one draw from torch's global generator per step, shared by the batch; ``1.0`` always, ``0.0``
never).  Without ``targets`` a model always runs from its own predictions (inference).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import torch
from torch import nn

from glacierxr.errors import DimensionError, ModelError

__all__ = ["ForecastModel", "count_parameters", "DOC_FRAGMENTS", "compose_doc"]

#: Docstring text shared by the models of the zoo.  A class docstring names a fragment as
#: ``{key}`` alone on a line; :func:`compose_doc` (run by ``register_model``) puts the text in,
#: indented like that line, so each shared sentence is written once.
DOC_FRAGMENTS: dict[str, str] = {
    "output_steps": (
        "output_steps : int\n"
        "    Frames predicted when ``forward`` gets neither ``steps`` nor ``targets``."
    ),
    "shapes": (
        "Shapes\n"
        "------\n"
        "``inputs (batch, input_steps, 1, height, width)`` → ``(batch, steps, 1, height, width)``;"
    ),
    "padded_tiles": (
        "Frames of any ``height × width`` work: they are padded by edge replication to a multiple\n"
        "of ``patch_size`` and predictions are cropped back."
    ),
    "example_imports": ">>> import torch\n>>> from glacierxr.ml import get_model",
}


class ForecastModel(nn.Module):
    """Base class of the model zoo: argument checks, ``config`` and teacher-forcing draws.

    Subclasses call ``super().__init__(locals())`` first thing in ``__init__`` and implement
    :meth:`_forecast`.  That records the constructor arguments as :attr:`config` and checks the
    arguments every model of the zoo has: ``dropout`` (a float in [0, 1)) and ``output_steps``
    (an int >= 1, kept as ``self.output_steps``).  ``super().__init__()`` without arguments
    followed by ``self._save_config(locals())`` records the config without those checks.
    """

    #: Registry name, set by :func:`glacierxr.ml.models.register_model`.
    model_name: ClassVar[str] = ""

    def __init__(self, arguments: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._config: dict[str, Any] = {}
        if arguments is not None:
            self._save_config(arguments)
            if "dropout" in arguments:
                check_probability(self.model_name, "dropout", arguments["dropout"])
            if "output_steps" in arguments:
                steps = arguments["output_steps"]
                self.output_steps = check_int(self.model_name, "output_steps", steps)

    # ------------------------------------------------------------------ config
    def _save_config(self, arguments: dict[str, Any]) -> None:
        parameters = inspect.signature(type(self).__init__).parameters
        config = {}
        for key in parameters:
            if key == "self":
                continue
            value = arguments[key]
            if isinstance(value, tuple):  # JSON-friendly: a config survives json round trips
                value = list(value)
            config[key] = value
        self._config = config

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments and ``name``: ``get_model(**config)`` rebuilds the model."""
        return self.get_config()

    def get_config(self) -> dict[str, Any]:
        """Same as :attr:`config` (Keras-style spelling; a wrapper overrides this one)."""
        return {"name": self.model_name, **{k: _copy(v) for k, v in self._config.items()}}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self._config.items())

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        inputs: torch.Tensor,
        steps: int | None = None,
        targets: torch.Tensor | None = None,
        teacher_forcing: float = 0.0,
    ) -> torch.Tensor:
        """Forecast ``steps`` frames after ``inputs``.

        Parameters
        ----------
        inputs : torch.Tensor
            Past frames, shape ``(batch, input_steps, 1, height, width)``.
        steps : int, optional
            How many future frames to predict.  Default: ``targets.shape[1]`` when targets are
            given, else the model's ``output_steps``.
        targets : torch.Tensor, optional
            True future frames ``(batch, steps, 1, height, width)``, used for teacher forcing
            (training only).
        teacher_forcing : float
            Probability, per autoregressive step, of feeding the true frame instead of the
            model's own prediction.  Ignored without ``targets``.

        Returns
        -------
        torch.Tensor
            Predicted frames, shape ``(batch, steps, 1, height, width)``.
        """
        steps = self._check_call(inputs, steps, targets, teacher_forcing)
        if targets is None:
            teacher_forcing = 0.0
        return self._forecast(inputs, steps, targets, float(teacher_forcing))

    def _forecast(
        self,
        inputs: torch.Tensor,
        steps: int,
        targets: torch.Tensor | None,
        teacher_forcing: float,
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _default_steps(self) -> int:
        """``steps`` when ``forward`` gets neither ``steps`` nor ``targets``."""
        return self._config.get("output_steps", 1)

    def _check_call(self, inputs, steps, targets, teacher_forcing) -> int:
        name = self.model_name or type(self).__name__
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 5 or inputs.shape[2] != 1:
            found = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
            raise DimensionError(
                f"{name}: inputs must be a tensor of shape (batch, time, 1, height, width); "
                f"found {found}. Add the channel axis with inputs.unsqueeze(2)."
            )
        if inputs.shape[1] < 1:
            raise DimensionError(f"{name}: inputs have no time step (shape {tuple(inputs.shape)}).")
        if steps is None:
            steps = targets.shape[1] if targets is not None else self._default_steps()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ModelError(f"{name}: steps must be a positive int; found {steps!r}.")
        if targets is not None:
            batch, _, _, height, width = inputs.shape
            expected = (batch, steps, 1, height, width)
            if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != expected:
                found = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets)
                raise DimensionError(
                    f"{name}: targets must have shape (batch, steps, 1, height, width) = "
                    f"{expected}; found {found}. Pass steps=targets.shape[1] or slice the targets."
                )
        if not (isinstance(teacher_forcing, (int, float)) and 0.0 <= teacher_forcing <= 1.0):
            raise ModelError(
                f"{name}: teacher_forcing is a probability in [0, 1]; found {teacher_forcing!r}."
            )
        return steps

    @staticmethod
    def _feed_target(teacher_forcing: float) -> bool:
        """One teacher-forcing draw: True means feed the true frame at this step."""
        if teacher_forcing <= 0.0:
            return False
        if teacher_forcing >= 1.0:
            return True
        return bool(torch.rand(()) < teacher_forcing)


# ---------------------------------------------------------------------------- helpers
def compose_doc(doc: str | None) -> str | None:
    """``doc`` with every line ``{key}`` (``key`` in :data:`DOC_FRAGMENTS`) replaced by its text.

    The fragment takes the placeholder line's indentation; other braces are left alone.
    """
    if not doc:
        return doc
    lines = []
    for line in doc.split("\n"):
        key = line.strip()
        if key.startswith("{") and key.endswith("}") and key[1:-1] in DOC_FRAGMENTS:
            indent = line[: len(line) - len(line.lstrip())]
            lines.extend(indent + part for part in DOC_FRAGMENTS[key[1:-1]].split("\n"))
        else:
            lines.append(line)
    return "\n".join(lines)


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def check_int(model: str, name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum`` or a :class:`ModelError` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelError(f"{model}: {name} must be an int >= {minimum}; found {value!r}.")
    return int(value)


def check_ints(model: str, name: str, value: Any) -> tuple[int, ...]:
    """A non-empty sequence of positive ints, as a tuple."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        values = tuple(value)
    except TypeError:
        values = ()
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ModelError(
            f"{model}: {name} must be a non-empty sequence of positive ints; found {value!r}."
        )
    return values


def check_probability(model: str, name: str, value: Any) -> float:
    """A float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ModelError(f"{model}: {name} must be a float in [0, 1); found {value!r}.")
    return float(value)


def check_bool(model: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ModelError(f"{model}: {name} must be True or False; found {value!r}.")
    return value


def check_odd(model: str, name: str, value: Any) -> int:
    value = check_int(model, name, value)
    if value % 2 == 0:
        raise ModelError(f"{model}: {name} must be odd (same-size padding); found {value}.")
    return value


def check_divisible(model: str, name: str, value: int, by: int, why: str) -> None:
    if value % by:
        raise ModelError(f"{model}: {name} must be divisible by {by} ({why}); found {value}.")


def pad_to_multiple(frames: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad the last two axes up to a multiple of ``multiple`` by edge replication.

    Returns the padded tensor and the original height and width (to crop back with
    ``[..., :height, :width]``).  Works on any leading shape.
    """
    height, width = frames.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h or pad_w:
        lead = frames.shape[:-2]
        flat = frames.reshape(-1, 1, height, width)
        flat = nn.functional.pad(flat, (0, pad_w, 0, pad_h), mode="replicate")
        frames = flat.reshape(*lead, height + pad_h, width + pad_w)
    return frames, height, width


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Vaswani et al. (2017) sinusoidal encodings: ``(len(positions), dim)``.

    Even features are ``sin(pos / 10000**(j/dim))``, odd ones the matching cosine.
    ``positions`` may be any real numbers (negative ones included).
    """
    positions = positions.to(torch.float32).reshape(-1, 1)
    half = torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
    frequencies = torch.exp(-math.log(10000.0) * half / dim)
    encoding = torch.zeros(positions.shape[0], dim, device=positions.device)
    encoding[:, 0::2] = torch.sin(positions * frequencies)
    encoding[:, 1::2] = torch.cos(positions * frequencies[: dim // 2])
    return encoding


def spatial_encoding(rows: int, cols: int, dim: int, device=None) -> torch.Tensor:
    """2-D sinusoidal encodings of a ``rows × cols`` token grid: ``(rows * cols, dim)``.

    Half of the features encode the row, half the column (``dim`` divisible by 4).
    """
    row = sinusoidal(torch.arange(rows, device=device), dim // 2)
    col = sinusoidal(torch.arange(cols, device=device), dim // 2)
    half = dim // 2
    grid = torch.cat(
        [row[:, None, :].expand(rows, cols, half), col[None, :, :].expand(rows, cols, half)], dim=-1
    )
    return grid.reshape(rows * cols, dim)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
