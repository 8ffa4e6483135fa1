"""Spectral indices: the Normalised Difference Snow Index and the NDSI snow mask.

Both functions are elementwise and lazy (one Dask task per input chunk).
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np
import xarray as xr

from glacierxr._validate import require_numeric
from glacierxr.errors import (
    ConfigError,
    DataTypeError,
    DimensionError,
    MissingBandError,
    NoScenesError,
)
from glacierxr.landsat import ASSET_ALIASES

__all__ = ["ndsi", "snow_mask"]


def _ndsi_kernel(green: np.ndarray, swir: np.ndarray) -> np.ndarray:
    """NDSI of two reflectance arrays; see :func:`ndsi` for the rules. Returns float32."""
    g = np.asarray(green, dtype=np.float64)
    s = np.asarray(swir, dtype=np.float64)
    finite = np.isfinite(g) & np.isfinite(s)
    # Surface reflectance is physically >= 0; slightly negative values are noise over dark
    # targets, so they count as 0. With g, s >= 0, |g - s| <= g + s and the ratio is in [-1, 1].
    g = np.where(finite, np.maximum(g, 0.0), 0.0)
    s = np.where(finite, np.maximum(s, 0.0), 0.0)
    total = g + s
    defined = finite & (total > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        index = np.where(defined, (g - s) / np.where(defined, total, 1.0), np.nan)
    return np.clip(index, -1.0, 1.0).astype(np.float32)


def _resolve_band(ds: xr.Dataset, name: Hashable, *, canonical: str, parameter: str) -> xr.DataArray:
    if name in ds.data_vars:
        return ds[name]
    available = [str(n) for n in ds.data_vars]
    hint = next((k for k in ASSET_ALIASES.get(canonical, ()) if k in ds.data_vars), None)
    fix = (
        f"Pass {parameter}={hint!r}."
        if hint
        else f"Pass {parameter}= with the name of the {canonical} band."
    )
    raise MissingBandError(f"Band {name!r} not found. Available: {available}. {fix}")


def ndsi(ds: xr.Dataset, *, green: Hashable = "green", swir: Hashable = "swir16") -> xr.DataArray:
    """Normalised Difference Snow Index ``(green − swir) / (green + swir)``, lazily.

    Rules, so that every value is in [−1, 1] or NaN:

    * reflectances below 0 (Collection-2 surface reflectance can be slightly negative over
      dark targets) are treated as 0 — reflectance cannot be negative, so this is noise;
    * NaN or infinite inputs give NaN;
    * where both bands are ≤ 0 the index is undefined (0 / 0) and NaN.

    The arithmetic runs in float64 (no float32 overflow) and the result is float32.

    Parameters
    ----------
    ds
        Dataset holding the two reflectance bands (for example :func:`glacierxr.qa.mask` output).
    green, swir
        Names of the green (Landsat-8/9 band 3) and SWIR-1 (band 6) variables; the deprecated
        ``landsat-8-c2-l2`` collection calls them ``SR_B3`` and ``SR_B6``.

    Returns
    -------
    xarray.DataArray
        ``ndsi`` (float32, units ``"1"``) with the bands' coordinates (``time``, per-scene
        coords, ``spatial_ref``); attrs: the Dataset's attrs plus ``long_name``, ``units``,
        ``green_band``, ``swir_band``.

    Raises
    ------
    MissingBandError
        A band is not in ``ds``; the message names a matching alias when one is present.
    DimensionError
        The two bands have different dimensions.
    NoScenesError
        A dimension (usually ``time``) has length 0.

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset({"green": ("x", [0.6, 0.1, 0.0, -0.01]),
    ...                  "swir16": ("x", [0.2, 0.3, 0.0, 0.05])})
    >>> ndsi(ds).round(3).values.tolist()
    [0.5, -0.5, nan, -1.0]
    """
    if not isinstance(ds, xr.Dataset):
        raise DataTypeError(
            f"ndsi expects an xarray.Dataset holding the green and SWIR-1 bands, got "
            f"{type(ds).__name__}. For a DataArray with a band dimension, use .to_dataset('band')."
        )
    g = _resolve_band(ds, green, canonical="green", parameter="green")
    s = _resolve_band(ds, swir, canonical="swir16", parameter="swir")
    if set(g.dims) != set(s.dims):
        raise DimensionError(
            f"Bands {green!r} {list(g.dims)} and {swir!r} {list(s.dims)} have different "
            "dimensions; NDSI needs two bands on the same grid."
        )
    for band in (g, s):
        require_numeric(band, what="ndsi")
    _check_not_empty(g, what="ndsi")
    s = s.transpose(*g.dims)
    index = xr.apply_ufunc(
        _ndsi_kernel,
        g,
        s,
        dask="parallelized",
        output_dtypes=[np.float32],
        keep_attrs="override",  # keeps coordinate attrs (spatial_ref); own attrs set below
    )
    index.name = "ndsi"
    index.attrs = {
        **ds.attrs,
        "units": "1",
        "long_name": "Normalised Difference Snow Index",
        "formula": "(green - swir) / (green + swir), negative reflectance read as 0",
        "green_band": str(green),
        "swir_band": str(swir),
    }
    return index


def _check_not_empty(da: xr.DataArray, *, what: str) -> None:
    """Raise NoScenesError when a dimension of ``da`` has length 0 (metadata only)."""
    empty = [str(d) for d, n in da.sizes.items() if n == 0]
    if empty:
        raise NoScenesError(
            f"{what} got no scene: dimension(s) {empty} of {da.name!r} have length 0. "
            "Widen the search (dates, bbox, max_cloud) or raise mask(max_missing=...)."
        )


def snow_mask(da: xr.DataArray, *, threshold: float = 0.3, binary: bool = False) -> xr.DataArray:
    """NDSI snow mask: the NDSI where it is ≥ ``threshold``, else 0 (NaN stays NaN).

    Parameters
    ----------
    da
        NDSI values (output of :func:`ndsi`), any shape; lazy input gives lazy output.
    threshold
        NDSI at and above which a pixel is snow or ice (0.3 is the usual value).
    binary
        Return 1.0 for snow and 0.0 otherwise instead of the NDSI value.

    Returns
    -------
    xarray.DataArray
        ``snow_mask`` with the dtype (floating) and coordinates of ``da``; attrs ``threshold``
        and ``binary`` (stored as 0/1 so the result can be written to netCDF).

    Raises
    ------
    ConfigError
        ``threshold`` is not a finite number in [-1, 1].
    DataTypeError
        ``da`` is not a floating-point DataArray.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> index = xr.DataArray([0.8, 0.3, 0.1, np.nan], dims="x", name="ndsi")
    >>> snow_mask(index).values.tolist()
    [0.8, 0.3, 0.0, nan]
    >>> snow_mask(index, binary=True).values.tolist()
    [1.0, 1.0, 0.0, nan]
    """
    if not isinstance(da, xr.DataArray):
        raise DataTypeError(f"snow_mask expects an xarray.DataArray of NDSI, got {type(da).__name__}.")
    if not np.issubdtype(da.dtype, np.floating):
        raise DataTypeError(
            f"snow_mask expects floating NDSI values, got dtype {da.dtype}. "
            "Compute the index with glacierxr.indices.ndsi (ds.glacier.ndsi()) first."
        )
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        threshold = math.nan
    if not math.isfinite(threshold):
        raise ConfigError(f"threshold must be a finite NDSI value such as 0.3; got {threshold!r}.")
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(
            f"threshold={threshold!r} is outside [-1, 1], the range of the NDSI, so the mask would "
            "be all snow or all bare. Pass an NDSI value such as threshold=0.3."
        )
    snow = da >= threshold
    if binary:
        values = snow.astype(da.dtype)
    else:
        values = da.where(snow, da.dtype.type(0))
    result = values.where(da.notnull())
    result.name = "snow_mask"
    result.attrs = {
        **da.attrs,
        "units": "1",
        "long_name": (
            f"snow mask (1 where NDSI >= {threshold:g}, else 0)"
            if binary
            else f"snow mask (NDSI where NDSI >= {threshold:g}, else 0)"
        ),
        "threshold": threshold,
        "binary": int(bool(binary)),
    }
    return result
