"""``load``: STAC items -> a lazy ``(time, y, x)`` Dataset, shaped validate -> stack -> describe.

The scene records come from :mod:`glacierxr.io.items`, the grid from :mod:`glacierxr.io.grid`,
the pixels (at compute time) through :class:`glacierxr.io.reader.LandsatReader`; stackstac
builds the Dask graph.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import dask.array
import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import stackstac
import xarray as xr
from rasterio.enums import Resampling

from glacierxr._remote import redact_tokens_in_logs
from glacierxr._validate import check_bbox, require_choice, require_positive
from glacierxr.errors import AssetReadError, ConfigError, GridError, NoScenesError
from glacierxr.io.grid import (
    _AFFINE_WARNING,
    MAX_PIXELS,
    _anchor,
    _check_grid_size,
    _contiguous,
    _dn_to_reflectance,
    _footprint,
    _group_coords,
    _groups,
    _merge_groups,
    _per_time,
    _snap,
    _squeeze_band,
    _transform_bounds,
    _union,
)
from glacierxr.io.items import _QA_BANDS, _check_bands, _scenes, _source
from glacierxr.io.reader import LandsatReader, _gdal_env
from glacierxr.landsat import QA_BITS, QA_FILL

__all__ = ["load", "DEFAULT_BANDS", "DEFAULT_CHUNKS"]


#: Bands :func:`load` returns unless told otherwise.
DEFAULT_BANDS = ("green", "swir16", "qa_pixel")
#: Default Dask chunks: one scene per chunk, spatial tiles of up to 1024 x 1024 pixels.
DEFAULT_CHUNKS: Mapping[str, int] = {"time": 1, "y": 1024, "x": 1024}


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
    options = _check_load(bands=bands, chunks=chunks, groupby=groupby, resampling=resampling,
                          on_error=on_error, resolution=resolution, max_pixels=max_pixels)
    scenes, plain = _scenes(items, options.bands)
    if not scenes:
        raise NoScenesError(
            "No STAC items to load. Widen the search (bbox, datetime, max_cloud) or check the "
            "catalog."
        )
    order = sorted(range(len(scenes)), key=lambda i: scenes[i].time)
    scenes, plain = [scenes[i] for i in order], [plain[i] for i in order]
    epsg, bounds, keep = _grid(scenes, plain, bbox=bbox, epsg=epsg, options=options)
    _check_grid_size(bounds, options.resolution, options.max_pixels)
    # one Dask block along time per group (solar day)
    groups = _groups([scenes[i] for i in keep], groupby)
    order = [keep[i] for group in groups for i in group]
    scenes, plain = [scenes[i] for i in order], [plain[i] for i in order]
    group_sizes = [len(group) for group in groups]
    stacks = _stacks(plain, scenes, epsg=epsg, bounds=bounds, group_sizes=group_sizes, options=options)
    variables = _reflectance(stacks, scenes, group_sizes)
    ds = xr.Dataset(
        {name: (("time", "y", "x"), variables[name]) for name in options.bands},
        coords={"y": stacks[options.bands[0]]["y"].values, "x": stacks[options.bands[0]]["x"].values,
                **_group_coords(scenes, _contiguous(group_sizes))},
    )
    if any(size > 1 for size in group_sizes) and options.chunks["time"] != 1:
        ds = ds.chunk({"time": options.chunks["time"]})
    return _describe(ds, scenes, epsg=epsg, bbox=bbox, groupby=groupby, options=options)


class _Options(collections.namedtuple(
    "_Options", "bands chunks resampling on_error resolution max_pixels"
)):
    """load()'s checked options."""


def _check_load(*, bands, chunks, groupby, resampling, on_error, resolution, max_pixels) -> _Options:
    """Validate load()'s options (no item is looked at)."""
    bands = _check_bands(bands)
    chunk_sizes = _chunk_sizes(chunks)
    require_choice(groupby, ("solar_day", None), name="groupby")
    require_choice(on_error, ("raise", "skip"), name="on_error")
    try:
        resampling_enum = Resampling[resampling] if isinstance(resampling, str) else Resampling(resampling)
    except (KeyError, ValueError):
        raise ConfigError(
            f"Unknown resampling {resampling!r}; use one of {[r.name for r in Resampling][:10]} …"
        ) from None
    resolution = float(require_positive(resolution, name="resolution (CRS units, metres for UTM)", example=30))
    require_positive(max_pixels, name="max_pixels", integer=True, example=MAX_PIXELS)
    return _Options(bands, chunk_sizes, resampling_enum, on_error, resolution, max_pixels)


def _grid(scenes, plain, *, bbox, epsg, options: _Options) -> tuple[int, tuple, list[int]]:
    """The CRS, the snapped bounds and the positions of the items that overlap them.

    With a ``bbox``, stackstac itself is asked which items it keeps for those bounds
    (:func:`_kept_by_stackstac`), so the items here are exactly the ones it stacks.
    """
    if epsg is None:
        counts = collections.Counter(s.epsg for s in scenes if s.epsg is not None)
        if not counts:
            raise GridError(
                "No item has proj:epsg or proj:code, so load() cannot choose a CRS; pass epsg=..."
            )
        epsg = counts.most_common(1)[0][0]
    epsg, resolution = int(epsg), options.resolution
    if bbox is None:
        bounds = _union(_footprint(s, epsg) for s in scenes)
        return epsg, _snap(bounds, resolution, _anchor(scenes, epsg, resolution)), list(range(len(scenes)))
    query = check_bbox(bbox, allow_antimeridian=True)
    bounds = tuple(_transform_bounds(4326, epsg, *query, densify_pts=21))
    bounds = _snap(bounds, resolution, _anchor(scenes, epsg, resolution))
    keep = _kept_by_stackstac(plain, options.bands, epsg=epsg, resolution=resolution, bounds=bounds)
    if not keep:
        extent = _union(s.lonlat for s in scenes)
        raise GridError(
            f"bbox {tuple(query)} does not overlap any of the {len(scenes)} items; their "
            f"union extent is (west, south, east, north) = ({extent[0]:.4f}, "
            f"{extent[1]:.4f}, {extent[2]:.4f}, {extent[3]:.4f}) degrees. Pass a bbox "
            "inside that extent, or search again with this bbox."
        )
    return epsg, bounds, keep


