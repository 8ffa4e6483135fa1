"""Tiny model and data for tests/test_train.py; also a script its kill test runs and SIGKILLs.

``python tests/_toy_training.py --checkpoint-dir D --epochs 4 [--resume] [--delay 0.2
--fetch-log F] --out weights.pt`` trains :class:`TinyForecaster` on :func:`toy_data` exactly as
:func:`train_toy` does in the test process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


class TinyForecaster(nn.Module):
    """A few hundred parameters with the glacierxr model call convention.

    An ``encoder`` (conv over the stacked inputs) gives a context; a ``decoder`` adds a
    correction to the previous frame, step by step, feeding the truth with probability
    ``teacher_forcing`` (drawn from torch's global generator, like the real models). Dropout
    on the context makes the result depend on the global random state too.
    """

    def __init__(self, input_steps: int = 2, hidden: int = 4, dropout: float = 0.2) -> None:
        super().__init__()
        self.input_steps, self.hidden, self.dropout_rate = input_steps, hidden, dropout
        self.encoder = nn.Conv2d(input_steps, hidden, 3, padding=1)
        self.decoder = nn.Conv2d(hidden + 1, 1, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.teacher_forcing_seen: list[float] = []

    def forward(self, inputs, steps, targets=None, teacher_forcing=0.0):
        if targets is not None:
            self.teacher_forcing_seen.append(float(teacher_forcing))
        context = self.dropout(torch.tanh(self.encoder(inputs[:, :, 0])))
        previous = inputs[:, -1]
        outputs = []
        for step in range(steps):
            output = previous + self.decoder(torch.cat([context, previous], dim=1))
            outputs.append(output)
            feed_truth = targets is not None and bool(torch.rand(()) < teacher_forcing)
            previous = targets[:, step] if feed_truth else output
        return torch.stack(outputs, dim=1)

    def get_config(self) -> dict:
        return {"name": "tiny", "input_steps": self.input_steps, "hidden": self.hidden,
                "dropout": self.dropout_rate}


class ScaleModel(nn.Module):
    """``prediction = w * last input`` repeated: one parameter, easy to reason about."""

    def __init__(self, initial: float = 1.0) -> None:
        super().__init__()
        self.initial = initial
        self.w = nn.Parameter(torch.tensor(float(initial)))

    def forward(self, inputs, steps, targets=None, teacher_forcing=0.0):
        return self.w * inputs[:, -1:].repeat(1, steps, 1, 1, 1)

    def get_config(self) -> dict:
        return {"name": "scale", "initial": self.initial}


def toy_data(n=32, *, input_steps=2, target_steps=2, patch=8, seed=0, missing=0.2) -> TensorDataset:
    """Random fields moving one pixel east per step; ``missing`` of the target pixels are NaN
    with ``valid_mask`` 0."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, patch, patch, generator=generator)
    frames = torch.stack([torch.roll(base, k, dims=-1) for k in range(input_steps + target_steps)], 1)
    inputs = frames[:, :input_steps].contiguous()
    targets = frames[:, input_steps:].clone()
    valid = (torch.rand(targets.shape, generator=generator) >= missing).float()
    targets[valid == 0] = float("nan")
    return TensorDataset(inputs, targets, valid)


def scaled_data(factor: float, n=16, patch=4, seed=0) -> TensorDataset:
    """Targets = ``factor`` × the last input, everywhere valid."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand(n, 2, 1, patch, patch, generator=generator) + 0.5
    targets = factor * inputs[:, -1:].repeat(1, 2, 1, 1, 1)
    return TensorDataset(inputs, targets, torch.ones_like(targets))


class SlowDataset(Dataset):
    """Wraps a dataset: sleeps ``delay`` s per item and appends a line to ``fetch_log``."""

    def __init__(self, data, *, delay: float = 0.0, fetch_log: str | Path | None = None) -> None:
        self.data, self.delay, self.fetch_log = data, delay, fetch_log

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        if self.delay:
            time.sleep(self.delay)
        if self.fetch_log is not None:
            with open(self.fetch_log, "a") as handle:
                handle.write(f"{index}\n")
        return self.data[index]


class InterruptingDataset(Dataset):
    """Raises KeyboardInterrupt (as Ctrl-C would) at the ``after``-th fetch."""

    def __init__(self, data, *, after: int) -> None:
        self.data, self.after, self.fetches = data, after, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        self.fetches += 1
        if self.fetches > self.after:
            raise KeyboardInterrupt
        return self.data[index]


TOY_TRAINER = dict(batch_size=4, lr=1e-2, teacher_forcing=(1.0, 0.0), patience=None, seed=0,
                   device="cpu", progress=False)
N_TRAIN, N_VAL = 16, 8


def toy_model() -> TinyForecaster:
    torch.manual_seed(1)
    return TinyForecaster()


def train_toy(checkpoint_dir, *, epochs=4, resume=False, train=None, **overrides):
    """The toy training of the resume and kill tests; returns the trainer."""
    from glacierxr.ml.train import Trainer

    train = toy_data(N_TRAIN, seed=0) if train is None else train
    trainer = Trainer(toy_model(), max_epochs=epochs, checkpoint_dir=checkpoint_dir, resume=resume,
                      **{**TOY_TRAINER, **overrides})
    trainer.fit(train, toy_data(N_VAL, seed=1))
    return trainer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint-dir", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--fetch-log")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as the test process does; see tests/test_train.py
    train = SlowDataset(toy_data(N_TRAIN, seed=0), delay=args.delay, fetch_log=args.fetch_log)
    trainer = train_toy(args.checkpoint_dir, epochs=args.epochs, resume=args.resume, train=train)
    torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, args.out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
