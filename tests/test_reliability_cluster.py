"""Reliability when work is interrupted: a dask worker killed mid-run, a Zarr write killed mid-way.

- Worker loss: a ``dask.distributed`` worker of a real LocalCluster (processes) is SIGKILLed
  while the ``.glacier`` preprocessing chain runs on it; the scheduler recomputes what it held
  and the result equals an undisturbed run exactly.
- Interrupted writes: :func:`glacierxr.io.write` runs in a child process that is SIGKILLed in
  the middle of writing a Zarr store; the target path either does not exist or reads back
  complete, and running the write again succeeds.
- Interrupted training (SIGKILL mid-epoch, resume from the last checkpoint, same final weights)
  is covered by ``tests/test_train.py::test_resume__survives_sigkill_mid_epoch``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import glacierxr as gx
from glacierxr.testing import make_scene_cube

ROOT = Path(__file__).resolve().parents[1]


def _chain(cube: xr.Dataset) -> xr.DataArray:
    """The preprocessing chain of ``glacierxr prepare`` on a small cube (lazy)."""
    snow = (
        cube.glacier.mask(max_missing=0.9)
        .glacier.ndsi()
        .glacier.snow_mask(threshold=0.3)
        .glacier.fill_gaps()
        .glacier.align(max_shift=3.0)
    )
    return snow.chunk({"time": -1}).glacier.monthly(months=1)


def _slow_cube(seconds: float) -> xr.Dataset:
    """A 12-scene cube whose every block takes ``seconds`` to produce, like a slow read."""
    cube = make_scene_cube(times=12, height=40, width=40, seed=7, freq="10D", chunks={"time": 1})

    def slow(block):  # a closure: pickled by value to the workers
        import time as _time

        _time.sleep(seconds)
        return block

    for name in cube.data_vars:
        data = cube[name].data
        cube[name] = cube[name].copy(data=data.map_blocks(slow, dtype=data.dtype, name=f"slow-read-{name}"))
    return cube


@pytest.mark.slow
def test_cluster__worker_killed_mid_run_gives_the_same_result(tmp_path):
    from dask.distributed import Client, LocalCluster, wait

    expected = _chain(_slow_cube(0.0)).compute(scheduler="threads")

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # a free port: None still binds 8787 (distributed 2026.8)
        local_directory=str(tmp_path / "dask"),
        memory_limit="2GiB",
    ) as cluster, Client(cluster) as client:
        # mask(drop=True) computes the per-scene missing fraction on the cluster right away
        lazy = _chain(_slow_cube(0.15))
        future = client.compute(lazy)
        pids = client.run(os.getpid)
        victim = sorted(pids)[0]
        # wait until the victim holds finished pieces of *this* run, then kill it without warning
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if client.has_what().get(victim):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the worker to kill never received any task")
        assert not future.done(), "the run finished before the worker could be killed"
        os.kill(pids[victim], signal.SIGKILL)
        wait(future, timeout=120)
        result = future.result()
        after = client.run(os.getpid)
        assert pids[victim] not in after.values()  # the worker really died (and was replaced)

    xr.testing.assert_identical(result, expected)
    assert np.isfinite(result.values).any()


# ------------------------------------------------------------------------------------------
# a Zarr write killed with SIGKILL
# ------------------------------------------------------------------------------------------
_WRITER = textwrap.dedent(
    """
    import sys, time
    import glacierxr as gx
    from glacierxr.testing import make_scene_cube

    target, marker, delay, overwrite = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
    cube = make_scene_cube(times=16, height=64, width=64, seed=1, chunks={"time": 1})
    first = [True]

    def slow(block):
        if first[0]:
            first[0] = False
            open(marker, "w").close()  # tell the parent that writing has begun
        time.sleep(delay)
        return block

    cube["green"] = cube.green.copy(data=cube.green.data.map_blocks(slow, dtype="float32"))
    gx.io.write(cube, target, overwrite=overwrite)
    print("written", flush=True)
    """
)


def _start_writer(target: Path, marker: Path, *, delay: float, overwrite: bool = False):
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target), str(marker), str(delay), "1" if overwrite else "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DASK_SCHEDULER": "synchronous"},
    )


def _kill_mid_write(target: Path, *, overwrite: bool = False) -> None:
    marker = target.parent / "started"
    marker.unlink(missing_ok=True)
    process = _start_writer(target, marker, delay=0.2, overwrite=overwrite)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the writer never started writing: {process.communicate()[1][-2000:]}")
        time.sleep(0.02)
    time.sleep(0.5)  # a few blocks written
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    marker.unlink()


def _cube() -> xr.Dataset:
    """The cube the child process writes (without its slow-down)."""
    return make_scene_cube(times=16, height=64, width=64, seed=1, chunks={"time": 1})


def _complete(target: Path) -> bool:
    """Whether ``target`` reads back as the full cube the writer makes."""
    expected = _cube().compute()
    back = gx.io.read(target).compute()
    xr.testing.assert_equal(back[["green", "swir16", "qa_pixel"]].reset_coords(drop=True),
                            expected[["green", "swir16", "qa_pixel"]].reset_coords(drop=True))
    return True


@pytest.mark.slow
def test_write__sigkill_mid_zarr_write_leaves_no_store_that_looks_complete(tmp_path):
    target = tmp_path / "out" / "cube.zarr"
    target.parent.mkdir()
    _kill_mid_write(target)
    # nothing at the target path: a reader sees "no output yet", never a partial store
    assert not target.exists()
    with pytest.raises(FileNotFoundError):
        gx.io.read(target)
    # what may stay: the killed writer's hidden partial, and its lock file (an empty file whose
    # flock the kernel released with the process; the next writer takes it over)
    leftovers = [p.name for p in target.parent.iterdir()]
    assert all(
        name.startswith(".cube.zarr.partial-") or name == ".cube.zarr.lock" for name in leftovers
    ), leftovers
    # running it again succeeds, gives the complete store and removes the stale partial
    gx.io.write(_cube(), target)
    assert _complete(target)
    assert not [p.name for p in target.parent.iterdir() if ".partial-" in p.name]


@pytest.mark.slow
def test_write__sigkill_mid_overwrite_keeps_the_previous_complete_store(tmp_path):
    target = tmp_path / "cube.zarr"
    gx.io.write(_cube(), target)
    before = sorted(p.relative_to(target).as_posix() for p in target.rglob("*"))
    _kill_mid_write(target, overwrite=True)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == before
    assert _complete(target)
