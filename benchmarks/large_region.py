"""Benchmark: a large region through the whole chain on a ``dask.distributed`` LocalCluster.

What runs (every case on a fresh LocalCluster: ``--workers`` processes with one thread each,
``--memory-limit`` per worker, spill folder under ``benchmarks/_work``)::

    cube -> .glacier.mask() -> .ndsi() -> .snow_mask() -> .fill_gaps()
         -> per tile: .chunk({"y": -1, "x": -1}) -> .align(reference=<observed mean, from Zarr>)
         -> .chunk({"y": C, "x": C}) -> .monthly(months=3) -> Zarr, computed and written tile by tile
    composites (Zarr) -> .glacier.predict(model, steps=4, patch=50) -> Zarr, block by block

The cube is shaped like :func:`glacierxr.load` output (``green``/``swir16`` float32 reflectance,
``qa_pixel`` uint16, per-time ``id``/``cloud_cover``/``platform``/``wrs_path``/``wrs_row``,
``spatial_ref``; chunks ``time=1``, ``C × C`` px) but its blocks are *made on the workers*
(:func:`synthetic_cube`): writing 96 COGs of 4000 × 4000 px would take longer than the run.  Each
block comes from a deterministic generator seeded by its block index: fractal value-noise terrain
over global pixel coordinates (seamless across blocks), seasonal snow above a snow line, ice above
a higher level, rock below, shading; per-scene fractal clouds, dilated-cloud rims and cloud shadows
flagged in ``QA_PIXEL`` as Collection 2 flags them; a nodata wedge in every fifth scene; a
per-scene sub-pixel misregistration (``true_shift_x``/``true_shift_y``).  The real loader is
exercised too (``cog_throughput``): a sample from :func:`glacierxr.sample.write_catalog` (COGs +
static STAC catalog) through :func:`glacierxr.search`, :func:`glacierxr.load` and the same chain.

Why the chain is written this way (see ``docs/scaling.md``): ``align`` needs whole frames, so its
memory per task grows with the frame — hence ``align`` per tile (``--tile``, default the small
size); ``align(reference="mean")`` is a barrier over all scenes — hence the reference (the mean of
the observed snow mask, what ``align``'s first pass uses) is computed first into a Zarr store and
passed as ``reference=``; a single graph over the whole region lets composites of many blocks wait
in memory — hence the region is computed and written tile by tile (Zarr ``region=`` writes).  A
region of one tile is the plain chain.  ``--one-graph`` also runs the large size as one graph with
whole-scene ``align``, for comparison.

Reported (one JSON object per line, ``benchmark`` = ``large_region``; per case the metric name
ends in the size, ``_tiles`` or ``_one_graph``):

* ``throughput``: megapixel-scenes per second of the whole chain (input scenes × pixels / wall
  time, including the mask's per-scene compute, the reference pass and the Zarr writes);
* ``peak_worker_memory``: the highest resident memory (RSS) of any worker process, sampled every
  50 ms with psutil from the client; the summary line has ``baseline`` = the small size and
  ``ratio`` = large / small, while the region is ``region_ratio`` (4) times larger;
* ``spilled``: bytes the workers wrote to their spill folders (SpillBuffer metrics);
* ``worker_restarts``: worker processes that changed during a case (must be 0);
* ``predict_rate``: km² per second of ``.glacier.predict`` over the large region's composites
  (an untrained one-layer ConvLSTM: the cost of forecasting, not its skill), written to Zarr;
* ``worker_cpu_per_block``: CPU time of the same per-block NumPy work in a worker process with
  :data:`MALLOC_TUNED` against Dask's default worker environment (``ratio`` < 1: faster).

``--quick``: 500² and 1000² px × 24 scenes, chunks 500 px, a 256² COG sample (about 3 minutes on
2 busy cores); default: 2000² and 4000² px × 96 scenes, chunks 1000 px, tiles 2000 px, a 512² COG
sample (more than an hour there).

    python benchmarks/large_region.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from glacierxr._synthetic import BLOCK_QA, blank

#: Wall-clock this script needs on 2 busy cores, for a runner that honours it (seconds).
RUN_TIMEOUT_S = {"quick": 600, "full": 3 * 3600}

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "large_region"
RECORDS: list[dict] = []
BENCHMARK = "large_region"


def emit(metric: str, value, unit: str, **extra) -> dict:
    record = {"benchmark": BENCHMARK, "metric": metric, "value": value, "unit": unit, **extra}
    RECORDS.append(record)
    print(json.dumps(record), flush=True)
    return record


# ------------------------------------------------------------------------------------------
# The lazily generated cube
# ------------------------------------------------------------------------------------------
def _lattice(key: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Pseudo-random values in [-1, 1) at integer lattice points ``i × j`` (an integer hash)."""
    with np.errstate(over="ignore"):
        h = (
            i.astype(np.uint64)[:, None] * np.uint64(0x9E3779B185EBCA87)
            + j.astype(np.uint64)[None, :] * np.uint64(0xC2B2AE3D27D4EB4F)
            + np.uint64(key) * np.uint64(0x165667B19E3779F9)
        )
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return ((h >> np.uint64(40)).astype(np.float32) / np.float32(2**23)) - np.float32(1.0)


