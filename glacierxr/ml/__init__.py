"""Forecasting: patch sequences, the model zoo, training and full-scene prediction (needs PyTorch).

Install with ``pip install 'glacierxr[ml]'``.
"""

from __future__ import annotations

import importlib

__all__ = [
    "PatchSequences",
    "get_model",
    "list_models",
    "Trainer",
    "predict",
]

_LAZY = {
    "PatchSequences": ("glacierxr.ml.patches", "PatchSequences"),
    "get_model": ("glacierxr.ml.models", "get_model"),
    "list_models": ("glacierxr.ml.models", "list_models"),
    "Trainer": ("glacierxr.ml.train", "Trainer"),
    "predict": ("glacierxr.ml.predict", "predict"),
}


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        from glacierxr.errors import GlacierXRError

        raise GlacierXRError(
            "glacierxr.ml needs PyTorch, which is not installed. "
            "Install the extra: pip install 'glacierxr[ml]'"
        ) from error


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'glacierxr.ml' has no attribute {name!r}")
    _require_torch()
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
