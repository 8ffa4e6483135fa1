"""The forecasting model zoo and its registry (torchgeo-style).

Every model maps ``(batch, input_steps, 1, height, width)`` past snow-mask patches to
``(batch, steps, 1, height, width)`` future ones (see :mod:`glacierxr.ml.models.base` for the
call convention, teacher forcing and the output range).

- ``lstm`` — encoder–decoder LSTM over flattened patches; fixed patch size (``height``,
  ``width`` constructor arguments).
- ``convlstm`` — ConvLSTM encoder–forecaster; any patch size.
- ``unet`` — U-Net predicting the next frame, rolled forward; any size (padded internally).
- ``transformer`` — Transformer–LSTM hybrid with a start token and a causal decoder; any size
  (padded internally).
- ``vit`` — Vision Transformer with learned future-frame queries; any size (padded internally).

Any of them can forecast a residual on top of a baseline (climatology or damped anomaly
persistence) with :class:`~glacierxr.ml.models.residual.ResidualForecaster`.

Examples
--------
>>> from glacierxr.ml.models import get_model, list_models
>>> list_models()
['convlstm', 'lstm', 'transformer', 'unet', 'vit']
>>> model = get_model("convlstm", hidden_channels=(8,))
>>> rebuilt = get_model(**model.config)
>>> rebuilt.config == model.config
True
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from glacierxr.errors import ModelError
from glacierxr.ml.models.base import ForecastModel, compose_doc

__all__ = [
    "ForecastModel",
    "get_model",
    "list_models",
    "register_model",
    "model_from_config",
    "ConvLSTMForecaster",
    "LSTMEncoderDecoder",
    "RecurrentUNet",
    "TransformerLSTM",
    "VisionTransformerForecaster",
    "ResidualForecaster",
]

_REGISTRY: dict[str, type[ForecastModel]] = {}

M = TypeVar("M", bound=type[ForecastModel])


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator adding a :class:`ForecastModel` subclass to the registry as ``name``.

    It also fills the class docstring's shared fragments (:func:`~.base.compose_doc`).

    Raises
    ------
    ModelError
        If ``name`` is already taken by another class.
    """

    def decorator(cls: M) -> M:
        known = _REGISTRY.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ModelError(
                f"Model name {name!r} is already registered to {known.__qualname__}; "
                f"choose another name for {cls.__qualname__}."
            )
        cls.model_name = name
        cls.__doc__ = compose_doc(cls.__doc__)
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_REGISTRY)


def _model_class(name: str) -> type[ForecastModel]:
    if not isinstance(name, str) or name not in _REGISTRY:
        hint = ""
        if isinstance(name, str):
            close = difflib.get_close_matches(name.lower(), list_models(), n=1, cutoff=0.5)
            if close:
                hint = f" Did you mean {close[0]!r}?"
        raise ModelError(f"Unknown model {name!r}. Known models: {list_models()}.{hint}")
    return _REGISTRY[name]


def get_model(name: str, *, seed: int | None = None, **kwargs: Any) -> ForecastModel:
    """Build the model registered as ``name`` with constructor arguments ``kwargs``.

    Parameters
    ----------
    name : str
        One of :func:`list_models`.
    seed : int, optional
        Seed for the initial weights, so that a run can be repeated exactly (the global torch
        random state is left as it was). ``None`` draws from torch's global generator.
    **kwargs
        The model's typed constructor arguments (see each class).

    Returns
    -------
    ForecastModel
        A ``torch.nn.Module``; ``model.config`` rebuilds it with ``get_model(**model.config)``.

    Raises
    ------
    ModelError
        Unknown ``name`` (with the known names and the closest match), an argument the model
        does not take (with the valid ones), or an invalid value.

    Examples
    --------
    >>> import torch
    >>> model = get_model("unet", base_channels=4, depth=2)
    >>> model(torch.zeros(2, 4, 1, 20, 24), steps=3).shape
    torch.Size([2, 3, 1, 20, 24])
    """
    cls = _model_class(name)
    parameters = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = [key for key in kwargs if key not in parameters]
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, parameters, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ModelError(
            f"Model {name!r} got an unexpected argument {bad!r}.{hint} "
            f"Valid arguments: {parameters}."
        )
    if seed is None:
        return cls(**kwargs)
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs)


def model_from_config(config: Mapping[str, Any]) -> ForecastModel:
    """Rebuild a model from its :attr:`ForecastModel.config` (e.g. read from a checkpoint)."""
    if "name" not in config:
        raise ModelError(
            f"A model config needs a 'name' key; found keys {sorted(config)}. "
            f"Use model.config, which includes it."
        )
    arguments = dict(config)
    return get_model(arguments.pop("name"), **arguments)


# Import the models last: each registers itself.
from glacierxr.ml.models.convlstm import ConvLSTMForecaster  # noqa: E402
from glacierxr.ml.models.lstm import LSTMEncoderDecoder  # noqa: E402
from glacierxr.ml.models.residual import ResidualForecaster  # noqa: E402
from glacierxr.ml.models.transformer import TransformerLSTM  # noqa: E402
from glacierxr.ml.models.unet import RecurrentUNet  # noqa: E402
from glacierxr.ml.models.vit import VisionTransformerForecaster  # noqa: E402
