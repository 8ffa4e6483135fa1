"""Stable ground: the pixels that neither move nor change, shared by align and flow.

Co-registration (:func:`glacierxr.align`) and the stable-surface correction of surface velocity
(:func:`glacierxr.flow`) both need to know where the ground does not move.  This module is the
one home of that knowledge:

* :func:`rasterize_outlines` burns glacier outlines (GeoJSON, RGI polygons, shapely geometries,
  a GeoDataFrame) onto a cube's grid, buffered outward in metres;
* :func:`resolve_stable` turns what the user gave (a boolean ``stable`` mask and/or
  ``outlines``) into one validated stable-ground mask on the grid, with the ITS_LIVE-style flag
  that says where it came from (:data:`FLAG_NONE`, :data:`FLAG_USER`, :data:`FLAG_AUTO`);

Nothing here reads a pixel of the cube it is given a grid from (``like``): only its
coordinates and CRS are used.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from glacierxr._checks import check_single_chunk
from glacierxr.errors import ConfigError, DataTypeError, DimensionError, GridError

__all__ = [
    "FLAG_AUTO",
    "FLAG_NONE",
    "FLAG_USER",
    "rasterize_outlines",
    "resolve_stable",
]

#: No stable ground was used (ITS_LIVE's ``stable_shift_flag`` 0).
FLAG_NONE = 0
#: Stable ground from the user's mask and/or glacier outlines (ITS_LIVE: stable-surface mask).
FLAG_USER = 1
#: Stable ground found automatically from the data (ITS_LIVE: low-velocity surface).
FLAG_AUTO = 2

#: CRS of GeoJSON without a ``crs`` member (RFC 7946: WGS 84 longitude/latitude).
_GEOJSON_CRS = "EPSG:4326"


def _read_geojson(path: Path) -> dict:
    """The parsed GeoJSON file at ``path``, or a ConfigError saying what is wrong."""
    if not path.is_file():
        raise ConfigError(
            f"outlines file {str(path)!r} does not exist. Pass the path of a GeoJSON file "
            "(e.g. RGI outlines exported with `ogr2ogr -f GeoJSON`), a dict or geometries."
        )
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"outlines file {str(path)!r} is not GeoJSON ({error}). Convert shapefiles with "
            "`ogr2ogr -f GeoJSON outlines.geojson outlines.shp`."
        ) from error


def _geometries(outlines: Any) -> tuple[list[dict], Any]:
    """GeoJSON geometry dicts of ``outlines`` and the CRS they declare (None when unknown)."""
    if isinstance(outlines, (str, Path)):
        return _geometries(_read_geojson(Path(outlines)))
    crs = getattr(outlines, "crs", None)
    if hasattr(outlines, "__geo_interface__"):  # shapely geometry, GeoDataFrame, GeoSeries
        geoms, declared = _geometries(dict(outlines.__geo_interface__))
        return geoms, crs if crs is not None else declared
    if isinstance(outlines, Mapping):
        declared = (outlines.get("crs") or {}).get("properties", {}).get("name")
        kind = outlines.get("type")
        if kind == "FeatureCollection":
            geoms = [g for f in outlines.get("features", []) for g in _geometries(f)[0]]
        elif kind == "Feature":
            geoms = [outlines["geometry"]] if outlines.get("geometry") else []
        elif kind == "GeometryCollection":
            geoms = list(outlines.get("geometries", []))
        elif isinstance(kind, str) and "coordinates" in outlines:
            geoms = [dict(outlines)]
        else:
            raise DataTypeError(
                f"outlines of GeoJSON type {kind!r} are not understood. Pass a FeatureCollection, "
                "a Feature or a geometry (Polygon / MultiPolygon)."
            )
        return geoms, declared
    if isinstance(outlines, Iterable):
        parts = [_geometries(part) for part in outlines]
        crs_found = {str(c) for _, c in parts if c is not None}
        if len(crs_found) > 1:
            raise GridError(f"the outlines declare several CRS {sorted(crs_found)}; pass one.")
        return [g for geoms, _ in parts for g in geoms], next((c for _, c in parts if c), None)
    raise DataTypeError(
        f"outlines must be a GeoJSON path, a GeoJSON dict, shapely geometries or a GeoDataFrame, "
        f"got {type(outlines).__name__}."
    )


def _grid_crs(like: xr.DataArray | xr.Dataset):
    """The CRS of ``like`` (rioxarray's ``spatial_ref``), or a GridError saying how to set it."""
    import rioxarray  # noqa: F401  (registers .rio)

    crs = like.rio.crs
    if crs is None:
        raise GridError(
            "outlines can only be placed on a grid with a CRS, but this one has none. Write it "
            "first, e.g. `da.rio.write_crs('EPSG:32607')`."
        )
    return crs


def _grid_transform(ys: np.ndarray, xs: np.ndarray):
    """Affine transform of a regular grid from its pixel-centre coordinates."""
    from affine import Affine

    steps = [np.diff(np.asarray(c, np.float64)) for c in (ys, xs)]
    if any(s.size == 0 or not np.allclose(s, s[0], rtol=1e-6) for s in steps):
        raise GridError(
            "outlines can only be placed on a regular grid of at least 2 x 2 pixels; this one is "
            "irregular or too small. Reproject it first, e.g. with `.rio.reproject(...)`."
        )
    dy, dx = float(steps[0][0]), float(steps[1][0])
    return Affine(dx, 0.0, float(xs[0]) - dx / 2, 0.0, dy, float(ys[0]) - dy / 2)


def rasterize_outlines(
    outlines: Any,
    like: xr.DataArray | xr.Dataset,
    *,
    buffer: float = 0.0,
    crs: Any = None,
    y_dim: str = "y",
    x_dim: str = "x",
) -> xr.DataArray:
    """Glacier outlines as a boolean ``(y, x)`` mask on ``like``'s grid, True on (buffered) ice.

    Parameters
    ----------
    outlines
        A GeoJSON file path, a GeoJSON dict (FeatureCollection, Feature or geometry), anything
        with ``__geo_interface__`` (shapely geometries, a GeoDataFrame or GeoSeries), or a list
        of those.  They are reprojected to the grid's CRS.
    like
        DataArray or Dataset whose ``y``/``x`` coordinates and CRS (``spatial_ref``) give the
        grid.  No pixel of it is read.
    buffer
        Distance in the grid's units (metres for UTM) by which the ice is grown outward: a
        pixel is True when its centre lies within ``buffer`` of a pixel the outlines touch.
    crs
        CRS of ``outlines`` when they do not carry one (``.crs`` of a GeoDataFrame, the
        ``crs`` member of old-style GeoJSON).  Default: WGS 84 longitude/latitude, as RFC 7946
        GeoJSON is.
    y_dim, x_dim
        Names of the grid's dimensions.

    Returns
    -------
    xarray.DataArray
        Boolean, NumPy-backed, dims ``(y, x)`` with ``like``'s coordinates and CRS; every pixel
        the outlines touch is True (``all_touched``), so nothing on the ice edge counts as
        stable.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> grid = xr.DataArray(np.zeros((4, 6)), dims=("y", "x"),
    ...                     coords={"y": [35.0, 25.0, 15.0, 5.0], "x": np.arange(6) * 10.0 + 5}
    ...                     ).rio.write_crs("EPSG:32607")
    >>> ice = {"type": "Polygon", "coordinates": [[(12, 12), (28, 12), (28, 28), (12, 28), (12, 12)]]}
    >>> rasterize_outlines(ice, grid, crs="EPSG:32607").values.astype(int)
    array([[0, 0, 0, 0, 0, 0],
           [0, 1, 1, 0, 0, 0],
           [0, 1, 1, 0, 0, 0],
           [0, 0, 0, 0, 0, 0]])
    >>> rasterize_outlines(ice, grid, crs="EPSG:32607", buffer=10).values.sum()
    np.int64(12)
    """
    from rasterio import features
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    if not (isinstance(buffer, (int, float, np.number)) and np.isfinite(buffer) and buffer >= 0):
        raise ConfigError(f"buffer must be a distance >= 0 in the grid's units (metres), got {buffer!r}.")
    for dim in (y_dim, x_dim):
        if dim not in like.dims or dim not in like.coords:
            raise DimensionError(
                f"outlines need a grid with coordinates {(y_dim, x_dim)}, but {dim!r} is missing."
            )
    grid_crs = _grid_crs(like)
    geoms, declared = _geometries(outlines)
    source = CRS.from_user_input(crs if crs is not None else declared or _GEOJSON_CRS)
    geoms = [transform_geom(source, grid_crs, g) for g in geoms] if source != grid_crs else geoms
    shape = (like.sizes[y_dim], like.sizes[x_dim])
    transform = _grid_transform(like[y_dim].values, like[x_dim].values)
    ice = np.zeros(shape, bool)
    if geoms:
        ice = features.rasterize(
            ((g, 1) for g in geoms), out_shape=shape, transform=transform, all_touched=True,
            fill=0, dtype="uint8",
        ).astype(bool)
    if not ice.any():
        warnings.warn(
            f"the outlines ({len(geoms)} geometries, CRS {source}) do not touch the grid: no pixel "
            "is excluded. Check their CRS (pass crs=) and extent.", UserWarning, stacklevel=2,
        )
    elif buffer > 0:
        from scipy import ndimage

        spacing = (abs(transform.e), abs(transform.a))
        ice = ndimage.distance_transform_edt(~ice, sampling=spacing) <= float(buffer)
    coords = {y_dim: like[y_dim].values, x_dim: like[x_dim].values}
    mask = xr.DataArray(ice, dims=(y_dim, x_dim), coords=coords, name="glacier")
    mask.attrs = {"long_name": "glacier outlines (buffered)", "buffer": float(buffer)}
    return mask.rio.write_crs(grid_crs)


def _check_on_grid(
    mask: Any, like: xr.DataArray | xr.Dataset, name: str, what: str, y_dim: str, x_dim: str
) -> xr.DataArray:
    """Validate a boolean ``(y, x)`` mask from its metadata; return it on ``like``'s labels."""
    if not isinstance(mask, xr.DataArray):
        raise DataTypeError(
            f"{name} must be a boolean (y, x) DataArray, got {type(mask).__name__}. "
            "Wrap it with xr.DataArray(mask, dims=('y', 'x'), coords=...)."
        )
    if set(mask.dims) != {y_dim, x_dim}:
        raise DimensionError(f"{name} must have dims ({y_dim!r}, {x_dim!r}), found {mask.dims}.")
    if mask.dtype != bool:
        raise DataTypeError(
            f"{name} must be boolean (True on stable ground), found dtype {mask.dtype}. "
            "Build it with a comparison, e.g. `~glacier_outline` or `(landcover == ROCK)`."
        )
    for dim in (y_dim, x_dim):
        if mask.sizes[dim] != like.sizes[dim] or (
            dim in mask.coords and dim in like.coords
            and not np.allclose(mask[dim].values, like[dim].values)
        ):
            raise GridError(
                f"{name} is not on the grid of the scenes along {dim!r} ({mask.sizes[dim]} vs "
                f"{like.sizes[dim]} values or other coordinates). Build it on the same grid, "
                "e.g. with `.rio.reproject_match(da)`, or pass glacier outlines instead."
            )
    check_single_chunk(mask, (y_dim, x_dim), f"{what} ({name})", why="the mask covers whole scenes")
    mask = mask.transpose(y_dim, x_dim)
    return mask.drop_vars([c for c in mask.coords if c not in (y_dim, x_dim)])


def resolve_stable(
    like: xr.DataArray | xr.Dataset,
    *,
    stable: xr.DataArray | None = None,
    outlines: Any = None,
    buffer: float = 100.0,
    crs: Any = None,
    what: str = "align",
    y_dim: str = "y",
    x_dim: str = "x",
) -> tuple[xr.DataArray | None, int]:
    """The user's stable ground on ``like``'s grid, and the flag saying where it came from.

    Parameters
    ----------
    like
        The cube (DataArray or Dataset) the mask must fit; only its metadata is used.
    stable
        Optional boolean ``(y, x)`` DataArray on the grid, True on stable ground.
    outlines
        Optional glacier outlines (see :func:`rasterize_outlines`); the buffered ice is
        removed from the stable ground.
    buffer
        Outward buffer of the outlines in the grid's units (metres), default 100 m: the ice
        edge moves and outlines are rarely exact.
    crs
        CRS of ``outlines`` when they do not declare one (default WGS 84).
    what
        Name of the calling stage, for error messages.
    y_dim, x_dim
        Names of the grid's dimensions.

    Returns
    -------
    (mask, flag)
        ``mask`` is a boolean ``(y, x)`` DataArray on ``like``'s labels (``stable`` and not
        buffered ice), or None when neither was given; ``flag`` is :data:`FLAG_USER` (1) when
        a mask or outlines were given, else :data:`FLAG_NONE` (0).

    Raises
    ------
    DataTypeError, DimensionError, GridError, ChunkingError
        ``stable`` is not a boolean ``(y, x)`` DataArray on the grid in one chunk.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from glacierxr.testing import make_series
    >>> cube = make_series(np.zeros((2, 3, 4)))
    >>> resolve_stable(cube)
    (None, 0)
    >>> mask, flag = resolve_stable(cube, stable=xr.DataArray(np.ones((3, 4), bool), dims=("y", "x")))
    >>> flag, mask.shape
    (1, (3, 4))
    """
    if stable is None and outlines is None:
        return None, FLAG_NONE
    mask = None if stable is None else _check_on_grid(stable, like, "stable", what, y_dim, x_dim)
    if outlines is not None:
        off_ice = ~rasterize_outlines(outlines, like, buffer=buffer, crs=crs, y_dim=y_dim, x_dim=x_dim)
        off_ice = off_ice.drop_vars([c for c in off_ice.coords if c not in (y_dim, x_dim)])
        if mask is None:
            mask = off_ice
        else:
            mask = mask & off_ice.data
        mask.attrs = {}
    mask.name = "stable"
    return mask, FLAG_USER
