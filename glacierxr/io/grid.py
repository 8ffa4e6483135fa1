"""The cube's grid and the mosaic of one overpass: projection, snapping, grouping, merging.

Everything here works on scene records (:mod:`glacierxr.io.items`) and Dask arrays, never on
pixels read at build time: footprints are projected with pyproj, the grid is snapped to
Landsat's own pixel edges, scenes of one solar day are grouped into one Dask block and
flattened with stackstac's mosaic rule, DNs are scaled to reflectance block by block.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dask.array
import numpy as np
import pandas as pd

from glacierxr.errors import GridError

if TYPE_CHECKING:
    from glacierxr.io.items import _Band, _Scene

# rasterio / rioxarray warn about affine's deprecated `*` while building grids; not ours to fix.
_AFFINE_WARNING = {"message": r"Use `@` matmul", "category": PendingDeprecationWarning}

@functools.lru_cache(maxsize=64)
def _transformer(src: int, dst: int):
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def _transform_bounds(src: int, dst: int, *bounds: float, densify_pts: int = 21) -> tuple:
    """``bounds`` (minx, miny, maxx, maxy) in EPSG ``src`` -> EPSG ``dst``, edges densified."""
    if src == dst:
        return tuple(bounds)
    return tuple(_transformer(src, dst).transform_bounds(*bounds, densify_pts=densify_pts))


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


def _contiguous(sizes: Sequence[int]) -> list[list[int]]:
    out, start = [], 0
    for size in sizes:
        out.append(list(range(start, start + size)))
        start += size
    return out


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


_PARAMS = np.dtype([("scale", "f8"), ("offset", "f8"), ("nodata", "f8")])


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
