"""Training: masked MSE, AdamW, teacher forcing, early stopping, exact resume, fine-tuning.

:class:`Trainer` fits any glacierxr forecasting model (``forward(inputs, steps, targets=None,
teacher_forcing=0.0)`` mapping ``(B, T_in, 1, H, W)`` to ``(B, T_out, 1, H, W)``) on batches of
``(inputs, targets, valid_mask)``, as yielded by ``PatchSequences.split("train")``.

What it does, following the training recipe of the seed paper (MSE loss, weight decay, dropout,
teacher forcing, early stopping; fine-tuning on another glacier):

* the loss is the MSE over **valid pixels only** (:func:`masked_mse`); gap-filled or missing
  pixels (``valid_mask == 0``) never contribute and NaNs there never reach the model;
* AdamW with decoupled weight decay; gradient-norm clipping; dropout is the model's own;
* the teacher-forcing ratio goes linearly from a start to an end value over the epochs;
* early stopping on the validation loss; at the end the model holds the best weights;
* every epoch a checkpoint is written atomically (``last.pt``, and ``best.pt`` when the
  validation loss improved) holding everything needed to continue *exactly*: weights, optimizer,
  gradient-scaler, epoch, history, early-stopping state and the torch / numpy / Python random
  states.  Each epoch's shuffling comes from a ``torch.Generator`` seeded from
  ``(seed, epoch)``, so the order of epoch *k* does not depend on what ran before it.  On CPU a
  run of N epochs that is killed and resumed ends with the same weights as one that was not;
* Ctrl-C leaves ``last.pt`` holding the last *completed* epoch before the interrupt propagates;
* wall time and an energy / CO₂ **estimate** per epoch (see :class:`EnergyMeter`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from glacierxr.errors import CheckpointError, ConfigError, DimensionError, GlacierXRError, ModelError
from glacierxr._safety import output_lock
from glacierxr._safety import remove as remove_output
from glacierxr._validate import require_positive
from glacierxr.ml import _feed
from glacierxr.ml import checkpoint as ckpt

__all__ = [
    "CARBON_INTENSITY_WORLD",
    "CPU_WATTS_PER_CORE",
    "GPU_WATTS_NOMINAL",
    "EnergyMeter",
    "NonFiniteBatchError",
    "Trainer",
    "fine_tune",
    "masked_mse",
]

logger = logging.getLogger(__name__)

#: World-average carbon intensity of electricity, kg CO₂e per kWh (IEA figure used as the
#: default by carbontracker).  Pass your grid's value for a meaningful estimate.
CARBON_INTENSITY_WORLD = 0.475
#: Assumed power of one fully busy CPU core, W.  A rough figure for current server and laptop
#: cores (package TDP divided by core count is typically 5–20 W).
CPU_WATTS_PER_CORE = 15.0
#: Assumed GPU power, W, used only when the draw cannot be measured (no ``pynvml``).
GPU_WATTS_NOMINAL = 250.0

_CHECKPOINT_FILES = ("last.pt", "best.pt", "model.pt")
_HISTORY_COLUMNS = (
    "train_loss",
    "val_loss",
    "lr",
    "teacher_forcing",
    "seconds",
    "samples_per_s",
    "energy_kwh",
    "co2_kg",
)


class NonFiniteBatchError(GlacierXRError, ValueError):
    """A training or validation batch holds NaN/inf where the loss would use it."""


# --------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------
def _masked_sse(prediction, target, valid_mask):
    """Sum of squared errors over valid pixels and the number of valid pixels (tensors)."""
    import torch

    valid = valid_mask if valid_mask.dtype == torch.bool else valid_mask > 0.5
    valid = valid.expand_as(target)
    zero = torch.zeros((), dtype=prediction.dtype, device=prediction.device)
    safe_target = torch.where(valid, target.to(prediction.dtype), zero)
    difference = torch.where(valid, prediction - safe_target, zero)
    return (difference * difference).sum(), valid.sum()


def masked_mse(prediction, target, valid_mask):
    """Mean squared error over the pixels where ``valid_mask`` is 1 (or True) only.

    Pixels with ``valid_mask == 0`` contribute neither to the sum nor to the count, and a NaN
    in ``target`` there does not propagate (nor does its gradient).

    Parameters
    ----------
    prediction, target : torch.Tensor
        Same shape, e.g. ``(B, T_out, 1, H, W)``.
    valid_mask : torch.Tensor
        Broadcastable to ``target``; 1/True where the target pixel was observed.

    Returns
    -------
    torch.Tensor
        Scalar; 0 (with a zero gradient) when no pixel is valid.

    Examples
    --------
    >>> import torch
    >>> prediction = torch.tensor([1.0, 2.0, 3.0])
    >>> target = torch.tensor([0.0, 0.0, float("nan")])
    >>> float(masked_mse(prediction, target, torch.tensor([1.0, 1.0, 0.0])))  # (1 + 4) / 2
    2.5
    """
    sse, count = _masked_sse(prediction, target, valid_mask)
    return sse / count.clamp_min(1).to(sse.dtype)


# --------------------------------------------------------------------------------------------
# energy
# --------------------------------------------------------------------------------------------
class EnergyMeter:
    """Estimate the electricity used while training, and its CO₂ equivalent.

    * CPU: the CPU time this process and its finished children (DataLoader workers) used, in
      core-seconds (:func:`time.process_time` and :func:`os.times`: the integral of the
      process's ``cpu_percent`` over the wall time, without sampling), times an assumed power
      per busy core (``cpu_watts_per_core``, default
      :data:`CPU_WATTS_PER_CORE` = 15 W).
    * GPU (CUDA only): the board power sampled twice a second with ``torch.cuda.power_draw``
      (needs ``pynvml``), averaged and multiplied by the wall time; without ``pynvml`` the
      nominal ``gpu_watts`` (default :data:`GPU_WATTS_NOMINAL` = 250 W) times the wall time.
    * CO₂ = energy × ``carbon_intensity`` (kg CO₂e per kWh; default
      :data:`CARBON_INTENSITY_WORLD` = 0.475, the IEA world average used by carbontracker).

    This is an order-of-magnitude figure, not a measurement: it leaves out memory, disks,
    cooling (data-centre PUE), idle power and other processes, and the per-core power is a
    generic assumption.  Treat it as good to a factor of about two.
    """

    def __init__(
        self,
        device,
        *,
        cpu_watts_per_core: float = CPU_WATTS_PER_CORE,
        gpu_watts: float = GPU_WATTS_NOMINAL,
        carbon_intensity: float = CARBON_INTENSITY_WORLD,
    ) -> None:
        self.device = device
        self.cpu_watts_per_core = float(cpu_watts_per_core)
        self.gpu_watts = float(gpu_watts)
        self.carbon_intensity = float(carbon_intensity)
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gpu_measured = False
        self._start_wall = 0.0
        self._start_cpu = 0.0

    @property
    def method(self) -> str:
        """How the last figure was obtained, in words (stored in the history)."""
        text = f"cpu-time x {self.cpu_watts_per_core:g} W/core"
        if getattr(self.device, "type", str(self.device)) == "cuda":
            text += (
                " + gpu power sampled (torch.cuda.power_draw)"
                if self._gpu_measured
                else f" + gpu nominal {self.gpu_watts:g} W"
            )
        return text + f"; co2 at {self.carbon_intensity:g} kg/kWh"

    @staticmethod
    def _cpu_seconds() -> float:
        # this process at nanosecond resolution, plus reaped children (DataLoader workers)
        children = os.times()
        return time.process_time() + children.children_user + children.children_system

    def _sample_gpu(self) -> None:
        import torch

        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):
                self._samples.append(torch.cuda.power_draw(self.device) / 1000.0)

    def start(self) -> None:
        """Start measuring (call at the start of an epoch)."""
        self._start_wall = time.perf_counter()
        self._start_cpu = self._cpu_seconds()
        self._samples = []
        if getattr(self.device, "type", None) == "cuda":
            import torch

            try:
                self._samples.append(torch.cuda.power_draw(self.device) / 1000.0)
                self._gpu_measured = True
            except Exception:  # no pynvml / unsupported board
                self._gpu_measured = False
            if self._gpu_measured:
                self._stop.clear()
                self._thread = threading.Thread(target=self._sample_gpu, daemon=True)
                self._thread.start()

    def stop(self) -> tuple[float, float, float]:
        """Stop measuring; return ``(wall_seconds, energy_kwh, co2_kg)`` since :meth:`start`."""
        seconds = time.perf_counter() - self._start_wall
        cpu_seconds = max(self._cpu_seconds() - self._start_cpu, 0.0)
        joules = cpu_seconds * self.cpu_watts_per_core
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if getattr(self.device, "type", None) == "cuda":
            watts = float(np.mean(self._samples)) if self._gpu_measured and self._samples else self.gpu_watts
            joules += watts * seconds
        energy_kwh = joules / 3.6e6
        return seconds, energy_kwh, energy_kwh * self.carbon_intensity


# --------------------------------------------------------------------------------------------
# random states
# --------------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A well-mixed 63-bit seed that depends on (seed, epoch, stream) only."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _capture_rng() -> dict:
    import torch

    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else [],
        "numpy": {
            "bit_generator": str(numpy_state["bit_generator"]),
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": random.getstate(),
    }


def _restore_rng(state: Mapping) -> None:
    import torch

    torch.set_rng_state(state["torch"].cpu())
    cuda_states = list(state.get("cuda") or [])
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _clone_tree(value):
    """Deep copy with every tensor detached and copied to the CPU."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        return {k: _clone_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone_tree(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_clone_tree(v) for v in value)
    return value


# --------------------------------------------------------------------------------------------
# trainer
# --------------------------------------------------------------------------------------------
class Trainer:
    """Fit a glacierxr forecasting model with checkpoints that resume exactly.

    Parameters
    ----------
    model : torch.nn.Module
        ``forward(inputs, steps, targets=None, teacher_forcing=0.0)`` mapping
        ``(B, T_in, 1, H, W)`` to ``(B, steps, 1, H, W)``, with ``get_config()`` (every model of
        :func:`glacierxr.ml.get_model`).  It is moved to ``device`` and trained in place.
    max_epochs : int
        Upper bound on the number of epochs (early stopping may end sooner).
    batch_size : int
        Sequences per optimizer step.
    lr, weight_decay : float
        AdamW learning rate and decoupled weight decay.
    teacher_forcing : float or (float, float)
        Probability that the model is fed the true previous target instead of its own
        prediction while training.  ``(start, end)`` changes it linearly from ``start`` at epoch
        1 to ``end`` at ``max_epochs``; a float keeps it constant.  Validation never uses it.
    grad_clip : float or None
        Maximum global gradient norm; ``None`` disables clipping.
    patience : int or None
        Stop after this many epochs without an improvement of the monitored loss (the
        validation loss, or the training loss when no validation data is given) by more than
        ``min_delta``; ``None`` disables early stopping.
    min_delta : float
        Smallest decrease that counts as an improvement.
    restore_best : bool
        At the end of :meth:`fit` load the weights of the best epoch (by the monitored loss)
        into the model.  This is what early stopping returns.
    checkpoint_dir : path-like, optional
        Folder for ``last.pt`` (every epoch), ``best.pt`` (each improvement), ``model.pt`` (the
        final model, for :func:`glacierxr.ml.checkpoint.load_model`) and ``metrics.jsonl``.
        With ``resume=False`` the checkpoints of an earlier run there are replaced, but only
        once this run has written its first checkpoint (a run that fails before leaves them).
    resume : bool or path-like
        Continue from ``checkpoint_dir/last.pt`` (or from the given training checkpoint) when
        it exists; start from scratch when it does not.  Settings that change the result
        (batch size, learning rate, seed …) should match the interrupted run; a warning lists
        those that differ.
    seed : int
        Seeds Python, numpy and torch at the start of a fresh run, and (with the epoch) every
        epoch's shuffling.
    device : {"auto", "cpu", "cuda", ...} or torch.device
        ``"auto"``: CUDA when available, else CPU.
    mixed_precision : {"auto", "bf16", "fp16", "no"}
        Autocast on CUDA.  ``"auto"`` measures: at the start of :meth:`fit` a short probe times
        a few training steps on the first batch in float32 and in bf16 (weights, optimizer and
        random states are restored afterwards) and keeps bf16 only if it was at least 5 %
        faster; without bf16 support it stays float32.  (Measured on an H200: bf16 autocast was
        *slower* than float32 for every model at batch 16.)  The choice and the probe's rates are
        in ``history.attrs``.  CPU training is always float32.
    num_workers : int
        DataLoader worker processes (the per-sample path; the batched path runs in-process).
    progress : bool or None
        Progress bars (tqdm): epochs, and the batches of the current epoch with their rate and
        the estimated time left.  ``True`` always shows them, ``False`` never, ``None`` (default)
        when stderr is a terminal.
    log_file : path-like, optional
        JSON-lines metrics log, one line per epoch (flushed and fsync-ed); default
        ``checkpoint_dir/metrics.jsonl`` (none without a checkpoint_dir).
    freeze : sequence of str
        Parameter-name prefixes to freeze (``("encoder",)`` freezes ``encoder.*``), for
        fine-tuning; the counts of trainable and frozen parameters are logged and kept in
        :attr:`parameter_counts`.
    steps : int, optional
        Forecast length; default the length of the targets.
    max_batches_per_epoch : int, optional
        Use at most this many batches per epoch (training and validation), e.g. for quick runs
        on large streaming datasets.
    cpu_watts_per_core, gpu_watts, carbon_intensity : float
        Assumptions of the energy / CO₂ estimate, see :class:`EnergyMeter`.
    data_path : {"auto", "batched", "per_sample"}
        How a :class:`~glacierxr.ml.PatchSequences` view is read.  ``"batched"`` (what ``"auto"``
        picks with ``num_workers=0``) cuts whole batches at once (see
        :mod:`glacierxr.ml._feed`): the same sequences in the same order and the same bytes as
        ``"per_sample"`` (a ``DataLoader`` collating single samples), several times faster.
        Other datasets and DataLoaders always go through a ``DataLoader``.
    cube_on_device : bool or "auto"
        Batched path: prepare the part of the cube the split covers once per :meth:`fit` and
        gather every batch from it, on the GPU when training on CUDA.  ``"auto"``: for cubes
        already in memory (NumPy-backed) up to 2 GB, and on CUDA for any cube up to 2 GB
        prepared; a lazy (Dask) cube on the CPU is streamed tile by tile in bounded memory.
    prefetch : bool or "auto"
        Batched path: cut the next batch in a background thread while the model runs; on CUDA
        batches also go through pinned buffers and a separate copy stream.  ``"auto"``: on CUDA.
        On the CPU it needs a free second core and long epochs: measured on a 2-core machine
        (near-free model, batch 256) 30 000–42 000 instead of about 30 000 sequences/s once its
        buffers were warm, slower with another job on the second core, and a new trainer first
        touches about 15 batch buffers (150 MB at batch 256 of 4 × 50 × 50) for it.
    tf32 : bool
        On CUDA allow TensorFloat-32 matrix multiplications and convolutions during :meth:`fit`
        (``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``).
        cuDNN autotuning (``torch.backends.cudnn.benchmark``) is on during :meth:`fit` too;
        the previous settings are restored afterwards.
    compile : bool
        Run the model through :func:`torch.compile` for training and validation (the weights
        are shared with :attr:`model`; checkpoints hold the plain model).  Compilation takes
        time on the first batches, and every new teacher-forcing ratio of a schedule compiles
        again.  Measured on a 2-core CPU (lstm, batch 16, 4 batches per epoch): with the
        default schedule the second epoch ran at 0.6 instead of 34 sequences/s (recompiling);
        with a constant ``teacher_forcing=0.5`` at 155 instead of 119 sequences/s, after about
        10 s of compiling.  So it is off by default: worth it for long runs with a constant
        ratio.

    Attributes
    ----------
    history : pandas.DataFrame
        One row per completed epoch (index ``epoch``, from 1): ``train_loss``, ``val_loss``,
        ``lr``, ``teacher_forcing``, ``seconds`` (wall time of training + validation),
        ``samples_per_s`` (training sequences per second), ``energy_kwh``, ``co2_kg``.  Its
        ``attrs`` hold ``best_epoch``, ``best_loss``, ``stopped_early``, ``energy_method`` …
    parameter_counts : dict
        ``{"trainable": n, "frozen": m}``.

    Notes
    -----
    The trainer keeps a CPU copy of the last completed epoch (weights and optimizer state, about
    three times the model's size) so that Ctrl-C can always write a consistent ``last.pt``, plus
    a copy of the best weights.  On the CPU it also keeps the buffers the batched path and its
    loss reuse from batch to batch (a few batches' worth; fresh ones would cost page faults).

    Exact resume is guaranteed on CPU with deterministic data (the same dataset in the same
    order for the same index).  On CUDA some kernels are not deterministic; resume is then
    statistically, not bitwise, equivalent.  An ``IterableDataset`` cannot be shuffled by the
    DataLoader: if it has ``set_epoch(epoch)`` it is called before every epoch (so the
    dataset can shuffle itself reproducibly).

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> class Persistence(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.scale = torch.nn.Parameter(torch.tensor(0.5))
    ...     def forward(self, inputs, steps, targets=None, teacher_forcing=0.0):
    ...         return self.scale * inputs[:, -1:].repeat(1, steps, 1, 1, 1)
    ...     def get_config(self):
    ...         return {"name": "persistence"}
    >>> x = torch.rand(16, 2, 1, 4, 4)
    >>> data = TensorDataset(x, x[:, -1:].repeat(1, 2, 1, 1, 1), torch.ones(16, 2, 1, 4, 4))
    >>> history = Trainer(Persistence(), max_epochs=3, lr=0.1, progress=False).fit(data)
    >>> list(history.index), bool(history.train_loss.iloc[-1] < history.train_loss.iloc[0])
    ([1, 2, 3], True)
    """

    def __init__(
        self,
        model,
        *,
        max_epochs: int = 20,
        batch_size: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        teacher_forcing: float | tuple[float, float] = (1.0, 0.0),
        grad_clip: float | None = 1.0,
        patience: int | None = 5,
        min_delta: float = 0.0,
        restore_best: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool | str | os.PathLike = False,
        seed: int = 0,
        device: Any = "auto",
        mixed_precision: Literal["auto", "bf16", "fp16", "no"] | bool | None = "auto",
        num_workers: int = 0,
        progress: bool | None = None,
        log_file: str | os.PathLike | None = None,
        freeze: Sequence[str] = (),
        steps: int | None = None,
        max_batches_per_epoch: int | None = None,
        cpu_watts_per_core: float = CPU_WATTS_PER_CORE,
        gpu_watts: float = GPU_WATTS_NOMINAL,
        carbon_intensity: float = CARBON_INTENSITY_WORLD,
        data_path: Literal["auto", "batched", "per_sample"] = "auto",
        cube_on_device: bool | Literal["auto"] = "auto",
        prefetch: bool | Literal["auto"] = "auto",
        tf32: bool = True,
        compile: bool = False,
    ) -> None:
        _check_trainer_arguments(
            model, max_epochs=max_epochs, batch_size=batch_size, num_workers=num_workers, steps=steps,
            max_batches_per_epoch=max_batches_per_epoch, patience=patience, lr=lr,
            cpu_watts_per_core=cpu_watts_per_core, gpu_watts=gpu_watts, weight_decay=weight_decay,
            min_delta=min_delta, carbon_intensity=carbon_intensity, grad_clip=grad_clip,
            resume=resume, checkpoint_dir=checkpoint_dir, data_path=data_path,
            cube_on_device=cube_on_device, prefetch=prefetch,
        )
        if isinstance(freeze, str):
            freeze = (freeze,)

        self.model = model
        self.max_epochs = int(max_epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.teacher_forcing = _teacher_forcing_range(teacher_forcing)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.patience = None if patience is None else int(patience)
        self.min_delta = float(min_delta)
        self.restore_best = bool(restore_best)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.resume = resume
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.progress = None if progress is None else bool(progress)
        self.freeze = tuple(str(prefix) for prefix in freeze)
        self.steps = steps
        self.max_batches_per_epoch = max_batches_per_epoch
        if log_file is None and self.checkpoint_dir is not None:
            log_file = self.checkpoint_dir / "metrics.jsonl"
        self.log_file = None if log_file is None else Path(log_file)
        self.data_path, self.cube_on_device, self.prefetch = data_path, cube_on_device, prefetch
        self.tf32, self.compile = bool(tf32), bool(compile)

        self.device = _resolve_device(device)
        self._precision_request = "auto" if mixed_precision is True else mixed_precision
        #: float32 and bf16 training rates measured by the ``mixed_precision="auto"`` probe.
        self.precision_probe: dict[str, float] = {}
        self.mixed_precision = _resolve_precision(mixed_precision, self.device)
        self.energy = EnergyMeter(self.device, cpu_watts_per_core=cpu_watts_per_core, gpu_watts=gpu_watts,
                                  carbon_intensity=carbon_intensity)
        #: Provenance kept in every checkpoint (e.g. the checkpoint a fine-tuning started from).
        self.provenance: dict = {}
        #: Files of an earlier run removed once this run's first checkpoint is written (a new
        #: run fills it with the earlier checkpoints; callers may add their own files).
        self.replaces_after_first_checkpoint: list[Path] = []
        self._setup_model()

    def _setup_model(self) -> None:
        """Freeze, move the model to the device, build the optimizer and empty bookkeeping."""
        import torch

        self.parameter_counts = self._apply_freeze()
        self.model.to(self.device)
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self._trainable, lr=self.lr, weight_decay=self.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.mixed_precision == "fp16")
        self._model_call = self.model
        if self.compile:
            self._model_call = torch.compile(self.model)
        self._feeds: dict[int, Any] = {}
        # CPU batches of the batched path and the loss's temporaries, reused across feeds and fits
        self._buffers = _feed.BufferPool()
        self.history = _history_frame([])
        self._records: list[dict] = []
        self._best_loss = math.inf
        self._best_epoch = 0
        self._best_state: dict | None = None
        self._bad_epochs = 0
        self._stopped_early = False
        self._completed: dict | None = None
        self._loader_generator_state = None
        self._train_generator = None

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, model=None, **trainer_kwargs: Any
    ) -> Trainer:
        """A trainer (fresh optimizer, epoch 1) for a model loaded from a checkpoint.

        For fine-tuning on another glacier: the weights, configuration and normalization come
        from ``path`` (a ``model.pt``, ``best.pt`` or ``last.pt``), everything else from
        ``trainer_kwargs`` (e.g. ``freeze=("encoder",)``, a smaller ``lr``).  The source
        checkpoint's SHA-256 is kept in every checkpoint the new trainer writes.

        Parameters
        ----------
        path : path-like
            Checkpoint to start from.
        model : torch.nn.Module, optional
            Load into this model instead of rebuilding it through the registry.
        **trainer_kwargs
            Arguments of :class:`Trainer`.
        """
        model = ckpt.load_model(path, map_location="cpu", model=model)
        model.train()
        trainer = cls(model, **trainer_kwargs)
        trainer.provenance = {
            "fine_tuned_from": str(path),
            "fine_tuned_from_sha256": model.checkpoint_sha256,
        }
        return trainer

    def _under(self, name: str, prefix: str) -> bool:
        """Whether parameter ``name`` starts with ``prefix`` (for a wrapper such as a
        ResidualForecaster, also counted from its inner model: ``encoder`` names ``model.encoder.*``)."""
        inner = getattr(self.model, "inner_prefix", "")
        return name.startswith(prefix) or bool(inner) and name.startswith(inner + prefix)

    def _apply_freeze(self) -> dict:
        names = [name for name, _ in self.model.named_parameters()]
        for prefix in self.freeze:
            matched = [name for name in names if self._under(name, prefix)]
            if not matched:
                top = sorted({name.split(".")[0] for name in names})
                raise ConfigError(
                    f"freeze prefix {prefix!r} matches no parameter of "
                    f"{type(self.model).__name__}. Top-level parameter names: {top}."
                )
        for name, parameter in self.model.named_parameters():
            if any(self._under(name, prefix) for prefix in self.freeze):
                parameter.requires_grad_(False)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        if trainable == 0:
            raise ConfigError(
                f"Nothing to train: all {frozen} parameters are frozen (freeze={self.freeze}). "
                "Freeze fewer prefixes."
            )
        if self.freeze:
            logger.info("freeze=%s: %d trainable, %d frozen parameters", self.freeze, trainable, frozen)
        return {"trainable": int(trainable), "frozen": int(frozen)}

    # ---------------------------------------------------------------- schedule
    def teacher_forcing_at(self, epoch: int) -> float:
        """Teacher-forcing ratio used in ``epoch`` (1-based): linear from start to end.

        Examples
        --------
        >>> import torch
        >>> trainer = Trainer(torch.nn.Linear(1, 1), max_epochs=5, teacher_forcing=(1.0, 0.0),
        ...                   device="cpu")
        >>> [trainer.teacher_forcing_at(e) for e in range(1, 6)]
        [1.0, 0.75, 0.5, 0.25, 0.0]
        """
        start, end = self.teacher_forcing
        if self.max_epochs == 1:
            return start
        fraction = (min(max(epoch, 1), self.max_epochs) - 1) / (self.max_epochs - 1)
        return float(start + (end - start) * fraction)

    # ---------------------------------------------------------------- data
    def _uses_feed(self, data) -> bool:
        """Whether ``data`` goes through the batched path (:mod:`glacierxr.ml._feed`)."""
        if self.data_path == "per_sample" or not _feed.is_sequences(data):
            return False
        return self.data_path == "batched" or self.num_workers == 0

    def _feed(self, data) -> _feed.SequenceFeed:
        """The batched source of a PatchSequences view, prepared once per :meth:`fit`."""
        key = id(data)
        if key not in self._feeds:
            if self.steps is not None and data.target_steps != self.steps:
                raise DimensionError(
                    f"The sequences have {data.target_steps} target steps but steps={self.steps}. "
                    "Pass steps=None to use the data's length."
                )
            self._feeds[key] = _feed.SequenceFeed(
                data, batch_size=self.batch_size, device=self.device, resident=self.cube_on_device,
                prefetch=self.prefetch, check_tile=_refuse_infinite, pool=self._buffers,
            )
            self._feeds[key]._prepare()  # read once here, outside the timing of the epoch's batches
            logger.info("batched data path for %r: %s", data.name, self._feeds[key].mode)
        return self._feeds[key]

    def _loader(self, data, *, epoch: int, train: bool):
        import torch
        from torch.utils.data import DataLoader, IterableDataset

        if self._uses_feed(data):
            data.set_epoch(epoch)
            return _FeedEpoch(self._feed(data), epoch)
        target = data.dataset if isinstance(data, DataLoader) else data
        if callable(getattr(target, "set_epoch", None)):
            target.set_epoch(epoch)
        if isinstance(data, DataLoader):
            sampler = getattr(data, "sampler", None)
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(epoch)
            return data
        generator = torch.Generator()
        generator.manual_seed(_epoch_seed(self.seed, epoch, 0 if train else 1))
        loader = DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=train and not isinstance(data, IterableDataset),
            num_workers=self.num_workers,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )
        if train:
            self._train_generator = generator
        return loader

    def _unpack(self, batch, *, index: int, epoch: int, phase: str):
        import torch

        where = f"{phase} batch {index} of epoch {epoch}"
        if isinstance(batch, Mapping):
            batch = tuple(batch[k] for k in ("inputs", "targets", "valid_mask") if k in batch)
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise DimensionError(
                f"The {where} is a {type(batch).__name__}; expected (inputs, targets, valid_mask) "
                "tensors as yielded by PatchSequences.split(...)."
            )
        inputs, targets = batch[0], batch[1]
        valid = batch[2] if len(batch) == 3 else ~torch.isnan(targets)
        for name, tensor in (("inputs", inputs), ("targets", targets)):
            if not isinstance(tensor, torch.Tensor) or tensor.ndim != 5 or tensor.shape[2] != 1:
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise DimensionError(
                    f"{name} of the {where} have shape {shape}; expected (batch, time, 1, height, "
                    "width). Use PatchSequences or add the channel axis with .unsqueeze(2)."
                )
        valid = valid.bool() if valid.dtype == torch.bool else valid > 0.5
        # NaNs must never enter the model or the loss: inputs anywhere, targets where valid. A
        # finite sum (one pass, no temporary) proves every value finite; the exact counts run only
        # when it is not (a NaN or inf, or finite values whose float32 sum overflows).
        bad_inputs = 0 if _finite_sum(inputs) else int(torch.isnan(inputs).sum()) + int(torch.isinf(inputs).sum())
        bad_targets = 0 if _finite_sum(targets) else int((~torch.isfinite(targets) & valid.expand_as(targets)).sum())
        if bad_inputs or bad_targets:
            raise NonFiniteBatchError(
                f"The {where} holds {bad_inputs} NaN/inf input pixel(s) and {bad_targets} NaN/inf "
                "target pixel(s) marked valid. Fill gaps first (.glacier.fill_gaps(), then "
                ".glacier.monthly()), or set valid_mask to 0 where targets are missing and drop "
                "sequences whose inputs have NaN (PatchSequences does both)."
            )
        if self.steps is not None and targets.shape[1] != self.steps:
            raise DimensionError(
                f"The {where} has {targets.shape[1]} target steps but steps={self.steps}. "
                "Pass steps=None to use the data's length."
            )
        return inputs, targets, valid

    # ---------------------------------------------------------------- one epoch
    def _autocast(self):
        import torch

        if self.mixed_precision in ("no", "auto"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _show_progress(self) -> bool:
        return self.progress if self.progress is not None else sys.stderr.isatty()

    def _batches(self, loader, *, epoch: int, phase: str):
        from tqdm.auto import tqdm

        try:
            total = len(loader)
        except TypeError:
            total = None
        if self.max_batches_per_epoch is not None:
            total = self.max_batches_per_epoch if total is None else min(total, self.max_batches_per_epoch)
        bar = tqdm(
            loader,
            total=total,
            desc=f"epoch {epoch}/{self.max_epochs} {phase}",
            leave=False,
            disable=not self._show_progress(),
            unit="batch",
            dynamic_ncols=True,
        )
        try:
            for index, batch in enumerate(bar):
                if self.max_batches_per_epoch is not None and index >= self.max_batches_per_epoch:
                    break
                yield index, batch, bar
        finally:
            bar.close()

    def _forward(self, inputs, targets, valid, *, teacher_forcing: float, train: bool, dense: bool = False):
        """Masked SSE and valid count of one batch (``dense``: targets are 0 where not valid)."""
        import torch

        steps = self.steps or targets.shape[1]
        with self._autocast():
            if train:
                fed_targets = targets  # dense batches: already 0 where not observed
                if not dense:
                    fed_targets = torch.where(valid.expand_as(targets), targets, torch.zeros_like(targets))
                prediction = self._model_call(inputs, steps, targets=fed_targets, teacher_forcing=teacher_forcing)
            else:
                prediction = self._model_call(inputs, steps)
        if tuple(prediction.shape) != tuple(targets.shape):
            raise ModelError(
                f"{type(self.model).__name__} returned shape {tuple(prediction.shape)} for targets "
                f"of shape {tuple(targets.shape)}; a glacierxr model must map (B, T_in, 1, H, W) "
                "to (B, steps, 1, H, W)."
            )
        if dense:
            return _dense_sse(prediction.float(), targets, valid, pool=self._buffers)
        return _fused_masked_sse(prediction.float(), targets, valid, pool=self._buffers)

    def _device_batch(self, loader, batch, *, index: int, epoch: int, phase: str):
        """``(inputs, targets, valid)`` on the device and whether the batch is dense."""
        if isinstance(loader, _FeedEpoch):
            return (*batch, True)  # already on the device, checked per prepared block
        inputs, targets, valid = self._unpack(batch, index=index, epoch=epoch, phase=phase)
        device = self.device
        return (inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True),
                valid.to(device, non_blocking=True), False)

    def _step(self, inputs, targets, valid, *, teacher_forcing: float, dense: bool, check: bool, where: str):
        """One optimizer step; returns the batch's (sse, count, loss) as tensors."""
        import torch

        dense_only = {"dense": True} if dense else {}  # subclasses may override _forward without it
        sse, count = self._forward(inputs, targets, valid, teacher_forcing=teacher_forcing, train=True, **dense_only)
        loss = sse / count.clamp_min(1).to(sse.dtype)
        if check:
            _check_loss(loss, where)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self._trainable, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return sse, count, loss

    def _train_epoch(self, loader, *, epoch: int, teacher_forcing: float) -> tuple[float, int, float]:
        """Train one epoch.

        On the CPU the loss is checked for NaN/inf before every step; on CUDA (where that
        check would wait for the GPU every batch) the losses are accumulated on the device and
        checked every :data:`_CHECK_EVERY` batches and at the end of the epoch.
        """
        import torch

        self.model.train()
        device = self.device
        sse_total = torch.zeros((), dtype=torch.float64, device=device)
        count_total = torch.zeros((), dtype=torch.float64, device=device)
        pending = torch.zeros((), dtype=torch.float64, device=device)  # CUDA: losses not checked yet
        samples, check_each = 0, device.type != "cuda"
        started = time.perf_counter()
        for index, batch, bar in self._batches(loader, epoch=epoch, phase="train"):
            inputs, targets, valid, dense = self._device_batch(loader, batch, index=index, epoch=epoch,
                                                               phase="training")
            where = f"batch {index} of epoch {epoch}"
            sse, count, loss = self._step(inputs, targets, valid, teacher_forcing=teacher_forcing, dense=dense,
                                          check=check_each, where=where)
            sse_total += sse.detach().double()
            count_total += count
            samples += int(inputs.shape[0])
            if not check_each:
                pending += loss.detach().double()
                if (index + 1) % _CHECK_EVERY == 0:
                    _check_loss(pending, f"the batches up to {where}")
            if not bar.disable and index % 10 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
        if not check_each:
            _check_loss(pending, f"epoch {epoch}")
        seconds = time.perf_counter() - started
        if samples == 0:
            raise GlacierXRError(
                f"The training data gave no batch in epoch {epoch}. Check that "
                "split('train') is not empty (more time steps, a smaller patch or stride)."
            )
        count = int(count_total)
        if count == 0:
            raise NonFiniteBatchError(
                f"No valid target pixel in the training data of epoch {epoch} (valid_mask is 0 "
                "everywhere); nothing to learn from. Check the masks of the patch sequences."
            )
        return float(sse_total) / count, samples, samples / max(seconds, 1e-12)

    def _evaluate(self, loader, *, epoch: int) -> float:
        import torch

        self.model.eval()
        sse_total = torch.zeros((), dtype=torch.float64, device=self.device)
        count_total = torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for index, batch, _ in self._batches(loader, epoch=epoch, phase="val"):
                inputs, targets, valid, dense = self._device_batch(loader, batch, index=index, epoch=epoch,
                                                                   phase="validation")
                sse, count = self._forward(inputs, targets, valid, teacher_forcing=0.0, train=False,
                                           **({"dense": True} if dense else {}))
                sse_total += sse.double()
                count_total += count
        count = int(count_total)
        if count == 0:
            raise NonFiniteBatchError(
                f"The validation data of epoch {epoch} has no valid target pixel, so no "
                "validation loss can be computed. Pass val=None or a larger validation split."
            )
        return float(sse_total) / count

    # ---------------------------------------------------------------- precision
    def _probe_precision(self, train, *, steps: int = 3) -> None:
        """``mixed_precision="auto"``: time float32 and bf16 steps on the first batch, keep the faster.

        The model weights, the optimizer state and every random state are restored afterwards,
        so the probe does not change the training.
        """
        import torch

        loader = self._loader(train, epoch=1, train=True)
        batch = next(iter(loader), None)
        if batch is None:
            self.mixed_precision = "no"
            return
        inputs, targets, valid, dense = self._device_batch(loader, batch, index=0, epoch=1, phase="training")
        saved = (ckpt.cpu_state_dict(self.model), _clone_tree(self.optimizer.state_dict()), _capture_rng())
        synchronize = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        self.model.train()
        rates = {}
        for mode in ("no", "bf16"):
            self.mixed_precision = mode
            self._step(inputs, targets, valid, teacher_forcing=0.5, dense=dense, check=False, where="the probe")
            synchronize()
            started = time.perf_counter()
            for _ in range(steps):
                self._step(inputs, targets, valid, teacher_forcing=0.5, dense=dense, check=False, where="the probe")
            synchronize()
            rates["fp32" if mode == "no" else "bf16"] = steps * int(inputs.shape[0]) / (time.perf_counter() - started)
        self.model.load_state_dict(saved[0])
        self.optimizer.load_state_dict(saved[1])
        _restore_rng(saved[2])
        self.precision_probe = {f"{k}_samples_per_s": float(v) for k, v in rates.items()}
        self.mixed_precision = "bf16" if rates["bf16"] > 1.05 * rates["fp32"] else "no"
        logger.info("mixed_precision='auto': %s (probe: %s)", self.mixed_precision, self.precision_probe)

    # ---------------------------------------------------------------- checkpoints
    def _settings(self) -> dict:
        return {
            "max_epochs": self.max_epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "teacher_forcing": tuple(self.teacher_forcing),
            "grad_clip": self.grad_clip,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "seed": self.seed,
            "freeze": tuple(self.freeze),
            "steps": self.steps,
            "max_batches_per_epoch": self.max_batches_per_epoch,
            "mixed_precision": self._precision_request,
        }

    def _snapshot(self, epoch: int, normalization: Any) -> dict:
        """Everything of the just-completed epoch, copied to the CPU (safe to keep)."""
        state = ckpt.cpu_state_dict(self.model)
        best_state = None if self._best_epoch == epoch else self._best_state
        return ckpt.build_payload(
            self.model,
            kind="training",
            state=state,
            normalization=normalization,
            extra=self.provenance,
            epoch=epoch,
            optimizer_state=_clone_tree(self.optimizer.state_dict()),
            scaler_state=_clone_tree(self.scaler.state_dict()),
            rng=_capture_rng(),
            loader_generator=(
                None if self._loader_generator_state is None else self._loader_generator_state.clone()
            ),
            trainer=self._settings(),
            history=[dict(record) for record in self._records],
            best_epoch=self._best_epoch,
            best_loss=self._best_loss,
            best_model_state=best_state,
            best_weights_sha256=None if best_state is None else ckpt.weights_sha256(best_state),
            bad_epochs=self._bad_epochs,
            stopped_early=self._stopped_early,
            parameter_counts=dict(self.parameter_counts),
        )

    def _write_checkpoints(self, payload: dict, *, improved: bool) -> None:
        if self.checkpoint_dir is None:
            return
        written = [self.checkpoint_dir / "last.pt"] + ([self.checkpoint_dir / "best.pt"] if improved else [])
        for path in written:
            ckpt.atomic_save(payload, path)
        # an earlier run's files go only now that this run has a complete checkpoint
        for path in self.replaces_after_first_checkpoint:
            if path not in written:
                remove_output(path)
        self.replaces_after_first_checkpoint = []

    def _append_log(self, record: dict) -> None:
        if self.log_file is None:
            return
        if getattr(self, "_replace_log", False):
            ckpt.atomic_write_text(_json_line(record), self.log_file)
            self._replace_log = False
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a", encoding="utf-8") as handle:
            handle.write(_json_line(record))
            handle.flush()
            os.fsync(handle.fileno())

    def _start_fresh(self) -> None:
        """Begin at epoch 1: seed, forget earlier bookkeeping, replace stale files.

        The model's current weights and the optimizer are kept, so calling :meth:`fit` again
        continues training them as a new run.
        """
        _seed_everything(self.seed)
        self._records = []
        self._best_loss, self._best_epoch, self._best_state = math.inf, 0, None
        self._bad_epochs, self._stopped_early, self._completed = 0, False, None
        if self.checkpoint_dir is not None:
            stale = [name for name in _CHECKPOINT_FILES if (self.checkpoint_dir / name).exists()]
            if stale:
                warnings.warn(
                    f"Starting a new run: replacing the checkpoints {stale} of an earlier run in "
                    f"{str(self.checkpoint_dir)!r} once this run has written its first checkpoint. "
                    "Pass resume=True to continue that run instead.",
                    UserWarning,
                    stacklevel=3,
                )
                self.replaces_after_first_checkpoint += [self.checkpoint_dir / n for n in stale]
        # the earlier run's log is replaced by the first record (nothing is lost before that)
        self._replace_log = self.log_file is not None and self.log_file.exists()

    def _resume_path(self) -> Path | None:
        if not self.resume:
            return None
        if self.resume is True:
            return self.checkpoint_dir / "last.pt"
        return Path(self.resume)

    def _load_resume(self, path: Path) -> None:
        payload = ckpt.load_checkpoint(path, map_location="cpu")
        if payload.get("kind") != "training":
            raise CheckpointError(
                f"{str(path)!r} is a {payload.get('kind')!r} checkpoint, not a training "
                "checkpoint (last.pt), so it cannot be resumed. To start a new training from "
                "its weights use Trainer.from_checkpoint(path, ...) or fine_tune(...)."
            )
        ckpt.check_model_matches(payload, self.model, path=path)
        stored = dict(payload.get("trainer") or {})
        if tuple(stored.get("freeze", ())) != tuple(self.freeze):
            raise CheckpointError(
                f"{str(path)!r} was trained with freeze={tuple(stored.get('freeze', ()))}, this "
                f"trainer has freeze={self.freeze}; the optimizer state cannot be carried over. "
                "Use the same freeze, or pass resume=False."
            )
        current = self._settings()
        differing = {
            key: (stored[key], current[key])
            for key in current
            if key in stored and key != "max_epochs" and stored[key] != current[key]
        }
        if differing:
            warnings.warn(
                f"Resuming {str(path)!r} with settings that differ from the interrupted run "
                f"(stored, now): {differing}. The result will not equal an uninterrupted run.",
                UserWarning,
                stacklevel=3,
            )
        self.model.load_state_dict(payload["model_state"])
        try:
            self.optimizer.load_state_dict(payload["optimizer_state"])
        except (ValueError, KeyError) as error:
            raise CheckpointError(
                f"The optimizer state in {str(path)!r} does not fit this model's trainable "
                f"parameters ({error}). Pass resume=False to train from scratch."
            ) from error
        if payload.get("scaler_state"):
            self.scaler.load_state_dict(payload["scaler_state"])
        epoch = int(payload["epoch"])
        self._records = [dict(record) for record in payload.get("history", [])][:epoch]
        self._best_epoch = int(payload["best_epoch"])
        self._best_loss = float(payload["best_loss"])
        self._bad_epochs = int(payload["bad_epochs"])
        self._stopped_early = bool(payload["stopped_early"])
        best_state = payload.get("best_model_state")
        if best_state is None:
            self._best_state = {k: v.clone() for k, v in payload["model_state"].items()}
        else:
            if ckpt.weights_sha256(best_state) != payload.get("best_weights_sha256"):
                raise CheckpointError(
                    f"The best-epoch weights in {str(path)!r} do not match their SHA-256: the "
                    "file is corrupt. Delete it or pass resume=False."
                )
            self._best_state = best_state
        _restore_rng(payload["rng"])
        self._completed = payload
        if self.log_file is not None:  # the log is rebuilt from the checkpoint's own history
            ckpt.atomic_write_text("".join(_json_line(r) for r in self._records), self.log_file)
        logger.info("resumed %s at the end of epoch %d", path, epoch)

    # ---------------------------------------------------------------- fit
    def fit(self, train, val=None) -> pd.DataFrame:
        """Train on ``train``, validating on ``val`` after every epoch.

        Parameters
        ----------
        train, val : torch Dataset, IterableDataset or DataLoader
            Yielding ``(inputs, targets, valid_mask)``: float32 ``(T_in, 1, P, P)``,
            ``(T_out, 1, P, P)``, ``(T_out, 1, P, P)`` per item (e.g.
            ``PatchSequences.split("train")``).  A dataset's ``normalization`` attribute is
            stored in the checkpoints.

        Returns
        -------
        pandas.DataFrame
            :attr:`history`, one row per epoch (including epochs before a resume).

        Raises
        ------
        NonFiniteBatchError
            A batch has NaN/inf inputs, or NaN/inf targets at valid pixels; the loss diverged.
        CheckpointError
            ``resume`` points at a corrupt checkpoint or one of another model.
        KeyboardInterrupt
            Re-raised after ``last.pt`` has been (re)written with the last completed epoch.
        OutputLockedError
            Another run (process or thread) is training into the same ``checkpoint_dir``.
        """
        if self.checkpoint_dir is None:
            return self._fit(train, val)
        with output_lock(self.checkpoint_dir, create_parent=True):  # covered by a caller's lock of its folder
            return self._fit(train, val)

    def _fit(self, train, val) -> pd.DataFrame:
        normalization = _find_normalization(train)
        if normalization is None:
            normalization = getattr(self.model, "normalization", None)
        resume_path = self._resume_path()
        if resume_path is not None and resume_path.exists():
            self._load_resume(resume_path)
        else:
            if resume_path is not None:
                logger.info("resume: no checkpoint at %s yet; starting from epoch 1", resume_path)
            self._start_fresh()
        start_epoch = len(self._records) + 1
        fit_started = time.perf_counter()
        self._feeds = {}  # batched sources are prepared once per fit (the data may have changed)
        try:
            with _tf32(self.tf32, self.device):
                if self.mixed_precision == "auto" and start_epoch <= self.max_epochs:
                    self._probe_precision(train)
                self._run_epochs(start_epoch, train, val, normalization)
        except KeyboardInterrupt:
            if self.checkpoint_dir is not None and self._completed is not None:
                ckpt.atomic_save(self._completed, self.checkpoint_dir / "last.pt")
                logger.warning(
                    "Interrupted; %s holds epoch %d. Continue with resume=True.",
                    self.checkpoint_dir / "last.pt",
                    self._completed["epoch"],
                )
            raise
        if self.restore_best and self._best_state is not None and self._records:
            if self._best_epoch != len(self._records):
                self.model.load_state_dict(self._best_state)
                logger.info("restored the weights of epoch %d (best loss %.4g)", self._best_epoch, self._best_loss)
        if self.checkpoint_dir is not None and self._records:
            ckpt.save_model(
                self.model,
                self.checkpoint_dir / "model.pt",
                normalization=normalization,
                extra={
                    **self.provenance,
                    "epochs": len(self._records),
                    "best_epoch": self._best_epoch,
                    "best_loss": self._best_loss,
                    "restored_best": self.restore_best,
                },
            )
        self.history = _history_frame(self._records)
        self.history.attrs.update(
            best_epoch=self._best_epoch,
            best_loss=self._best_loss,
            monitor="val_loss" if val is not None else "train_loss",
            stopped_early=self._stopped_early,
            restored_best=self.restore_best,
            wall_seconds=time.perf_counter() - fit_started,
            energy_method=self.energy.method,
            carbon_intensity_kg_per_kwh=self.energy.carbon_intensity,
            device=str(self.device),
            mixed_precision=self.mixed_precision,
            **self.precision_probe,
            data_path=", ".join(sorted({f.mode for f in self._feeds.values()})) or "DataLoader",
            **{f"{k}_parameters": v for k, v in self.parameter_counts.items()},
        )
        if self._records:
            total_energy = float(self.history.energy_kwh.sum())
            logger.info(
                "trained %d epochs, %.3g s; estimated energy %.2g kWh, %.2g kg CO2e (%s)",
                len(self._records), float(self.history.seconds.sum()), total_energy,
                float(self.history.co2_kg.sum()), self.energy.method,
            )
        return self.history

    def _run_epochs(self, start_epoch: int, train, val, normalization) -> None:
        """Epochs ``start_epoch …`` until ``max_epochs`` or early stopping, with an epoch bar."""
        from tqdm.auto import tqdm

        with tqdm(total=self.max_epochs, initial=start_epoch - 1, desc="training", unit="epoch",
                  disable=not self._show_progress(), dynamic_ncols=True) as bar:
            for epoch in range(start_epoch, self.max_epochs + 1):
                if self._stopped_early:
                    break
                self._run_epoch(epoch, train, val, normalization)
                record = self._records[-1]
                bar.set_postfix(train=f"{record['train_loss']:.4g}", val=f"{record['val_loss']:.4g}",
                                seq_s=f"{record['samples_per_s']:.0f}")
                bar.update(1)

    def _run_epoch(self, epoch: int, train, val, normalization) -> None:
        teacher_forcing = self.teacher_forcing_at(epoch)
        self.energy.start()
        loader = self._loader(train, epoch=epoch, train=True)
        train_loss, samples, samples_per_s = self._train_epoch(loader, epoch=epoch, teacher_forcing=teacher_forcing)
        generator = getattr(self, "_train_generator", None)
        self._loader_generator_state = None if generator is None else generator.get_state()
        val_loss = math.nan
        if val is not None:
            val_loss = self._evaluate(self._loader(val, epoch=epoch, train=False), epoch=epoch)
        seconds, energy_kwh, co2_kg = self.energy.stop()
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "teacher_forcing": teacher_forcing,
            "seconds": seconds,
            "samples_per_s": samples_per_s,
            "energy_kwh": energy_kwh,
            "co2_kg": co2_kg,
        }
        monitored = val_loss if val is not None else train_loss
        improved = monitored < self._best_loss - self.min_delta
        if improved:
            self._best_loss = monitored
            self._best_epoch = epoch
            self._best_state = ckpt.cpu_state_dict(self.model)
            self._bad_epochs = 0
        else:
            self._bad_epochs += 1
            if self.patience is not None and self._bad_epochs >= self.patience:
                self._stopped_early = True
                logger.info(
                    "early stopping after epoch %d: no improvement for %d epochs (best: epoch %d)",
                    epoch, self._bad_epochs, self._best_epoch,
                )
        self._records.append(record)
        payload = self._snapshot(epoch, normalization)
        self._completed = payload
        self._write_checkpoints(payload, improved=improved)
        self._append_log(record)
        logger.info(
            "epoch %d/%d: train %.4g, val %.4g, %.1f s", epoch, self.max_epochs, train_loss, val_loss, seconds
        )


