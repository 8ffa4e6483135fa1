"""Forecasting: patch sequences, the model zoo, training and full-scene prediction (needs PyTorch).

Install with ``pip install 'glacierxr[ml]'``.
"""

from __future__ import annotations

import importlib

from glacierxr._validate import require_torch

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


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'glacierxr.ml' has no attribute {name!r}")
    require_torch("glacierxr.ml")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
