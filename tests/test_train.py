"""Tests of glacierxr.ml.train (Trainer) and glacierxr.ml.checkpoint.

Tiny models and data live in ``tests/_toy_training.py`` (shared with the kill test's child
process). Torch runs on one thread here: on a small shared machine two OpenMP threads fighting
for the cores make these millisecond-sized steps 20× slower, and the child process of the kill
test must compute exactly like this process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _toy_training import (  # noqa: E402
    N_TRAIN,
    InterruptingDataset,
    ScaleModel,
    TinyForecaster,
    scaled_data,
    toy_data,
    toy_model,
    train_toy,
)

from glacierxr.errors import CheckpointError, ConfigError, DimensionError  # noqa: E402
from glacierxr.ml import checkpoint as ckpt  # noqa: E402
from glacierxr.ml.train import NonFiniteBatchError, Trainer, fine_tune, masked_mse  # noqa: E402

TOY_SCRIPT = Path(__file__).with_name("_toy_training.py")
DETERMINISTIC_COLUMNS = ["train_loss", "val_loss", "lr", "teacher_forcing"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def weights(model_or_state) -> dict:
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    return {key: value.detach().clone() for key, value in state.items()}


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0.0, atol=atol, msg=f"weights {key!r} differ")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------ loss
def test_masked_mse__ignores_masked_pixels_hand_computed():
    prediction = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0], [float("nan"), 10.0]])
    valid = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    loss = masked_mse(prediction, target, valid)
    assert loss.item() == pytest.approx((1.0**2 + 2.0**2) / 2)  # the NaN and the 10 are ignored
    loss.backward()
    # d/dp of mean over 2 valid pixels: 2 (p - t) / 2; masked pixels get exactly 0, not NaN
    torch.testing.assert_close(prediction.grad, torch.tensor([[1.0, 2.0], [0.0, 0.0]]))


def test_masked_mse__bool_mask_broadcast_and_empty_mask():
    prediction = torch.ones(2, 3, 1, 2, 2)
    target = torch.zeros(2, 3, 1, 2, 2)
    valid = torch.zeros(2, 3, 1, 2, 2, dtype=torch.bool)
    assert masked_mse(prediction, target, valid).item() == 0.0
    valid[0, 0] = True  # 4 pixels with error 1
    target[1] = float("nan")
    assert masked_mse(prediction, target, valid).item() == pytest.approx(1.0)


# --------------------------------------------------------------------------------- fitting
def test_fit__loss_decreases_on_learnable_task():
    history = Trainer(toy_model(), max_epochs=6, batch_size=4, lr=2e-2, patience=None,
                      teacher_forcing=0.5, device="cpu", progress=False).fit(toy_data(16), toy_data(8, seed=1))
    assert list(history.index) == list(range(1, 7))
    assert history.train_loss.iloc[-1] < 0.6 * history.train_loss.iloc[0]
    assert history.val_loss.iloc[-1] < 0.6 * history.val_loss.iloc[0]
    assert np.isfinite(history[DETERMINISTIC_COLUMNS].to_numpy()).all()


def test_fit__nan_input_raises_naming_batch_and_fix():
    data = toy_data(8)
    data.tensors[0][5, 0, 0, 2, 2] = float("nan")
    trainer = Trainer(toy_model(), max_epochs=1, batch_size=4, device="cpu", progress=False)
    with pytest.raises(NonFiniteBatchError, match=r"training batch 1 of epoch 1.*fill_gaps") as info:
        trainer.fit(_Ordered(data))
    assert isinstance(info.value, ValueError)


def test_fit__nan_target_at_valid_pixel_raises():
    data = toy_data(8)
    inputs, targets, valid = data.tensors
    valid[0, 0, 0, 0, 0] = 1.0
    targets[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteBatchError, match="1 NaN/inf target pixel"):
        Trainer(toy_model(), max_epochs=1, batch_size=4, device="cpu", progress=False).fit(_Ordered(data))


class _Ordered(torch.utils.data.IterableDataset):
    """Iterates a TensorDataset in order (no shuffling), so the bad sample's batch is known."""

    def __init__(self, data):
        self.data = data

    def __iter__(self):
        return (self.data[i] for i in range(len(self.data)))


