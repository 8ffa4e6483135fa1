"""Stable ground: the pixels that neither move nor change, shared by align and flow.

Co-registration (:func:`glacierxr.align`) and the stable-surface correction of surface velocity
(:func:`glacierxr.flow`) both need to know where the ground does not move.  This module is the
one home of that knowledge:

* :func:`rasterize_outlines` burns glacier outlines (GeoJSON, RGI polygons, shapely geometries,
  a GeoDataFrame) onto a cube's grid, buffered outward in metres;
* :func:`resolve_stable` turns what the user gave (a boolean ``stable`` mask and/or
  ``outlines``) into one validated stable-ground mask on the grid, with the ITS_LIVE-style flag
  that says where it came from (:data:`FLAG_NONE`, :data:`FLAG_USER`, :data:`FLAG_AUTO`);
* :func:`temporal_variability` and :func:`stable_from_variability` find stable ground in the
  data: pixels whose local texture (the high-pass image) stays the same through a stack of
  co-registered scenes.  Moving ice, a snow line that moves, water and cloud all change the
  local texture; rock does not.

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

from glacierxr._validate import check_on_grid, check_single_chunk, require_positive
from glacierxr.errors import ConfigError, DataTypeError, DimensionError, GridError

__all__ = [
    "FLAG_AUTO",
    "FLAG_NONE",
    "FLAG_USER",
    "rasterize_outlines",
    "highpass",
    "resolve_stable",
    "stable_from_variability",
    "temporal_variability",
]

#: No stable ground was used (ITS_LIVE's ``stable_shift_flag`` 0).
FLAG_NONE = 0
#: Stable ground from the user's mask and/or glacier outlines (ITS_LIVE: stable-surface mask).
FLAG_USER = 1
#: Stable ground found automatically from the data (ITS_LIVE: low-velocity surface).
FLAG_AUTO = 2

#: Pixels whose local texture energy is below this share of the median are "no texture".
_MIN_TEXTURE = 0.3

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
    >>> import numpy as np, xarray as xr, rioxarray
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
    mask = None if stable is None else check_on_grid(
        stable, like, name="stable", what=what, y_dim=y_dim, x_dim=x_dim, boolean=True,
        why="the mask covers whole scenes")
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


def highpass(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` minus its Gaussian blur of ``sigma`` pixels (float32); NaN stays NaN.

    Missing pixels are filled with the mean of the valid ones before blurring, so that one
    cloud does not spread NaN over its surroundings.

    Examples
    --------
    >>> highpass(np.full((3, 3), 5.0), 2.0)
    array([[0., 0., 0.],
           [0., 0., 0.],
           [0., 0., 0.]], dtype=float32)
    """
    from glacierxr._validate import require_cv2

    cv2 = require_cv2("stable")
    image = np.asarray(image, np.float32)
    valid = np.isfinite(image)
    filled = image if valid.all() else np.where(valid, image, image[valid].mean() if valid.any() else 0.0)
    filled = np.ascontiguousarray(filled, np.float32)
    out = filled - cv2.GaussianBlur(filled, (0, 0), float(sigma), borderType=cv2.BORDER_REFLECT)
    return out if valid.all() else np.where(valid, out, np.float32(np.nan))


def _texture_statistics_block(block: np.ndarray, sigma: float) -> np.ndarray:
    """Per image of a ``(..., y, x)`` block: seen (0/1), high-pass, squared high-pass (0 unseen).

    Returned as ``(..., 3, y, x)`` float32 without NaN, so that sums over time need no
    NaN handling.
    """
    out = np.zeros(block.shape[:-2] + (3,) + block.shape[-2:], np.float32)
    for index in np.ndindex(*block.shape[:-2]):
        texture = highpass(block[index], sigma)
        seen = np.isfinite(texture)
        texture = np.where(seen, texture, np.float32(0.0))
        out[index] = (seen, texture, texture * texture)
    return out


def _variability_kernel(count: np.ndarray, total: np.ndarray, squares: np.ndarray,
                        window: float) -> np.ndarray:
    """Local share of the high-pass energy that changes over time (NaN: seen < 2 times)."""
    from scipy import ndimage

    known = count >= 2
    n = np.maximum(count, 1)
    energy = squares / n
    change = np.maximum(energy - (total / n) ** 2, 0.0) * n / np.maximum(n - 1, 1)
    # unknown pixels count as fully changing, so that they also taint their neighbours
    change = np.where(known, change, energy)
    change = ndimage.gaussian_filter(change, window, mode="reflect")
    energy = ndimage.gaussian_filter(energy, window, mode="reflect")
    floor = 1e-12 * max(float(np.nanmax(energy, initial=0.0)), 1e-30)
    variability = change / np.maximum(energy, floor)
    # too little texture to tell (flat snow, a constant mask value): unknown, never stable
    textured = energy > floor
    if textured.any():
        textured &= energy >= _MIN_TEXTURE * float(np.median(energy[textured]))
    return np.where(known & textured, variability, np.nan).astype(np.float32)


