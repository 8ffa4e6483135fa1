"""Load Landsat Collection-2 Level-2 scenes into a lazy cube, and write results to disk.

:func:`load` turns STAC items (from :func:`glacierxr.search`, a static catalog, or plain dicts)
into a Dask-backed :class:`xarray.Dataset` with dimensions ``(time, y, x)`` using `stackstac`_:

- ``green``, ``swir16`` (and any other surface-reflectance band): float32 reflectance,
  ``DN * scale + offset`` with each item's own ``raster:bands`` scale/offset (Collection-2
  constants where an item has none), DN nodata → NaN;
- ``qa_pixel``: uint16 bit flags; pixels outside every footprint are ``1`` (the fill bit).

Items of several UTM zones land on one grid, scenes of one overpass (same solar day, adjacent
WRS rows) are mosaicked into one time step, and nothing is read until you compute.

:func:`write` saves a Dataset or DataArray as Zarr, NetCDF or Cloud-Optimized GeoTIFF
*atomically* (a temporary sibling is renamed into place when complete), and :func:`read`
opens those files again lazily.

The package has one module per job, behind these names:

==========================  ==============================================================
module                      job
==========================  ==============================================================
:mod:`glacierxr.io.reader`  reading one asset: sign at open time, retry, redact, skip
:mod:`glacierxr.io.items`   STAC items -> scene records (bands, hrefs, scale/offset, time)
:mod:`glacierxr.io.grid`    grid (CRS, snapped bounds), solar-day groups, mosaic, DN scaling
:mod:`glacierxr.io.cube`    :func:`load` itself: validate -> stack -> describe
:mod:`glacierxr.io.store`   :func:`write` and :func:`read`
==========================  ==============================================================

.. _stackstac: https://stackstac.readthedocs.io
"""

from __future__ import annotations

from glacierxr.io.cube import DEFAULT_BANDS, DEFAULT_CHUNKS, _band_attrs, load  # noqa: F401  (_band_attrs: benchmarks)
from glacierxr.io.grid import MAX_PIXELS
from glacierxr.io.reader import (
    READ_ATTEMPTS,
    READ_TIMEOUT_S,
    RETRY_BACKOFF_S,
    LandsatReader,
    SkippedAssetWarning,
)
from glacierxr.io.store import OutputExistsError, OutputNotFoundError, read, write

__all__ = [
    "load",
    "write",
    "read",
    "LandsatReader",
    "SkippedAssetWarning",
    "OutputExistsError",
    "OutputNotFoundError",
    "DEFAULT_BANDS",
    "DEFAULT_CHUNKS",
    "MAX_PIXELS",
    "READ_ATTEMPTS",
    "RETRY_BACKOFF_S",
    "READ_TIMEOUT_S",
]
