"""glacierxr: measure and forecast glacier change from Landsat Collection-2 Level-2 with xarray.

>>> import glacierxr as gx
>>> sorted(n for n in ("search", "load", "sample") if hasattr(gx, n))
['load', 'sample', 'search']

Importing the package registers the ``.glacier`` accessor on Datasets and DataArrays.
Heavy optional parts (``gx.ml`` needs PyTorch) are imported on first use.
"""

from __future__ import annotations

from glacierxr import accessor as _accessor  # noqa: F401  (registers .glacier)
from glacierxr._lazy import lazy_attributes
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

_LAZY = {
    "search": ("glacierxr.stac", "search"),
    "load": ("glacierxr.io", "load"),
    "select_pairs": ("glacierxr.velocity", "select_pairs"),
    "velocity_cube": ("glacierxr.velocity", "velocity_cube"),
    **{name: (f"glacierxr.{name}", None)
       for name in ("errors", "evaluate", "ml", "plot", "regions", "sample", "testing", "io", "stac", "velocity")},
}
__getattr__, __dir__ = lazy_attributes("glacierxr", _LAZY, globals())
