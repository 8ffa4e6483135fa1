"""Benchmark: a velocity cube of many pairs (one Dask task per pair) against a loop of flow() calls.

Measured in one run, on the same lazy scenes (a texture band moving 1.5 px east and 0.75 px north
per 16 days between stable ground, one Dask chunk per scene whose reads are counted):

* seconds to compute ``velocity_cube(scenes, pairs)`` (threaded scheduler) and, as the baseline,
  a Python loop of ``flow(scenes.isel(time=[i, j])).compute()`` over the same pairs;
* scene reads per pair of each (the cube reads each scene once however many pairs share it);
* seconds to build the cube (no pixel read) and to compute its composite;
* the median end-point error of the composite on the moving band against the true shift (px).

``--quick``: 10 scenes of 192 x 192 px; default: 24 scenes of 512 x 512 px. Pairs 16 to 48 days
apart. Prints one JSON object per line.

    python benchmarks/velocity_cube.py --quick
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import dask
import dask.array
import numpy as np
import scipy.ndimage as ndi
import xarray as xr

from glacierxr.flow import flow
from glacierxr.testing import make_series
from glacierxr.velocity import composite, select_pairs, velocity_cube

EAST, NORTH = 1.5, 0.75  # px per 16 days


def emit(metric: str, value, unit: str, **extra) -> None:
    record = {"benchmark": "velocity_cube", "metric": metric, "value": value, "unit": unit, **extra}
    print(json.dumps(record), flush=True)


def scenes(count: int, size: int, reads: list) -> tuple[xr.DataArray, xr.DataArray]:
    """Lazy scenes whose frame reads are appended to ``reads``, and the stable-ground mask."""
    rng = np.random.default_rng(0)
    texture = ndi.gaussian_filter(rng.standard_normal((size, size)), 2.0).astype(np.float32)
    ground = ndi.gaussian_filter(rng.standard_normal((size, size)), 2.0).astype(np.float32)
    band = np.zeros((size, size), bool)
    band[size // 4: 3 * size // 4] = True
    lock = threading.Lock()

    def frame(k: int) -> np.ndarray:
        with lock:
            reads.append(k)
        moved = ndi.shift(texture, (-NORTH * k, EAST * k), order=3, mode="wrap")
        return np.where(band, moved, ground).astype(np.float32)

    parts = [dask.array.from_delayed(dask.delayed(frame)(k), (size, size), dtype=np.float32) for k in range(count)]
    da = make_series(np.zeros((count, size, size), np.float32), name="green", freq="16D")
    rows = np.arange(size)[:, None] * np.ones((1, size))
    stable = (rows < size // 4 - 8) | (rows >= 3 * size // 4 + 8)
    return da.copy(data=dask.array.stack(parts)), xr.DataArray(stable, dims=("y", "x"), coords={"y": da.y, "x": da.x})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 scenes of 192 px")
    args = parser.parse_args(argv)
    count, size = (10, 192) if args.quick else (24, 512)
    reads: list = []
    data, stable = scenes(count, size, reads)
    pairs = select_pairs(data, min_days=16, max_days=48, min_clear=None)
    started = time.perf_counter()
    cube = velocity_cube(data, pairs, stable=stable)
    build = time.perf_counter() - started
    emit("pairs", len(pairs), "pairs", note=f"{count} scenes of {size} x {size} px, 16-48 days apart")
    emit("build_seconds", round(build, 3), "s", scene_reads=len(reads))

    started = time.perf_counter()
    computed = cube.compute()
    cube_seconds = time.perf_counter() - started
    cube_reads = len(reads)
    reads.clear()
    started = time.perf_counter()
    for row in pairs.itertuples():
        flow(data.isel(time=[row.index_img1, row.index_img2]), stable=stable).compute()
    loop_seconds = time.perf_counter() - started
    emit("seconds_per_pair", round(cube_seconds / len(pairs), 3), "s", baseline="loop of flow() per pair",
         baseline_value=round(loop_seconds / len(pairs), 3), ratio=round(cube_seconds / loop_seconds, 3))
    emit("scene_reads_per_pair", round(cube_reads / len(pairs), 3), "reads", baseline="loop of flow() per pair",
         baseline_value=round(len(reads) / len(pairs), 3), ratio=round(cube_reads / len(reads), 3))

    started = time.perf_counter()
    summary = composite(computed)
    emit("composite_seconds", round(time.perf_counter() - started, 3), "s")
    inner = slice(size // 4 + 16, 3 * size // 4 - 16)
    true_vx = EAST * 30.0 * 365.25 / 16.0  # m/yr, whatever the separation
    true_vy = NORTH * 30.0 * 365.25 / 16.0
    on_band = summary.sel(y=data.y[inner], x=data.x[16:-16], method="nearest")
    error = np.hypot(on_band.vx.values - true_vx, on_band.vy.values - true_vy) * 16.0 / (30.0 * 365.25)
    emit("composite_epe_band", round(float(np.nanmedian(error)), 4), "px per 16 days")


if __name__ == "__main__":
    main()
