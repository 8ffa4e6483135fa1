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

The **trainer ceiling** (``trainer_ceiling_samples_per_s``) is ``Trainer.fit``'s training rate
with a near-free model (a single 1 × 1 convolution with one channel, ``w · x + b``, applied to the
last input frames) on the ``PatchSequences`` train split of the same in-memory cube, batch 256:
the most the trainer can deliver whatever the model. Its baseline is a bare NumPy gather of the
same batches (same windows, same order) from the same cube, prepared beforehand (normalised,
NaN → 0, mask) — three fancy-indexing copies per batch and nothing else; ratio = ceiling /
gather. Beside it: the bare optimisation-step rate of the near-free model on one fixed batch
(what the loss and backward cost alone), the model's own forward and backward (no loss, no
optimizer), and the per-sample ``DataLoader`` path of earlier versions; both sides are warmed up
untimed first. Per model, ``trainer_vs_step/<model>/cpu`` is the ratio of ``Trainer.fit``'s rate
to the bare model-step rate at the same batch (256; 16 with ``--quick``; teacher forcing 0
in both). ``trainer_streaming_peak_memory`` is the tracemalloc peak while ``Trainer.fit``
streams from a lazy 96 × 800 × 800 cube (as in ``benchmarks/patches.py``, whose per-sample
``DataLoader`` figure is measured beside it as the baseline; tracemalloc sees NumPy buffers, not
torch's own allocations).

Machine load matters: the CPU figures are for ``--threads`` torch threads (default 1, printed in
every note; on a 2-core machine shared with other jobs, 2 threads measured ~10x *slower* than 1
for these models), so compare ratios measured in the same run.

    python benchmarks/train.py --quick      # < 1 min: 1 warm-up + 2 timed steps, 1 round (ceiling: 3 x 8 batches)
    python benchmarks/train.py              # 2 warm-up + 10 timed steps, best of 3
    python benchmarks/train.py --only ceiling   # just the trainer_ceiling rows (full size, < 1 min)

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
#: Teacher forcing of the Trainer.fit-vs-step comparison, in both: 0 makes every step cost the
#: same (a ratio drawn at random per step would make a few steps cheap or dear by chance).
FIT_TEACHER_FORCING = 0.0
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


class NearFree:
    """Factory of the near-free model of the trainer ceiling (torch imported lazily)."""

    @staticmethod
    def build():
        import torch

        class Conv1x1(torch.autograd.Function):
            """``w * x + b`` (a one-channel 1 x 1 convolution) with the fewest passes over ``x``.

            oneDNN's convolution kernel for a single channel is ~50x slower on this CPU, and
            autograd's backward of the broadcast product allocates a full-size temporary; here
            the weight's gradient is one dot product and the bias's one sum.
            """

            @staticmethod
            def forward(ctx, inputs, weight, bias):
                ctx.save_for_backward(inputs)
                return torch.addcmul(bias, inputs, weight)

            @staticmethod
            def backward(ctx, grad):
                (inputs,) = ctx.saved_tensors
                flat = grad.reshape(-1)
                return None, torch.dot(flat, inputs.reshape(-1)).view(()), flat.sum().view(())

        class NearFreeModel(torch.nn.Module):
            """A single 1 x 1 convolution (one channel in and out) applied to the last input frames."""

            def __init__(self) -> None:
                super().__init__()
                self.conv = torch.nn.Conv2d(1, 1, 1)

            def forward(self, inputs, steps, targets=None, teacher_forcing=0.0):
                weight, bias = self.conv.weight.view(()), self.conv.bias.view(())
                return Conv1x1.apply(inputs[:, -steps:].contiguous(), weight, bias)

            def get_config(self) -> dict:
                return {"name": "near_free_1x1_conv"}

        torch.manual_seed(0)
        return NearFreeModel()


def bare_gather_rate(train, *, batch: int, batches: int) -> tuple[float, float]:
    """Sequences per wall second and per CPU second of a bare NumPy gather of the trainer's batches.

    From the in-memory cube prepared beforehand (normalised, NaN → 0, targets masked, float mask).
    """
    layout = train._layout
    cube = np.asarray(train.data.values, dtype=np.float32)
    valid = np.isfinite(cube)
    values = np.where(valid, cube, np.float32(0))
    targets_source, mask = values * valid, valid.astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view
    ids = train._ids[train._order(1)][: batch * batches]
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    for first in range(0, ids.size, batch):
        t0, y0, x0 = layout.decompose(ids[first : first + batch])
        inputs = windows(values, (T_IN, PATCH, PATCH))[t0, y0, x0]
        targets = windows(targets_source, (T_OUT, PATCH, PATCH))[t0 + T_IN, y0, x0]
        valid_mask = windows(mask, (T_OUT, PATCH, PATCH))[t0 + T_IN, y0, x0]
        count += inputs.shape[0] + 0 * (targets.size + valid_mask.size)
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def fit_rate(model, data, *, batch: int, batches: int, device: str = "cpu", **options) -> tuple[float, str, float]:
    """``Trainer.fit``'s training rate (sequences/s, one epoch of ``batches`` batches), its data path and
    its rate per CPU second of the whole ``fit`` call (set-up and the one-off read of the cube included)."""
    from glacierxr.ml.train import Trainer

    trainer = Trainer(model, max_epochs=1, batch_size=batch, max_batches_per_epoch=batches, device=device,
                      progress=False, patience=None, teacher_forcing=FIT_TEACHER_FORCING, **options)
    cpu = time.process_time()
    history = trainer.fit(data)
    cpu = time.process_time() - cpu
    sequences = min(len(data), batch * batches)
    return float(history.samples_per_s.iloc[0]), history.attrs["data_path"], sequences / cpu


def step_rate(model, data, *, batch: int, steps: int, device: str = "cpu") -> float:
    """Bare optimisation steps of ``model`` on one fixed batch: what Trainer computes per batch.

    Forward with teacher-forcing targets, the masked squared error Trainer uses for
    PatchSequences batches, backward, gradient clipping, AdamW; no data path, no bookkeeping.
    """
    import torch

    from glacierxr.ml._feed import BufferPool
    from glacierxr.ml.train import _dense_sse  # the loss Trainer uses on PatchSequences batches

    batch_arrays = next(iter(torch.utils.data.DataLoader(data.batched(batch), batch_size=None)))
    inputs, targets, valid = (a.to(device) for a in batch_arrays)
    model = model.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    pool = BufferPool()  # the loss's reused buffers, as in Trainer

    def step() -> None:
        prediction = model(inputs, T_OUT, targets=targets, teacher_forcing=FIT_TEACHER_FORCING)
        sse, count = _dense_sse(prediction, targets, valid, pool=pool)
        loss = sse / count.clamp_min(1).to(sse.dtype)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step()
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync()
    step_rate.cpu_rate = batch * steps / (time.process_time() - cpu)  # per CPU second (CPU only)
    return batch * steps / (time.perf_counter() - start)


def model_rate(model, data, *, batch: int, steps: int) -> float:
    """Sequences/s of the near-free model's own forward and backward on one fixed batch (CPU).

    No loss, no optimizer: the gradient of the output is a fixed tensor. What any trainer must
    spend per batch on this model, whatever its data path.
    """
    import torch

    inputs = next(iter(torch.utils.data.DataLoader(data.batched(batch), batch_size=None)))[0]
    grad = torch.full((inputs.shape[0], T_OUT, *inputs.shape[2:]), 1e-6)

    def step() -> None:
        model(inputs, T_OUT).backward(grad)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def trainer_ceiling(*, batches: int, rounds: int) -> None:
    """The ``trainer_ceiling`` rows: near-free model through Trainer.fit vs the bare gather (interleaved)."""
    from glacierxr.ml.patches import PatchSequences

    batch = 256
    train = PatchSequences(make_cube(), input_steps=T_IN, target_steps=T_OUT, patch=PATCH, stride=10).split("train")
    best = {key: 0.0 for key in ("ceiling", "gather", "step", "per_sample", "ceiling_cpu", "gather_cpu", "step_cpu",
                                 "prefetch", "model")}
    mode = ""
    # untimed warm-up of both: the first large arrays of a process pay fresh page faults (measured with
    # --quick: a cold first gather at 7 700 sequences/s against 120 000 warm), which would flatter the ratio
    bare_gather_rate(train, batch=batch, batches=2)
    fit_rate(NearFree.build(), train, batch=batch, batches=2)
    for _ in range(rounds):
        wall, cpu = bare_gather_rate(train, batch=batch, batches=batches)
        best["gather"], best["gather_cpu"] = max(best["gather"], wall), max(best["gather_cpu"], cpu)
        rate, mode, cpu = fit_rate(NearFree.build(), train, batch=batch, batches=batches)
        best["ceiling"], best["ceiling_cpu"] = max(best["ceiling"], rate), max(best["ceiling_cpu"], cpu)
        best["step"] = max(best["step"], step_rate(NearFree.build(), train, batch=batch, steps=batches))
        best["step_cpu"] = max(best["step_cpu"], step_rate.cpu_rate)
        best["model"] = max(best["model"], model_rate(NearFree.build(), train, batch=batch, steps=batches))
        rate, _, _ = fit_rate(NearFree.build(), train, batch=batch, batches=batches, data_path="per_sample")
        best["per_sample"] = max(best["per_sample"], rate)
        rate, _, _ = fit_rate(NearFree.build(), train, batch=batch, batches=batches, prefetch=True)
        best["prefetch"] = max(best["prefetch"], rate)
    serial = 1 / (1 / best["gather"] + 1 / best["step"])
    emit("trainer_ceiling_samples_per_s", round(best["ceiling"], 1), "sequences/s",
         baseline="bare NumPy gather of the same batches from the same in-memory cube (prepared beforehand)",
         baseline_value=round(best["gather"], 1), ratio=round(best["ceiling"] / best["gather"], 3),
         near_free_step_samples_per_s=round(best["step"], 1), gather_then_step_samples_per_s=round(serial, 1),
         near_free_forward_backward_samples_per_s=round(best["model"], 1),
         ratio_bound_with_overlap=round(min(best["step"] / best["gather"], 1.0), 3),
         cpu_time_value=round(best["ceiling_cpu"], 1), cpu_time_baseline_value=round(best["gather_cpu"], 1),
         cpu_time_ratio=round(best["ceiling_cpu"] / best["gather_cpu"], 3),
         cpu_time_near_free_step=round(best["step_cpu"], 1), with_prefetch_thread=round(best["prefetch"], 1),
         note=f"Trainer.fit, near-free model (one 1x1 conv), batch {batch}, {batches} batches, data path {mode}, "
              f"32x400x400 NumPy cube, 50 px, 4->4, stride 10, CPU {_threads()} torch thread(s); best of {rounds} "
              "interleaved rounds. gather_then_step = 1 / (1/gather + 1/step): gathering then stepping with "
              "no overhead at all. cpu_time_* = sequences per CPU second of this process (what one free core "
              "would give on a loaded machine; the trainer's includes its set-up and one-off read of the cube). "
              "with_prefetch_thread: Trainer(prefetch=True), the next batch cut in a thread while the model runs "
              "(off by default on the CPU). near_free_forward_backward: the model's own forward and backward on "
              "one fixed batch, no loss, no optimizer. Bound: any trainer runs the step on every batch, so its "
              f"rate is at most the step's; here the step runs at {best['step'] / best['gather']:.2f} x the "
              f"gather (the model's forward and backward alone at {best['model'] / best['gather']:.2f} x: a few "
              "passes over 10 MB tensors against the gather's one copy), so even a gather hidden entirely behind "
              "the step on a second core gives ratio_bound_with_overlap, and gather then step on one core "
              f"{serial / best['gather']:.2f}")
    emit("trainer_ceiling_per_sample_path", round(best["per_sample"], 1), "sequences/s",
         baseline="the batched path (trainer_ceiling)", baseline_value=round(best["ceiling"], 1),
         ratio=round(best["per_sample"] / best["ceiling"], 3),
         note="the same Trainer.fit with data_path='per_sample' (DataLoader collating single samples)")


def trainer_vs_step(names, *, batch: int, batches: int, device: str = "cpu") -> None:
    """Per model: Trainer.fit's rate over the bare model-step rate at the same batch, on ``device``.

    On CUDA the issue's target is Trainer.fit >= 80 % of the model-step rate at batch 256 for
    every model (Trainer.fit's mixed_precision='auto' probe picks the precision; the bare step
    is float32).
    """
    import torch

    from glacierxr.ml.models import get_model
    from glacierxr.ml.patches import PatchSequences

    train = PatchSequences(make_cube(), input_steps=T_IN, target_steps=T_OUT, patch=PATCH, stride=10).split("train")
    where = f"CPU {_threads()} torch thread(s)" if device == "cpu" else torch.cuda.get_device_name()
    for name in names:
        try:
            bare = step_rate(get_model(name), train, batch=batch, steps=batches, device=device)
            fit, mode, _ = fit_rate(get_model(name), train, batch=batch, batches=batches, device=device)
        except Exception as error:  # one broken model must not hide the others
            emit(f"trainer_vs_step/{name}/{device}", None, "samples/s", note=f"failed: {type(error).__name__}: {error}")
            continue
        emit(f"trainer_vs_step/{name}/{device}", round(fit, 2), "samples/s", baseline="bare model step, same batch",
             baseline_value=round(bare, 2), ratio=round(fit / bare, 3),
             note=f"Trainer.fit ({mode}) vs bare AdamW steps on one fixed batch, default-size {name}, batch {batch}, "
                  f"{batches} batches each, {where}")


def streaming_memory(*, limit: int) -> None:
    """tracemalloc peak of Trainer.fit streaming from a lazy 96x800x800 cube, beside the DataLoader's."""
    import tracemalloc

    import torch
    from patches import make_cube as make_lazy_cube

    from glacierxr.ml.patches import PatchSequences

    peaks = {}
    for label in ("dataloader", "trainer"):
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            train = PatchSequences(make_lazy_cube(96, 800, lazy=True), patch=PATCH, stride=10).split("train")
            if label == "trainer":
                fit_rate(NearFree.build(), train, batch=64, batches=max(limit // 64, 1))
            else:
                seen = 0
                for inputs, _, _ in torch.utils.data.DataLoader(train, batch_size=64):
                    seen += inputs.shape[0]
                    if seen >= limit:
                        break
            peaks[label] = (tracemalloc.get_traced_memory()[1] - base) / 1e6
        finally:
            tracemalloc.stop()
    emit("trainer_streaming_peak_memory_96x800x800", round(peaks["trainer"], 1), "MB",
         baseline="DataLoader(ds.split('train'), batch_size=64) on the same lazy cube (benchmarks/patches.py's figure)",
         baseline_value=round(peaks["dataloader"], 1), ratio=round(peaks["trainer"] / peaks["dataloader"], 3),
         note=f"tracemalloc peak while Trainer.fit (batch 64, streaming data path) trains on ~{limit} sequences of a "
              "lazy Dask cube chunked one scene per chunk; the cube is 245.8 MB. tracemalloc sees NumPy buffers, "
              "not torch's allocations (so it counts the trainer's reused loss buffers, NumPy arrays since they "
              "are reused, about 5 MB at batch 64; torch allocated the same temporaries before)")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


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
    parser.add_argument("--only", choices=("ceiling",), default=None,
                        help="run only these rows: 'ceiling' = the trainer_ceiling rows (at the size of the mode)")
    args = parser.parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from glacierxr.ml.models import get_model, list_models
    from glacierxr.ml.models.base import count_parameters

    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    steps = args.steps if args.steps is not None else (2 if args.quick else 10)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)

    # best of 3 rounds also with --quick: one round of 8 batches (~20 ms of gather) is at the mercy
    # of a single preemption on a shared machine
    trainer_ceiling(batches=8 if args.quick else 30, rounds=3)
    if args.only == "ceiling":
        return
    streaming_memory(limit=1_000 if args.quick else 5_000)
    trainer_vs_step(list_models(), batch=16 if args.quick else 256, batches=2)
    if torch.cuda.is_available():  # the GPU target, at batch 256 in both modes
        trainer_vs_step(list_models(), batch=256, batches=5 if args.quick else 20, device="cuda")
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