def temporal_variability(
    da: xr.DataArray,
    *,
    highpass_sigma: float = 4.0,
    window: float = 7.0,
    time_dim: str = "time",
    y_dim: str = "y",
    x_dim: str = "x",
) -> xr.DataArray:
    """How much the local texture of co-registered scenes changes over time, per pixel (lazy).

    Each scene is high-passed (``image - blur(image, highpass_sigma)``); per pixel, the
    temporal variance of the high-pass values and their mean square are averaged over a
    Gaussian window of ``window`` pixels, and the variability is their ratio: 0 where every
    scene shows the same texture (rock), about 1 where the texture of one scene is unrelated
    to the next (ice that moved by more than the texture's scale, water, cloud), in between
    for a snow line that moved a little.  Only the scenes' texture counts, so a scene that is
    brighter or darker as a whole (illumination, haze) does not make ground unstable.

    Parameters
    ----------
    da
        Co-registered ``(time, y, x)`` scenes (NaN missing); ``y``/``x`` one Dask chunk each.
    highpass_sigma
        Blur (pixels) removed to get the texture.
    window
        Standard deviation (pixels) of the Gaussian window the statistics are averaged over.
    time_dim, y_dim, x_dim
        Names of the dimensions.

    Returns
    -------
    xarray.DataArray
        ``(y, x)`` float32, lazy when ``da`` is; NaN where a pixel was valid in fewer than two
        scenes.

    Examples
    --------
    >>> from glacierxr.testing import changing_ground
    >>> scenes = changing_ground(32, times=3, height=32, width=64)   # the right half changes
    >>> v = temporal_variability(scenes, window=2.0)
    >>> float(v[:, :24].max()) < 0.01, float(v[:, 40:].min()) > 0.5
    (True, True)
    """
    check_single_chunk(da, (y_dim, x_dim), "temporal_variability", why="scenes are filtered whole")
    core = [y_dim, x_dim]
    per_scene = xr.apply_ufunc(
        _texture_statistics_block, da, input_core_dims=[core],
        output_core_dims=[["texture_statistic", *core]], dask="parallelized",
        output_dtypes=[np.float32], kwargs={"sigma": float(highpass_sigma)},
        dask_gufunc_kwargs={"output_sizes": {"texture_statistic": 3}},
    )
    per_scene = per_scene.drop_vars([c for c in per_scene.coords if c not in (time_dim, y_dim, x_dim)])
    totals = per_scene.sum(time_dim, skipna=False, dtype=np.float64)
    stats = [totals.isel(texture_statistic=i, drop=True) for i in range(3)]
    variability = xr.apply_ufunc(
        _variability_kernel, *stats, input_core_dims=[core] * 3, output_core_dims=[core],
        dask="parallelized", output_dtypes=[np.float32], kwargs={"window": float(window)},
    )
    variability.name = "variability"
    variability.attrs = {"units": "1", "long_name": "share of the local texture that changes over time"}
    return variability


def _threshold_kernel(variability: np.ndarray, threshold: float, min_fraction: float,
                      min_clear: float) -> np.ndarray:
    """Pixels at or below ``threshold``, or the ``min_fraction`` most stable when too few are.

    When less than ``min_clear`` of the known pixels are at or below ``threshold`` nothing is
    clearly stable, and every pixel is returned (no restriction).
    """
    known = np.isfinite(variability)
    clear = (variability[known] <= threshold).mean() if known.any() else 0.0
    if clear < min_clear or clear == 0.0:
        return np.ones(variability.shape, bool)
    cut = threshold
    if clear < min_fraction:
        cut = float(np.quantile(variability[known], min_fraction))
    return known & (variability <= cut)


def stable_from_variability(
    da: xr.DataArray,
    *,
    threshold: float = 0.1,
    min_fraction: float = 0.2,
    min_clear: float = 0.005,
    highpass_sigma: float = 4.0,
    window: float = 7.0,
    time_dim: str = "time",
    y_dim: str = "y",
    x_dim: str = "x",
) -> xr.DataArray:
    """Automatic stable ground: pixels whose texture does not change through ``da`` (lazy).

    A pixel is stable when its :func:`temporal_variability` is at most ``threshold``; when
    fewer than ``min_fraction`` of the known pixels pass, the ``min_fraction`` most stable
    ones are taken instead (a scene full of moving ice still keeps its best ground).  Pixels
    seen in fewer than two scenes, or without texture, are never stable.  When fewer than
    ``min_clear`` of the known pixels pass, nothing is clearly stable and every pixel is
    returned: the least changing pixels of a scene where everything changes (snow all over a
    small scene) measured worse than all of them.

    Parameters
    ----------
    da
        Co-registered ``(time, y, x)`` scenes (e.g. a first registration pass).
    threshold
        Largest variability of stable ground (0 = identical texture in every scene).
    min_fraction
        Smallest share of the known pixels kept.
    min_clear
        Smallest share of the known pixels at or below ``threshold`` for any restriction.
    highpass_sigma, window, time_dim, y_dim, x_dim
        As in :func:`temporal_variability`.

    Returns
    -------
    xarray.DataArray
        Boolean ``(y, x)``, True on stable ground; lazy when ``da`` is.

    Examples
    --------
    >>> from glacierxr.testing import changing_ground
    >>> scenes = changing_ground(32, times=3, height=32, width=64)   # the right half changes
    >>> mask = stable_from_variability(scenes, window=2.0)
    >>> bool(mask[:, :24].all()), bool(mask[:, 40:].any())
    (True, False)
    """
    for name, value in (("threshold", threshold), ("min_fraction", min_fraction), ("min_clear", min_clear)):
        require_positive(value, name=name, allow_zero=True)
    if min_fraction > 1:
        raise ConfigError(f"min_fraction is a share of the pixels (0-1), got {min_fraction!r}.")
    variability = temporal_variability(
        da, highpass_sigma=highpass_sigma, window=window, time_dim=time_dim, y_dim=y_dim, x_dim=x_dim
    )
    mask = xr.apply_ufunc(
        _threshold_kernel, variability, input_core_dims=[[y_dim, x_dim]],
        output_core_dims=[[y_dim, x_dim]], dask="parallelized", output_dtypes=[bool],
        kwargs={"threshold": float(threshold), "min_fraction": float(min_fraction),
                "min_clear": float(min_clear)},
    )
    mask.name = "stable"
    mask.attrs = {"long_name": "stable ground (texture unchanged over time)",
                  "stable_threshold": float(threshold)}
    return mask

