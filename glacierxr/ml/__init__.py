"""Forecasting: patch sequences, the model zoo, training and full-scene prediction (needs PyTorch).

Install with ``pip install 'glacierxr[ml]'``.
"""

from __future__ import annotations

from glacierxr._lazy import lazy_attributes
from glacierxr._validate import require_torch

#: The public names, each imported on first use (with a clear error when PyTorch is missing).
_LAZY = {
    "PatchSequences": ("glacierxr.ml.patches", "PatchSequences"),
    "get_model": ("glacierxr.ml.models", "get_model"),
    "list_models": ("glacierxr.ml.models", "list_models"),
    "Trainer": ("glacierxr.ml.train", "Trainer"),
    "predict": ("glacierxr.ml.predict", "predict"),
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_attributes("glacierxr.ml", _LAZY, globals(), before=lambda: require_torch("glacierxr.ml"))