def fine_tune(
    checkpoint: str | os.PathLike,
    train,
    val=None,
    *,
    freeze: Sequence[str] = ("encoder",),
    lr: float = 1e-4,
    model=None,
    **trainer_kwargs: Any,
) -> Trainer:
    """Fine-tune a model trained on one glacier on the data of another.

    Loads ``checkpoint`` (:meth:`Trainer.from_checkpoint`), freezes the parameters whose names
    start with ``freeze`` and trains the rest with a fresh AdamW optimizer.

    Parameters
    ----------
    checkpoint : path-like
        ``model.pt`` / ``best.pt`` / ``last.pt`` of the source run.
    train, val
        Data of the target glacier (see :meth:`Trainer.fit`).
    freeze : sequence of str
        Parameter-name prefixes to keep fixed; ``()`` trains everything.
    lr : float
        Learning rate (smaller than for training from scratch).
    model : torch.nn.Module, optional
        Load into this model instead of rebuilding it through the registry.
    **trainer_kwargs
        Other :class:`Trainer` arguments (``max_epochs``, ``checkpoint_dir`` …).

    Returns
    -------
    Trainer
        The fitted trainer: ``.model``, ``.history`` and ``.parameter_counts``.
    """
    trainer = Trainer.from_checkpoint(checkpoint, model=model, freeze=freeze, lr=lr, **trainer_kwargs)
    trainer.fit(train, val)
    return trainer


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _check_trainer_arguments(model, **values) -> None:
    """Refuse :class:`Trainer` arguments that cannot work, with a message saying how to fix them."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ModelError(
            f"Trainer needs a torch.nn.Module, got {type(model).__name__}. "
            "Build one with glacierxr.ml.get_model(name)."
        )
    for name in ("max_epochs", "batch_size", "num_workers", "steps", "max_batches_per_epoch", "patience"):
        require_positive(values[name], name=name, integer=True, allow_zero=name == "num_workers",
                         allow_none=name not in ("max_epochs", "batch_size", "num_workers"))
    # finite numbers, not bools (lr=True is not a learning rate, lr=inf diverges at once)
    for name in ("lr", "cpu_watts_per_core", "gpu_watts"):
        require_positive(values[name], name=name, example=1e-3 if name == "lr" else None)
    for name in ("weight_decay", "min_delta", "carbon_intensity"):
        require_positive(values[name], name=name, allow_zero=True)
    grad_clip, resume = values["grad_clip"], values["resume"]
    require_positive(grad_clip, name="grad_clip", allow_none=True, example=1.0)
    if resume and resume is not True and not isinstance(resume, (str, os.PathLike)):
        raise ConfigError(f"resume must be True/False or a checkpoint path, got {resume!r}.")
    if resume is True and values["checkpoint_dir"] is None:
        raise ConfigError(
            "resume=True needs checkpoint_dir= (the folder holding last.pt), or pass the "
            "checkpoint path itself: resume='path/to/last.pt'."
        )
    if values["data_path"] not in ("auto", "batched", "per_sample"):
        raise ConfigError(f"data_path must be 'auto', 'batched' or 'per_sample', got {values['data_path']!r}.")
    for name in ("cube_on_device", "prefetch"):
        if values[name] != "auto" and not isinstance(values[name], bool):
            raise ConfigError(f"{name} must be True, False or 'auto', got {values[name]!r}.")


def _teacher_forcing_range(value) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        pair = (float(value), float(value))
    elif isinstance(value, Iterable) and not isinstance(value, str):
        pair = tuple(float(v) for v in value)
    else:
        pair = ()
    if len(pair) != 2 or not all(0.0 <= v <= 1.0 for v in pair):
        raise ConfigError(
            f"teacher_forcing must be a ratio in [0, 1] or a (start, end) pair of them, got {value!r}."
        )
    return pair  # type: ignore[return-value]


def _resolve_device(device):
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"Unknown device {device!r}: {error}. Use 'auto', 'cpu' or 'cuda'.") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is available. Use device='auto' or 'cpu'.")
    return resolved


#: On CUDA the training loss is checked for NaN/inf every this many batches (not every batch).
_CHECK_EVERY = 32


class _FeedEpoch:
    """One epoch of the batched path: ``len()`` and batches already on the device."""

    def __init__(self, feed, epoch: int) -> None:
        self.feed = feed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.feed)

    def __iter__(self):
        return self.feed.batches(self.epoch)


def _dense_sse(prediction, target, valid, pool=None):
    """:func:`_masked_sse` for batches whose targets are finite and 0 where ``valid`` (float 0/1) is 0.

    The same sums bit for bit as :func:`_masked_sse` on such batches (the same squared
    differences, the same reduction) and the same gradients (up to the sign of a zero at unobserved
    pixels), in fewer passes over the data: no ``where``, the masked difference in one
    ``addcmul``, and a hand-written backward that reuses it (``2 · difference · grad``, in place:
    the gradient is the difference's buffer, so its backward runs once — a second one, with ``retain_graph``, raises
    torch's "modified by an inplace operation" error).  With a :class:`~glacierxr.ml._feed.BufferPool`
    (contiguous float32 CPU predictions) the difference and its square are written into reused
    buffers instead of fresh ones, which saves their page faults.  A non-finite prediction at an
    unobserved pixel makes it NaN (and training stops as diverged).
    """
    import torch

    # a float32 sum of 0/1 values is exact below 2**24 elements (and avoids a float64 copy)
    count = valid.sum(dtype=torch.float64) if valid.numel() >= 2**24 else valid.sum().double()
    if pool is not None and not (prediction.device.type == "cpu" and prediction.dtype == torch.float32
                                 and prediction.is_contiguous()):
        pool = None  # the layout of a reused buffer could change the order of the sum
    return _DenseSSE.apply(prediction, target.to(prediction.dtype), valid, pool), count


def _fused_masked_sse(prediction, target, valid, pool=None):
    """:func:`_masked_sse` with a boolean ``valid`` in fewer passes (the trainer's DataLoader batches).

    The same sums and gradients bit for bit as :func:`_masked_sse` for contiguous tensors (the
    same differences, 0 where not valid, the same reduction; the gradient ``2 · grad · difference``
    equals autograd's ``grad · difference + grad · difference``), in one ``sub`` and one
    ``masked_fill_`` instead of two ``where`` and their backward; other layouts go to
    :func:`_masked_sse`.  Its backward runs once (see :func:`_dense_sse`).
    """
    import torch

    valid = valid.expand_as(target)
    if not (valid.dtype == torch.bool and prediction.is_contiguous() and target.is_contiguous()
            and prediction.shape == target.shape):
        return _masked_sse(prediction, target, valid)
    if not (prediction.device.type == "cpu" and prediction.dtype == torch.float32):
        pool = None
    return _DenseSSE.apply(prediction, target.to(prediction.dtype), valid, pool, False), valid.sum()


def _dense_sse_function():
    import torch

    def buffer(pool, like):
        return None if pool is None else pool.take(tuple(like.shape), np.float32)

    class DenseSSE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, prediction, target, valid, pool, dense=True):
            if dense:
                # target - prediction · valid, one pass over the three: where valid exactly
                # -(prediction - target), elsewhere the target's 0 (only a zero's sign may differ)
                difference = torch.addcmul(target, prediction, valid, value=-1, out=buffer(pool, prediction))
            else:  # valid is bool; a NaN target where it is False becomes 0, as in torch.where
                difference = torch.sub(prediction, target, out=buffer(pool, prediction))
                difference.masked_fill_(valid.logical_not(), 0.0)
            ctx.scale = -2 if dense else 2
            ctx.save_for_backward(difference)
            return torch.mul(difference, difference, out=buffer(pool, difference)).sum()

        @staticmethod
        def backward(ctx, grad):
            (difference,) = ctx.saved_tensors
            return difference.mul_(ctx.scale * grad), None, None, None, None  # in place: not needed again

    return DenseSSE


class _LazyDenseSSE:
    """Builds the autograd function on first use (torch is imported lazily in this module)."""

    function = None

    def apply(self, *args):
        if _LazyDenseSSE.function is None:
            _LazyDenseSSE.function = _dense_sse_function()
        return _LazyDenseSSE.function.apply(*args)


_DenseSSE = _LazyDenseSSE()


def _finite_sum(tensor) -> bool:
    """Whether ``tensor``'s sum is finite: then none of its values is NaN or infinite."""
    import torch

    return bool(torch.isfinite(tensor.sum()))


def _check_loss(loss, where: str) -> None:
    import torch

    if not bool(torch.isfinite(loss)):
        raise NonFiniteBatchError(
            f"The training loss became {float(loss)} in {where}: training diverged. Lower lr, keep "
            "grad_clip on, or check the data scaling."
        )


def _refuse_infinite(tile) -> None:
    """Refuse a prepared block of patch sequences holding +/-inf (NaN is already 0 and masked)."""
    values = tile.arrays[0]
    if np.isinf(values).any():
        raise NonFiniteBatchError(
            f"The data hold {int(np.isinf(values).sum())} infinite value(s) in the block read for "
            f"training ({tile.region}). Replace them with NaN (da.where(np.isfinite(da))) so they "
            "count as missing."
        )


@contextlib.contextmanager
def _tf32(enabled: bool, device):
    """CUDA settings for the block, restored after: TF32 (when ``enabled``) and cuDNN autotuning.

    ``torch.backends.cudnn.benchmark`` picks the fastest convolution algorithm for each input
    shape once; the batches of a fit all have the same shape but the last.
    """
    import torch

    if device.type != "cuda":
        yield
        return
    backends = torch.backends
    before = (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark)
    backends.cudnn.benchmark = True
    if enabled:
        backends.cuda.matmul.allow_tf32 = True
        backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark = before


def _resolve_precision(value, device) -> str:
    import torch

    if value is True:
        value = "auto"
    if value in (False, None, "no", "fp32", "32"):
        return "no"
    if value not in ("auto", "bf16", "fp16"):
        raise ConfigError(f"mixed_precision must be 'auto', 'bf16', 'fp16' or 'no', got {value!r}.")
    if device.type != "cuda":
        if value == "auto":
            return "no"
        raise ConfigError(
            f"mixed_precision={value!r} needs a CUDA device, but training runs on {device}. "
            "Use mixed_precision='auto' or 'no'."
        )
    if value == "auto":  # measured at the start of fit() (Trainer._probe_precision)
        return "auto" if torch.cuda.is_bf16_supported() else "no"
    return value


def _find_normalization(data):
    for candidate in (data, getattr(data, "dataset", None)):
        value = getattr(candidate, "normalization", None)
        if value is not None:
            return value
    return None


def _json_line(record: Mapping) -> str:
    clean = {
        key: (None if isinstance(value, float) and not math.isfinite(value) else value)
        for key, value in record.items()
    }
    return json.dumps(clean) + "\n"


def _history_frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=["epoch", *_HISTORY_COLUMNS])
    frame = frame.astype({column: "float64" for column in _HISTORY_COLUMNS})
    frame["epoch"] = frame["epoch"].astype("int64")
    return frame.set_index("epoch")