def test_fit__wrong_shapes_raise_dimension_error():
    bad = torch.utils.data.TensorDataset(torch.zeros(4, 2, 8, 8), torch.zeros(4, 2, 8, 8), torch.ones(4, 2, 8, 8))
    with pytest.raises(DimensionError, match=r"\(batch, time, 1, height, width\)"):
        Trainer(toy_model(), max_epochs=1, device="cpu", progress=False).fit(bad)


def test_trainer__bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="teacher_forcing"):
        Trainer(toy_model(), teacher_forcing=(1.5, 0.0), device="cpu")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Trainer(toy_model(), device="cpu", mixed_precision="fp16")
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        Trainer(toy_model(), device="cpu", resume=True)
    with pytest.raises(ConfigError, match="max_epochs"):
        Trainer(toy_model(), device="cpu", max_epochs=0)


def test_teacher_forcing__linear_schedule_per_epoch_reaches_the_model():
    model = toy_model()
    trainer = Trainer(model, max_epochs=5, batch_size=8, teacher_forcing=(1.0, 0.0), patience=None,
                      device="cpu", progress=False)
    history = trainer.fit(toy_data(16))
    expected = [1.0, 0.75, 0.5, 0.25, 0.0]
    assert history.teacher_forcing.tolist() == pytest.approx(expected)
    # two training batches per epoch, each called with that epoch's ratio; validation: none
    assert model.teacher_forcing_seen == pytest.approx([r for r in expected for _ in range(2)])
    constant = Trainer(toy_model(), max_epochs=3, teacher_forcing=0.3, device="cpu")
    assert [constant.teacher_forcing_at(e) for e in (1, 2, 3)] == pytest.approx([0.3, 0.3, 0.3])


def test_history__energy_and_co2_fields_present_and_positive():
    trainer = Trainer(toy_model(), max_epochs=2, batch_size=2, patience=None, device="cpu",
                      progress=False, carbon_intensity=0.1, cpu_watts_per_core=10.0)
    history = trainer.fit(toy_data(32), toy_data(8, seed=1))
    for column in ("seconds", "samples_per_s", "energy_kwh", "co2_kg"):
        assert (history[column] > 0).all(), column
    np.testing.assert_allclose(history.co2_kg, 0.1 * history.energy_kwh)
    # energy = CPU core-seconds x 10 W: never more than wall time x all cores x 10 W
    assert (history.energy_kwh * 3.6e6 <= history.seconds * os.cpu_count() * 10.0 * 1.05 + 0.5).all()
    assert "10 W/core" in history.attrs["energy_method"]
    assert history.attrs["carbon_intensity_kg_per_kwh"] == 0.1
    assert history.attrs["wall_seconds"] >= history.seconds.sum() * 0.99


# --------------------------------------------------------------------------- early stopping
def test_early_stopping__triggers_and_restores_best_weights(tmp_path):
    # w starts at 1; training pulls it to 2, validation wants 0.5: the val loss rises every
    # epoch after the first, so epoch 1 is best and patience 2 stops after epoch 3.
    model = ScaleModel(1.0)
    trainer = Trainer(model, max_epochs=10, batch_size=4, lr=0.05, patience=2, grad_clip=None,
                      checkpoint_dir=tmp_path, device="cpu", progress=False)
    history = trainer.fit(scaled_data(2.0), scaled_data(0.5, seed=1))
    assert list(history.index) == [1, 2, 3]
    assert history.attrs["stopped_early"] is True and history.attrs["best_epoch"] == 1
    assert history.val_loss.is_monotonic_increasing
    best = ckpt.load_checkpoint(tmp_path / "best.pt")
    last = ckpt.load_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == 1 and last["epoch"] == 3
    assert model.w.item() == best["model_state"]["w"].item() != last["model_state"]["w"].item()
    one_epoch = ScaleModel(1.0)
    Trainer(one_epoch, max_epochs=1, batch_size=4, lr=0.05, grad_clip=None, device="cpu",
            progress=False).fit(scaled_data(2.0), scaled_data(0.5, seed=1))
    assert model.w.item() == one_epoch.w.item()  # exactly the epoch-1 weights
    assert ckpt.load_model(tmp_path / "model.pt", model=ScaleModel(1.0)).w.item() == model.w.item()