def _interpolation(positions: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Lattice index (relative to ``first``), smoothstep weight, ``first`` and lattice length."""
    u = positions / cell
    index = np.floor(u).astype(np.int64)
    f = u - index
    first = int(index.min())
    weight = (f * f * (3.0 - 2.0 * f)).astype(np.float32)
    return index - first, weight, first, int(index.max()) - first + 2


def _octave(key: int, rows: np.ndarray, cols: np.ndarray, cell: float, amplitude: float) -> np.ndarray:
    """One octave of value noise: lattice values smoothstep-interpolated at ``rows × cols``."""
    iy, wy, y0, ny = _interpolation(rows, cell)
    ix, wx, x0, nx = _interpolation(cols, cell)
    lattice = _lattice(key, np.arange(y0, y0 + ny), np.arange(x0, x0 + nx)) * np.float32(amplitude)
    along_x = lattice[:, ix] + (lattice[:, ix + 1] - lattice[:, ix]) * wx  # (ny, len(cols))
    low = along_x[iy]
    return low + (along_x[iy + 1] - low) * wy[:, None]


def value_noise(
    key: int, rows: np.ndarray, cols: np.ndarray, cells, persistence: float = 0.8, *, coarse: int = 8
) -> np.ndarray:
    """Fractal value noise at global pixel positions ``rows × cols`` (regular, step 1), ~unit variance.

    One octave per lattice cell size in ``cells`` (pixels), amplitude ∝ cell**persistence.  The
    value at a position depends only on the position (lattice values are hashed from global lattice
    indices), so blocks computed apart fit together without seams, and fractional positions shift
    the field by sub-pixel amounts.  Octaves with cells of at least ``8 * coarse`` px are evaluated
    every ``coarse`` px and interpolated linearly (they are smooth at that scale; 2–3× faster).
    """
    amplitudes = np.asarray(cells, dtype=np.float64) ** persistence
    amplitudes *= _NOISE_GAIN / math.sqrt((amplitudes**2).sum())
    fine = [(o, c, a) for o, (c, a) in enumerate(zip(cells, amplitudes)) if c < 8 * coarse]
    wide = [(o, c, a) for o, (c, a) in enumerate(zip(cells, amplitudes)) if c >= 8 * coarse]
    out = np.zeros((rows.size, cols.size), dtype=np.float32)
    if wide:
        # a grid every `coarse` px, anchored on global multiples (same for every block), then
        # interpolated back to the pixels
        grid_rows, grid_cols = _coarse_grid(rows, coarse), _coarse_grid(cols, coarse)
        small = sum(_octave(key * 64 + o, grid_rows, grid_cols, c, a) for o, c, a in wide)
        out += _octave_from_grid(small, rows - grid_rows[0], cols - grid_cols[0], coarse)
    for octave, cell, amplitude in fine:
        out += _octave(key * 64 + octave, rows, cols, cell, amplitude)
    return out


def _coarse_grid(positions: np.ndarray, step: int) -> np.ndarray:
    """Positions every ``step`` px covering ``positions`` (one fractional offset, step 1)."""
    fraction = positions[0] - np.round(positions[0])
    first = math.floor(np.round(positions[0]) / step) * step + fraction
    count = math.ceil((positions[-1] - first) / step) + 2
    return first + step * np.arange(count)


def _octave_from_grid(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray, step: int) -> np.ndarray:
    """Bilinear interpolation of ``grid`` (values every ``step`` px from 0) at offsets rows × cols."""
    iy = (rows // step).astype(np.int64)
    wy = ((rows - iy * step) / step).astype(np.float32)
    ix = (cols // step).astype(np.int64)
    wx = ((cols - ix * step) / step).astype(np.float32)
    along_x = grid[:, ix] + (grid[:, ix + 1] - grid[:, ix]) * wx
    low = along_x[iy]
    return low + (along_x[iy + 1] - low) * wy[:, None]


#: 1 / standard deviation of one smoothstep-interpolated octave of uniform [-1, 1) lattice values.
_NOISE_GAIN = 2.1
_TERRAIN_CELLS = (2048, 1024, 512, 256, 128, 64)
_TEXTURE_CELLS = (24, 12, 6)
_CLOUD_CELLS = (512, 256, 128, 64, 32, 16, 8)


def scene_parameters(scenes: int, *, seed: int, start: str, freq: str) -> dict:
    """Per-scene dates, cloud fractions, misregistration and nodata wedges (small; built eagerly)."""
    import pandas as pd

    rng = np.random.default_rng([seed, 1])
    times = pd.date_range(start, periods=scenes, freq=freq) + pd.Timedelta("05:30:12")
    cloud_fraction = rng.beta(0.8, 2.4, scenes)
    cloud_fraction[rng.random(scenes) < 0.1] = 0.0  # some scenes are clear
    return {
        "times": times,
        "day_of_year": np.asarray(times.dayofyear, dtype=np.float64),
        "cloud_fraction": cloud_fraction,
        "shift": rng.uniform(-1.5, 1.5, (scenes, 2)),  # content displacement (x right, y down), px
        # every fifth scene is cut by the edge of its WRS footprint (nodata)
        "wedge": np.where(np.arange(scenes) % 5 == 2, rng.uniform(0.75, 0.95, scenes), np.inf),
    }


#: Surface reflectance of rock, ice, snow: green, then swir16.
_SURFACE = (np.array([0.11, 0.42, 0.78]), np.array([0.21, 0.12, 0.05]))
#: Cloud reflectance (base, + per unit of thickness) and the rim's added haze, green and swir16.
_CLOUD_REFLECTANCE = ((0.55, 0.25), (0.38, 0.15))
_RIM_OFFSET = (0.3, 0.2)
#: QA_PIXEL of each code (surface + 3 × sky), painted by the shared writer: rock, ice, snow
#: (ice and snow flagged snow) × clear, shadow, rim (dilated cloud), cloud.
_CODES = np.arange(12)
_QA = BLOCK_QA.encode(
    _CODES.shape, snow=_CODES % 3 > 0, cloud_shadow=_CODES // 3 == 1,
    dilated_cloud=_CODES // 3 == 2, cloud=_CODES // 3 == 3,
)


def render_block(
    *,
    seed: int,
    scene: int,
    row0: int,
    col0: int,
    height: int,
    width: int,
    size: tuple[int, int],
    params: dict,
) -> np.ndarray:
    """One block ``(3, 1, height, width)`` float32: green, swir16, qa_pixel (as float) of a scene."""
    from scipy.special import ndtri

    rows = np.arange(row0, row0 + height, dtype=np.float64)
    cols = np.arange(col0, col0 + width, dtype=np.float64)
    shift_x, shift_y = params["shift"][scene]
    # content displaced by (+shift_x, +shift_y): the value at a pixel is the terrain's at p - shift
    at_rows, at_cols = rows - shift_y, cols - shift_x
    texture = value_noise(seed * 1000 + 2, at_rows, at_cols, _TEXTURE_CELLS)
    elevation = value_noise(seed * 1000 + 1, at_rows, at_cols, _TERRAIN_CELLS) + 0.1 * texture
    shade = 1.0 + 0.12 * texture
    season = math.cos(2.0 * math.pi * (params["day_of_year"][scene] - 20.0) / 365.25)
    snow_line = 0.45 - 0.95 * season  # low in winter, high in summer
    # surface class (0 rock, 1 ice, 2 snow) + 3 × sky state (0 clear, 1 shadow, 2 rim, 3 cloud)
    code = (elevation > 0.6).astype(np.uint8)
    code[elevation > snow_line] = 2
    thick = None
    fraction = params["cloud_fraction"][scene]
    if fraction > 0:
        key = seed * 1000 + 10 + scene
        level = float(ndtri(1.0 - fraction))  # the cloud field is about standard normal
        # one field over the block grown by the shadow's offset: clouds cast shadows 40 px
        # further down and 30 px further left (the sun in the south-east, as in the Himalaya)
        extended = value_noise(
            key, np.arange(row0 - 40, row0 + height, dtype=np.float64),
            np.arange(col0, col0 + width + 30, dtype=np.float64), _CLOUD_CELLS, persistence=1.0,
        )
        field = extended[40:, :width]
        sky = (extended[:height, 30:] > level).astype(np.uint8)  # shadow
        sky[field > level - 0.15] = 2  # dilated-cloud rim
        sky[field > level] = 3  # cloud
        code += 3 * sky
        thick = np.clip(field - level, 0.0, 1.0)
    # reflectance = scale[code] * shade + thickness[code] * thick + offset[code] + noise
    rng = np.random.default_rng([seed, 2, scene, row0, col0])
    noise = rng.random((2, height, width), dtype=np.float32) - np.float32(0.5)
    bands = []
    for band, amplitude in ((0, 0.03), (1, 0.02)):
        surface = _SURFACE[band]
        scale = np.concatenate([surface, 0.35 * surface, 0.5 * surface, 0 * surface]).astype(np.float32)
        offsets = [0.0, 0.0, _RIM_OFFSET[band], _CLOUD_REFLECTANCE[band][0]]
        offset = np.repeat(np.asarray(offsets, np.float32), 3)
        values = scale[code] * shade + offset[code] + np.float32(amplitude) * noise[band]
        if thick is not None:
            values += np.float32(_CLOUD_REFLECTANCE[band][1]) * thick  # thick is 0 outside clouds
        bands.append(values)
    green, swir = bands
    qa = _QA[code]
    edge = params["wedge"][scene]
    if np.isfinite(edge):
        fill = (cols[None, :] + 0.3 * rows[:, None]) > edge * 1.3 * size[1]
        qa[fill] = BLOCK_QA.fill
        green, swir = blank(fill, green, swir)
    out = np.empty((3, 1, height, width), dtype=np.float32)
    out[0, 0], out[1, 0], out[2, 0] = green, swir, qa
    return out


def _render_chunk(*, block_info=None, seed, size, params):
    location = block_info[None]["array-location"]
    (t0, _), (row0, row1), (col0, col1) = location[1], location[2], location[3]
    return render_block(
        seed=seed, scene=t0, row0=row0, col0=col0, height=row1 - row0, width=col1 - col0,
        size=size, params=params,
    )


def synthetic_cube(
    *,
    size: int | tuple[int, int] = 4000,
    scenes: int = 96,
    chunk: int = 1000,
    seed: int = 0,
    start: str = "2016-01-05",
    freq: str = "16D",
    epsg: int = 32643,
    resolution: float = 30.0,
):
    """A lazy cube shaped like :func:`glacierxr.load` output whose blocks are made on the workers.

    Parameters
    ----------
    size
        ``height`` (and ``width``) in pixels, or ``(height, width)``.
    scenes
        Number of scenes (``time`` steps), ``freq`` apart from ``start``.
    chunk
        Spatial chunk size in pixels (``time`` chunks are 1, as ``load`` makes them).
    seed
        Seed of terrain, clouds, misregistration and noise (each block is seeded by its index).

    Returns
    -------
    xarray.Dataset
        ``green``, ``swir16`` (float32 reflectance, NaN at fill), ``qa_pixel`` (uint16), per-time
        ``id``, ``cloud_cover``, ``platform``, ``wrs_path``, ``wrs_row`` and a true
        ``true_shift_x``/``true_shift_y`` (pixels), ``spatial_ref`` (the CRS). Nothing computed.
    """
    import dask.array as dsa
    import rioxarray  # noqa: F401
    import xarray as xr

    from glacierxr.io import _band_attrs

    height, width = (size, size) if isinstance(size, int) else size
    params = scene_parameters(scenes, seed=seed, start=start, freq=freq)
    chunks = ((3,), (1,) * scenes, _split(height, chunk), _split(width, chunk))
    stack = dsa.map_blocks(
        _render_chunk,
        chunks=chunks,
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32),
        name=f"synthetic-landsat-{seed}-{scenes}-{height}x{width}-{chunk}",
        seed=seed,
        size=(height, width),
        params=params,
    )
    times = params["times"]
    x = 600_000.0 + resolution * (np.arange(width) + 0.5)
    y = 4_000_000.0 - resolution * (np.arange(height) + 0.5)
    dims = ("time", "y", "x")
    ds = xr.Dataset(
        {
            "green": (dims, stack[0], _band_attrs("green")),
            "swir16": (dims, stack[1], _band_attrs("swir16")),
            "qa_pixel": (dims, stack[2].astype(np.uint16), _band_attrs("qa_pixel")),
        },
        coords={
            "time": ("time", times, {"long_name": "acquisition time (UTC, first scene)"}),
            "id": ("time", np.array([f"LC08_L2SP_148035_{t:%Y%m%d}_02_T1" for t in times], object)),
            "cloud_cover": ("time", np.round(params["cloud_fraction"] * 100, 2), {"units": "%"}),
            "platform": ("time", np.array(["landsat-8"] * scenes, object)),
            "wrs_path": ("time", np.array(["148"] * scenes, object)),
            "wrs_row": ("time", np.array(["035"] * scenes, object)),
            "true_shift_x": ("time", params["shift"][:, 0], {"units": "pixels"}),
            "true_shift_y": ("time", params["shift"][:, 1], {"units": "pixels"}),
            "y": y,
            "x": x,
        },
        attrs={
            "collection": "landsat-c2-l2",
            "source": "benchmarks/large_region.py synthetic_cube",
            "epsg": epsg,
            "resolution": float(resolution),
            "groupby": "solar_day",
            "resampling": "nearest",
        },
    )
    return ds.rio.write_crs(epsg)


def _split(length: int, chunk: int) -> tuple[int, ...]:
    full, rest = divmod(length, chunk)
    return (chunk,) * full + ((rest,) if rest else ())


# ------------------------------------------------------------------------------------------
# The chain
# ------------------------------------------------------------------------------------------
def mean_reference(snow):
    """The temporal mean of the valid pixels (as ``align(reference="mean")`` computes it)."""
    total = snow.sum("time", skipna=True)
    count = snow.count("time")
    return total / count.where(count > 0)


#: Per-time coordinates :func:`glacierxr.align.align` adds (they differ between tiles).
ALIGN_COORDS = ("shift_x", "shift_y", "ecc_correlation", "converged", "align_method")


def _tiles(length: int, tile: int) -> list[slice]:
    return [slice(start, min(start + tile, length)) for start in range(0, length, tile)]


def align_in_tiles(snow, reference, *, tile: int):
    """``align`` on whole scenes (``tile`` ≥ the region) or tile by tile (``tile × tile`` px).

    Each tile of every scene is registered on its own (its own shift), so one task never holds
    more than a tile, whatever the region.  The tiles are put back together lazily; the per-tile
    shift coordinates are dropped (they differ from tile to tile).
    """
    import xarray as xr

    height, width = snow.sizes["y"], snow.sizes["x"]
    if tile >= height and tile >= width:
        return snow.chunk({"y": -1, "x": -1}).glacier.align(reference=reference)
    rows = []
    for ys in _tiles(height, tile):
        row = []
        for xs in _tiles(width, tile):
            window = {"y": ys, "x": xs}
            part = snow.isel(window).chunk({"y": -1, "x": -1})
            aligned = part.glacier.align(reference=reference.isel(window))
            row.append(aligned.drop_vars(list(ALIGN_COORDS)))
        rows.append(row)
    return xr.combine_nested(rows, concat_dim=["y", "x"], combine_attrs="override")


def write_in_tiles(dataset, out: Path, *, tile: int) -> Path:
    """Write lazy composites to Zarr one ``tile × tile`` region at a time (one compute per tile).

    The store is made from the whole lazy Dataset first (metadata and the small eager
    coordinates, nothing computed), then every tile is computed and written into its region, so
    a compute never holds more than one tile, however large the region.  ``interpolated`` (a
    flag per period over the *whole* region) is then rebuilt from the stored counts, exactly as
    :func:`glacierxr.composite.monthly` defines it.  Written to a hidden sibling and renamed when
    complete.
    """
    import xarray as xr

    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    # per-period labels are plain numbers behind a Dask wrapper: make them eager (written now)
    eager = {
        name: dataset[name].compute() for name in ("period_start", "period_end") if name in dataset.coords
    }
    dataset = dataset.assign_coords(eager)
    dataset.to_zarr(partial, mode="w", compute=False, consolidated=False)
    spatial = {"y", "x"}
    regional = dataset.drop_vars(
        [name for name, variable in dataset.variables.items() if not spatial & set(variable.dims)]
    )
    for ys in _tiles(dataset.sizes["y"], tile):
        for xs in _tiles(dataset.sizes["x"], tile):
            regional.isel(y=ys, x=xs).to_zarr(partial, region={"y": ys, "x": xs}, consolidated=False)
    if "interpolated" in dataset.coords:
        count = xr.open_zarr(partial, consolidated=False)["observation_count"]
        min_count = next(
            (v.attrs["composite_min_count"] for v in dataset.data_vars.values() if "composite_min_count" in v.attrs),
            1,
        )
        flag = ~(count >= min_count).any(["y", "x"])
        xr.Dataset(coords={"interpolated": flag.reset_coords(drop=True)}).to_zarr(
            partial, region={"time": slice(None)}, mode="r+", consolidated=False
        )
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return out


def run_chain(
    cube, out: Path, *, chunk: int, tile: int, reference: str = "observed", write: str = "tiles"
) -> dict:
    """cube → mask → NDSI → snow mask → fill → align → 3-month composites → Zarr; returns timings.

    ``reference="observed"``: the align reference (the temporal mean of the *observed*, not
    gap-filled, snow mask) is computed first in its own streaming pass into a Zarr store and
    passed as ``reference=`` (read tile by tile); ``"mean"``: ``align``'s default, in one graph.
    ``write="tiles"``: the composites are computed and written tile by tile
    (:func:`write_in_tiles`); ``"one-graph"``: in one compute (:func:`glacierxr.io.write`).
    """
    import xarray as xr

    from glacierxr.io import write as write_atomically

    timings: dict[str, float] = {}
    start = time.perf_counter()
    masked = cube.glacier.mask()  # computes the per-scene missing fraction (one pass)
    timings["mask_s"] = time.perf_counter() - start
    observed = masked.glacier.ndsi().glacier.snow_mask()
    snow = observed.glacier.fill_gaps()
    if reference == "observed":
        # computed on the cluster straight into a small Zarr store, read back one tile per chunk:
        # neither the client nor a worker ever holds the whole (y, x) image
        mark = time.perf_counter()
        reference_path = out.with_name(f"{out.stem}_reference.zarr")
        mean_reference(observed).to_dataset(name="reference").to_zarr(
            reference_path, mode="w", consolidated=False
        )
        chunks = {"y": tile, "x": tile}
        ref = xr.open_zarr(reference_path, consolidated=False, chunks=chunks)["reference"]
        timings["reference_s"] = time.perf_counter() - mark
    else:
        if tile < max(snow.sizes["y"], snow.sizes["x"]):
            raise SystemExit("--reference mean registers whole scenes only: pass --tile >= the size")
        ref = "mean"
    aligned = align_in_tiles(snow, ref, tile=tile)
    composites = aligned.chunk({"y": chunk, "x": chunk}).glacier.monthly(months=3)
    # the per-pixel counts fit in uint16 (a quarter of monthly's int64 in memory and on disk);
    # one chunk grid for every variable (monthly gives the counts one chunk per period and the
    # interpolated composite one chunk along time), so every tile covers whole Zarr chunks
    counts = {
        name: composites[name].astype(np.uint16)
        for name in ("observation_count", "observed_count")
        if name in composites.coords
    }
    dataset = composites.assign_coords(counts).to_dataset(name="snow_mask")
    dataset = dataset.chunk({"time": -1, "y": chunk, "x": chunk})
    mark = time.perf_counter()
    if write == "tiles":
        write_in_tiles(dataset, out, tile=tile)
    else:
        write_atomically(dataset, out, overwrite=True)
    timings["write_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - start
    timings["scenes_kept"] = int(masked.sizes["time"])
    timings["periods"] = int(composites.sizes["time"])
    return timings


def run_predict(composites_path: Path, out: Path, *, chunk: int, model) -> float:
    """Forecast 4 periods over the whole region, block by block, into Zarr; returns seconds."""
    import xarray as xr

    from glacierxr.io import write

    chunks = {"time": -1, "y": chunk, "x": chunk}
    snow = xr.open_zarr(composites_path, chunks=chunks, consolidated=False)["snow_mask"]
    start = time.perf_counter()
    forecast = snow.glacier.predict(model, steps=4, patch=50)
    write(forecast.to_dataset(), out, overwrite=True)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------
# Cluster, memory, spills, restarts
# ------------------------------------------------------------------------------------------
class MemorySampler:
    """Polls the resident memory of each worker process from the client (psutil), in a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.05) -> None:
        import psutil

        self.processes = {address: psutil.Process(pid) for address, pid in pids.items()}
        self.peak = {address: 0 for address in pids}
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for address, process in self.processes.items():
                with contextlib.suppress(Exception):  # a process that died shows as a restart
                    self.peak[address] = max(self.peak[address], process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _worker_pid() -> int:
    return os.getpid()


def _spill_metrics(dask_worker) -> dict:
    metrics = getattr(dask_worker.data, "cumulative_metrics", {})
    return {
        "bytes": float(metrics.get(("disk-write", "bytes"), 0.0)),
        "count": float(metrics.get(("disk-write", "count"), 0.0)),
    }


#: glibc malloc settings for the workers. Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` to
#: hand freed memory back to the system quickly; that also pins glibc's mmap threshold at 128 KiB,
#: so every temporary array is a fresh ``mmap`` whose pages fault in on first touch.  glacierxr's
#: per-block NumPy work makes many such temporaries (``bench_malloc`` measures the cost).
MALLOC_TUNED = {"MALLOC_TRIM_THRESHOLD_": 64 * 2**20, "MALLOC_MMAP_THRESHOLD_": 32 * 2**20}


@contextlib.contextmanager
def local_cluster(*, workers: int, memory_limit: str, scratch: Path, malloc: str = "tuned"):
    """A LocalCluster of ``workers`` one-thread processes, ``memory_limit`` each, and its Client."""
    import dask
    from distributed import Client, LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    if malloc == "tuned":
        environ.update(MALLOC_TUNED)
    scratch.mkdir(parents=True, exist_ok=True)
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=":0",  # a free port: None still binds 8787 (distributed 2026.8)
            local_directory=str(scratch),
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def measured(client, work):
    """Run ``work()`` on ``client``'s cluster; return (its result, peaks MB, spilled bytes, restarts)."""
    before = client.run(_worker_pid)
    with MemorySampler(before) as sampler:
        result = work()
    after = client.run(_worker_pid)
    restarts = sum(1 for address, pid in before.items() if after.get(address) != pid)
    restarts += max(0, len(after) - len(before))
    spill = client.run(_spill_metrics)
    spilled = sum(s["bytes"] for s in spill.values())
    return result, {a: p / 2**20 for a, p in sampler.peak.items()}, spilled, restarts


def tiny_model():
    """An untrained one-layer ConvLSTM with 4 hidden channels (the forecast's cost, not its skill)."""
    import torch

    from glacierxr.ml import get_model

    torch.manual_seed(0)
    return get_model("convlstm", hidden_channels=(4,), dropout=0.0).eval()


# ------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------
def _block_workload(scenes: int, size: int) -> float:
    """CPU seconds of generate → mask → NDSI → snow mask → fill on ``scenes`` blocks (NumPy)."""
    import glacierxr  # noqa: F401  (registers the accessor)

    cube = synthetic_cube(size=size, scenes=scenes, chunk=size)
    start = time.process_time()
    for scene in range(scenes):
        block = cube.isel(time=[scene]).compute(scheduler="sync")
        block.glacier.mask(drop=False).glacier.ndsi().glacier.snow_mask().glacier.fill_gaps()
    return time.process_time() - start


def bench_malloc(args) -> None:
    """CPU time of the same per-block work in a worker with dask's default vs tuned malloc settings."""
    scenes, size = (4, 500) if args.quick else (8, 1000)
    seconds = {}
    for setting in ("dask-default", "tuned"):
        with local_cluster(workers=1, memory_limit=args.memory_limit, scratch=WORK / "dask-scratch",
                           malloc=setting) as client:
            client.submit(_block_workload, 1, 64, pure=False).result()  # imports, warm-up
            seconds[setting] = min(client.submit(_block_workload, scenes, size, pure=False).result()
                                   for _ in range(2))
    emit("worker_cpu_per_block", round(seconds["tuned"] / scenes, 3), "s", block_px=size,
         work="generate + mask + ndsi + snow_mask + fill_gaps, NumPy, in a worker process",
         environment=MALLOC_TUNED,
         baseline="dask's default worker environment (MALLOC_TRIM_THRESHOLD_=65536)",
         baseline_value=round(seconds["dask-default"] / scenes, 3),
         ratio=round(seconds["tuned"] / seconds["dask-default"], 2))


def bench_size(size: int, scenes: int, args, *, mode: str, predict: bool) -> dict:
    """The chain over a ``size``² region on a fresh cluster; emits and returns the figures.

    ``mode="tiles"``: align in ``args.tile`` tiles and compute/write tile by tile;
    ``"one-graph"``: align on whole scenes and write everything in one compute.  A region no
    larger than one tile is the same in both modes.
    """
    cube = synthetic_cube(size=size, scenes=scenes, chunk=args.chunk, seed=args.seed)
    tile = args.tile if mode == "tiles" else size
    one_tile = tile >= size
    label = f"{size}px" if one_tile else f"{size}px_{mode.replace('-', '_')}"
    out = WORK / f"composites_{label}_{scenes}scenes.zarr"
    with local_cluster(workers=args.workers, memory_limit=args.memory_limit,
                       scratch=WORK / "dask-scratch") as client:
        timings, peaks, spilled, restarts = measured(
            client, lambda: run_chain(cube, out, chunk=args.chunk, tile=tile,
                                      reference=args.reference, write="one-graph" if one_tile else mode),
        )
    megapixel_scenes = size * size * scenes / 1e6
    peak = max(peaks.values())
    common = {"size_px": size, "scenes": scenes, "chunk_px": args.chunk,
              "layout": "one tile" if one_tile else (f"{tile}x{tile} px tiles" if mode == "tiles"
                                                     else "one graph"),
              "workers": args.workers, "memory_limit": args.memory_limit, "reference": args.reference}
    emit(f"throughput_{label}", round(megapixel_scenes / timings["total_s"], 3), "Mpx-scenes/s",
         **common, wall_s=round(timings["total_s"], 1),
         input_gb=round(size * size * scenes * (4 + 4 + 2) / 1e9, 2),
         stages_s={k: round(v, 1) for k, v in timings.items() if k.endswith("_s")},
         scenes_kept=timings["scenes_kept"], periods=timings["periods"])
    emit(f"peak_worker_memory_{label}", round(peak, 1), "MB", **common,
         per_worker_mb=[round(p, 1) for p in peaks.values()])
    emit(f"spilled_{label}", int(spilled), "bytes", **common)
    emit(f"worker_restarts_{label}", restarts, "count", **common)
    result = {"peak": peak, "throughput": megapixel_scenes / timings["total_s"], "restarts": restarts}
    if predict:
        model = tiny_model()
        with local_cluster(workers=args.workers, memory_limit=args.memory_limit,
                           scratch=WORK / "dask-scratch") as client:
            seconds, p_peaks, p_spilled, p_restarts = measured(
                client,
                lambda: run_predict(out, WORK / f"forecast_{label}.zarr", chunk=args.chunk, model=model),
            )
        area_km2 = size * size * (30.0 / 1000.0) ** 2
        emit(f"predict_rate_{size}px", round(area_km2 / seconds, 2), "km2/s", size_px=size,
             chunk_px=args.chunk, workers=args.workers, memory_limit=args.memory_limit,
             wall_s=round(seconds, 1), area_km2=round(area_km2, 1), steps=4, patch=50,
             model="convlstm hidden_channels=(4,) untrained",
             peak_worker_memory_mb=round(max(p_peaks.values()), 1),
             spilled_bytes=int(p_spilled), worker_restarts=p_restarts)
        result["restarts"] += p_restarts
    return result


def bench_cog(size: int, args) -> dict:
    """The real loader: sample COGs + STAC catalog → gx.search → gx.load → the same chain."""
    import glacierxr as gx

    folder = WORK / f"sample_{size}"
    start, end = "2019-01-01", "2020-06-30"
    catalog = folder / "catalog.json"
    if not catalog.exists():
        shutil.rmtree(folder, ignore_errors=True)
        gx.sample.write_catalog(folder, seed=args.seed, width=size, height=size, start=start, end=end)
    items = gx.search(catalog=catalog, datetime=f"{start}/{end}", max_cloud=100)
    chunk = min(args.chunk, size)
    cube = gx.load(items, resolution=30, chunks={"time": 1, "y": chunk, "x": chunk})
    scenes = cube.sizes["time"]
    with local_cluster(workers=args.workers, memory_limit=args.memory_limit,
                       scratch=WORK / "dask-scratch") as client:
        timings, peaks, spilled, restarts = measured(
            client, lambda: run_chain(cube, WORK / f"composites_cog_{size}.zarr",
                                      chunk=chunk, tile=max(cube.sizes["y"], cube.sizes["x"]),
                                      write="one-graph"),
        )
    pixels = cube.sizes["y"] * cube.sizes["x"]
    emit("cog_throughput", round(pixels * scenes / 1e6 / timings["total_s"], 3), "Mpx-scenes/s",
         size_px=[cube.sizes["y"], cube.sizes["x"]], scenes=scenes, wall_s=round(timings["total_s"], 1),
         peak_worker_memory_mb=round(max(peaks.values()), 1), spilled_bytes=int(spilled),
         worker_restarts=restarts, source="glacierxr.sample COGs via gx.search + gx.load")
    return {"restarts": restarts}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500² and 1000² px × 24 scenes (~3 min)")
    parser.add_argument("--sizes", type=int, nargs=2, help="small and large region side (px)")
    parser.add_argument("--scenes", type=int, help="scenes (default 96; 24 with --quick)")
    parser.add_argument("--chunk", type=int, help="spatial chunk (default 1000; 500 with --quick)")
    parser.add_argument("--tile", type=int,
                        help="tile side for align and writing (default: the small size)")
    parser.add_argument("--one-graph", action="store_true",
                        help="also run the large size as one graph (whole-scene align, one compute)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GiB", help="per worker")
    parser.add_argument("--reference", choices=("observed", "mean"), default="observed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-predict", action="store_true")
    parser.add_argument("--cog-size", type=int,
                        help="side of the real-COG sample (default 512; 256 quick; 0 skips)")
    parser.add_argument("--skip-malloc", action="store_true", help="skip the malloc comparison")
    args = parser.parse_args(argv)
    small, large = args.sizes or ((500, 1000) if args.quick else (2000, 4000))
    args.scenes = args.scenes or (24 if args.quick else 96)
    args.chunk = args.chunk or (500 if args.quick else 1000)
    args.tile = args.tile or small
    cog_size = (256 if args.quick else 512) if args.cog_size is None else args.cog_size
    WORK.mkdir(parents=True, exist_ok=True)

    restarts = 0
    if not args.skip_malloc:
        bench_malloc(args)
    if cog_size:
        restarts += bench_cog(cog_size, args)["restarts"]
    first = bench_size(small, args.scenes, args, mode="tiles", predict=False)
    second = bench_size(large, args.scenes, args, mode="tiles", predict=not args.no_predict)
    tiles = f"{args.tile}x{args.tile} px tiles" if args.tile < large else "one tile"
    emit("peak_worker_memory", round(second["peak"], 1), "MB", size_px=large, scenes=args.scenes,
         layout=tiles, baseline=f"same chain at {small}x{small} px",
         baseline_value=round(first["peak"], 1),
         ratio=round(second["peak"] / first["peak"], 2), region_ratio=round((large / small) ** 2, 2),
         memory_limit=args.memory_limit)
    emit("throughput", round(second["throughput"], 3), "Mpx-scenes/s", size_px=large, scenes=args.scenes,
         layout=tiles, baseline=f"same chain at {small}x{small} px",
         baseline_value=round(first["throughput"], 3),
         ratio=round(second["throughput"] / first["throughput"], 2))
    restarts += first["restarts"] + second["restarts"]
    if args.one_graph and args.tile < large:
        whole = bench_size(large, args.scenes, args, mode="one-graph", predict=False)
        emit("peak_worker_memory_one_graph", round(whole["peak"], 1), "MB", size_px=large,
             scenes=args.scenes, layout="one graph, whole-scene align",
             baseline=f"same chain at {small}x{small} px",
             baseline_value=round(first["peak"], 1), ratio=round(whole["peak"] / first["peak"], 2),
             region_ratio=round((large / small) ** 2, 2), memory_limit=args.memory_limit)
        restarts += whole["restarts"]
    emit("worker_restarts", restarts, "count", sizes_px=[small, large])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
