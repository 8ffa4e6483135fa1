"""Benchmark: training samples/s of every registered model, and the loader rate beside it.

For each model of ``glacierxr.ml.list_models()`` in its **default configuration** (the sizes the
docs recommend), one training step is what :class:`glacierxr.ml.Trainer` does per batch: forward
with teacher-forcing targets, masked MSE, backward, gradient clipping, AdamW step. Batches are
16 sequences of 4 → 4 composites of 50 × 50 px. After ``--warmup`` steps, ``--steps`` steps are
timed (best of ``--rounds``); samples/s = 16 × steps / seconds. On this CPU, and also on CUDA
when ``torch.cuda.is_available()`` (with synchronisation).

The loader is :class:`glacierxr.ml.PatchSequences` on a 3-monthly cube (32 periods, 400 × 400
px, NumPy-backed, NaNs included), train split, batches of 16, timed the way the Trainer reads it
(``DataLoader(ds.split("train"), batch_size=16)``, per-sample collation) and as whole batches
(``DataLoader(ds.split("train").batched(16), batch_size=None)``). The ratio printed with every
training rate is loader rate / training rate: above 1 means the model, not the loader, limits
training ("the loader is never the bottleneck" holds when every ratio is > 1).

Machine load matters: the CPU figures are for ``--threads`` torch threads (default 1, printed in
every note; on a 2-core machine shared with other jobs, 2 threads measured ~10x *slower* than 1
for these models), so compare ratios measured in the same run.

    python benchmarks/train.py --quick      # < 1 min: 1 warm-up + 2 timed steps, 1 round
    python benchmarks/train.py              # 2 warm-up + 10 timed steps, best of 3

Prints one JSON object per line (``benchmark``, ``metric``, ``value``, ``unit`` and, where there
is a comparison, ``baseline``, ``baseline_value``, ``ratio``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import xarray as xr

BATCH = 16
PATCH = 50
T_IN = T_OUT = 4


def emit(metric: str, value, unit: str, **extra) -> None:
    record = {"benchmark": "train", "metric": metric, "value": value, "unit": unit, **extra}
    print(json.dumps(record), flush=True)


def make_cube(times: int = 32, size: int = 400, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    data = rng.random((times, size, size), dtype=np.float32)
    data[data > 0.98] = np.nan
    coords = {
        "time": pd.date_range("2013-01-01", periods=times, freq="QS"),
        "y": 3_550_000.0 - 30.0 * (np.arange(size) + 0.5),
        "x": 500_000.0 + 30.0 * (np.arange(size) + 0.5),
    }
    return xr.DataArray(data, dims=("time", "y", "x"), coords=coords, name="snow_mask")


def loader_rates(*, limit: int, seconds: float, rounds: int) -> dict[str, float]:
    """Sequences/s of the two ways to read PatchSequences in batches of 16 (best of rounds)."""
    import torch

    from glacierxr.ml.patches import PatchSequences

    sequences = PatchSequences(make_cube(), input_steps=T_IN, target_steps=T_OUT, patch=PATCH, stride=10)
    train = sequences.split("train")
    makers = {
        "per_sample": lambda: torch.utils.data.DataLoader(train, batch_size=BATCH),
        "batched": lambda: torch.utils.data.DataLoader(train.batched(BATCH), batch_size=None),
    }
    best = dict.fromkeys(makers, 0.0)
    for _ in range(rounds):
        for name, make in makers.items():
            count, start = 0, time.perf_counter()
            for inputs, _, _ in make():
                count += int(inputs.shape[0])
                if count >= limit or time.perf_counter() - start > seconds:
                    break
            best[name] = max(best[name], count / (time.perf_counter() - start))
    return best


def train_rate(name: str, device: str, *, warmup: int, steps: int, rounds: int) -> float:
    """Samples/s of Trainer-like optimisation steps of a default-size model on ``device``."""
    import torch

    from glacierxr.ml.models import get_model
    from glacierxr.ml.train import masked_mse

    torch.manual_seed(0)
    model = get_model(name).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    inputs = torch.rand(BATCH, T_IN, 1, PATCH, PATCH, device=device)
    targets = torch.rand(BATCH, T_OUT, 1, PATCH, PATCH, device=device)
    valid = (torch.rand(BATCH, T_OUT, 1, PATCH, PATCH, device=device) > 0.05).float()

    def step() -> None:
        output = model(inputs, T_OUT, targets=targets, teacher_forcing=0.5)
        loss = masked_mse(output, targets, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        best = max(best, BATCH * steps / (time.perf_counter() - start))
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="finishes in under a minute")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1; 0 keeps torch's default). On a small shared machine "
                             "more threads than free cores make these models many times slower")
    args = parser.parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from glacierxr.ml.models import get_model, list_models
    from glacierxr.ml.models.base import count_parameters

    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    steps = args.steps if args.steps is not None else (2 if args.quick else 10)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)

    loaders = loader_rates(limit=2_000 if args.quick else 10_000, seconds=3 if args.quick else 10, rounds=rounds)
    threads = torch.get_num_threads()
    emit("loader_samples_per_s", round(loaders["per_sample"], 1), "samples/s",
         note="DataLoader(PatchSequences(...).split('train'), batch_size=16) (what Trainer uses), "
              f"32x400x400 NumPy cube, 50 px patches, 4->4, stride 10; best of {rounds}")
    emit("loader_batched_samples_per_s", round(loaders["batched"], 1), "samples/s",
         note="DataLoader(ds.split('train').batched(16), batch_size=None)")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for name in list_models():
            try:
                rate = train_rate(name, device, warmup=warmup, steps=steps, rounds=rounds)
            except Exception as error:  # one broken model must not hide the others
                emit(f"train_samples_per_s/{name}/{device}", None, "samples/s",
                     note=f"failed: {type(error).__name__}: {error}")
                continue
            parameters = count_parameters(get_model(name))
            where = f"CPU, {threads} torch threads" if device == "cpu" else torch.cuda.get_device_name()
            emit(f"train_samples_per_s/{name}/{device}", round(rate, 2), "samples/s",
                 baseline="PatchSequences loader, DataLoader batch 16 (per-sample collation)",
                 baseline_value=round(loaders["per_sample"], 1), ratio=round(loaders["per_sample"] / rate, 1),
                 parameters=parameters,
                 note=f"default-size {name} ({parameters} parameters), batch {BATCH}, {PATCH}x{PATCH} px, "
                      f"{T_IN}->{T_OUT}, teacher forcing 0.5, AdamW + clipping; {warmup} warm-up, {steps} timed "
                      f"steps, best of {rounds}; {where}; ratio = loader rate / train rate (> 1: loader not the "
                      "bottleneck)")
    if "cuda" not in devices:
        emit("train_cuda", None, "samples/s", note="torch.cuda.is_available() is False here: CUDA not measured")


if __name__ == "__main__":
    main()
