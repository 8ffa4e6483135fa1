"""Nothing the user had is lost: full and read-only disks, concurrent writers, killed writes,
and the run folder of ``glacierxr train``.

A full disk is a small tmpfs when the tests run as root (``mount -t tmpfs``), skipped cleanly
otherwise; the same failures are also simulated (monkeypatch) so that they are checked
everywhere. Concurrent writers are real second processes.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import glacierxr as gx
from glacierxr import _safety
from glacierxr.cli import main
from glacierxr.errors import OutputLockedError, StorageError
from glacierxr.testing import make_series

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


def _series(times=2, size=8, seed=0):
    return make_series(np.random.default_rng(seed).random((times, size, size)).astype("float32"))


def _mount(point: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    point.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB file system."""
    point = tmp_path / "disk"
    _mount(point, "size=256k")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def read_only_disk(tmp_path):
    point = tmp_path / "ro"
    _mount(point, "size=64k,ro")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(disk: Path) -> None:
    """Fill ``disk`` up to the last byte."""
    descriptor = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(descriptor, b"\0" * 4096):
            pass
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(descriptor)


# ------------------------------------------------------------------------------------------
# full and read-only disks
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".zarr", ".nc", ".tif"])
def test_full_disk__write_raises_storage_error_and_keeps_the_old_output(small_disk, suffix):
    out = small_disk / f"out{suffix}"
    small = _series()
    gx.io.write(small, out)
    big = _series(times=4, size=200)  # 640 KB of float32 on a 256 KiB disk
    with pytest.raises(StorageError) as info:
        gx.io.write(big, out, overwrite=True)
    error = info.value
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC and error.filename == str(out)
    message = str(error)
    assert "disk is full" in message and str(out) in message and "needs about 625.0 KiB" in message
    assert "free some space" in message.lower()
    back = gx.io.read(out)
    back = back if isinstance(back, xr.DataArray) else back["snow_mask"]
    np.testing.assert_array_equal(back.values, small.values)  # the old output is intact
    assert sorted(p.name for p in small_disk.iterdir() if p.name != "lost+found") == [out.name]


