"""Benchmark: what fitting the snow-state model costs, beside the baseline it is compared with.

On one synthetic cube of monthly snow masks (a snow line with memory over a sloping scene, 10 %
of the values missing), measured in one run:

* ``fit_peak_memory``: the peak of memory allocated while
  :meth:`glacierxr.ml.snowstate.SnowStateModel.fit` runs (``tracemalloc``, which sees NumPy's
  allocations), against the size of the cube itself (float32): ratio = how many cubes it holds
  at its peak;
* ``fit_peak_memory_dask``: the same for the cube Dask-backed, chunked whole in time like a
  composite store (the chunks are made as they are read, so the read is part of the peak);
* ``baselines_fit_peak_memory``: the same for fitting the baselines it is scored against (the
  climatology and the damping of anomaly persistence, as :func:`glacierxr.evaluate.evaluate` does);
* ``fit_seconds``: its wall time against fitting damped anomaly persistence on the same training
  periods (:func:`glacierxr.evaluate.climatology` + :func:`glacierxr.evaluate.fit_damping`, read
  from the same array): ratio = what the snow-state model costs beyond the strongest naive
  baseline.

``--quick``: 240 months of 300 x 300 px (22 million values); full size: 360 months of
400 x 400 px (58 million values, 220 MiB). Prints one JSON object per line (``benchmarks/run.py`` collects them).

    python benchmarks/snowstate.py --quick
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np


def emit(metric: str, value, unit: str, **extra) -> None:
    print(json.dumps({"benchmark": "snowstate", "metric": metric, "value": value, "unit": unit, **extra}), flush=True)


def cube(months: int, size: int, width: int | None = None):
    """Monthly snow masks of ``size`` x ``width`` px (square by default): a snow line with memory
    over a sloping scene, 10 % of the values missing (``benchmarks/residual_windows.py`` too)."""
    from glacierxr.testing import make_series

    width = width or size
    rng = np.random.default_rng(0)
    anomaly = np.zeros(months)
    for t in range(1, months):  # a snow-line anomaly (m) that lasts a few months
        anomaly[t] = 0.8 * anomaly[t - 1] + 90.0 * rng.standard_normal()
    line = 2000.0 + 400.0 * np.cos(2 * np.pi * (np.arange(months) % 12 - 7) / 12) + anomaly
    height = 1400.0 + 1200.0 * np.arange(size)[:, None] / size + 300.0 * np.arange(width)[None, :] / width
    values = (height[None] > line[:, None, None]).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = np.nan  # clouds
    return make_series(values, freq="MS")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    months, size = (240, 300) if args.quick else (360, 400)

    from glacierxr.evaluate import climatology, fit_damping, period_of_year, train_periods
    from glacierxr.ml import PatchSequences
    from glacierxr.ml.snowstate import SnowStateModel

    da = cube(months, size)
    sequences = PatchSequences(da, patch=50, stride=50, test_fraction=0.25)
    cube_bytes = da.size * 4
    shape = f"{months} x {size} x {size}"

    from glacierxr.evaluate import _Baselines  # what evaluate() fits for the naive baselines

    def peak_memory(metric: str, work, note: str) -> None:
        tracemalloc.start()
        work()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        emit(metric, round(peak / 2**20, 1), "MiB", baseline="the cube (float32)",
             baseline_value=round(cube_bytes / 2**20, 1), ratio=round(peak / cube_bytes, 2), note=note)

    peak_memory("fit_peak_memory", lambda: SnowStateModel().fit(sequences),
                f"SnowStateModel().fit on {shape} monthly snow masks")
    peak_memory("baselines_fit_peak_memory", lambda: _Baselines(sequences, ["climatology", "anomaly_persistence"], None),
                "the climatology and damped anomaly persistence fitted on the same training periods")
    # the same cube as a Dask-backed store would give it: whole in time, chunks made when read
    lazy = da.chunk({"time": -1, "y": size // 4, "x": size // 4}) * np.float32(1)
    lazy_sequences = PatchSequences(lazy, patch=50, stride=50, test_fraction=0.25)
    peak_memory("fit_peak_memory_dask", lambda: SnowStateModel().fit(lazy_sequences),
                "SnowStateModel().fit on the same cube, Dask-backed (time=-1, 4 x 4 chunks)")

    started = time.perf_counter()  # timed apart: tracemalloc slows every allocation it traces
    SnowStateModel().fit(sequences)
    seconds = time.perf_counter() - started

    started = time.perf_counter()
    train = train_periods(sequences)
    values = da.isel(time=train)
    clim = climatology(values, period=12)
    phase = period_of_year(values["time"].to_index(), 12)
    fit_damping(values.to_numpy() - clim.to_numpy()[phase])
    reference = time.perf_counter() - started
    emit("fit_seconds", round(seconds, 2), "s", baseline="damped anomaly persistence (climatology + damping)",
         baseline_value=round(reference, 2), ratio=round(seconds / reference, 2),
         note=f"SnowStateModel().fit on {shape}")


if __name__ == "__main__":
    main()
