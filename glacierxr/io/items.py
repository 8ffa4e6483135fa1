"""STAC items -> scene records: what :func:`glacierxr.load` needs from each item, checked.

Accepts a :class:`pystac.ItemCollection`, :class:`pystac.Item` objects or plain dicts of the
``landsat-c2-l2`` and deprecated ``landsat-8-c2-l2`` collections, resolves the asset key of every
canonical band (:func:`glacierxr.landsat.resolve_asset_key`), makes hrefs absolute and reads the
per-band scale, offset and nodata from ``raster:bands`` (Collection-2 constants where absent).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import numpy as np
import pandas as pd

from glacierxr._remote import redact
from glacierxr.errors import CatalogError, ConfigError, DataTypeError, MissingBandError
from glacierxr.io.grid import _transform_bounds
from glacierxr.landsat import (
    ASSET_ALIASES,
    COLLECTIONS,
    SR_NODATA,
    SR_OFFSET,
    SR_SCALE,
    resolve_asset_key,
)


_QA_BANDS = frozenset({"qa_pixel"})


# Integer DNs up to 16 bits (and floats) are exact in, or meant for, float32.
_REFLECTANCE_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "float32", "float64"})
_QA_DTYPES = frozenset({"uint8", "uint16"})


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
        scene = _scene(item, index)
        properties = item.get("properties") or {}
        new_assets, scene.bands = _band_assets(item, bands, origin, scene)
        first_asset = next(iter(new_assets.values()))
        item_epsg = _epsg_of(properties)
        fields = {**properties, **{k: v for k, v in first_asset.items() if k.startswith("proj:")}}
        scene.epsg = _epsg_of(fields) if _epsg_of(first_asset) is None else _epsg_of(first_asset)
        scene.epsg = scene.epsg if scene.epsg is not None else item_epsg
        scene.proj = _native_box(fields)
        scene.lonlat = _lonlat_box(item, scene.epsg, scene.proj)
        if scene.lonlat is None and scene.proj is None:
            raise CatalogError(
                f"Item {scene.id!r} has neither a bbox nor proj:transform/proj:shape; load() "
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


def _scene(item: Mapping[str, Any], index: int) -> _Scene:
    """The item's identity, time and metadata as a scene record (its bands come later)."""
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
    return scene


def _band_assets(item, bands: Sequence[str], origin, scene: _Scene) -> tuple[dict, dict]:
    """The item's asset of every band (absolute href, ``proj:epsg``) and its band metadata."""
    assets = item.get("assets") or {}
    new_assets, band_info = {}, {}
    for band in bands:
        key = resolve_asset_key(assets, band)
        if key is None:
            raise MissingBandError(
                f"Band {band!r} not found in item {scene.id!r} (collection {scene.collection!r}). "
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
        band_info[band] = _band_metadata(band, asset, asset["href"], scene.id)
    return new_assets, band_info


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