def test_full_disk__save_model_and_trainer_checkpoints(small_disk):
    sys.path.insert(0, str(Path(__file__).parent))
    from _toy_training import TOY_TRAINER, toy_data, toy_model

    from glacierxr.ml.checkpoint import load_model, save_model
    from glacierxr.ml.train import Trainer

    model = toy_model()
    path = save_model(model, small_disk / "model.pt")
    before = path.read_bytes()
    _fill(small_disk)
    with pytest.raises(StorageError, match="disk is full") as info:
        save_model(model, path)
    assert info.value.errno == errno.ENOSPC and str(path) in str(info.value)
    assert path.read_bytes() == before and load_model(path, model=toy_model()) is not None
    trainer = Trainer(toy_model(), max_epochs=1, checkpoint_dir=small_disk / "run", **TOY_TRAINER)
    with pytest.raises(StorageError, match="disk is full"):
        trainer.fit(toy_data(8))
    leftovers = [p.name for p in small_disk.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_read_only_file_system__write_and_save_model(read_only_disk):
    from glacierxr.ml.checkpoint import save_model

    with pytest.raises(StorageError, match="read-only file system") as info:
        gx.io.write(_series(), read_only_disk / "out.zarr")
    assert info.value.errno == errno.EROFS and f"write {str(read_only_disk / 'out.zarr')!r}" in str(info.value)
    sys.path.insert(0, str(Path(__file__).parent))
    from _toy_training import toy_model

    with pytest.raises(StorageError, match="read-only"):
        save_model(toy_model(), read_only_disk / "model.pt")


def _predict_inputs(tmp_path, *, size: int):
    """A composites store, a 2-step ConvLSTM checkpoint and a config for `glacierxr predict`."""
    from glacierxr.ml.checkpoint import save_model
    from glacierxr.ml.models import get_model

    store = tmp_path / "c.zarr"
    gx.io.write(make_series(np.random.default_rng(0).random((6, size, size)).astype("float32"), freq="3MS")
                .to_dataset(name="snow_mask"), store)
    checkpoint = save_model(get_model("convlstm", hidden_channels=(4,), output_steps=2), tmp_path / "m.pt")
    config = tmp_path / "c.toml"
    config.write_text("[patches]\ninput_steps = 2\npatch = 8\n[predict]\nsteps = 2\n")
    return store, checkpoint, config


@pytest.mark.parametrize("out", ["f.zarr", "f.tif"])
def test_full_disk__cli_prints_one_line_and_exits_2(small_disk, tmp_path, capsys, out):
    store, checkpoint, config = _predict_inputs(tmp_path, size=16)
    _fill(small_disk)
    code = main(["predict", "--config", str(config), "--data", str(store), "--checkpoint", str(checkpoint),
                 "--out", str(small_disk / out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "disk is full" in err and "Traceback" not in err
    assert not list(small_disk.glob(f"*{out}*"))


def test_simulated_failures_become_storage_errors(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: the same errors, raised by the libraries themselves."""
    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(args[0]) if args else "")

    monkeypatch.setattr(xr.Dataset, "to_zarr", denied)
    with pytest.raises(StorageError, match="permission denied") as info:
        gx.io.write(_series(), tmp_path / "x.zarr")
    assert info.value.errno == errno.EACCES and "fix its permissions" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no partial, no lock file

    # torch's zip writer loses the errno ("unexpected pos"); a nearly full disk tells the cause
    from glacierxr.ml import checkpoint

    def torn(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torn)
    monkeypatch.setattr(_safety.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 12})())
    with pytest.raises(StorageError, match="disk is full"):
        checkpoint.atomic_save({"w": torch.ones(3)}, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


# ------------------------------------------------------------------------------------------
# one writer per output
# ------------------------------------------------------------------------------------------
_HOLDER = """
import sys, time
from glacierxr._safety import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def held(tmp_path):
    """Start a second process that holds the lock of a path; yield (path, process)."""
    processes = []

    def hold(path: Path):
        process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, cwd=ROOT)
        processes.append(process)
        assert process.stdout.readline().strip() == b"held"
        return process

    yield hold
    for process in processes:
        process.kill()
        process.wait()


def test_lock__a_second_process_writing_the_same_output_fails_clearly(tmp_path, held, capsys):
    out = tmp_path / "out.zarr"
    holder = held(out)
    with pytest.raises(OutputLockedError, match="being written by another glacierxr run") as info:
        gx.io.write(_series(), out)
    assert isinstance(info.value, OSError) and str(out) in str(info.value)
    assert not out.exists()
    sample = tmp_path / "sample"
    held(sample)
    assert main(["sample", "--out", str(sample), "--width", "32", "--height", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "being written by another" in err
    holder.kill()
    holder.wait()  # a dead holder's lock is free again
    gx.io.write(_series(), out)
    assert sorted(p.name for p in tmp_path.iterdir() if "out" in p.name) == ["out.zarr"]  # no lock file left


def test_lock__another_thread_fails_and_the_same_thread_may_nest(tmp_path):
    out = tmp_path / "x.nc"
    errors = []
    with _safety.output_lock(out):
        with _safety.output_lock(out):
            pass
        thread = threading.Thread(target=lambda: errors.append(_try_write(out)))
        thread.start()
        thread.join()
    assert isinstance(errors[0], OutputLockedError)


def test_lock__a_locked_folder_covers_what_is_inside_it(tmp_path, held):
    run = tmp_path / "run"
    run.mkdir()
    inside = run / "checkpoints"
    # the thread holding the folder writes inside it without another lock file
    with _safety.output_lock(run):
        with _safety.output_lock(inside, create_parent=True):
            assert not any(p.name.endswith(".lock") for p in run.iterdir())
        errors = []  # another thread may not write inside it
        thread = threading.Thread(target=lambda: errors.append(_try_write(run / "x.nc")))
        thread.start()
        thread.join()
        assert isinstance(errors[0], OutputLockedError) and str(run) in str(errors[0])
    # nor may another process write inside a folder held by another process
    holder = held(run)
    with pytest.raises(OutputLockedError, match="being written by another glacierxr run") as info:
        gx.io.write(_series(), run / "x.nc")
    assert str(run) in str(info.value) and not (run / "x.nc").exists()
    holder.kill()
    holder.wait()
    gx.io.write(_series(), run / "x.nc")  # free again


def _try_write(out):
    try:
        gx.io.write(_series(), out)
    except Exception as error:  # noqa: BLE001 - returned to the test
        return error
    return None


_SLOW_WRITER = """
import sys, time
import dask.array as da, numpy as np, xarray as xr
import glacierxr as gx
from glacierxr.testing import make_series
def slow(block):
    time.sleep(0.5)
    return block
base = make_series(np.zeros((20, 8, 8), "float32")).chunk({"time": 1})
slow_data = base.copy(data=base.data.map_blocks(slow, dtype="float32"))
gx.io.write(slow_data, sys.argv[1])
"""


def test_killed_write__stale_partial_removed_by_the_next_writer_only(tmp_path, held):
    out = tmp_path / "out.zarr"
    process = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(out)], cwd=ROOT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.zarr.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partials = list(tmp_path.glob(".out.zarr.partial-*"))
    assert len(partials) == 1 and not out.exists()
    # while another live process holds the output, its partial is not touched
    holder = held(out)
    with pytest.raises(OutputLockedError):
        gx.io.write(_series(), out)
    assert partials[0].exists()
    holder.kill()
    holder.wait()
    gx.io.write(_series(), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
    np.testing.assert_array_equal(gx.io.read(out)["snow_mask"].values, _series().values)


def test_killed_replace__the_old_output_moved_aside_is_put_back(tmp_path):
    out = tmp_path / "out.zarr"
    gx.io.write(_series(), out)
    aside = tmp_path / ".out.zarr.old-0123456789ab"
    os.replace(out, aside)  # what a replace killed between its two renames leaves
    with pytest.raises(gx.io.OutputExistsError):
        gx.io.write(_series(seed=1), out)  # the old output is back, and not replaced unasked
    np.testing.assert_array_equal(gx.io.read(out)["snow_mask"].values, _series().values)
    assert not aside.exists()


def test_zarr_outputs_open_without_a_consolidated_metadata_warning(tmp_path):
    out = gx.io.write(_series(), tmp_path / "x.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xr.open_zarr(out)["snow_mask"].shape == (2, 8, 8)


# ------------------------------------------------------------------------------------------
# the run folder of `glacierxr train`
# ------------------------------------------------------------------------------------------
RUN_CONFIG = """
[patches]
patch = 8
stride = 8
input_steps = 2
target_steps = 2
val_fraction = 0.2
test_fraction = 0.2

[model]
name = "convlstm"
hidden_channels = [4]
output_steps = 2

[train]
max_epochs = 1
batch_size = 4
"""


@pytest.fixture
def run_inputs(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(RUN_CONFIG)
    store = tmp_path / "composites.zarr"
    composites = make_series(np.random.default_rng(0).random((12, 16, 16)).astype("float32"), freq="3MS")
    gx.io.write(composites.to_dataset(name="snow_mask"), store)
    return config, store


def _train(config, store, out, *flags):
    torch.set_num_threads(1)
    return main(["train", "--config", str(config), "--data", str(store), "--out", str(out), *flags])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train__existing_run_is_kept_unless_resume_or_overwrite(tmp_path, run_inputs, capsys, monkeypatch):
    config, store = run_inputs
    run = tmp_path / "run"
    assert _train(config, store, run) == 0
    old = _files(run)
    assert {"model.pt", "config.toml", "checkpoints/last.pt"} <= set(old)
    capsys.readouterr()
    assert _train(config, store, run) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert "=True" not in err and _files(run) == old

    # --overwrite, but the new run fails before its first checkpoint: the old run is intact
    from glacierxr.ml.train import Trainer

    def fail(self, epoch, *args, **kwargs):
        raise RuntimeError("killed in epoch 1")

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_run_epoch", fail)
        with pytest.raises(RuntimeError, match="killed in epoch 1"):
            _train(config, store, run, "--overwrite")
    assert _files(run) == old

    # --overwrite that completes (a 2-epoch run) replaces every file of the old run
    assert _train(config, store, run, "--overwrite", "--epochs", "2") == 0
    new = _files(run)
    assert set(new) >= {"model.pt", "config.toml", "checkpoints/last.pt"}
    assert new["checkpoints/last.pt"] != old["checkpoints/last.pt"] and new["model.pt"] != old["model.pt"]
    assert len(new["checkpoints/metrics.jsonl"].splitlines()) == 2
    assert b"max_epochs = 2" in new["config.toml"]
    assert not list(tmp_path.glob(".run*"))  # no lock file or partial beside the run


_KILLED_TRAIN = """
import sys, time
from glacierxr.cli import main
from glacierxr.ml.train import Trainer
def stalled(self, epoch, *args, **kwargs):
    print("in epoch", epoch, flush=True)
    time.sleep(120)  # killed here, before the first checkpoint of the new run
Trainer._run_epoch = stalled
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_train__overwrite_killed_before_its_first_checkpoint_leaves_the_old_run(tmp_path, run_inputs):
    config, store = run_inputs
    run = tmp_path / "run"
    assert _train(config, store, run) == 0
    old = _files(run)
    argv = ["train", "--config", str(config), "--data", str(store), "--out", str(run), "--overwrite"]
    process = subprocess.Popen([sys.executable, "-c", _KILLED_TRAIN, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert process.stdout.readline().strip() == b"in epoch 1"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _files(run) == old  # every checkpoint, the model and the log of the old run
    assert _train(config, store, run, "--resume", "--epochs", "2") == 0  # and it still resumes


def test_train__resume_removes_what_a_killed_checkpoint_save_left(tmp_path, run_inputs):
    config, store = run_inputs
    run = tmp_path / "run"
    assert _train(config, store, run) == 0
    torn = run / "checkpoints" / ".last.pt.partial-0123456789ab"
    torn.write_bytes(b"PK\x03\x04 half a zip")  # a save killed with SIGKILL
    assert _train(config, store, run, "--resume", "--epochs", "2") == 0
    assert not torn.exists()
    assert len((run / "checkpoints" / "metrics.jsonl").read_text().splitlines()) == 2


def test_train__a_failed_run_leaves_no_empty_folder(tmp_path, run_inputs, capsys):
    config, _ = run_inputs
    short = tmp_path / "short.zarr"
    gx.io.write(_series(times=3).to_dataset(name="snow_mask"), short)
    run = tmp_path / "nested" / "run"
    assert _train(config, short, run) == 2
    assert "periods" in capsys.readouterr().err
    assert not run.exists()


# ------------------------------------------------------------------------------------------
# the sample writer
# ------------------------------------------------------------------------------------------
_SAMPLE = """
import sys
import glacierxr as gx
gx.sample.write_catalog(sys.argv[1], seed=0, width=32, height=32, start="2015-01-01", end="2021-01-01",
                        progress=True)
"""


def test_killed_sample__is_detected_and_written_anew(tmp_path, capsys):
    out = tmp_path / "sample"
    process = subprocess.Popen([sys.executable, "-c", _SAMPLE, str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while len(list(out.rglob("*.TIF"))) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(out.rglob("*.TIF")) and not (out / gx.sample.COMPLETE_MARKER).exists()
    # the next run sees an interrupted sample (no marker), not "already written", and redoes it
    assert main(["sample", "--out", str(out), "--width", "32", "--height", "32", "--start", "2015-01-01",
                 "--end", "2021-01-01"]) == 0
    assert (out / gx.sample.COMPLETE_MARKER).exists()
    items = gx.search(datetime=None, max_cloud=None, catalog=out / "catalog.json", sign=False)
    assert len(items) == gx.sample.open_truth(out / "catalog.json").sizes["time"]
    # a complete sample is kept unless asked
    assert main(["sample", "--out", str(out), "--width", "32", "--height", "32"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_lock__a_file_system_without_flock_is_said_so(tmp_path, monkeypatch):
    """Where flock is missing (some network disks) the lock warns and falls back to a lock file."""
    import filelock._native._unix as unix

    def no_flock(descriptor):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(unix, "lock_fd_nonblocking", no_flock)
    out = tmp_path / "nfs" / "out.zarr"
    out.parent.mkdir()
    with pytest.warns(_safety.LockUnavailableWarning, match="cannot lock files"):
        gx.io.write(_series(), out)
    assert gx.io.read(out)["snow_mask"].shape == (2, 8, 8)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.zarr"]


@pytest.mark.slow
def test_lock__two_cli_runs_into_one_folder_the_second_fails_the_first_completes(tmp_path):
    """Two real `glacierxr sample` processes at once: one writes, the other stops with a clear line."""
    out = tmp_path / "sample"
    # 48 x 48 px over 8 years: seconds of writing, several times the start-up of the second run
    argv = [sys.executable, "-m", "glacierxr.cli", "sample", "--out", str(out), "--width", "48", "--height", "48"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not _safety.lock_path(out).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"Error: {str(out)!r} is being written by another glacierxr run right now (its lock "
        "'.sample.lock' is held). Wait until that run ends, or choose another output."
    ]
    assert (out / gx.sample.COMPLETE_MARKER).exists() and not _safety.lock_path(out).exists()


def test_full_disk__cli_sample_is_one_line_too(small_disk, capsys):
    """GDAL loses the errno of a full disk (CPLE_AppDefinedError); the CLI still says it in one line."""
    code = main(["sample", "--out", str(small_disk / "s"), "--width", "64", "--height", "64"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error")]
    assert code == 2 and len(lines) == 1 and "the disk is full" in lines[0], lines



def test_full_disk__geotiff_from_a_real_cli_process_prints_one_line(small_disk, tmp_path):
    """In a real process: libtiff prints '_tiffWriteProc: No space left on device.' straight to
    file descriptor 2 for every failed block; only the one-line error may reach the terminal."""
    store, checkpoint, config = _predict_inputs(tmp_path, size=64)
    _fill(small_disk)
    done = subprocess.run(
        [sys.executable, "-m", "glacierxr.cli", "predict", "--config", str(config), "--data", str(store),
         "--checkpoint", str(checkpoint), "--out", str(small_disk / "f.tif")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("Error:") and "disk is full" in lines[0]
    assert not list(small_disk.glob("*f.tif*"))


def test_geotiff_write_passes_other_stderr_output_on(tmp_path, capfd):
    """The libtiff filter drops only its disk-full lines; anything else on stderr still shows."""
    from glacierxr.io.store import _without_libtiff_disk_lines

    with _without_libtiff_disk_lines():
        os.write(2, b"_tiffWriteProc: No space left on device.\nsomething else\n")
    assert capfd.readouterr().err == "something else\n"
