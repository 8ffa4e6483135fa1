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

.. _stackstac: https://stackstac.readthedocs.io
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import functools
import math
import os
import time as _time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit, urlunsplit

import dask.array
import numpy as np
import pandas as pd
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import stackstac
import xarray as xr
from affine import Affine
from rasterio.enums import Resampling
from stackstac.nodata_reader import NodataReader, exception_matches, nodata_for_window
from stackstac.rio_reader import AutoParallelRioReader

from glacierxr import _remote, _safety
from glacierxr._remote import redact, redact_tokens_in_logs
from glacierxr._validate import check_bbox, require_positive
from glacierxr.errors import (
    AssetReadError,
    CatalogError,
    ConfigError,
    DataTypeError,
    GlacierXRError,
    GridError,
    MissingBandError,
    NoScenesError,
)
from glacierxr.landsat import (
    ASSET_ALIASES,
    COLLECTIONS,
    QA_BITS,
    SR_NODATA,
    SR_OFFSET,
    SR_SCALE,
    resolve_asset_key,
)

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
    "READ_ATTEMPTS",
    "RETRY_BACKOFF_S",
    "READ_TIMEOUT_S",
]

#: Bands :func:`load` returns unless told otherwise.
DEFAULT_BANDS = ("green", "swir16", "qa_pixel")
#: Default Dask chunks: one scene per chunk, spatial tiles of up to 1024 x 1024 pixels.
DEFAULT_CHUNKS: Mapping[str, int] = {"time": 1, "y": 1024, "x": 1024}
#: How often a raster asset is tried (open or read) before :class:`AssetReadError`.
READ_ATTEMPTS = 3
#: Seconds before the first retry; doubled before each further one.
RETRY_BACKOFF_S = 0.5
#: Seconds a server may take to accept a connection, or stay silent in the middle of a
#: response, before GDAL gives the request up (it is then retried like a 5xx). Slow but
#: moving transfers are never cut.
READ_TIMEOUT_S = 30.0

_QA_BANDS = frozenset({"qa_pixel"})
_QA_FILL = np.uint16(1 << QA_BITS["fill"])
# Integer DNs up to 16 bits (and floats) are exact in, or meant for, float32.
_REFLECTANCE_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "float32", "float64"})
_QA_DTYPES = frozenset({"uint8", "uint16"})
_AFFINE_WARNING = {"message": r"Use `@` matmul", "category": PendingDeprecationWarning}


def _skipped_text(error: str) -> str:
    """The warning of a skipped asset: the failure, without the advice to skip (it is on)."""
    failure = error.split(" Check that the file", 1)[0]
    return (
        f"{failure} It reads as nodata (NaN) because on_error='skip' is set; if that is "
        "unexpected, check that the file exists and that the server answers."
    )


class SkippedAssetWarning(UserWarning):
    """``load(..., on_error="skip")`` replaced an unreadable asset by nodata.

    Raised at compute time, once per asset; ``href`` (without its token) names the file, whose
    name for Landsat holds the scene id.  Collect them with ``warnings.catch_warnings(record=True)``
    around ``.compute()``.  On a ``dask.distributed`` cluster they are emitted in the workers.
    """

    def __init__(self, message: str, href: str) -> None:
        super().__init__(message)
        self.href = href


class OutputExistsError(GlacierXRError, FileExistsError):
    """:func:`write` refused to replace an existing output (pass ``overwrite=True``)."""


class OutputNotFoundError(GlacierXRError, FileNotFoundError):
    """:func:`read` found nothing at the path (an interrupted :func:`write` leaves nothing)."""


# ------------------------------------------------------------------------------------------
# Hrefs: signing and redaction
# ------------------------------------------------------------------------------------------
def _short_cause(exc: BaseException) -> str:
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    return redact(f"{type(root).__name__}: {root}")


@contextlib.contextmanager
def _uncached(url: str, attempt: int):
    """Make GDAL ask the server again on a retry (it remembers failed URLs otherwise)."""
    if attempt == 0 or "://" not in url:
        yield
        return
    with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=f"/vsicurl/{url}"):
        yield


class LandsatReader(AutoParallelRioReader):
    """stackstac reader that signs Planetary Computer hrefs at open time and retries.

    A drop-in for :class:`stackstac.rio_reader.AutoParallelRioReader` (same constructor, pickles
    the same way, so it runs on ``dask.distributed`` workers):

    - hrefs on ``*.blob.core.windows.net`` are signed with :func:`glacierxr._remote.resign`
      each time the file is opened, so a token that expired since the search is renewed;
    - transient failures (HTTP 5xx/429, dropped connections, time-outs after
      :data:`READ_TIMEOUT_S` of silence, HTTP 403 on a blob URL, and bytes of a remote file
      that did not arrive whole) are retried :data:`READ_ATTEMPTS` times with exponential
      backoff from :data:`RETRY_BACKOFF_S` seconds; other failures (404, a corrupt local
      file) fail at once;
    - a failure raises :class:`~glacierxr.errors.AssetReadError` naming the href without its
      query string, or, when the error matches ``errors_as_nodata`` (``load(on_error="skip")``
      passes ``AssetReadError(".*")``), warns :class:`SkippedAssetWarning` and reads as nodata.
    """

    def _failure(self, action: str, exc: BaseException, attempts: int) -> AssetReadError:
        href = redact(self.url)
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return AssetReadError(
            f"Could not {action} raster asset {href!r}{tries}: {_short_cause(exc)}. "
            "Check that the file exists and is a readable GeoTIFF, that the server answers, and "
            "for Planetary Computer that the item was signed; pass on_error='skip' to load() "
            "to read unreadable scenes as NaN instead."
        )

    def _skip(self, error: AssetReadError) -> bool:
        if exception_matches(error, self.errors_as_nodata):
            warnings.warn(
                SkippedAssetWarning(_skipped_text(str(error)), redact(self.url)),
                stacklevel=2,
            )
            return True
        return False

    def _open(self):
        href = self.url
        attempts = 0
        error: BaseException | None = None
        try:
            for attempt in range(max(1, READ_ATTEMPTS)):
                attempts = attempt + 1
                try:
                    self.url = _remote.resign(href)
                    with _uncached(self.url, attempt):
                        return super()._open()
                except AssetReadError as exc:  # signing failed for good
                    error = exc
                    break
                except Exception as exc:  # noqa: BLE001 - classified, redacted and re-raised
                    error = exc
                    if attempts >= READ_ATTEMPTS or not _remote.is_transient(exc, href):
                        break
                    _time.sleep(RETRY_BACKOFF_S * 2**attempt)
        finally:
            self.url = href  # never keep a token on the object (it is pickled, printed)
        failure = error if isinstance(error, AssetReadError) else self._failure("open", error, attempts)
        if self._skip(failure):
            return NodataReader(dtype=self.dtype, fill_value=self.fill_value)
        raise failure from None

    def read(self, window, **kwargs) -> np.ndarray:
        for attempt in range(max(1, READ_ATTEMPTS)):
            try:
                with _uncached(self.url, attempt):  # a retry must not get cached partial bytes
                    return super().read(window, **kwargs)
            except AssetReadError:
                raise  # from _open: already retried and explained
            except Exception as exc:  # noqa: BLE001 - classified, redacted and re-raised
                if attempt + 1 >= READ_ATTEMPTS or not _remote.is_transient(exc, self.url):
                    failure = self._failure("read", exc, attempt + 1)
                    if self._skip(failure):
                        return nodata_for_window(window, self.fill_value, self.dtype)
                    raise failure from None
                _time.sleep(RETRY_BACKOFF_S * 2**attempt)
                self.close()  # reopen (and sign again) on the next attempt
        raise AssertionError("unreachable")  # pragma: no cover


