"""Attributes of a package imported on first use (module-level ``__getattr__`` and ``__dir__``).

Used by :mod:`glacierxr` (so that ``import glacierxr`` stays cheap) and :mod:`glacierxr.ml`
(so that PyTorch loads only when a forecasting name is used).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_attributes(
    package: str,
    table: Mapping[str, tuple[str, str | None]],
    namespace: dict,
    *,
    before: Callable[[], None] | None = None,
):
    """``(__getattr__, __dir__)`` for ``package``: ``name -> (module, attribute or None)``.

    A name is imported on first access and then kept in ``namespace`` (the package's
    ``globals()``), so the next access is a plain lookup. ``before`` runs before each import
    (e.g. a check that an optional dependency is installed).
    """

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if before is not None:
            before()
        module, attribute = table[name]
        value = importlib.import_module(module)
        if attribute is not None:
            value = getattr(value, attribute)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
