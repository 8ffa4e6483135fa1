"""Find Landsat Collection-2 Level-2 scenes in a STAC API or in a static STAC catalog.

:func:`search` is the first step of the data flow. It asks a STAC API (by default the
Microsoft Planetary Computer) or walks a static catalog on disk with the same filters, keeps
the scenes whose cloud cover and platform fit, sorts them by time and signs Planetary
Computer asset URLs. :func:`resign_href` gives a fresh signature to one URL and is what the
loader calls when it actually reads a file, so that loads longer than a token's life work.

Planetary Computer signing, in short
------------------------------------
Assets on ``*.blob.core.windows.net`` are readable with a SAS token appended as the URL's
query. :mod:`planetary_computer` fetches one token per storage account and container from
``{sas_url}/{account}/{container}``, where ``sas_url`` is ``PC_SDK_SAS_URL`` (default
``https://planetarycomputer.microsoft.com/api/sas/v1/token``; read once per process and then
cached by ``planetary_computer.settings.Settings.get``). Tokens are cached in
``planetary_computer.sas.TOKEN_CACHE`` and fetched again when less than 60 s of their
``msft:expiry`` remain. Anonymous tokens last about an hour, so a signed URL kept by a long
computation goes stale; :func:`resign_href` strips the old token and asks the cache again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac

from glacierxr import _remote
from glacierxr._remote import (  # re-exported: part of this module's documented API
    RETRY_BACKOFF_FACTOR,
    TOKEN_LOGGER_PACKAGES,
    RedactTokensFilter,
    redact,
    redact_tokens_in_logs,
    shorten,
)
from glacierxr._validate import check_bbox, require_positive
from glacierxr.errors import CatalogError, DataTypeError, GridError, NoScenesError
from glacierxr.landsat import COLLECTIONS, PC_STAC_API

__all__ = [
    "search",
    "resign_href",
    "cql2_filter",
    "parse_datetime",
    "RETRY_BACKOFF_FACTOR",
    "RETRY_STATUS",
    "REQUEST_TIMEOUT",
    "RedactTokensFilter",
    "redact_tokens_in_logs",
]

#: HTTP statuses retried (besides connection errors and timeouts).
RETRY_STATUS = (429, 500, 502, 503, 504)
#: ``(connect, read)`` timeout in seconds of every request to a STAC API.
REQUEST_TIMEOUT = (10.0, 60.0)

_UTC = dt.timezone.utc
_END_OF_PERIOD = dt.timedelta(microseconds=1)


# --------------------------------------------------------------------------- public API


def search(
    *,
    bbox: Sequence[float] | None = None,
    intersects: Mapping[str, Any] | Any | None = None,
    datetime: str | Sequence[Any] | dt.datetime | dt.date | None,
    max_cloud: float | None = 20.0,
    collection: str | None = "landsat-c2-l2",
    platforms: Sequence[str] | str | None = ("landsat-8", "landsat-9"),
    catalog: str | os.PathLike | pystac.Catalog | pystac.ItemCollection = PC_STAC_API,
    limit: int | None = None,
    glacier: str | None = None,
    sign: bool = True,
    max_retries: int = 3,
    page_size: int = 100,
    server_filter: bool | None = None,
) -> pystac.ItemCollection:
    """Find Landsat Collection-2 Level-2 scenes over an area and a period.

    Parameters
    ----------
    bbox
        ``(west, south, east, north)`` in degrees of longitude and latitude. A box with
        ``west > east`` crosses the antimeridian (180°) and is searched as two boxes, one on
        each side; such a box may be at most 180° wide (wider ones are almost always a
        swapped west/east and raise :class:`GridError`).
    intersects
        GeoJSON geometry (a mapping, or an object with ``__geo_interface__``) instead of
        ``bbox``. STAC APIs test it against item footprints; static catalogs compare the
        geometry's bounding box with each item's.
    datetime
        Period: ``"2013-01-01/2021-01-01"``, with open ends ``"../2020-01-01"`` or
        ``"2019-06-01/.."``, a single ``"2020"``, ``"2020-07"`` or ``"2020-07-15"`` (that whole
        year, month or day), or a pair ``(start, end)`` of dates, datetimes, strings or None.
        Both ends are inclusive and a date-only end includes its whole day. Naive times are
        UTC. ``None`` means any time.
    max_cloud
        Largest ``eo:cloud_cover`` (percent, 0–100) kept; scenes without the property are
        dropped. ``None`` keeps every cloud cover.
    collection
        STAC collection id: ``"landsat-c2-l2"`` or the deprecated ``"landsat-8-c2-l2"`` on the
        Planetary Computer. ``None`` searches every collection.
    platforms
        ``platform`` values kept (``"landsat-8"`` also matches ``"LANDSAT_8"``). ``None``
        keeps every platform; scenes without the property are dropped otherwise.
    catalog
        A STAC API URL (``http://`` or ``https://``; default the Planetary Computer), the path
        of a static ``catalog.json`` / ``collection.json`` (or of its folder, or of an
        ItemCollection ``.geojson``), or an already opened :class:`pystac.Catalog` or
        :class:`pystac.ItemCollection`. A URL whose landing page is not an item-search API is
        walked like a static catalog.
    limit
        At most this many scenes: the first ``limit`` matches in the order the catalog gives
        them (the Planetary Computer gives the newest first; static catalogs are walked
        earliest first), then sorted by time.
    glacier
        Name of a region in :mod:`glacierxr.regions` (``"parvati"``, ``"aletsch"`` ...), whose
        box is used as ``bbox``.
    sign
        Sign asset URLs on ``*.blob.core.windows.net`` (Planetary Computer storage) with a SAS
        token from :mod:`planetary_computer`; other URLs and paths stay as they are.
    max_retries
        Retries of every request (connection errors, timeouts, HTTP 429/5xx) with exponential
        backoff (:data:`RETRY_BACKOFF_FACTOR`) before giving up with :class:`CatalogError`.
    page_size
        Items asked for per page of an API search; pystac-client follows the ``next`` links.
    server_filter
        Send cloud cover and platform as a CQL2-JSON ``filter``: ``None`` (default) only when
        the API advertises the filter conformance class, ``True`` always (for servers that
        support it without saying so), ``False`` never. Either way both are checked again on
        the returned items.

    Returns
    -------
    pystac.ItemCollection
        The matching items, sorted by acquisition time (then id). Asset hrefs of static
        catalogs are made absolute.

    Raises
    ------
    NoScenesError
        Nothing matches; the message repeats the query and says what to relax.
    CatalogError
        The catalog cannot be reached or read, the collection is not in it (the message lists
        the collections it has), or an argument is invalid.
    ConfigError
        ``limit``, ``page_size`` or ``max_retries`` is not a positive (for ``max_retries``
        non-negative) integer.
    GridError
        ``bbox`` is not ``(west, south, east, north)`` in degrees, or ``bbox``,
        ``intersects`` and ``glacier`` are combined.

    Examples
    --------
    >>> import tempfile
    >>> import glacierxr as gx
    >>> path = gx.sample.write_catalog(tempfile.mkdtemp(), width=48, height=48,
    ...                                start="2020-06-01", end="2020-09-30")
    >>> items = search(datetime="2020-06-01/2020-09-30", max_cloud=100, catalog=path)
    >>> [item.datetime for item in items] == sorted(item.datetime for item in items)
    True
    >>> all(item.properties["eo:cloud_cover"] <= 20
    ...     for item in search(datetime="2020", catalog=path))
    True
    """
    redact_tokens_in_logs()
    boxes, query_bbox = _spatial_boxes(bbox=bbox, intersects=intersects, glacier=glacier)
    start, end = parse_datetime(datetime)
    query = _Query(
        bbox=query_bbox,
        intersects=_geometry(intersects) if intersects is not None else None,
        boxes=boxes,
        start=start,
        end=end,
        datetime_text=datetime,
        max_cloud=_check_max_cloud(max_cloud),
        collection=_check_collection(collection),
        platforms=_check_platforms(platforms),
        catalog=catalog,
        glacier=glacier,
    )
    limit = require_positive(limit, name="limit", integer=True, allow_none=True, example=100)
    page_size = require_positive(page_size, name="page_size", integer=True, example=100)
    max_retries = require_positive(max_retries, name="max_retries", integer=True, allow_zero=True, example=5)

    if isinstance(catalog, (pystac.Catalog, pystac.ItemCollection)):
        items, stats = _search_static(catalog, query, limit)
    elif isinstance(catalog, (str, os.PathLike)):
        text = os.fspath(catalog)
        if re.match(r"^https?://", text, flags=re.IGNORECASE):
            items, stats = _search_api(
                text, query, limit=limit, page_size=page_size, max_retries=max_retries,
                server_filter=server_filter,
            )
        else:
            items, stats = _search_static(_read_static(text), query, limit)
    else:
        raise DataTypeError(
            f"catalog must be a STAC API URL, the path of a static catalog or a pystac "
            f"Catalog/ItemCollection; got {type(catalog).__name__}. "
            f"Pass e.g. catalog={PC_STAC_API!r} or catalog='path/to/catalog.json'."
        )

    if not items:
        raise NoScenesError(_no_scenes_message(query, stats))
    items.sort(key=_sort_key)
    if sign:
        for item in items:
            _sign_item(item, max_retries=max_retries)
    return pystac.ItemCollection(items, clone_items=False)


def resign_href(href: str, *, max_retries: int = 5) -> str:
    """Sign a Planetary Computer URL again with a token that is still valid.

    Any SAS query already on ``href`` is removed, then a token from
    :mod:`planetary_computer`'s cache is appended; the cache fetches a new token from
    ``PC_SDK_SAS_URL`` when the cached one has less than a minute left. Hrefs that are not on
    ``*.blob.core.windows.net`` (local paths, other servers) come back unchanged. A plain
    module-level function, so it pickles to Dask workers.

    Parameters
    ----------
    href
        Asset URL, signed or not.
    max_retries
        Retries of the token request (connection errors, HTTP 429/5xx).

    Returns
    -------
    str
        The URL with a current token.

    Raises
    ------
    AssetReadError
        No token could be obtained; the message names the URL without any token.

    Examples
    --------
    >>> resign_href("/data/LC08_SR_B3.TIF")
    '/data/LC08_SR_B3.TIF'
    >>> resign_href("https://example.com/a.tif?x=1")
    'https://example.com/a.tif?x=1'
    """
    return _remote.resign(href, max_retries=max_retries)


def cql2_filter(
    *, max_cloud: float | None, platforms: Sequence[str] | None
) -> dict[str, Any] | None:
    """CQL2-JSON filter for cloud cover and platform, or None when there is nothing to filter.

    Examples
    --------
    >>> cql2_filter(max_cloud=20, platforms=None)
    {'op': '<=', 'args': [{'property': 'eo:cloud_cover'}, 20.0]}
    >>> cql2_filter(max_cloud=None, platforms=None) is None
    True
    """
    parts: list[dict[str, Any]] = []
    if max_cloud is not None:
        parts.append({"op": "<=", "args": [{"property": "eo:cloud_cover"}, float(max_cloud)]})
    if platforms is not None:
        spellings: list[str] = []
        for name in platforms:
            for spelling in (name, _normal_platform(name), _normal_platform(name).upper()
                             .replace("-", "_")):
                if spelling not in spellings:
                    spellings.append(spelling)
        parts.append({"op": "in", "args": [{"property": "platform"}, spellings]})
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"op": "and", "args": parts}


def parse_datetime(value: Any) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Turn a STAC-style period into ``(start, end)`` UTC datetimes, both inclusive.

    Examples
    --------
    >>> parse_datetime("2013-01-01/2021-01-01")[1].isoformat()
    '2021-01-01T23:59:59.999999+00:00'
    >>> parse_datetime("../2020-01-01")[0] is None
    True
    >>> [t.date().isoformat() for t in parse_datetime("2020-02")]
    ['2020-02-01', '2020-02-29']
    """
    if value is None:
        return None, None
    if isinstance(value, str):
        text = value.strip()
        if "/" in text:
            parts = text.split("/")
            if len(parts) != 2:
                raise CatalogError(_datetime_message(value))
            start = _parse_instant(parts[0], value, end=False)
            end = _parse_instant(parts[1], value, end=True)
        else:
            if text in ("", ".."):
                raise CatalogError(_datetime_message(value))
            start = _parse_instant(text, value, end=False)
            end = _parse_instant(text, value, end=True)
    elif isinstance(value, (dt.datetime, dt.date)):
        start = _parse_instant(value, value, end=False)
        end = _parse_instant(value, value, end=True)
    elif isinstance(value, Sequence) and len(value) == 2:
        start = _parse_instant(value[0], value, end=False)
        end = _parse_instant(value[1], value, end=True)
    else:
        raise CatalogError(_datetime_message(value))
    if start is not None and end is not None and start > end:
        raise CatalogError(
            f"datetime={value!r} starts ({start.isoformat()}) after it ends "
            f"({end.isoformat()}). Pass 'start/end' with the start first."
        )
    return start, end


# --------------------------------------------------------------------------- query & checks


@dataclass
class _Query:
    bbox: tuple[float, float, float, float] | None
    intersects: dict[str, Any] | None
    boxes: list[tuple[float, float, float, float]] | None
    start: dt.datetime | None
    end: dt.datetime | None
    datetime_text: Any
    max_cloud: float | None
    collection: str | None
    platforms: tuple[str, ...] | None
    catalog: Any
    glacier: str | None

    def datetime_interval(self) -> str | None:
        if self.start is None and self.end is None:
            return None
        return f"{_iso(self.start) if self.start else '..'}/{_iso(self.end) if self.end else '..'}"

    def describe(self) -> str:
        where = (
            f"bbox={self.bbox}" if self.intersects is None
            else f"intersects={shorten(json.dumps(self.intersects), 120)}"
        )
        if self.glacier is not None:
            where += f" (glacier={self.glacier!r})"
        return (
            f"{where}, datetime={self.datetime_text!r}, max_cloud={self.max_cloud}, "
            f"collection={self.collection!r}, "
            f"platforms={list(self.platforms) if self.platforms else None}, "
            f"catalog={_catalog_name(self.catalog)}"
        )


def _spatial_boxes(*, bbox, intersects, glacier):
    """Validate the spatial arguments -> (boxes to test/ask for, the bbox as the user gave it)."""
    given = [name for name, v in (("bbox", bbox), ("intersects", intersects), ("glacier", glacier))
             if v is not None]
    if len(given) > 1:
        raise GridError(
            f"Pass only one of bbox, intersects and glacier; got {' and '.join(given)}. "
            "glacier='name' uses that region's bbox; drop the others."
        )
    if glacier is not None:
        from glacierxr.regions import get_region

        bbox = get_region(glacier).bbox
    if intersects is not None:
        geometry = _geometry(intersects)
        box = _geometry_bbox(geometry)
        return [box], None
    if bbox is None:
        return None, None
    box = check_bbox(bbox, allow_antimeridian=True)
    return _split_antimeridian(box), box


def _split_antimeridian(box):
    """A box crossing 180° (west > east; checked by ``check_bbox``) as its two halves."""
    west, south, east, north = box
    if west <= east:
        return [box]
    return [(west, south, 180.0, north), (-180.0, south, east, north)]


def _geometry(value) -> dict[str, Any]:
    if hasattr(value, "__geo_interface__"):
        value = value.__geo_interface__
    if not isinstance(value, Mapping) or "type" not in value:
        raise GridError(
            f"intersects must be a GeoJSON geometry (a mapping with 'type' and 'coordinates') or "
            f"an object with __geo_interface__; got {type(value).__name__}."
        )
    value = dict(value)
    if value["type"] == "Feature":
        value = dict(value.get("geometry") or {})
    if "coordinates" not in value and value.get("type") != "GeometryCollection":
        raise GridError(f"intersects has no 'coordinates': {shorten(str(value), 200)}.")
    return value


def _geometry_bbox(geometry) -> tuple[float, float, float, float]:
    xs: list[float] = []
    ys: list[float] = []

    def walk(coords):
        if isinstance(coords, (int, float)):
            return
        if coords and isinstance(coords[0], (int, float)):
            xs.append(float(coords[0]))
            ys.append(float(coords[1]))
        else:
            for part in coords:
                walk(part)

    if geometry.get("type") == "GeometryCollection":
        for part in geometry.get("geometries", []):
            box = _geometry_bbox(part)
            xs.extend((box[0], box[2]))
            ys.extend((box[1], box[3]))
    else:
        walk(geometry.get("coordinates", []))
    if not xs:
        raise GridError("intersects has no coordinates. Pass a non-empty GeoJSON geometry.")
    return check_bbox((min(xs), min(ys), max(xs), max(ys)))


def _check_max_cloud(value):
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CatalogError(
            f"max_cloud must be a number of percent (0–100) or None; got {value!r}."
        ) from None
    if not 0 <= number <= 100:
        raise CatalogError(
            f"max_cloud={value!r} is outside 0–100: eo:cloud_cover is a percentage. "
            "Pass e.g. max_cloud=20, or None to keep every scene."
        )
    return number


def _check_collection(value):
    if value is None or (isinstance(value, str) and value.strip()):
        return value if value is None else value.strip()
    raise CatalogError(
        f"collection must be a collection id such as {COLLECTIONS[0]!r} or None; got {value!r}."
    )


def _check_platforms(value):
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise CatalogError(
            f"platforms must be a list of names such as ['landsat-8']; got {value!r}."
        ) from None
    if not names or not all(isinstance(v, str) and v.strip() for v in names):
        raise CatalogError(
            f"platforms must be a non-empty list of names such as ['landsat-8', 'landsat-9'], "
            f"or None for any platform; got {value!r}."
        )
    return names


def _datetime_message(value) -> str:
    return (
        f"datetime={value!r} is not a period glacierxr understands. Pass 'YYYY-MM-DD/YYYY-MM-DD' "
        "(open ends as '..', e.g. '../2020-01-01'), a single 'YYYY', 'YYYY-MM' or 'YYYY-MM-DD', "
        "or a pair (start, end) of dates/datetimes/None."
    )


def _parse_instant(value, original, *, end: bool) -> dt.datetime | None:
    if value is None:
        return None
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        value = value.to_pydatetime()
    if type(value).__name__ == "datetime64":  # numpy.datetime64
        value = str(value)
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)
    if isinstance(value, dt.date):
        day = dt.datetime(value.year, value.month, value.day, tzinfo=_UTC)
        return day + dt.timedelta(days=1) - _END_OF_PERIOD if end else day
    if not isinstance(value, str):
        raise CatalogError(_datetime_message(original))
    text = value.strip()
    if text in ("", ".."):
        return None
    try:
        if re.fullmatch(r"\d{4}", text):
            first = dt.datetime(int(text), 1, 1, tzinfo=_UTC)
            after = first.replace(year=first.year + 1)
        elif re.fullmatch(r"\d{4}-\d{2}", text):
            year, month = map(int, text.split("-"))
            first = dt.datetime(year, month, 1, tzinfo=_UTC)
            after = (first.replace(year=year + 1, month=1) if month == 12
                     else first.replace(month=month + 1))
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}|\d{8}", text):  # a day, also in basic ISO form
            first = dt.datetime.fromisoformat(text).replace(tzinfo=_UTC)
            after = first + dt.timedelta(days=1)
        else:
            instant = dt.datetime.fromisoformat(text.replace("z", "Z"))
            return (instant.replace(tzinfo=_UTC) if instant.tzinfo is None
                    else instant.astimezone(_UTC))
    except ValueError:
        raise CatalogError(_datetime_message(original)) from None
    return after - _END_OF_PERIOD if end else first