# ------------------------------------------------------------------------------------------
# Items
# ------------------------------------------------------------------------------------------
class _Band:
    __slots__ = ("href", "scale", "offset", "nodata", "data_type")

    def __init__(self, href, scale, offset, nodata, data_type):
        self.href, self.scale, self.offset = href, scale, offset
        self.nodata, self.data_type = nodata, data_type


class _Scene:
    """What load() needs from one STAC item."""

    __slots__ = (
        "index", "id", "time", "collection", "epsg", "lonlat", "proj", "bands",
        "cloud_cover", "platform", "wrs_path", "wrs_row", "root",
    )  # fmt: skip


def _epsg_of(fields: Mapping[str, Any]) -> int | None:
    epsg = fields.get("proj:epsg")
    if epsg is not None:
        return int(epsg)
    code = fields.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        return int(code.split(":", 1)[1])
    return None


def _as_dicts(items) -> list[tuple[dict, Any]]:
    """Items as (dict, href resolver); accepts ItemCollection, pystac Items or dicts."""
    import pystac

    if isinstance(items, (dict, pystac.Item)):
        raise DataTypeError(
            "load() takes a collection of STAC items, got a single "
            f"{type(items).__name__}. Wrap it in a list: load([item])."
        )
    if isinstance(items, (str, os.PathLike)):
        raise DataTypeError(
            f"load() takes STAC items, got the path {str(items)!r}. Read it first, for example "
            "with glacierxr.search(catalog=path) or pystac.ItemCollection.from_file(path)."
        )
    out = []
    for position, item in enumerate(items):
        if isinstance(item, pystac.Item):
            out.append((item.to_dict(include_self_link=True, transform_hrefs=False), item))
        elif isinstance(item, Mapping):
            if "assets" not in item or "properties" not in item:
                raise DataTypeError(
                    f"Item {position} is not a STAC item: it has no 'assets' or 'properties' "
                    f"(keys: {sorted(item)[:8]}). Pass STAC Item dicts or pystac.Item objects."
                )
            base = next(
                (link.get("href") for link in item.get("links", ()) if link.get("rel") == "self"),
                None,
            )
            out.append((item, base))
        else:
            raise DataTypeError(
                f"Item {position} is a {type(item).__name__}; load() takes pystac.Item objects, "
                "a pystac.ItemCollection or STAC Item dicts."
            )
    return out


def _absolute_href(href: str, origin) -> str:
    """``href`` made absolute against the item it came from (a pystac Item or a self href)."""
    if not href or "://" in href or os.path.isabs(href) or origin is None:
        return href
    if not isinstance(origin, str):  # pystac.Item: let pystac resolve it (catalog layout)
        for asset in origin.assets.values():
            if asset.href == href:
                return asset.get_absolute_href() or href
        return href
    if "://" in origin:
        return urljoin(origin, href)
    return os.path.normpath(os.path.join(os.path.dirname(origin), href))


def _band_metadata(band: str, asset: Mapping[str, Any], href: str, item_id: str) -> _Band:
    raster_bands = asset.get("raster:bands")
    info = raster_bands[0] if raster_bands else {}
    if raster_bands is not None and len(raster_bands) != 1:
        raise DataTypeError(
            f"Asset {band!r} of item {item_id!r} has {len(raster_bands)} raster:bands; "
            "glacierxr reads single-band assets only (one GeoTIFF per band, as Landsat C2 L2)."
        )
    data_type = info.get("data_type")
    if band in _QA_BANDS:
        if data_type is not None and data_type not in _QA_DTYPES:
            raise DataTypeError(
                f"Asset {band!r} of item {item_id!r} has data_type {data_type!r}; QA_PIXEL bit "
                f"flags must be unsigned integers ({sorted(_QA_DTYPES)}). This is not a Landsat "
                "Collection-2 QA_PIXEL band; check the item or drop it."
            )
        return _Band(href, 1.0, 0.0, info.get("nodata"), data_type)
    if data_type is not None and data_type not in _REFLECTANCE_DTYPES:
        raise DataTypeError(
            f"Asset {band!r} of item {item_id!r} has data_type {data_type!r}; glacierxr reads "
            f"reflectance stored as {sorted(_REFLECTANCE_DTYPES)} into float32 without loss. "
            "Convert the asset or drop the item."
        )
    integer = data_type is None or np.dtype(data_type).kind in "iu"
    default_scale, default_offset = (SR_SCALE, SR_OFFSET) if integer else (1.0, 0.0)
    scale = float(info.get("scale", default_scale))
    offset = float(info.get("offset", default_offset))
    nodata = info.get("nodata", SR_NODATA if integer else None)
    return _Band(href, scale, offset, None if nodata is None else float(nodata), data_type)


@functools.lru_cache(maxsize=64)
def _transformer(src: int, dst: int):
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def _transform_bounds(src: int, dst: int, *bounds: float, densify_pts: int = 21) -> tuple:
    """``bounds`` (minx, miny, maxx, maxy) in EPSG ``src`` -> EPSG ``dst``, edges densified."""
    if src == dst:
        return tuple(bounds)
    return tuple(_transformer(src, dst).transform_bounds(*bounds, densify_pts=densify_pts))


def _lonlat_box(item: Mapping[str, Any], epsg: int | None, proj) -> tuple | None:
    bbox = item.get("bbox")
    if bbox is not None and len(bbox) >= 4:
        if len(bbox) == 6:
            return (bbox[0], bbox[1], bbox[3], bbox[4])
        return tuple(float(b) for b in bbox[:4])
    if proj is not None and epsg is not None:
        return _transform_bounds(epsg, 4326, *proj)
    return None


def _native_box(fields: Mapping[str, Any]) -> tuple | None:
    transform, shape = fields.get("proj:transform"), fields.get("proj:shape")
    if transform is not None and shape is not None:
        a, b, c, d, e, f = (float(v) for v in transform[:6])
        height, width = shape
        xs = [c, c + a * width + b * height, c + a * width, c + b * height]
        ys = [f, f + d * width + e * height, f + d * width, f + e * height]
        return (min(xs), min(ys), max(xs), max(ys))
    proj_bbox = fields.get("proj:bbox")
    if proj_bbox is not None:
        return tuple(float(v) for v in proj_bbox[:4])
    return None