def test_early_stopping__disabled_with_patience_none():
    history = Trainer(ScaleModel(1.0), max_epochs=4, batch_size=4, lr=0.05, patience=None,
                      restore_best=False, device="cpu", progress=False).fit(scaled_data(2.0), scaled_data(0.5))
    assert len(history) == 4 and history.attrs["stopped_early"] is False


# ------------------------------------------------------------------------------- checkpoints
def test_checkpoints__written_every_epoch_with_metadata_and_no_temp_files(tmp_path):
    data = toy_data(8)
    data.normalization = {"mean": 0.25, "std": 0.5}
    trainer = Trainer(toy_model(), max_epochs=2, batch_size=4, device="cpu", progress=False,
                      checkpoint_dir=tmp_path)
    trainer.fit(data, toy_data(4, seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl", "model.pt"]
    last = torch.load(tmp_path / "last.pt", weights_only=True)  # plain torch, weights only
    assert last["epoch"] == 2 and last["kind"] == "training"
    assert last["config"] == {"name": "tiny", "input_steps": 2, "hidden": 4, "dropout": 0.2}
    assert last["normalization"] == {"mean": 0.25, "std": 0.5}
    assert last["versions"]["torch"] == torch.__version__ and "glacierxr" in last["versions"]
    assert last["weights_sha256"] == ckpt.weights_sha256(last["model_state"])
    assert set(last["rng"]) >= {"torch", "numpy", "python"} and last["loader_generator"] is not None
    assert [r["epoch"] for r in read_log(tmp_path / "metrics.jsonl")] == [1, 2]


def test_atomic_save__crash_in_replace_keeps_previous_checkpoint(tmp_path, monkeypatch):
    train_toy(tmp_path, epochs=1)
    before = ckpt.checkpoint_sha256(tmp_path / "last.pt")

    def crash(*args, **kwargs):
        raise OSError("simulated crash while moving the checkpoint into place")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        train_toy(tmp_path, epochs=2, resume=True)
    monkeypatch.undo()
    assert ckpt.checkpoint_sha256(tmp_path / "last.pt") == before
    assert ckpt.load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_save__interrupt_inside_torch_save_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = ckpt.atomic_save({"a": torch.ones(2)}, tmp_path / "x.pt")

    def interrupted(obj, handle, *args, **kwargs):
        handle.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_load_checkpoint__missing_truncated_corrupt_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint at"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    path = ckpt.save_model(toy_model(), tmp_path / "model.pt")
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*Delete it"):
        ckpt.load_checkpoint(tmp_path / "truncated.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ckpt.load_checkpoint(tmp_path / "garbage.pt")
    torch.save(toy_model().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a glacierxr checkpoint"):
        ckpt.load_model(tmp_path / "bare.pt", model=toy_model())


def test_load_checkpoint__refuses_pickled_objects_weights_only(tmp_path):
    payload = torch.load(ckpt.save_model(toy_model(), tmp_path / "model.pt"), weights_only=True)
    payload["extra"] = {"callable": Path("x")}  # a non-plain object: only full unpickling could load it
    torch.save(payload, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        ckpt.load_checkpoint(tmp_path / "unsafe.pt")


def test_load_checkpoint__tampered_weights_fail_sha256(tmp_path):
    payload = torch.load(ckpt.save_model(toy_model(), tmp_path / "model.pt"), weights_only=True)
    payload["model_state"]["decoder.bias"] += 1.0
    ckpt.atomic_save(payload, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="SHA-256"):
        ckpt.load_checkpoint(tmp_path / "tampered.pt")


def test_resume__checkpoint_of_another_model_raises(tmp_path):
    train_toy(tmp_path, epochs=1)
    other = Trainer(TinyForecaster(hidden=6), max_epochs=2, checkpoint_dir=tmp_path, resume=True,
                    device="cpu", progress=False)
    with pytest.raises(CheckpointError, match="resume=False"):
        other.fit(toy_data(8))
    with pytest.raises(CheckpointError, match="model"):
        ckpt.load_model(tmp_path / "last.pt", model=TinyForecaster(hidden=6))


def test_resume__from_model_export_raises_pointing_to_fine_tuning(tmp_path):
    train_toy(tmp_path, epochs=1)
    trainer = Trainer(toy_model(), max_epochs=2, resume=tmp_path / "model.pt", device="cpu", progress=False)
    with pytest.raises(CheckpointError, match="from_checkpoint"):
        trainer.fit(toy_data(8))


def test_resume__without_checkpoint_starts_fresh_and_resume_false_replaces(tmp_path):
    a = train_toy(tmp_path / "a", epochs=2, resume=True)  # nothing to resume: epoch 1 onwards
    assert list(a.history.index) == [1, 2]
    with pytest.warns(UserWarning, match="replacing the checkpoints"):
        b = train_toy(tmp_path / "a", epochs=2, resume=False)
    assert_same_weights(weights(a.model), weights(b.model), atol=0.0)
    assert len(read_log(tmp_path / "a" / "metrics.jsonl")) == 2


def test_save_model__weights_only_round_trip_and_hashes(tmp_path):
    model = toy_model()
    path = ckpt.save_model(model, tmp_path / "model.pt", extra={"glacier": "Parvati"},
                           normalization={"mean": np.float32(0.5), "std": 2.0})
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["kind"] == "model" and raw["extra"] == {"glacier": "Parvati"}
    loaded = ckpt.load_model(path, model=TinyForecaster())
    assert_same_weights(weights(model), weights(loaded), atol=0.0)
    assert not loaded.training
    assert loaded.normalization == (0.5, 2.0)  # the (mean, std) form predict() uses
    assert loaded.checkpoint_info["normalization"] == {"mean": 0.5, "std": 2.0}
    assert loaded.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == ckpt.checkpoint_sha256(path)
    assert ckpt.weights_sha256(model) == raw["weights_sha256"]  # predict() records this digest too


# --------------------------------------------------------------------------- exact resume
def test_resume__interrupted_and_resumed_equals_uninterrupted(tmp_path):
    straight = train_toy(tmp_path / "straight", epochs=4)
    # Ctrl-C in the middle of epoch 3 (two full epochs of fetches, then 3 more)
    interrupted = InterruptingDataset(toy_data(N_TRAIN, seed=0), after=2 * N_TRAIN + 3)
    with pytest.raises(KeyboardInterrupt):
        train_toy(tmp_path / "resumed", epochs=4, train=interrupted)
    saved = ckpt.load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert saved["epoch"] == 2  # the last completed epoch, not the partial third one
    assert len(read_log(tmp_path / "resumed" / "metrics.jsonl")) == 2
    resumed = train_toy(tmp_path / "resumed", epochs=4, resume=True)

    assert_same_weights(weights(straight.model), weights(resumed.model))
    assert_same_weights(
        ckpt.load_checkpoint(tmp_path / "straight" / "last.pt")["model_state"],
        ckpt.load_checkpoint(tmp_path / "resumed" / "last.pt")["model_state"],
    )
    np.testing.assert_allclose(
        straight.history[DETERMINISTIC_COLUMNS], resumed.history[DETERMINISTIC_COLUMNS], rtol=0, atol=1e-9
    )
    again = train_toy(tmp_path / "resumed", epochs=4, resume=True)  # finished: nothing to run
    assert_same_weights(weights(resumed.model), weights(again.model), atol=0.0)
    assert again.history[DETERMINISTIC_COLUMNS].equals(resumed.history[DETERMINISTIC_COLUMNS])
    logs = [read_log(tmp_path / name / "metrics.jsonl") for name in ("straight", "resumed")]
    assert [r["epoch"] for r in logs[1]] == [1, 2, 3, 4]
    for a, b in zip(*logs, strict=True):
        assert {k: a[k] for k in ["epoch", *DETERMINISTIC_COLUMNS]} == pytest.approx(
            {k: b[k] for k in ["epoch", *DETERMINISTIC_COLUMNS]}, abs=1e-9
        )


def test_keyboard_interrupt__last_pt_holds_last_completed_epoch(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train_toy(tmp_path / "cut", epochs=3, train=InterruptingDataset(toy_data(N_TRAIN), after=N_TRAIN + 5))
    one = train_toy(tmp_path / "one", epochs=1)  # epoch 1 does not depend on max_epochs
    cut = ckpt.load_checkpoint(tmp_path / "cut" / "last.pt")
    assert cut["epoch"] == 1
    assert_same_weights(cut["model_state"], ckpt.load_checkpoint(tmp_path / "one" / "last.pt")["model_state"], atol=0.0)
    del one


@pytest.mark.slow
def test_resume__survives_sigkill_mid_epoch(tmp_path):
    """A real process, killed with SIGKILL during epoch 2, then resumed from its files."""
    epochs = 3
    reference = train_toy(tmp_path / "reference", epochs=epochs)
    directory, fetch_log = tmp_path / "killed", tmp_path / "fetches.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(TOY_SCRIPT), "--checkpoint-dir", str(directory), "--epochs", str(epochs)]
    child = subprocess.Popen(
        [*command, "--delay", "0.1", "--fetch-log", str(fetch_log), "--out", str(tmp_path / "never.pt")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        fetched = 0
        while time.monotonic() < deadline and child.poll() is None:
            fetched = len(fetch_log.read_text().splitlines()) if fetch_log.exists() else 0
            # epoch 1 fetched N_TRAIN items and wrote last.pt; now inside epoch 2
            if (directory / "last.pt").exists() and fetched >= N_TRAIN + 2:
                break
            time.sleep(0.02)
        assert child.poll() is None, f"child ended early: {child.communicate()[0].decode()[-2000:]}"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert N_TRAIN + 2 <= fetched < 2 * N_TRAIN  # killed in the middle of epoch 2
    assert ckpt.load_checkpoint(directory / "last.pt")["epoch"] == 1

    # resume from nothing but the files the killed process left (this process's random
    # state is unrelated to the child's: the checkpoint must restore it)
    torch.manual_seed(12345)
    resumed = train_toy(directory, epochs=epochs, resume=True)
    assert list(resumed.history.index) == [1, 2, 3]
    assert_same_weights(weights(reference.model), weights(resumed.model))
    log = read_log(directory / "metrics.jsonl")
    assert [r["epoch"] for r in log] == [1, 2, 3]
    np.testing.assert_allclose([r["val_loss"] for r in log], reference.history.val_loss, rtol=0, atol=1e-9)
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------- fine-tuning
def test_freeze__frozen_parameters_unchanged_after_training():
    model = toy_model()
    before = weights(model)
    trainer = Trainer(model, max_epochs=1, batch_size=4, lr=0.05, freeze=("encoder",), device="cpu", progress=False)
    assert trainer.parameter_counts == {"trainable": 5 * 9 + 1, "frozen": 2 * 4 * 9 + 4}
    trainer.fit(toy_data(8))
    after = weights(model)
    for key in ("encoder.weight", "encoder.bias"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["decoder.weight"], after["decoder.weight"])
    with pytest.raises(ConfigError, match=r"matches no parameter.*\['decoder', 'encoder'\]"):
        Trainer(toy_model(), freeze=("backbone",), device="cpu")


def test_fine_tune__from_checkpoint_of_another_glacier(tmp_path):
    source = train_toy(tmp_path / "source", epochs=1)
    tuned = fine_tune(tmp_path / "source" / "model.pt", toy_data(8, seed=5), toy_data(4, seed=6),
                      model=TinyForecaster(), freeze=("encoder",), lr=1e-2, max_epochs=2,
                      checkpoint_dir=tmp_path / "tuned", device="cpu", progress=False)
    assert list(tuned.history.index) == [1, 2]  # a fresh run: epoch 1, fresh optimizer
    assert tuned.history.attrs["frozen_parameters"] == 2 * 4 * 9 + 4
    assert torch.equal(tuned.model.encoder.weight, source.model.encoder.weight)
    assert not torch.equal(tuned.model.decoder.weight, source.model.decoder.weight)
    last = ckpt.load_checkpoint(tmp_path / "tuned" / "last.pt")
    assert last["extra"]["fine_tuned_from_sha256"] == ckpt.checkpoint_sha256(tmp_path / "source" / "model.pt")
    assert last["trainer"]["freeze"] == ("encoder",)


# ------------------------------------------------------------------- with the real pieces
TINY_MODEL_ARGS = {
    "convlstm": dict(hidden_channels=(4,), output_steps=2),
    "lstm": dict(height=8, width=8, hidden_size=8, embedding_size=8, output_steps=2),
    "transformer": dict(patch_size=4, d_model=8, num_heads=2, encoder_layers=1, decoder_layers=1,
                        feedforward_size=16, output_steps=2),
    "unet": dict(input_steps=2, base_channels=4, depth=1, output_steps=2),
    "vit": dict(patch_size=4, d_model=8, depth=1, num_heads=2, mlp_size=16, output_steps=2),
}


def _registry_models() -> list[str]:
    try:
        from glacierxr.ml.models import list_models
    except ImportError:  # pragma: no cover - the registry is part of the package
        return []
    return list_models()


@pytest.mark.parametrize("name", _registry_models())
def test_resume__every_registry_model_resumes_exactly(name, tmp_path):
    from glacierxr.ml.models import get_model

    assert name in TINY_MODEL_ARGS, f"add tiny constructor arguments for {name!r} to TINY_MODEL_ARGS"

    def run(directory, *, train, resume=False):
        torch.manual_seed(3)
        trainer = Trainer(get_model(name, **TINY_MODEL_ARGS[name]), max_epochs=3, batch_size=4,
                          lr=1e-2, patience=None, checkpoint_dir=directory, resume=resume,
                          device="cpu", progress=False)
        trainer.fit(train, toy_data(4, seed=1))
        return trainer

    straight = run(tmp_path / "a", train=toy_data(8))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", train=InterruptingDataset(toy_data(8), after=8 + 3))
    resumed = run(tmp_path / "b", train=toy_data(8), resume=True)
    assert_same_weights(weights(straight.model), weights(resumed.model))
    # model.pt rebuilds through the registry, without passing a model
    loaded = ckpt.load_model(tmp_path / "b" / "model.pt")
    assert loaded.get_config() == straight.model.get_config()
    assert_same_weights(weights(straight.model), weights(loaded), atol=0.0)


def test_fit__patch_sequences_stream_and_normalization_is_stored(tmp_path):
    from glacierxr.ml.models import get_model
    from glacierxr.ml.patches import PatchSequences
    from glacierxr.testing import make_series

    cube = make_series(np.random.default_rng(0).random((16, 24, 24)).astype("float32"), freq="QS")
    sequences = PatchSequences(cube, input_steps=2, target_steps=2, patch=8, stride=8, normalize="auto")
    trainer = Trainer(get_model("convlstm", hidden_channels=(4,), output_steps=2), max_epochs=2,
                      batch_size=8, max_batches_per_epoch=2, checkpoint_dir=tmp_path, device="cpu",
                      progress=False)
    history = trainer.fit(sequences.split("train"), sequences.split("val"))
    assert len(history) == 2 and np.isfinite(history.val_loss).all()
    stored = ckpt.load_checkpoint(tmp_path / "model.pt")["normalization"]
    assert stored == pytest.approx(sequences.normalization)
    loaded = ckpt.load_model(tmp_path / "model.pt")
    assert loaded.normalization == pytest.approx((sequences.normalization["mean"], sequences.normalization["std"]))
    assert not math.isnan(loaded.normalization[1])


# --------------------------------------------------------------------------------------------
# the batched data path (glacierxr.ml._feed)
# --------------------------------------------------------------------------------------------
def _sequence_cube(seed: int = 0, *, inf: bool = False):
    from glacierxr.testing import make_series

    values = np.random.default_rng(seed).normal(0.4, 0.3, (20, 30, 34)).astype("float32")
    values[np.random.default_rng(seed + 1).random(values.shape) < 0.1] = np.nan  # gaps, also in targets
    if inf:
        values[3, 5, 5] = np.inf
    cube = make_series(values, freq="QS")
    observed = np.random.default_rng(seed + 2).random(values.shape) > 0.2  # gap-filled pixels
    return cube.assign_coords(observed=(("time", "y", "x"), observed))


def _sequences(**kwargs):
    from glacierxr.ml.patches import PatchSequences

    # a small tile budget: many tiles and tile groups, so batches run across group boundaries
    options = dict(input_steps=2, target_steps=2, patch=8, stride=3, normalize="auto", tile_mb=0.02)
    return PatchSequences(_sequence_cube(), **{**options, **kwargs})


def _bits(tensor):
    return tensor.contiguous().view(torch.int32) if tensor.dtype == torch.float32 else tensor


def _assert_same_batches(expected, got) -> None:
    assert len(expected) == len(got) and len(expected) > 3
    for one, other in zip(expected, got):
        assert [tuple(a.shape) for a in one] == [tuple(b.shape) for b in other]
        for a, b in zip(one, other):
            assert a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))  # bit for bit, also -0.0


@pytest.mark.parametrize("resident", [False, True])
def test_batched_path__bit_identical_batches_to_per_sample_dataloader(resident):
    from glacierxr.ml._feed import SequenceFeed

    train = _sequences().split("train")
    for epoch in (1, 2):
        train.set_epoch(epoch)
        per_sample = list(torch.utils.data.DataLoader(train, batch_size=13))
        feed = SequenceFeed(train, batch_size=13, device=torch.device("cpu"), resident=resident)
        _assert_same_batches(per_sample, list(feed.batches(epoch)))
        assert len(feed) == len(per_sample)
    assert feed.mode.startswith("resident" if resident else "streaming")


def test_batched_path__device_gather_equals_host_gather():
    """The indexing used on CUDA (torch, on the resident cube), run here on CPU tensors."""
    from glacierxr.ml._feed import SequenceFeed

    train = _sequences().split("train")
    host = SequenceFeed(train, batch_size=16, device=torch.device("cpu"), resident=True)
    device = SequenceFeed(train, batch_size=16, device=torch.device("cpu"), resident=True)
    tile = train._prepare_resident()
    device._device_cube = (tile.region, *(torch.from_numpy(a) for a in tile.arrays[:2]))
    _assert_same_batches(list(host.batches(3)), list(device._device_batches(3)))


def test_batched_path__windows_match_a_reference_cut_from_the_cube():
    """Unshuffled view: each sequence equals plain slicing of the normalised cube (written here)."""
    from glacierxr.ml._feed import SequenceFeed

    sequences = _sequences()
    val = sequences.split("val")
    mean, std = sequences.normalization["mean"], sequences.normalization["std"]
    cube = sequences.data.values
    valid_all = np.isfinite(cube) & sequences.data.observed.values
    batches = list(SequenceFeed(val, batch_size=7, device=torch.device("cpu"), resident=False).batches(0))
    inputs, targets, valid = (torch.cat(parts).numpy()[:, :, 0] for parts in zip(*batches))
    assert len(inputs) == len(val)
    for i, row in enumerate(val.windows.itertuples()):
        window = np.s_[row.t0 : row.t0 + 4, row.y0 : row.y0 + 8, row.x0 : row.x0 + 8]
        normalised = np.nan_to_num((cube[window] - np.float32(mean)) / np.float32(std), nan=0.0)
        np.testing.assert_allclose(inputs[i], normalised[:2], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(valid[i], valid_all[window][2:])
        np.testing.assert_allclose(targets[i], np.where(valid_all[window][2:], normalised[2:], 0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cube_on_device", [False, True])
def test_batched_path__trains_to_the_same_weights_as_per_sample(cube_on_device):
    sequences = _sequences()
    results = {}
    for path in ("per_sample", "batched"):
        torch.manual_seed(0)
        model = TinyForecaster(input_steps=2)
        trainer = Trainer(model, max_epochs=2, batch_size=16, max_batches_per_epoch=4, teacher_forcing=0.5,
                          device="cpu", progress=False, data_path=path, cube_on_device=cube_on_device)
        history = trainer.fit(sequences.split("train"), sequences.split("val"))
        results[path] = (weights(model), history)
    assert_same_weights(results["per_sample"][0], results["batched"][0], atol=0.0)
    for column in ("train_loss", "val_loss"):
        assert results["per_sample"][1][column].tolist() == results["batched"][1][column].tolist()
    assert results["batched"][1].attrs["data_path"].startswith("resident" if cube_on_device else "streaming")
    assert results["per_sample"][1].attrs["data_path"] == "DataLoader"


def test_batched_path__infinite_values_raise():
    from glacierxr.ml.patches import PatchSequences

    sequences = PatchSequences(_sequence_cube(inf=True), input_steps=2, target_steps=2, patch=8, stride=3)
    trainer = Trainer(TinyForecaster(input_steps=2), max_epochs=1, batch_size=16, device="cpu", progress=False)
    with pytest.raises(NonFiniteBatchError, match="infinite"):
        trainer.fit(sequences.split("train"))


def test_background__same_items_in_order_errors_propagate_and_early_stop():
    from glacierxr.ml._feed import background

    assert list(background(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(background(failing()))
    stream = background(iter(range(1000)), depth=2)
    assert next(stream) == 0
    stream.close()  # the producer thread ends although it was blocked on a full queue


def test_probe_precision__measures_both_and_leaves_training_unchanged():
    sequences = _sequences()
    torch.manual_seed(0)
    trainer = Trainer(TinyForecaster(input_steps=2), max_epochs=1, batch_size=16, device="cpu", progress=False)
    before = weights(trainer.model)
    rng = torch.get_rng_state()
    trainer._probe_precision(sequences.split("train"))
    assert set(trainer.precision_probe) == {"fp32_samples_per_s", "bf16_samples_per_s"}
    assert all(v > 0 for v in trainer.precision_probe.values())
    assert trainer.mixed_precision in ("no", "bf16")
    assert_same_weights(before, weights(trainer.model), atol=0.0)
    assert torch.equal(rng, torch.get_rng_state())
    assert not trainer.optimizer.state  # AdamW's moments of the probe steps are gone


def test_fit__progress_true_shows_epochs_and_batches_with_time_left(capsys):
    sequences = _sequences()
    Trainer(TinyForecaster(input_steps=2), max_epochs=2, batch_size=16, max_batches_per_epoch=3, device="cpu",
            progress=True).fit(sequences.split("train"), sequences.split("val"))
    err = capsys.readouterr().err
    assert "training" in err and "2/2" in err and "epoch" in err  # the epoch bar
    assert "epoch 1/2 train" in err and "batch" in err and "<" in err  # batches with the time left


def test_batched_path__lazy_cube_streams_on_cpu_and_nothing_is_read_before_fit():
    from glacierxr.ml._feed import SequenceFeed
    from glacierxr.ml.patches import PatchSequences
    from glacierxr.testing import raise_if_dask_computes

    cube = _sequence_cube().chunk({"time": 1})
    sequences = PatchSequences(cube, input_steps=2, target_steps=2, patch=8, stride=3, tile_mb=0.02)
    train = sequences.split("train")
    with raise_if_dask_computes():
        feed = SequenceFeed(train, batch_size=13, device=torch.device("cpu"))
    assert feed.mode == "streaming (host)"  # bounded memory: tiles are read one group at a time
    train.set_epoch(1)
    _assert_same_batches(list(torch.utils.data.DataLoader(train, batch_size=13)), list(feed.batches(1)))


def test_cuda_settings__tf32_and_cudnn_autotuning_inside_fit_only_and_restored():
    from types import SimpleNamespace

    from glacierxr.ml.train import _tf32

    backends = torch.backends
    before = (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark)
    with _tf32(True, SimpleNamespace(type="cuda")):  # the flags are plain settings, also on a CPU build
        assert backends.cuda.matmul.allow_tf32 and backends.cudnn.allow_tf32 and backends.cudnn.benchmark
    assert (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark) == before
    with _tf32(False, SimpleNamespace(type="cuda")):
        assert (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32) == before[:2] and backends.cudnn.benchmark
    with _tf32(True, SimpleNamespace(type="cpu")):
        assert (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark) == before


def test_fit__a_second_writer_of_the_same_checkpoint_dir_is_refused_and_nothing_is_written(tmp_path):
    import threading

    from glacierxr._safety import output_lock
    from glacierxr.errors import OutputLockedError

    run = tmp_path / "run"
    holding, done = threading.Event(), threading.Event()

    def other_run():  # another writer (here a thread; a process is refused the same way)
        with output_lock(run, create_parent=True):
            holding.set()
            done.wait(30)

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert holding.wait(30)
        trainer = Trainer(ScaleModel(1.0), max_epochs=1, batch_size=4, checkpoint_dir=run, device="cpu",
                          progress=False)
        with pytest.raises(OutputLockedError, match="being written"):
            trainer.fit(scaled_data(2.0))
        assert not run.exists() or not any(run.iterdir())
    finally:
        done.set()
        thread.join()
    history = trainer.fit(scaled_data(2.0))  # the other writer is gone
    assert len(history) == 1 and (run / "last.pt").exists()