def _kept_by_stackstac(plain: Sequence[Mapping], bands, *, epsg: int, resolution: float, bounds) -> list[int]:
    """Positions of the items whose assets overlap ``bounds``, as stackstac decides it."""
    from stackstac.prepare import prepare_items

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", **_AFFINE_WARNING)
        _, _, _, kept = prepare_items(
            list(plain), assets=list(bands), epsg=epsg, resolution=resolution, bounds=bounds,
            snap_bounds=False, rescale=False,
        )
    kept_ids = {item["id"] for item in kept}
    return [i for i, item in enumerate(plain) if item["id"] in kept_ids]


def _stacks(plain, scenes, *, epsg, bounds, group_sizes, options: _Options) -> dict[str, xr.DataArray]:
    """One lazy stackstac array per band (raw DNs, float32; QA uint16), all on one grid."""
    chunk_sizes, n = options.chunks, len(scenes)
    if any(size > 1 for size in group_sizes) or chunk_sizes["time"] == 1:
        time_chunks = tuple(group_sizes)
    else:
        step = n if chunk_sizes["time"] == -1 else chunk_sizes["time"]
        time_chunks = tuple(min(step, n - i) for i in range(0, n, step))
    common = dict(
        epsg=epsg, resolution=options.resolution, bounds=bounds, snap_bounds=False,
        resampling=options.resampling, chunksize=(time_chunks, 1, chunk_sizes["y"], chunk_sizes["x"]),
        rescale=False, sortby_date=False, xy_coords="center", properties=False, band_coords=False,
        errors_as_nodata=(AssetReadError(".*"),) if options.on_error == "skip" else (),
        reader=LandsatReader, gdal_env=_gdal_env(),
    )
    # One stackstac call per band (a band axis of length 1 drops blockwise, in O(1) graph
    # building; slicing a multi-band stack would touch every chunk); all share one grid.
    stacks = {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", **_AFFINE_WARNING)
            for band in options.bands:
                qa = band in _QA_BANDS
                dtype, fill = (np.dtype("uint16"), np.uint16(QA_FILL)) if qa else (np.dtype("float32"), np.float32(np.nan))
                stacks[band] = stackstac.stack(plain, assets=[band], dtype=dtype, fill_value=fill, **common)
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
    return stacks


def _reflectance(stacks: dict[str, xr.DataArray], scenes, group_sizes) -> dict[str, Any]:
    """DN -> reflectance per item (its own scale/offset/nodata); then one time step per group."""
    variables = {}
    for band, stack in stacks.items():
        dn = stack.data.map_blocks(_squeeze_band, drop_axis=1, dtype=stack.dtype)
        if band in _QA_BANDS:
            variables[band] = _merge_groups(dn, group_sizes, np.uint16(QA_FILL))
            continue
        params = _per_time([s.bands[band] for s in scenes], dn.chunks[0])
        value = dask.array.map_blocks(_dn_to_reflectance, dn, params, dtype=np.float32, token="glacierxr-sr")
        variables[band] = _merge_groups(value, group_sizes, np.float32(np.nan))
    return variables


def _describe(ds: xr.Dataset, scenes, *, epsg: int, bbox, groupby, options: _Options) -> xr.Dataset:
    """Band and coordinate attrs (:func:`_band_attrs`), provenance attrs and the CRS."""
    for name in options.bands:
        ds[name].attrs = _band_attrs(name)  # replaces stackstac's (spec, transform …)
    geographic = epsg == 4326
    ds.x.attrs.update(units="degrees_east" if geographic else "metre", long_name="x (pixel centre)")
    ds.y.attrs.update(units="degrees_north" if geographic else "metre", long_name="y (pixel centre)")
    collections_ = sorted({s.collection for s in scenes if s.collection})
    ds.attrs.update(
        collection=", ".join(collections_) if collections_ else "unknown",
        source=_source(scenes),
        epsg=epsg,
        resolution=options.resolution,
        groupby=str(groupby),
        resampling=options.resampling.name,
    )
    if bbox is not None:
        ds.attrs["bbox"] = list(map(float, bbox))
    return ds.rio.write_crs(epsg)


def _band_attrs(name: str) -> dict[str, Any]:
    if name in _QA_BANDS:
        flags = sorted(QA_BITS.items(), key=lambda kv: kv[1])
        return {
            "units": "1",
            "long_name": "Landsat Collection-2 QA_PIXEL bit flags",
            "flag_masks": [1 << bit for _, bit in flags],
            "flag_meanings": " ".join(name for name, _ in flags),
            "fill_value": QA_FILL,
        }
    return {
        "units": "1",
        "long_name": f"{name} surface reflectance",
        "scale_offset": "applied (DN * scale + offset from raster:bands or Collection-2 constants)",
    }