def _scenes(items, bands: Sequence[str]) -> tuple[list[_Scene], list[dict]]:
    """Validate items; return scene records and the plain dicts handed to stackstac."""
    scenes, plain = [], []
    for index, (item, origin) in enumerate(_as_dicts(items)):
        item_id = str(item.get("id", f"<item {index}>"))
        properties = item.get("properties") or {}
        collection = item.get("collection")
        if collection is not None and collection not in COLLECTIONS:
            raise CatalogError(
                f"Item {item_id!r} belongs to collection {collection!r}; load() reads Landsat "
                f"Collection-2 Level-2 items of {list(COLLECTIONS)}. Search one of those (for "
                "example glacierxr.search(..., collection='landsat-c2-l2'))."
            )
        if "datetime" not in properties or properties["datetime"] is None:
            raise CatalogError(
                f"Item {item_id!r} has no properties.datetime; load() needs one time per scene."
            )
        assets = item.get("assets") or {}
        scene = _Scene()
        scene.index = index
        scene.id = item_id
        scene.time = pd.Timestamp(properties["datetime"])
        if scene.time.tzinfo is not None:
            scene.time = scene.time.tz_convert("UTC").tz_localize(None)
        scene.collection = collection
        cloud_cover = properties.get("eo:cloud_cover")
        scene.cloud_cover = math.nan if cloud_cover is None else float(cloud_cover)  # 0.0 is a value
        scene.platform = str(properties.get("platform", ""))
        scene.wrs_path = str(properties.get("landsat:wrs_path", ""))
        scene.wrs_row = str(properties.get("landsat:wrs_row", ""))
        scene.root = next(
            (link.get("href") for link in item.get("links", ()) if link.get("rel") == "root"),
            None,
        )
        new_assets, scene.bands = {}, {}
        item_epsg = _epsg_of(properties)
        first_asset = None
        for band in bands:
            key = resolve_asset_key(assets, band)
            if key is None:
                raise MissingBandError(
                    f"Band {band!r} not found in item {item_id!r} (collection {collection!r}). "
                    f"Available asset keys: {sorted(assets)}. Known keys for {band!r}: "
                    f"{list(ASSET_ALIASES.get(band, (band,)))}; pass bands=... without it or "
                    "search items that have it."
                )
            asset = dict(assets[key])
            asset["href"] = _absolute_href(asset.get("href", ""), origin)
            asset_epsg = _epsg_of(asset)
            if asset_epsg is not None:
                asset["proj:epsg"] = asset_epsg
            asset.pop("proj:code", None)
            new_assets[band] = asset
            scene.bands[band] = _band_metadata(band, asset, asset["href"], item_id)
            first_asset = first_asset or asset
        fields = {**properties, **{k: v for k, v in first_asset.items() if k.startswith("proj:")}}
        scene.epsg = _epsg_of(fields) if _epsg_of(first_asset) is None else _epsg_of(first_asset)
        scene.epsg = scene.epsg if scene.epsg is not None else item_epsg
        scene.proj = _native_box(fields)
        scene.lonlat = _lonlat_box(item, scene.epsg, scene.proj)
        if scene.lonlat is None and scene.proj is None:
            raise CatalogError(
                f"Item {item_id!r} has neither a bbox nor proj:transform/proj:shape; load() "
                "cannot place it on a grid."
            )
        new_properties = {"datetime": properties["datetime"]}
        for key in ("proj:shape", "proj:transform", "proj:bbox"):
            if key in properties:
                new_properties[key] = properties[key]
        if item_epsg is not None:
            new_properties["proj:epsg"] = item_epsg
        plain.append(
            {
                "type": "Feature",
                "stac_version": item.get("stac_version", "1.0.0"),
                "id": str(index),  # positions, so stackstac's output maps back exactly
                "bbox": list(scene.lonlat) if scene.lonlat is not None else None,
                "properties": new_properties,
                "assets": new_assets,
                "links": [],
            }
        )
        scenes.append(scene)
    return scenes, plain


# ------------------------------------------------------------------------------------------
# Grid
# ------------------------------------------------------------------------------------------
def _footprint(scene: _Scene, epsg: int) -> tuple[float, float, float, float] | None:
    if scene.proj is not None and scene.epsg is not None:
        if scene.epsg == epsg:
            return scene.proj
        return tuple(_transform_bounds(scene.epsg, epsg, *scene.proj, densify_pts=21))
    if scene.lonlat is not None:
        return tuple(_transform_bounds(4326, epsg, *scene.lonlat, densify_pts=21))
    return None


def _union(boxes) -> tuple[float, float, float, float]:
    boxes = [b for b in boxes if b is not None]
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _anchor(scenes: Sequence[_Scene], epsg: int, resolution: float) -> tuple[float, float]:
    """Grid origin modulo the resolution: Landsat's own pixel edges where an item is native."""
    for scene in scenes:
        if scene.epsg == epsg and scene.proj is not None:
            return (scene.proj[0] % resolution, scene.proj[3] % resolution)
    return (0.0, 0.0)


def _snap(bounds, resolution: float, anchor: tuple[float, float]) -> tuple:
    def down(v, a):
        return a + math.floor(round((v - a) / resolution, 6)) * resolution

    def up(v, a):
        return a + math.ceil(round((v - a) / resolution, 6)) * resolution

    minx, miny, maxx, maxy = bounds
    ax, ay = anchor
    return (down(minx, ax), down(miny, ay), up(maxx, ax), up(maxy, ay))


# ------------------------------------------------------------------------------------------
# Grouping
# ------------------------------------------------------------------------------------------
def _solar_day(scene: _Scene) -> dt.date:
    if scene.lonlat is None:
        return scene.time.date()
    west, _, east, _ = scene.lonlat
    if west > east:  # crosses the antimeridian
        east += 360
    longitude = ((west + east) / 2 + 180) % 360 - 180
    return (scene.time + pd.Timedelta(hours=longitude / 15)).date()


def _groups(scenes: Sequence[_Scene], groupby: str | None) -> list[list[int]]:
    if groupby is None:
        return [[i] for i in range(len(scenes))]
    by_day: dict[dt.date, list[int]] = collections.defaultdict(list)
    for position, scene in enumerate(scenes):
        by_day[_solar_day(scene)].append(position)
    return sorted(by_day.values(), key=lambda positions: scenes[positions[0]].time)


def _mosaic_block(block: np.ndarray, *, nodata) -> np.ndarray:
    """Flatten the scenes of one group (axis 0): the last valid pixel wins.

    The same rule as :func:`stackstac.mosaic` (last on top), for one Dask block holding all the
    scenes of one solar day.
    """
    out = np.array(block[-1], copy=True)
    for layer in block[-2::-1]:
        invalid = np.isnan(out) if np.isnan(nodata) else out == nodata
        if not invalid.any():
            break
        out[invalid] = layer[invalid]
    return out[np.newaxis]


