"""The valid range of a forecast variable, and forecasts kept inside it (one home for the rule).

A forecast must be a value the variable can take. The range of a ``(time, y, x)`` series is, in
order of precedence:

* its ``valid_min`` / ``valid_max`` attrs (or a two-value CF ``valid_range``) when present;
* a snow mask (named ``snow_mask``, or carrying the ``threshold`` and ``binary`` attrs that
  :func:`glacierxr.indices.snow_mask` writes): ``[0, 1]``. A binary mask is 0 or 1; an NDSI
  mask is 0 or an NDSI in ``[threshold, 1]``. A forecast between 0 and the threshold is kept:
  it is the blend of the two states a model or a blended patch border predicts, not a value
  outside the scale (threshold it, e.g. ``forecast >= 0.3``, for a strict mask);
* the NDSI (named ``ndsi``): ``[-1, 1]``;
* otherwise none, and forecasts are left as they are.

Forecasts are clipped to the range (a lazy ``clip``; NaN stays NaN) and carry ``valid_min`` /
``valid_max`` attrs; :func:`glacierxr.evaluate.evaluate` scores what is delivered, the clipped
values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["clip_to_range", "range_attrs", "valid_range"]


def valid_range(da=None, *, name: str | None = None, attrs: Mapping | None = None) -> tuple[float, float] | None:
    """``(valid_min, valid_max)`` of a variable, or ``None`` when it has no known range.

    Parameters
    ----------
    da : xarray.DataArray, optional
        The series (its ``name`` and ``attrs`` are used).
    name, attrs : optional
        Given instead of (or to override) those of ``da``.

    Examples
    --------
    >>> valid_range(name="snow_mask")
    (0.0, 1.0)
    >>> valid_range(name="ndsi")
    (-1.0, 1.0)
    >>> valid_range(name="green", attrs={"valid_min": 0, "valid_max": 1.6})
    (0.0, 1.6)
    >>> valid_range(name="temperature") is None
    True
    """
    name = name if name is not None else getattr(da, "name", None)
    attrs = dict(getattr(da, "attrs", {}) if attrs is None else attrs)
    if "valid_min" in attrs and "valid_max" in attrs:
        return _pair(attrs["valid_min"], attrs["valid_max"])
    if "valid_range" in attrs and np.size(attrs["valid_range"]) == 2:
        return _pair(*np.ravel(attrs["valid_range"]))
    text = str(name or "").lower()
    if text.startswith("snow_mask") or ("threshold" in attrs and "binary" in attrs):
        threshold = float(attrs.get("threshold", 0.3))
        low = 0.0 if int(attrs.get("binary", 0)) or not math.isfinite(threshold) else min(0.0, threshold)
        return (low, 1.0)
    if text.startswith("ndsi"):
        return (-1.0, 1.0)
    return None


def _pair(low, high) -> tuple[float, float] | None:
    low, high = float(low), float(high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) and low <= high else None


def clip_to_range(values, bounds: tuple[float, float] | None):
    """``values`` (NumPy, Dask, torch or xarray) clipped to ``bounds``; unchanged when ``None``.

    NaN stays NaN. xarray results get the ``valid_min`` / ``valid_max`` attrs.

    Examples
    --------
    >>> clip_to_range(np.array([-0.2, 0.5, 1.1, np.nan]), (0.0, 1.0)).tolist()
    [0.0, 0.5, 1.0, nan]
    """
    if bounds is None:
        return values
    low, high = bounds
    if hasattr(values, "clamp") and hasattr(values, "detach"):  # torch
        return values.clamp(low, high)
    if hasattr(values, "assign_attrs"):  # xarray keeps attrs through clip with keep_attrs
        return values.clip(low, high, keep_attrs=True).assign_attrs(range_attrs(bounds))
    if hasattr(values, "dask") or hasattr(values, "map_blocks"):
        return values.clip(low, high)
    return np.clip(values, low, high)


def range_attrs(bounds: tuple[float, float] | None) -> dict:
    """The attrs that record a range: ``valid_min``, ``valid_max`` (empty without a range)."""
    if bounds is None:
        return {}
    return {"valid_min": float(bounds[0]), "valid_max": float(bounds[1])}
