"""Benchmark: streaming patch sequences with PatchSequences vs plain xbatcher + DataLoader.

Measured in one run, on the same cube:

* loader throughput (sequences/s) of ``DataLoader(PatchSequences(...).split("train"))`` (per-sample
  collation, what a trainer does by default) and of ``DataLoader(ds.batched(64), batch_size=None)``,
  against ``xbatcher.BatchGenerator`` + ``xbatcher.loaders.torch.MapDataset`` + ``DataLoader``
  (shuffled, batch 64), the plain way;
* peak memory (tracemalloc, MB) while streaming from a *lazy* Dask cube chunked one scene per
  chunk (like ``stackstac`` output), against the cube's size;
* the number of sequences of the cube and of the seed paper's setup;
* if the model registry is there: training samples/s of one optimisation step per model on
  small batches, and how many times faster the loader is than training (loader / train).

``--quick`` times the loaders on a 24 × 400 × 400 cube (< 1 min); the default on a 96 × 800 × 800
one (the seed paper's scene size and eight years of monthly composites). Memory is always measured
on the lazy 96 × 800 × 800 cube. Prints one JSON object per line.

    python benchmarks/patches.py --quick
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np
import pandas as pd
import xarray as xr


def emit(benchmark: str, metric: str, value, unit: str, **extra) -> None:
    record = {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit, **extra}
    print(json.dumps(record), flush=True)


def make_cube(times: int, size: int, *, lazy: bool, seed: int = 0) -> xr.DataArray:
    """Snow-mask-like values in [0, 1] with some NaN, 3-monthly time axis."""
    coords = {
        "time": pd.date_range("2013-01-01", periods=times, freq="QS"),
        "y": 3_550_000.0 - 30.0 * (np.arange(size) + 0.5),
        "x": 500_000.0 + 30.0 * (np.arange(size) + 0.5),
    }
    if lazy:
        import dask.array as dsa

        data = dsa.random.default_rng(seed).random((times, size, size), chunks=(1, size, size), dtype=np.float32)
        data = dsa.where(data > 0.98, np.float32(np.nan), data)
    else:
        data = np.random.default_rng(seed).random((times, size, size), dtype=np.float32)
        data[data > 0.98] = np.nan
    return xr.DataArray(data, dims=("time", "y", "x"), coords=coords, name="snow_mask")


def rate(loader, limit: int, *, seconds: float) -> tuple[float, int]:
    """Sequences per second over the first ``limit`` sequences (or ``seconds``) of a loader."""
    count = 0
    start = time.perf_counter()
    for batch in loader:
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        count += int(first.shape[0])
        if count >= limit or time.perf_counter() - start > seconds:
            break
    return count / (time.perf_counter() - start), count


def loader_throughput(cube: xr.DataArray, *, limit: int, baseline_limit: int, seconds: float, rounds: int,
                      patch: int, stride: int) -> float:
    """Best-of-``rounds`` rates, the three loaders interleaved so machine load hits them alike."""
    import torch
    import xbatcher
    from xbatcher.loaders.torch import MapDataset

    from glacierxr.ml.patches import PatchSequences

    # every window in "train" so both loaders draw from the same set of windows
    sequences = PatchSequences(cube, patch=patch, stride=stride, val_fraction=0, test_fraction=0)
    train = sequences.split("train")
    start = time.perf_counter()
    generator = xbatcher.BatchGenerator(
        cube,
        input_dims={"time": 8, "y": patch, "x": patch},
        input_overlap={"time": 7, "y": patch - stride, "x": patch - stride},
    )
    build = time.perf_counter() - start
    loaders = {
        "ours": (lambda: torch.utils.data.DataLoader(train, batch_size=64), limit),
        "batched": (lambda: torch.utils.data.DataLoader(train.batched(64), batch_size=None), limit),
        "xbatcher": (
            lambda: torch.utils.data.DataLoader(
                MapDataset(generator), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
            ),
            baseline_limit,
        ),
    }
    best = {name: (0.0, 0) for name in loaders}
    for _ in range(rounds):
        for name, (make, n) in loaders.items():
            measured = rate(make(), n, seconds=seconds)
            best[name] = max(best[name], measured)
    (ours, n_ours), (batched, n_batched), (theirs, n_theirs) = best["ours"], best["batched"], best["xbatcher"]
    name = f"{cube.sizes['time']}x{cube.sizes['y']}x{cube.sizes['x']}"
    baseline = "xbatcher.BatchGenerator + MapDataset + DataLoader(batch_size=64, shuffle=True)"
    common = dict(baseline=baseline, baseline_value=round(theirs, 1), baseline_n_timed=n_theirs, rounds=rounds)
    emit("patches", f"loader_throughput_{name}", round(ours, 1), "sequences/s", ratio=round(ours / theirs, 2),
         n_timed=n_ours, **common,
         note="DataLoader(ds.split('train'), batch_size=64) (shuffled, per-sample collation), numpy-backed cube; "
              "best of interleaved rounds")
    emit("patches", f"loader_throughput_batched_{name}", round(batched, 1), "sequences/s",
         ratio=round(batched / theirs, 2), n_timed=n_batched, **common,
         note="DataLoader(ds.split('train').batched(64), batch_size=None); best of interleaved rounds")
    emit("patches", f"xbatcher_generator_build_{name}", round(build, 3), "s",
         note=f"BatchGenerator builds all {len(generator)} selectors up front")
    table = sequences.windows
    emit("patches", f"n_sequences_{name}", len(sequences), "sequences",
         note=f"{table.t0.nunique()} time windows x {len(table[['y0', 'x0']].drop_duplicates())} patches")
    return batched


def streaming_memory(cube: xr.DataArray, *, limit: int, patch: int, stride: int) -> None:
    import torch

    from glacierxr.ml.patches import PatchSequences

    cube_mb = cube.size * 4 / 1e6
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        train = PatchSequences(cube, patch=patch, stride=stride).split("train")
        start = time.perf_counter()
        seen = 0
        for inputs, _, _ in torch.utils.data.DataLoader(train, batch_size=64):
            seen += inputs.shape[0]
            if seen >= limit:
                break
        elapsed = time.perf_counter() - start
        peak = (tracemalloc.get_traced_memory()[1] - base) / 1e6
    finally:
        tracemalloc.stop()
    name = f"{cube.sizes['time']}x{cube.sizes['y']}x{cube.sizes['x']}"
    emit("patches", f"streaming_peak_memory_{name}", round(peak, 1), "MB", baseline="cube size (float32)",
         baseline_value=round(cube_mb, 1), ratio=round(peak / cube_mb, 3),
         note=f"tracemalloc peak while streaming {seen} sequences of the train split from a lazy Dask cube "
              f"chunked one scene per chunk ({seen / elapsed:.0f} sequences/s under tracemalloc)")


def training_rates(loader_rate: float, *, patch: int, batch: int, steps: int) -> None:
    """Samples/s of one training step per registered model (skipped if there is no registry)."""
    try:
        from glacierxr.ml.models import get_model, list_models
    except ImportError:
        emit("patches", "train_rate", None, "samples/s", note="glacierxr.ml.models not available")
        return
    import torch

    torch.manual_seed(0)
    inputs = torch.rand(batch, 4, 1, patch, patch)
    targets = torch.rand(batch, 4, 1, patch, patch)
    mask = (torch.rand(batch, 4, 1, patch, patch) > 0.05).float()
    for name in list_models():
        try:
            model = get_model(name)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
            model.train()

            def step():
                optimizer.zero_grad()
                output = model(inputs, steps=4, targets=targets)
                loss = ((output - targets) ** 2 * mask).sum() / mask.sum()
                loss.backward()
                optimizer.step()

            step()  # warm-up
            start = time.perf_counter()
            for _ in range(steps):
                step()
            train_rate = batch * steps / (time.perf_counter() - start)
        except Exception as error:  # report and go on: one broken model must not hide the others
            emit("patches", f"train_rate_{name}", None, "samples/s", note=f"failed: {type(error).__name__}: {error}")
            continue
        emit("patches", f"train_rate_{name}", round(train_rate, 1), "samples/s",
             baseline="PatchSequences batched loader", baseline_value=round(loader_rate, 1),
             ratio=round(loader_rate / train_rate, 1),
             note=f"AdamW steps (masked MSE, teacher forcing targets), batch {batch}, {patch}x{patch} px, "
                  f"CPU, {torch.get_num_threads()} threads; ratio = loader rate / train rate")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cube, finishes within about a minute")
    parser.add_argument("--no-train", action="store_true", help="skip the per-model training rates")
    args = parser.parse_args(argv)
    from glacierxr.ml.patches import count_sequences

    times, size = (24, 400) if args.quick else (96, 800)
    patch, stride = 50, 10
    emit("patches", "n_sequences_paper_setup", count_sequences(96, 800, 800), "sequences",
         note="96 periods (8-period windows: 89) x 76 x 76 patches of 50 px at stride 10 in 800 x 800 px; "
              "the paper reports 566,048 = 98 x 76 x 76")
    cube = make_cube(times, size, lazy=False)
    loader_rate = loader_throughput(
        cube, limit=6_000 if args.quick else 50_000, baseline_limit=320 if args.quick else 2_000,
        seconds=3 if args.quick else 20, rounds=3, patch=patch, stride=stride,
    )
    del cube
    # memory is measured on the paper-sized lazy cube in both modes (it is never loaded whole)
    streaming_memory(make_cube(96, 800, lazy=True), limit=1_000 if args.quick else 5_000, patch=patch, stride=stride)
    if not args.no_train:
        training_rates(loader_rate, patch=patch, batch=4 if args.quick else 8, steps=1 if args.quick else 5)


if __name__ == "__main__":
    main()