def _merge_groups(data, group_sizes: Sequence[int], nodata):
    """One time step per group; ``data``'s time chunks are the groups (one block each)."""
    if all(size == 1 for size in group_sizes):
        return data
    return data.map_blocks(
        _mosaic_block,
        nodata=nodata,
        chunks=((1,) * len(group_sizes),) + data.chunks[1:],
        dtype=data.dtype,
        token="glacierxr-mosaic",
    )


def _stackstac_overlaps(scene_plain: Mapping[str, Any], epsg: int, bounds) -> bool:
    """Whether stackstac will keep this item for ``bounds`` (mirrors its prepare_items rule)."""
    from stackstac import geom_utils

    properties = scene_plain["properties"]
    for asset in scene_plain["assets"].values():
        asset_epsg = asset.get("proj:epsg", properties.get("proj:epsg"))
        asset_bbox = asset.get("proj:bbox", properties.get("proj:bbox"))
        shape = asset.get("proj:shape", properties.get("proj:shape"))
        transform = asset.get("proj:transform", properties.get("proj:transform"))
        if (
            asset_bbox is not None
            and asset_epsg is not None
            and transform == properties.get("proj:transform")
            and shape == properties.get("proj:shape")
        ):
            box = geom_utils.reproject_bounds(asset_bbox, asset_epsg, epsg)
        elif transform is not None and shape is not None and asset_epsg is not None:
            af = Affine(*transform[:6])
            box = geom_utils.bounds_from_affine(af, shape[0], shape[1], asset_epsg, epsg)
        elif scene_plain.get("bbox") is not None:
            box = geom_utils.reproject_bounds(scene_plain["bbox"], 4326, epsg)
        else:
            return True
        if geom_utils.bounds_overlap(box, bounds):
            return True
    return False


# ------------------------------------------------------------------------------------------
# load
# ------------------------------------------------------------------------------------------
def _chunk_sizes(chunks) -> dict[str, int]:
    sizes = dict(DEFAULT_CHUNKS)
    if chunks is None:
        return sizes
    if isinstance(chunks, (int, np.integer)):
        sizes.update(y=int(chunks), x=int(chunks))
    elif isinstance(chunks, Mapping):
        unknown = set(chunks) - set(sizes)
        if unknown:
            raise ConfigError(
                f"chunks has unknown dimensions {sorted(unknown)}; use 'time', 'y' and 'x' "
                "(for example chunks={'time': 1, 'y': 512, 'x': 512})."
            )
        sizes.update({k: int(v) for k, v in chunks.items()})
    else:
        raise ConfigError(f"chunks must be an int or a dict of dims to sizes, got {chunks!r}.")
    for dim, size in sizes.items():
        if size < 1 and size != -1:
            raise ConfigError(f"chunks[{dim!r}] must be a positive size or -1, got {size}.")
    return sizes


def _source(scenes: Sequence[_Scene]) -> str:
    roots = {redact(s.root) for s in scenes if s.root}
    if len(roots) == 1:
        return roots.pop()
    hrefs = [redact(b.href) for s in scenes for b in s.bands.values()]
    prefix = os.path.commonprefix(hrefs)
    if "://" in prefix:
        parts = urlsplit(prefix)
        path = parts.path[: parts.path.rfind("/") + 1]
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return os.path.dirname(prefix) or prefix


_PARAMS = np.dtype([("scale", "f8"), ("offset", "f8"), ("nodata", "f8")])


def _gdal_env():
    """stackstac's GDAL settings plus time-outs, so that a stalled server is given up on."""
    from stackstac.rio_reader import DEFAULT_GDAL_ENV

    seconds = str(max(1, math.ceil(READ_TIMEOUT_S)))
    return DEFAULT_GDAL_ENV.updated(
        always=dict(
            GDAL_HTTP_CONNECTTIMEOUT=seconds,
            # abort a response that stays below 1 byte/s for that long (a hung server)
            GDAL_HTTP_LOW_SPEED_TIME=seconds,
            GDAL_HTTP_LOW_SPEED_LIMIT="1",
        )
    )


def _per_time(bands: Sequence[_Band], time_chunks):
    """Each scene's (scale, offset, nodata), shaped (time, 1, 1) and chunked like the cube's
    time axis, so Dask pairs block i with scenes of block i (one small task per block)."""
    params = np.empty((len(bands), 1, 1), dtype=_PARAMS)
    params["scale"][:, 0, 0] = [b.scale for b in bands]
    params["offset"][:, 0, 0] = [b.offset for b in bands]
    params["nodata"][:, 0, 0] = [np.nan if b.nodata is None else b.nodata for b in bands]
    return dask.array.from_array(params, chunks=(time_chunks, 1, 1))


def _squeeze_band(block: np.ndarray) -> np.ndarray:
    return block[:, 0]


def _dn_to_reflectance(dn: np.ndarray, params: np.ndarray) -> np.ndarray:
    """float32 DN (NaN outside footprints) -> float32 reflectance; DN == nodata -> NaN."""
    out = dn.astype(np.float64) * params["scale"] + params["offset"]
    out[dn == params["nodata"]] = np.nan
    return out.astype(np.float32)


