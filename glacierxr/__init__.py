"""glacierxr: measure and forecast glacier change from Landsat Collection-2 Level-2 with xarray.

>>> import glacierxr as gx
>>> sorted(n for n in ("search", "load", "sample") if hasattr(gx, n))
['load', 'sample', 'search']

Importing the package registers the ``.glacier`` accessor on Datasets and DataArrays.
Heavy optional parts (``gx.ml`` needs PyTorch) are imported on first use.
"""

from __future__ import annotations

import importlib

from glacierxr import accessor as _accessor  # noqa: F401  (registers .glacier)
from glacierxr.errors import GlacierXRError

__version__ = "0.1.0"

__all__ = [
    "GlacierXRError",
    "errors",
    "evaluate",
    "load",
    "ml",
    "plot",
    "regions",
    "sample",
    "search",
    "select_pairs",
    "testing",
    "velocity",
    "velocity_cube",
    "__version__",
]

_LAZY_FUNCTIONS = {
    "search": ("glacierxr.stac", "search"),
    "load": ("glacierxr.io", "load"),
    "select_pairs": ("glacierxr.velocity", "select_pairs"),
    "velocity_cube": ("glacierxr.velocity", "velocity_cube"),
}
_LAZY_MODULES = {"errors", "evaluate", "ml", "plot", "regions", "sample", "testing", "io", "stac", "velocity"}


def __getattr__(name: str):
    if name in _LAZY_FUNCTIONS:
        module, attr = _LAZY_FUNCTIONS[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f"glacierxr.{name}")
    else:
        raise AttributeError(f"module 'glacierxr' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