def _iso(value: dt.datetime) -> str:
    return value.astimezone(_UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _normal_platform(name: str) -> str:
    return name.strip().lower().replace("_", "-")


# --------------------------------------------------------------------------- item tests


def _item_interval(item: pystac.Item) -> tuple[dt.datetime | None, dt.datetime | None]:
    props = item.properties
    start = item.datetime
    end = item.datetime
    if start is None:
        try:
            start = pystac.utils.str_to_datetime(props["start_datetime"])
            end = pystac.utils.str_to_datetime(props["end_datetime"])
        except (KeyError, TypeError, ValueError):
            return None, None
    return start, end


def _sort_key(item: pystac.Item):
    start, _ = _item_interval(item)
    return (start or dt.datetime.max.replace(tzinfo=_UTC), item.id)


def _item_boxes(item: pystac.Item):
    box = item.bbox
    if not box and item.geometry:
        try:
            box = _geometry_bbox(item.geometry)
        except GridError:
            return []
    if not box:
        return []
    if len(box) == 6:  # 3-D bbox: (west, south, zmin, east, north, zmax)
        west, south, east, north = (float(box[i]) for i in (0, 1, 3, 4))
    elif len(box) == 4:
        west, south, east, north = (float(v) for v in box)
    else:
        return []
    if west > east:
        return [(west, south, 180.0, north), (-180.0, south, east, north)]
    return [(west, south, east, north)]


def _boxes_intersect(a, b) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _reject_reason(item: pystac.Item, query: _Query, *, spatial_temporal: bool) -> str | None:
    """Why ``item`` does not match ``query`` (None when it does)."""
    if query.collection is not None and item.collection_id != query.collection:
        return "collection"
    if spatial_temporal:
        if query.boxes is not None:
            boxes = _item_boxes(item)
            if not any(_boxes_intersect(a, b) for a in boxes for b in query.boxes):
                return "bbox"
        if query.start is not None or query.end is not None:
            start, end = _item_interval(item)
            if start is None:
                return "datetime"
            if query.start is not None and end < query.start:
                return "datetime"
            if query.end is not None and start > query.end:
                return "datetime"
    if query.platforms is not None:
        platform = item.properties.get("platform")
        wanted = {_normal_platform(p) for p in query.platforms}
        if not isinstance(platform, str) or _normal_platform(platform) not in wanted:
            return "platform"
    if query.max_cloud is not None:
        cover = item.properties.get("eo:cloud_cover")
        is_number = isinstance(cover, (int, float)) and not isinstance(cover, bool)
        if not is_number or not cover <= query.max_cloud:
            return "max_cloud"
    return None


# --------------------------------------------------------------------------- static catalogs


def _read_static(text: str):
    path = Path(text).expanduser()
    if path.is_dir():
        for name in ("catalog.json", "collection.json"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CatalogError(
                f"No STAC catalog in the folder {path}: it holds neither catalog.json nor "
                "collection.json. Pass the path of the catalog file, or a STAC API URL."
            )
    if not path.is_file():
        raise CatalogError(
            f"No STAC catalog at {path}: the file does not exist. Pass the path of a "
            "catalog.json / collection.json, or a STAC API URL (http:// or https://)."
        )
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CatalogError(
            f"Could not read a STAC catalog from {path}: {shorten(str(err), 200)}. "
            "Pass a readable STAC JSON file."
        ) from None
    kind = document.get("type") if isinstance(document, dict) else None
    try:
        if kind == "FeatureCollection":
            return pystac.ItemCollection.from_file(str(path))
        stac_object = pystac.read_file(str(path))
    except Exception as err:  # pystac raises many kinds of errors on bad STAC
        raise CatalogError(
            f"Could not read a STAC catalog from {path}: {type(err).__name__}: "
            f"{shorten(str(err), 200)}. Pass a valid STAC catalog, collection or ItemCollection."
        ) from None
    if isinstance(stac_object, pystac.Item):
        return pystac.ItemCollection([stac_object])
    if not isinstance(stac_object, pystac.Catalog):
        raise CatalogError(
            f"{path} is a STAC {type(stac_object).__name__}, not a catalog or collection. "
            "Pass the path of catalog.json or collection.json."
        )
    return stac_object


def _walk(source) -> tuple[Iterable[pystac.Item], set[str]]:
    """Items of a static source, and the collection ids it declares."""
    if isinstance(source, pystac.ItemCollection):
        items = list(source)
        return items, {i.collection_id for i in items if i.collection_id}
    collections = {c.id for c in source.get_all_collections()}
    if isinstance(source, pystac.Collection):
        collections.add(source.id)
    return source.get_items(recursive=True), collections


def _search_static(source, query: _Query, limit: int | None):
    from pystac_client.warnings import PystacClientWarning

    try:
        with warnings.catch_warnings():
            # FallbackToPystac: expected when walking a static catalog served over HTTP
            warnings.simplefilter("ignore", PystacClientWarning)
            items_iter, declared = _walk(source)
            found = list(items_iter)
    except Exception as err:
        raise CatalogError(
            f"Could not walk the STAC catalog {_catalog_name(query.catalog)}: "
            f"{type(err).__name__}: {shorten(redact(str(err)), 200)}. Check that its links "
            "point at files that exist."
        ) from None
    collections = declared | {i.collection_id for i in found if i.collection_id}
    if query.collection is not None and query.collection not in collections:
        raise CatalogError(_unknown_collection_message(query, sorted(collections)))
    found.sort(key=_sort_key)
    reasons: Counter[str] = Counter()
    kept: list[pystac.Item] = []
    for item in found:
        reason = _reject_reason(item, query, spatial_temporal=True)
        if reason is not None:
            reasons[reason] += 1
            continue
        kept.append(_absolute_clone(item))
        if limit is not None and len(kept) >= limit:
            break
    extent = _union_bbox(found)
    return kept, {"seen": len(found), "reasons": reasons, "extent": extent, "where": "catalog"}


def _absolute_clone(item: pystac.Item) -> pystac.Item:
    clone = item.clone()
    for key, asset in item.assets.items():
        href = asset.get_absolute_href()
        if href is not None:
            clone.assets[key].href = href
    return clone


def _union_bbox(items):
    boxes = [b for item in items for b in _item_boxes(item)]
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


# --------------------------------------------------------------------------- STAC API


def _retry(max_retries: int):
    from urllib3.util.retry import Retry

    return Retry(
        total=max_retries,
        connect=max_retries,
        read=max_retries,
        status=max_retries,
        backoff_factor=RETRY_BACKOFF_FACTOR,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,  # searches are read-only, POST included
        raise_on_status=False,
        respect_retry_after_header=True,
    )


def _api_error_message(url: str, err: Exception, max_retries: int, what: str) -> str:
    status = getattr(err, "status_code", None)
    found = f"HTTP {status}: " if status else ""
    detail = shorten(redact(str(err)), 300) or type(err).__name__
    return (
        f"Could not {what} the STAC API at {url} (after {max_retries} retries): {found}{detail}. "
        "Check the URL and the network connection (a proxy or firewall?), try again later or "
        "with a larger max_retries=, or pass catalog='path/to/catalog.json' for a static catalog."
    )


def _open_client(url: str, max_retries: int):
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    stac_io = StacApiIO(max_retries=_retry(max_retries), timeout=REQUEST_TIMEOUT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NoConformsTo: handled below by walking statically
            # Client.open() hands its own ``timeout`` (default None: wait forever) to
            # stac_io.update(), so the time-out must be given here too.
            return Client.open(url, stac_io=stac_io, timeout=REQUEST_TIMEOUT)
    except Exception as err:  # APIError, ConnectionError, JSON / STAC decoding errors
        raise CatalogError(_api_error_message(url, err, max_retries, "open")) from None


def _search_api(url, query: _Query, *, limit, page_size, max_retries, server_filter):
    from pystac_client.conformance import ConformanceClasses

    client = _open_client(url, max_retries)
    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        # a static catalog served over HTTP: walk it like one on disk
        return _search_static(client, query, limit)

    advertised = client.conforms_to(ConformanceClasses.FILTER)
    use_filter = advertised if server_filter is None else bool(server_filter)
    cql2 = cql2_filter(max_cloud=query.max_cloud, platforms=query.platforms) if use_filter else None
    if cql2 is not None and not advertised:
        client.add_conforms_to("FILTER")  # the caller vouches for the server

    kept: list[pystac.Item] = []
    seen_ids: set[str] = set()
    reasons: Counter[str] = Counter()
    seen = 0
    spatial = [None] if query.intersects is not None or query.boxes is None else query.boxes
    per_page = min(page_size, limit) if (limit is not None and cql2 is not None) else page_size
    try:
        for box in spatial:
            if limit is not None and len(kept) >= limit:
                break
            item_search = client.search(
                collections=[query.collection] if query.collection else None,
                bbox=box,
                intersects=query.intersects,
                datetime=query.datetime_interval(),
                limit=per_page,
                **({"filter": cql2, "filter_lang": "cql2-json"} if cql2 is not None else {}),
            )
            for item in item_search.items():
                seen += 1
                if item.id in seen_ids:
                    continue
                reason = _reject_reason(item, query, spatial_temporal=False)
                if reason is not None:
                    reasons[reason] += 1
                    continue
                seen_ids.add(item.id)
                kept.append(item)
                if limit is not None and len(kept) >= limit:
                    break
    except CatalogError:
        raise
    except Exception as err:
        if query.collection is not None:
            _check_api_collection(client, url, query, max_retries)
        raise CatalogError(_api_error_message(url, err, max_retries, "search")) from None
    if not kept and query.collection is not None:
        _check_api_collection(client, url, query, max_retries)
    return kept, {"seen": seen, "reasons": reasons, "extent": None, "where": "API",
                  "server_filter": cql2 is not None}


def _check_api_collection(client, url, query: _Query, max_retries: int) -> None:
    """Raise CatalogError listing the API's collections when ``query.collection`` is not one."""
    try:
        ids = sorted(c.id for c in client.get_collections())
    except Exception as err:
        message = _api_error_message(url, err, max_retries, "list the collections of")
        raise CatalogError(message) from None
    if ids and query.collection not in ids:
        raise CatalogError(_unknown_collection_message(query, ids))


# --------------------------------------------------------------------------- messages


def _unknown_collection_message(query: _Query, available: list[str]) -> str:
    shown = available if len(available) <= 40 else available[:40] + ["..."]
    known = [c for c in COLLECTIONS if c in available]
    hint = f" Landsat C2 L2 is {known[0]!r} there." if known else ""
    return (
        f"Collection {query.collection!r} is not in the catalog {_catalog_name(query.catalog)}. "
        f"It has: {shown}.{hint} Pass collection=<one of those> (or collection=None for all)."
    )


def _no_scenes_message(query: _Query, stats) -> str:
    reasons = stats.get("reasons") or Counter()
    seen = stats.get("seen", 0)
    where = stats.get("where", "catalog")
    if seen:
        dropped = ", ".join(f"{n} by {name}" for name, n in reasons.most_common())
        found = f" The {where} returned {seen} item(s); all were dropped: {dropped}."
    else:
        found = f" The {where} returned no item for this area, period and collection."
    extent = stats.get("extent")
    if extent is not None and reasons.get("bbox"):
        found += f" Its items cover lon/lat {tuple(round(v, 4) for v in extent)}."
    return (
        f"No scenes match the search: {query.describe()}.{found} To find some: raise max_cloud "
        "(e.g. max_cloud=50, or None), widen datetime (e.g. '2013-01-01/..'), check that bbox "
        "is (west, south, east, north) in lon/lat degrees and overlaps the catalog, or pass "
        "platforms=None / another collection."
    )


def _catalog_name(catalog) -> str:
    if isinstance(catalog, (str, os.PathLike)):
        return repr(os.fspath(catalog))
    if isinstance(catalog, pystac.Catalog):
        return f"<{type(catalog).__name__} {catalog.id!r}>"
    return f"<{type(catalog).__name__}>"


# --------------------------------------------------------------------------- signing


def _sign_item(item: pystac.Item, *, max_retries: int) -> None:
    for asset in item.assets.values():
        asset.href = _remote.sign(asset.href, strip=False, max_retries=max_retries, error=CatalogError)