def load(
    items: Iterable,
    *,
    bbox: Sequence[float] | None = None,
    epsg: int | None = None,
    resolution: float = 30,
    bands: Sequence[str] = DEFAULT_BANDS,
    chunks: int | Mapping[str, int] | None = None,
    groupby: Literal["solar_day"] | None = "solar_day",
    resampling: str = "nearest",
    on_error: Literal["raise", "skip"] = "raise",
    max_pixels: int = 500_000_000,
) -> xr.Dataset:
    """Stack Landsat Collection-2 Level-2 STAC items into a lazy ``(time, y, x)`` Dataset.

    Nothing is read while the cube is built: the result is backed by Dask, and pixels are
    read (over HTTP range requests for remote COGs) only when you compute.

    Parameters
    ----------
    items
        A :class:`pystac.ItemCollection`, a list of :class:`pystac.Item`, or a list of STAC
        Item dicts, of the ``landsat-c2-l2`` or deprecated ``landsat-8-c2-l2`` collection
        (asset keys ``green``/``swir16``/``qa_pixel`` or ``SR_B3``/``SR_B6``/``QA_PIXEL``).
    bbox
        ``(west, south, east, north)`` in degrees: the extent of the cube. Default: the union
        of the items' footprints. Items that do not overlap it are left out. Checked like
        :func:`glacierxr.search` checks it, so a box ``search`` takes, ``load`` takes too: a
        box with ``west > east`` crosses the antimeridian (180°) and is projected as one box.
    epsg
        CRS of the cube. Default: the CRS most items have (items of other UTM zones are
        reprojected onto it).
    resolution
        Pixel size in the CRS's units (metres for UTM).
    bands
        Canonical band names to load: surface reflectance (``green``, ``swir16``, ``red`` …)
        as float32, ``qa_pixel`` as uint16.
    chunks
        Dask chunk sizes by dimension (``{"time": 1, "y": 1024, "x": 1024}`` by default) or
        one int for ``y`` and ``x``.
    groupby
        ``"solar_day"`` merges the scenes of one overpass (the same local solar day, like
        adjacent WRS rows) into one time step, the later scene on top (see Notes);
        ``None`` keeps one time step per item.
    resampling
        :class:`rasterio.enums.Resampling` name used when reprojecting or resizing.
    on_error
        ``"raise"``: an unreadable asset raises :class:`~glacierxr.errors.AssetReadError` at
        compute time. ``"skip"``: it reads as nodata (NaN; QA fill) and a
        :class:`SkippedAssetWarning` naming its href is emitted at compute time.
    max_pixels
        Largest grid, in pixels per scene (default :data:`MAX_PIXELS`, 500 million). A larger
        one raises :class:`~glacierxr.errors.GridError` with its size before anything is
        built (a typo in ``bbox`` or ``resolution`` must not start a huge computation).

    Returns
    -------
    xarray.Dataset
        One variable per band, dims ``(time, y, x)``: reflectance bands float32 (``DN * scale
        + offset`` from each item's ``raster:bands``, Collection-2 constants where absent; DN
        nodata → NaN), ``qa_pixel`` uint16 (``1``, the fill bit, outside every footprint).
        ``x``/``y`` are pixel centres; per-time coordinates ``id`` (ids of merged scenes joined
        with ``"+"``), ``cloud_cover`` (mean over merged scenes, %), ``platform``, ``wrs_path``,
        ``wrs_row``; the CRS in ``spatial_ref``; attrs ``collection``, ``source`` (catalog root
        without tokens), ``epsg``, ``resolution``, ``groupby``, ``resampling``.

    Raises
    ------
    NoScenesError
        ``items`` is empty.
    MissingBandError
        An item lacks a band; the message lists its asset keys.
    CatalogError
        An item belongs to another collection or has no datetime.
    DataTypeError
        ``items`` is not a collection of STAC items, or an asset's ``raster:bands`` data type
        cannot be read as asked (multi-band, QA that is not unsigned integer …).
    GridError
        ``bbox`` is malformed or overlaps no item (the message gives the items' extent), or no
        CRS can be chosen.
    ConfigError
        Bad ``bands``, ``chunks``, ``groupby``, ``resampling``, ``on_error`` or ``resolution``.

    Notes
    -----
    Scenes of one solar day (UTC time + centre longitude / 15 h, as odc-stac groups) share one
    Dask block along ``time`` and are flattened block by block with the rule of
    :func:`stackstac.mosaic`: the later scene on top, earlier ones where it has no data.
    Reflectance is merged after scaling (NaN = no data), ``qa_pixel`` with ``1`` as no data.
    The time of a merged step is that of its first scene.

    The grid is aligned to the pixel edges of the items already in ``epsg`` (Landsat's edges
    sit at 15 m modulo 30 m), so native pixels are not shifted by half a pixel.

    ``on_error="skip"`` is stackstac's ``errors_as_nodata`` mechanism: the reader raises
    :class:`~glacierxr.errors.AssetReadError` (after its retries), which matches the pattern
    ``AssetReadError(".*")`` and becomes nodata. Which scenes were skipped is only known at
    compute time, so it is reported there, by one :class:`SkippedAssetWarning` per asset
    (``.href`` names the file, and with it the scene id), not in the Dataset.

    Items of different ``raster:bands`` data types (``uint16`` and ``int16`` DNs, say) load
    together: every item is read into float32 with its own scale, offset and nodata.

    Examples
    --------
    >>> import glacierxr as gx, pystac, tempfile
    >>> catalog = gx.sample.write_catalog(tempfile.mkdtemp(), seed=0, width=32, height=32,
    ...                                   start="2018-01-01", end="2018-03-01")
    >>> items = list(pystac.Catalog.from_file(str(catalog)).get_items(recursive=True))
    >>> cube = gx.load(items, resolution=30)
    >>> sorted(cube.data_vars), cube.green.dtype.name, cube.qa_pixel.dtype.name
    (['green', 'qa_pixel', 'swir16'], 'float32', 'uint16')
    >>> cube.sizes["y"], cube.sizes["x"], cube.rio.crs.to_epsg()
    (32, 32, 32643)
    """
    redact_tokens_in_logs()  # rasterio and stackstac log signed hrefs at DEBUG level
    bands = _check_bands(bands)
    chunk_sizes = _chunk_sizes(chunks)
    if groupby not in ("solar_day", None):
        raise ConfigError(f"groupby must be 'solar_day' or None, got {groupby!r}.")
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    try:
        resampling_enum = Resampling[resampling] if isinstance(resampling, str) else Resampling(resampling)
    except (KeyError, ValueError):
        raise ConfigError(
            f"Unknown resampling {resampling!r}; use one of {[r.name for r in Resampling][:10]} …"
        ) from None
    resolution = float(require_positive(resolution, name="resolution (CRS units, metres for UTM)", example=30))
    require_positive(max_pixels, name="max_pixels", integer=True, example=MAX_PIXELS)

    scenes, plain = _scenes(items, bands)
    if not scenes:
        raise NoScenesError(
            "No STAC items to load. Widen the search (bbox, datetime, max_cloud) or check the "
            "catalog."
        )
    order = sorted(range(len(scenes)), key=lambda i: scenes[i].time)
    scenes = [scenes[i] for i in order]
    plain = [plain[i] for i in order]

    # --- grid -------------------------------------------------------------------------------
    if epsg is None:
        counts = collections.Counter(s.epsg for s in scenes if s.epsg is not None)
        if not counts:
            raise GridError(
                "No item has proj:epsg or proj:code, so load() cannot choose a CRS; pass epsg=..."
            )
        epsg = counts.most_common(1)[0][0]
    epsg = int(epsg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", **_AFFINE_WARNING)
        if bbox is not None:
            query = check_bbox(bbox, allow_antimeridian=True)
            bounds = tuple(_transform_bounds(4326, epsg, *query, densify_pts=21))
            bounds = _snap(bounds, resolution, _anchor(scenes, epsg, resolution))
            keep = [i for i, item in enumerate(plain) if _stackstac_overlaps(item, epsg, bounds)]
            if not keep:
                extent = _union(s.lonlat for s in scenes)
                raise GridError(
                    f"bbox {tuple(query)} does not overlap any of the {len(scenes)} items; their "
                    f"union extent is (west, south, east, north) = ({extent[0]:.4f}, "
                    f"{extent[1]:.4f}, {extent[2]:.4f}, {extent[3]:.4f}) degrees. Pass a bbox "
                    "inside that extent, or search again with this bbox."
                )
            scenes = [scenes[i] for i in keep]
            plain = [plain[i] for i in keep]
        else:
            bounds = _union(_footprint(s, epsg) for s in scenes)
            bounds = _snap(bounds, resolution, _anchor(scenes, epsg, resolution))

    _check_grid_size(bounds, resolution, max_pixels)

    # --- one Dask block along time per group (solar day) ---------------------------------------
    groups = _groups(scenes, groupby)
    order = [i for group in groups for i in group]
    scenes = [scenes[i] for i in order]
    plain = [plain[i] for i in order]
    group_sizes = [len(group) for group in groups]
    merging = any(size > 1 for size in group_sizes)
    if merging or chunk_sizes["time"] == 1:
        time_chunks = tuple(group_sizes)
    else:
        step = len(scenes) if chunk_sizes["time"] == -1 else chunk_sizes["time"]
        time_chunks = tuple(min(step, len(scenes) - i) for i in range(0, len(scenes), step))
    common = dict(
        epsg=epsg,
        resolution=resolution,
        bounds=bounds,
        snap_bounds=False,
        resampling=resampling_enum,
        chunksize=(time_chunks, 1, chunk_sizes["y"], chunk_sizes["x"]),
        rescale=False,
        sortby_date=False,
        xy_coords="center",
        properties=False,
        band_coords=False,
        errors_as_nodata=(AssetReadError(".*"),) if on_error == "skip" else (),
        reader=LandsatReader,
        gdal_env=_gdal_env(),
    )
    # One stackstac call per band (a band axis of length 1 drops blockwise, in O(1) graph
    # building; slicing a multi-band stack would touch every chunk); all share one grid.
    stacks = {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", **_AFFINE_WARNING)
            for band in bands:
                if band in _QA_BANDS:
                    dtype, fill = np.dtype("uint16"), _QA_FILL
                else:
                    dtype, fill = np.dtype("float32"), np.float32(np.nan)
                stacks[band] = stackstac.stack(
                    plain, assets=[band], dtype=dtype, fill_value=fill, **common
                )
    except ValueError as exc:
        if "add up" not in str(exc) and "chunks" not in str(exc).lower():
            raise
        raise GridError(
            "stackstac left out an item whose footprint only touches the bbox edge; widen or "
            f"shrink the bbox slightly ({exc})."
        ) from exc
    expected = [str(s.index) for s in scenes]
    for stack in stacks.values():
        if list(stack["id"].values) != expected:
            raise GridError(
                "stackstac placed the items differently than expected (an item's assets have "
                "footprints of their own?); load the bands separately with bands=..."
            )

    # --- DN -> reflectance, per item; then one time step per group ----------------------------
    first = stacks[bands[0]]
    y, x = first["y"].values, first["x"].values
    variables = {}
    for band, stack in stacks.items():
        dn = stack.data.map_blocks(_squeeze_band, drop_axis=1, dtype=stack.dtype)
        if band in _QA_BANDS:
            variables[band] = _merge_groups(dn, group_sizes, _QA_FILL)
            continue
        params = _per_time([s.bands[band] for s in scenes], dn.chunks[0])
        value = dask.array.map_blocks(
            _dn_to_reflectance, dn, params, dtype=np.float32, token="glacierxr-sr"
        )
        variables[band] = _merge_groups(value, group_sizes, np.float32(np.nan))

    groups = _contiguous(group_sizes)
    ds = xr.Dataset(
        {name: (("time", "y", "x"), variables[name]) for name in bands},
        coords={"y": y, "x": x, **_group_coords(scenes, groups)},
    )
    if merging and chunk_sizes["time"] != 1:
        ds = ds.chunk({"time": chunk_sizes["time"]})
    for name in bands:
        ds[name].attrs = _band_attrs(name)  # replaces stackstac's (spec, transform …)
    ds.x.attrs.update(units="metre" if epsg != 4326 else "degrees_east", long_name="x (pixel centre)")
    ds.y.attrs.update(units="metre" if epsg != 4326 else "degrees_north", long_name="y (pixel centre)")
    collections_ = sorted({s.collection for s in scenes if s.collection})
    ds.attrs.update(
        collection=", ".join(collections_) if collections_ else "unknown",
        source=_source(scenes),
        epsg=epsg,
        resolution=resolution,
        groupby=str(groupby),
        resampling=resampling_enum.name,
    )
    if bbox is not None:
        ds.attrs["bbox"] = list(map(float, bbox))
    return ds.rio.write_crs(epsg)


#: Default largest grid :func:`load` builds, in pixels per scene (``max_pixels=`` raises it):
#: 500 million pixels are 2 GB per float32 band and scene, about 670 km x 670 km at 30 m.
MAX_PIXELS = 500_000_000


def _check_grid_size(bounds, resolution: float, max_pixels: int) -> None:
    """Refuse a grid larger than ``max_pixels`` per scene before anything is built."""
    width = round((bounds[2] - bounds[0]) / resolution)
    height = round((bounds[3] - bounds[1]) / resolution)
    if width * height > max_pixels:
        raise GridError(
            f"The grid would be {width:,} x {height:,} = {width * height:,} pixels per scene at "
            f"resolution {resolution:g} ({(bounds[2] - bounds[0]) / 1000:,.1f} x "
            f"{(bounds[3] - bounds[1]) / 1000:,.1f} km in CRS units / 1000), above max_pixels="
            f"{max_pixels:,}. Pass a smaller bbox or a coarser resolution, or raise max_pixels= "
            "if you mean it (and have the memory)."
        )


def _contiguous(sizes: Sequence[int]) -> list[list[int]]:
    out, start = [], 0
    for size in sizes:
        out.append(list(range(start, start + size)))
        start += size
    return out


def _check_bands(bands) -> tuple[str, ...]:
    if isinstance(bands, str):
        bands = (bands,)
    bands = tuple(bands)
    if not bands:
        raise ConfigError("bands is empty; ask for at least one, e.g. bands=('green', 'swir16').")
    unknown = [b for b in bands if b not in ASSET_ALIASES]
    if unknown:
        raise MissingBandError(
            f"Unknown band(s) {unknown}; load() knows {sorted(ASSET_ALIASES)} (canonical names; "
            "SR_B3 is 'green', SR_B6 is 'swir16', QA_PIXEL is 'qa_pixel')."
        )
    if len(set(bands)) != len(bands):
        raise ConfigError(f"bands has duplicates: {list(bands)}.")
    return bands


def _group_coords(scenes: Sequence[_Scene], groups: list[list[int]]) -> dict[str, Any]:
    def joined(values):
        unique = list(dict.fromkeys(values))
        return "+".join(unique)

    times, ids, cloud, platform, path, row = [], [], [], [], [], []
    for group in groups:
        members = [scenes[i] for i in group]
        times.append(min(m.time for m in members))
        ids.append("+".join(m.id for m in members))
        covers = [m.cloud_cover for m in members if not math.isnan(m.cloud_cover)]
        cloud.append(float(np.mean(covers)) if covers else math.nan)
        platform.append(joined(m.platform for m in members))
        path.append(joined(m.wrs_path for m in members))
        row.append(joined(m.wrs_row for m in members))
    time_index = pd.DatetimeIndex(times).astype("datetime64[ns]")
    coords = {
        "time": ("time", time_index, {"long_name": "acquisition time (UTC, first scene)"}),
        "id": ("time", np.array(ids, dtype=object), {"long_name": "STAC item id(s), '+'-joined"}),
        "cloud_cover": (
            "time",
            np.array(cloud, dtype="float64"),
            {"units": "%", "long_name": "eo:cloud_cover (mean of merged scenes)"},
        ),
        "platform": ("time", np.array(platform, dtype=object), {"long_name": "platform"}),
    }
    if any(path):
        coords["wrs_path"] = ("time", np.array(path, dtype=object), {"long_name": "WRS-2 path"})
    if any(row):
        coords["wrs_row"] = ("time", np.array(row, dtype=object), {"long_name": "WRS-2 row(s)"})
    return coords


def _band_attrs(name: str) -> dict[str, Any]:
    if name in _QA_BANDS:
        flags = sorted(QA_BITS.items(), key=lambda kv: kv[1])
        return {
            "units": "1",
            "long_name": "Landsat Collection-2 QA_PIXEL bit flags",
            "flag_masks": [1 << bit for _, bit in flags],
            "flag_meanings": " ".join(name for name, _ in flags),
            "fill_value": int(_QA_FILL),
        }
    return {
        "units": "1",
        "long_name": f"{name} surface reflectance",
        "scale_offset": "applied (DN * scale + offset from raster:bands or Collection-2 constants)",
    }


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
_FORMATS = {".zarr": "zarr", ".nc": "netcdf", ".nc4": "netcdf", ".tif": "cog", ".tiff": "cog"}


def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in ("zarr", "netcdf", "cog"):
            raise ConfigError(f"format must be 'zarr', 'netcdf' or 'cog', got {format!r}.")
        return format
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"Cannot tell the format of {str(path)!r} from its suffix; use .zarr, .nc or .tif, "
            "or pass format='zarr' | 'netcdf' | 'cog'."
        )
    return fmt


def _clean_encoding(ds: xr.Dataset) -> xr.Dataset:
    """A copy without chunk encodings inherited from a previous Zarr (they clash on write)."""
    ds = ds.copy()
    for variable in ds.variables.values():
        variable.encoding = {
            k: v
            for k, v in variable.encoding.items()
            if k not in ("chunks", "preferred_chunks", "shards", "compressors", "filters", "source")
        }
    return ds


def _variable_length_strings(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode has no stable Zarr-3 encoding; variable-length strings do."""
    fixed = [name for name, v in ds.variables.items() if v.dtype.kind == "U" and name not in ds.dims]
    return ds.assign_coords({n: ds[n].astype(object) for n in fixed if n in ds.coords}).assign(
        {n: ds[n].astype(object) for n in fixed if n in ds.data_vars}
    )


def _regular_chunks(ds: xr.Dataset) -> xr.Dataset:
    """Zarr needs equal chunks except the last, per variable; make them so (on this copy only).

    Variables may be chunked differently from each other (each gets its own Zarr chunks).
    """
    fixed = {}
    for name, variable in ds.variables.items():
        if variable.chunks is None or name in ds.indexes:
            continue
        fix = {
            dim: max(sizes)
            for dim, sizes in zip(variable.dims, variable.chunks)
            if len(sizes) > 1 and (len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0])
        }
        if fix:
            fixed[name] = variable.chunk(fix)
    if not fixed:
        return ds
    ds = ds.copy()
    for name, variable in fixed.items():
        if name in ds.coords:
            ds.coords[name] = variable
        else:
            ds[name] = variable
    return ds


def _netcdf_engine() -> str:
    for engine, module in (("netcdf4", "netCDF4"), ("h5netcdf", "h5netcdf")):
        with contextlib.suppress(ImportError):
            __import__(module)
            return engine
    return "scipy"


def _write_netcdf(ds: xr.Dataset, tmp: Path) -> None:
    engine = _netcdf_engine()
    ds = _clean_encoding(ds)
    if engine == "scipy":  # NetCDF-3: no unsigned integers, no 64-bit integers, no bools
        for name, variable in ds.variables.items():
            if variable.dtype.kind == "u":
                wider = {1: "int16", 2: "int32", 4: "int64"}[variable.dtype.itemsize]
                ds[name] = variable.astype(wider)
                ds[name].encoding["dtype"] = wider
    for name, variable in ds.variables.items():  # NetCDF attributes: no None, no bool
        for key, value in list(variable.attrs.items()):
            if isinstance(value, bool):
                variable.attrs[key] = int(value)
            elif value is None:
                del variable.attrs[key]
    try:
        ds.to_netcdf(tmp, engine=engine)
    except NotImplementedError:
        # xarray's scipy writer cannot stream from a dask.distributed cluster (it raises before
        # writing anything): gather the data here, then write.
        _remove(tmp)
        ds.compute().to_netcdf(tmp, engine=engine)


def _write_cog(obj: xr.Dataset | xr.DataArray, tmp: Path) -> None:
    if isinstance(obj, xr.Dataset):
        names = list(obj.data_vars)
        if len(names) != 1:
            raise DataTypeError(
                f"A COG holds one variable; the Dataset has {names}. Write one at a time, "
                f"e.g. write(ds[{names[0]!r}], 'out.tif'), or use a .zarr / .nc path."
            )
        obj = obj[names[0]]
    da = obj
    extra = [d for d in da.dims if d not in ("time", "y", "x")]
    if extra or not {"y", "x"} <= set(da.dims):
        raise DataTypeError(
            f"A COG needs dims (time, y, x) or (y, x); got {da.dims}. Select or reduce the "
            f"other dims first (e.g. .isel({extra[0] if extra else 'band'}=0))."
        )
    if da.rio.crs is None:
        raise GridError(
            "The array has no CRS (no spatial_ref coordinate); a GeoTIFF needs one. Set it with "
            "da.rio.write_crs(epsg)."
        )
    tags = {
        "name": str(da.name or ""),
        "units": str(da.attrs.get("units", "")),
        "long_name": str(da.attrs.get("long_name", "")),
    }
    if "time" in da.dims:
        da = da.transpose("time", "y", "x")
        times = [pd.Timestamp(t).isoformat() for t in da["time"].values]
        tags["time"] = ",".join(times)
        out = da.rename(time="band").assign_coords(band=np.arange(1, da.sizes["time"] + 1))
        out = out.drop_vars([c for c in out.coords if c not in ("band", "y", "x", "spatial_ref")])
        out.attrs = {"long_name": tuple(times)}
    else:
        out = da.drop_vars([c for c in da.coords if c not in ("y", "x", "spatial_ref")])
        out.attrs = {}
    if out.dtype.kind == "f":
        out = out.rio.write_nodata(np.nan, encoded=False)
    elif "fill_value" in da.attrs:
        out = out.rio.write_nodata(da.attrs["fill_value"], encoded=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", **_AFFINE_WARNING)  # rioxarray + affine 3
        out.rio.to_raster(tmp, driver="COG", tags=tags, compress="DEFLATE")


def write(
    obj: xr.Dataset | xr.DataArray,
    path: str | os.PathLike,
    *,
    format: Literal["zarr", "netcdf", "cog"] | None = None,  # noqa: A002 - xarray's word
    overwrite: bool = False,
) -> Path:
    """Write a Dataset or DataArray to Zarr, NetCDF or a Cloud-Optimized GeoTIFF, atomically.

    The data are written to a hidden temporary sibling (``.<name>.partial-<random>``) and
    renamed to ``path`` only when complete, so an interrupted write never leaves a file that
    reads as complete. Computing the data happens here (writing is asking for results).
    While it runs, ``path`` is locked (:func:`glacierxr._safety.output_lock`): a second writer
    of the same path fails at once instead of silently replacing this one, and the leftovers
    of writes that were killed (``.<name>.partial-*``) are removed. Zarr stores get
    consolidated metadata, so ``xr.open_zarr`` opens them quickly and without a warning.

    Parameters
    ----------
    obj
        What to write. A COG holds one variable with dims ``(time, y, x)`` (one band per time
        step, band descriptions = ISO times) or ``(y, x)``, and needs a CRS.
    path
        Destination: ``*.zarr`` (a folder), ``*.nc``, or ``*.tif``.
    format
        Overrides the format told by the suffix.
    overwrite
        Replace an existing ``path`` (only once the new output is complete).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputLockedError
        Another process (or thread) is writing ``path`` right now.
    StorageError
        The disk is full, read-only, or the folder is not writable (also an ``OSError``); the
        message names the path, the space needed and the fix. An earlier ``path`` is intact.
    ConfigError
        The format cannot be told from the suffix.
    DataTypeError
        ``obj`` is not an xarray object, or a COG is asked for several variables / other dims.

    Examples
    --------
    >>> import tempfile, glacierxr as gx
    >>> cube = gx.testing.make_scene_cube(times=2, height=4, width=4)
    >>> out = write(cube, Path(tempfile.mkdtemp()) / "cube.zarr")
    >>> read(out)["green"].shape
    (2, 4, 4)
    """
    if not isinstance(obj, (xr.Dataset, xr.DataArray)):
        raise DataTypeError(f"write() takes an xarray Dataset or DataArray, got {type(obj).__name__}.")
    path = Path(path)
    fmt = _format_of(path, format)
    if not path.parent.is_dir():
        raise ConfigError(f"The folder {str(path.parent)!r} does not exist; create it first.")
    with _safety.output_lock(path):
        _safety.clean_stale(path)  # partials of killed writes: no live writer holds them now
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise OutputExistsError(
                f"{str(path)!r} already exists; write() does not replace outputs unless asked. "
                "Pass overwrite=True (--overwrite on the command line), or choose another path."
            )
        tmp = _safety.partial_path(path)
        try:
            with _safety.storage_errors(path, needed=int(obj.nbytes)):
                _write_to(obj, tmp, fmt)
                _safety.replace(tmp, path)
        except BaseException:
            _safety.remove(tmp)
            raise
    return path


def _write_to(obj: xr.Dataset | xr.DataArray, tmp: Path, fmt: str) -> None:
    """Write ``obj`` to ``tmp`` in ``fmt`` (Zarr with consolidated metadata)."""
    if fmt == "cog":
        _write_cog(obj, tmp)
        return
    ds = obj.to_dataset(name=obj.name or "data") if isinstance(obj, xr.DataArray) else obj
    if fmt == "netcdf":
        _write_netcdf(ds, tmp)
        return
    ds = _variable_length_strings(_regular_chunks(_clean_encoding(ds)))
    with warnings.catch_warnings():  # zarr 3 notes that consolidation is not in its spec yet
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        ds.to_zarr(tmp, mode="w-", consolidated=True)


_remove = _safety.remove


def read(
    path: str | os.PathLike,
    *,
    format: Literal["zarr", "netcdf", "cog"] | None = None,  # noqa: A002
    chunks: Mapping[str, int] | Literal["auto"] | None = {},  # noqa: B006 - xarray's idiom
) -> xr.Dataset | xr.DataArray:
    """Open what :func:`write` wrote, lazily (Dask-backed).

    Zarr and NetCDF give a Dataset; a COG gives a DataArray ``(time, y, x)`` with the times
    from its band descriptions (or ``(y, x)`` for one band without times). The CRS is in
    ``spatial_ref`` in every case.

    Raises
    ------
    OutputNotFoundError
        Nothing at ``path`` (also a ``FileNotFoundError``).

    Examples
    --------
    >>> import tempfile, glacierxr as gx
    >>> snow = gx.testing.make_series(np.ones((2, 3, 3)), name="snow_mask")
    >>> back = read(write(snow, Path(tempfile.mkdtemp()) / "snow.tif"))
    >>> back.dims, str(back["time"].values[1])[:10]
    (('time', 'y', 'x'), '2020-01-17')
    """
    path = Path(path)
    fmt = _format_of(path, format)
    if not path.exists():
        raise OutputNotFoundError(
            f"{str(path)!r} does not exist. Check the path; an interrupted write() leaves "
            "nothing there (run it again)."
        )
    if fmt in ("zarr", "netcdf"):
        if fmt == "zarr":
            ds = xr.open_zarr(path, chunks=chunks, consolidated=False, decode_coords="all")
        else:
            ds = xr.open_dataset(path, chunks=chunks, engine=_netcdf_engine(), decode_coords="all")
        strings = [n for n, v in ds.variables.items() if v.dtype.kind == "T" and n not in ds.dims]
        return ds.assign_coords({n: ds[n].astype(object) for n in strings if n in ds.coords})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", **_AFFINE_WARNING)  # rioxarray + affine 3
        da = rioxarray.open_rasterio(path, chunks=chunks, mask_and_scale=False)
    tags = da.attrs
    name = tags.get("name") or None
    times = [t for t in str(tags.get("time", "")).split(",") if t]
    if times and len(times) == da.sizes["band"]:
        da = da.rename(band="time").assign_coords(time=pd.DatetimeIndex(times).astype("datetime64[ns]"))
    elif da.sizes["band"] == 1:
        da = da.isel(band=0, drop=True)
    attrs = {k: tags[k] for k in ("units", "long_name") if tags.get(k)}
    da.attrs = attrs
    da.name = name
    return da
