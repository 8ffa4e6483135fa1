"""Every Python block of README.md and docs/*.md runs, as written, in the order of its page.

The blocks of one page share one namespace (like a notebook) and run in a fresh temporary
folder. HTML comments just before a block (invisible on the rendered site) steer the test:

``<!-- docs-test: network -->``
    the block needs the internet (Planetary Computer); it is skipped unless
    ``GLACIERXR_DOCS_NETWORK=1`` is set.
``<!-- docs-test: stand-in -->``
    the block starts a cluster elsewhere (SLURM, Coiled, a remote scheduler) or writes to object
    storage: it runs against the stand-ins below — a ``LocalCluster`` (no dashboard, spill folder
    inside the temporary folder) in place of the remote cluster, an in-memory ``fsspec``
    filesystem in place of the bucket. The real ``dask_jobqueue.SLURMCluster`` is still built
    with the block's arguments and its job script checked.
``<!-- docs-test-setup ... -->``
    hidden Python run at that point (e.g. a small sample standing in for a region's items).

The docs promise each block runs in about 2 minutes on 2 cores; timings are noisy on shared
machines, so they are printed (``pytest -s``), not asserted.
"""

from __future__ import annotations

import os
import re
import sys
import time
import types
from pathlib import Path

import pytest
from docblocks import blocks

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NETWORK = os.environ.get("GLACIERXR_DOCS_NETWORK") == "1"

def _pages_with_python() -> list[Path]:
    return [page for page in PAGES if any(block.mark != "setup" for block in blocks(page))]


def test_every_marker_is_known_and_every_page_is_collected():
    for page in PAGES:
        for block in blocks(page):
            assert block.mark in (None, "network", "stand-in", "setup"), f"{page.name}:{block.line}"
    assert ROOT / "README.md" in _pages_with_python()


# --------------------------------------------------------------------------- stand-ins


class _StandInCluster:
    """What a remote cluster gives the user, played by a LocalCluster in the test's folder."""

    started: list[_StandInCluster] = []  # closed by the stand_ins fixture, whatever the page did

    def __init__(self, spill: Path):
        from dask.distributed import LocalCluster

        _StandInCluster.started.append(self)
        self.cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                    dashboard_address=":0", local_directory=str(spill))

    def __getattr__(self, name):
        return getattr(self.cluster, name)

    def scale(self, n=None, jobs=None, **_):
        self.cluster.scale(max(1, min(2, n or jobs or 1)))

    def adapt(self, minimum=None, maximum=None, minimum_jobs=None, maximum_jobs=None, **_):
        return self.cluster.adapt(minimum=1, maximum=2)

    def close(self, *args, **kwargs):
        return self.cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _slurm_stand_in(spill: Path, scripts: list[str]):
    try:
        from dask_jobqueue import SLURMCluster as RealSLURMCluster
    except ImportError:  # a dev install has it (pyproject's dev extra)
        RealSLURMCluster = None

    def SLURMCluster(**kwargs):  # noqa: N802 - mirrors the class it stands for
        if RealSLURMCluster is None:
            pytest.skip("dask-jobqueue is not installed (pip install -e '.[dev]')")
        options = {**kwargs, "scheduler_options": {**kwargs.get("scheduler_options", {}),
                                                   "dashboard_address": ":0"}}
        real = RealSLURMCluster(**options)  # checks the arguments; no job is submitted
        try:
            scripts.append(real.job_script())
        finally:
            real.close()
        stand_in = _StandInCluster(spill)
        stand_in.job_script = lambda: scripts[-1]
        return stand_in

    module = types.ModuleType("dask_jobqueue")
    module.SLURMCluster = SLURMCluster
    return module


def _coiled_stand_in(spill: Path, calls: list[dict]):
    module = types.ModuleType("coiled")

    def Cluster(**kwargs):  # noqa: N802 - mirrors coiled.Cluster
        calls.append(kwargs)
        return _StandInCluster(spill)

    module.Cluster = Cluster
    return module


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """Patch the remote-cluster entry points and object storage for ``stand-in`` blocks."""
    import fsspec
    from dask.distributed import LocalCluster

    spill = tmp_path / "spill"
    spill.mkdir()
    record: dict = {"slurm": [], "coiled": []}
    monkeypatch.setitem(sys.modules, "dask_jobqueue", _slurm_stand_in(spill, record["slurm"]))
    monkeypatch.setitem(sys.modules, "coiled", _coiled_stand_in(spill, record["coiled"]))
    scheduler = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                             dashboard_address=":0", local_directory=str(spill))
    record["scheduler"] = scheduler.scheduler_address
    # buckets and containers become an in-memory filesystem (credentials are not looked at)
    memory = fsspec.filesystem("memory")
    record["memory"] = memory
    yield record
    while _StandInCluster.started:
        _StandInCluster.started.pop().close()
    scheduler.close()
    memory.store.clear()


def _for_stand_ins(code: str, record: dict) -> str:
    """Point the block at the stand-ins: the scheduler address and the buckets."""
    code = re.sub(r"tcp://[\w.\-]+:8786", record["scheduler"], code)
    return re.sub(r"\b(s3|gs|abfs|az)://", "memory://", code)


# --------------------------------------------------------------------------- the test


def run_page(page: Path, namespace: dict, stand_ins: dict) -> tuple[int, int]:
    """Run the page's blocks in ``namespace``; return (blocks run, network blocks skipped)."""
    ran, skipped = 0, 0
    for block in blocks(page):
        if block.mark == "network" and not NETWORK:
            skipped += 1
            continue
        code = _for_stand_ins(block.code, stand_ins) if block.mark == "stand-in" else block.code
        exec(compile(code, f"{page.name}:{block.line}", "exec"), namespace)  # noqa: S102
        ran += block.mark != "setup"
    return ran, skipped


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """A fresh folder; afterwards Dask's configuration is as before (a Client sets the
    scheduler to distributed and restores it on close only when clients close in order)."""
    import dask

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # spill folders of the recipes land here
    keys = ("scheduler", "shuffle")
    saved = {key: dask.config.config[key] for key in keys if key in dask.config.config}
    yield tmp_path
    for key in keys:
        dask.config.config.pop(key, None)
    dask.config.config.update(saved)


# docs/index.md runs in test_index_headline_measures_velocity_within_15_percent_on_bare_ice
@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in _pages_with_python() if page.name != "index.md"],
                         ids=lambda page: page.name)
def test_python_blocks_of_the_page_run(page, in_tmp, stand_ins):
    pytest.importorskip("torch")
    from dask.distributed import Client

    namespace: dict = {"__name__": "__docs__"}
    before = {id(client) for client in Client._instances}
    start = time.perf_counter()
    try:
        ran, skipped = run_page(page, namespace, stand_ins)
    finally:
        _close_clients(namespace, before)
    from distributed import default_client

    with pytest.raises(ValueError):  # no client of the page is left as the default scheduler
        default_client()
    elapsed = time.perf_counter() - start
    print(f"\n{page.name}: {ran} block(s) ran, {skipped} network block(s) skipped, {elapsed:.1f} s")
    if ran == 0:
        pytest.skip(f"{page.name}: every Python block needs the network (GLACIERXR_DOCS_NETWORK=1)")
    if "SLURMCluster(" in page.read_text():
        script = stand_ins["slurm"][-1]  # the real dask-jobqueue job script of the recipe
        for line in ("#SBATCH -t 04:00:00", "#SBATCH --mem=32G", "--local-directory $TMPDIR",
                     "#SBATCH --constraint=internet", "--nthreads 1"):
            assert line in script, line


BARE_ICE_MARGIN_M = 150.0  # evaluate this far below the lowest snow line of the scenes used


@pytest.mark.slow
def test_index_headline_measures_velocity_within_15_percent_on_bare_ice(in_tmp, stand_ins):
    """The home page's velocity, on a reflectance band, against the sample's true speed."""
    import numpy as np

    import glacierxr as gx

    namespace: dict = {"__name__": "__docs__"}
    start = time.perf_counter()
    ran, _ = run_page(ROOT / "docs" / "index.md", namespace, stand_ins)
    print(f"\nindex.md: {ran} block(s) ran in {time.perf_counter() - start:.1f} s")
    assert ran >= 1
    motion, pairs, green = namespace["motion"].compute(), namespace["pairs"], namespace["green"]
    truth = gx.sample.open_truth(namespace["catalog"])
    row = {str(scene): k for k, scene in enumerate(truth["id"].values.tolist())}
    used = sorted(set(pairs["index_img1"]) | set(pairs["index_img2"]))
    snow_lines = [float(truth["snow_line"].values[row[str(green["id"].values[k]).split("+")[0]]])
                  for k in used]
    on_grid = truth.interp(x=motion["x"], y=motion["y"], method="nearest")
    bare = on_grid["glacier"].astype(bool) & (on_grid["elevation"] < min(snow_lines) - BARE_ICE_MARGIN_M)
    measured = motion["v"].where(bare).values
    true = on_grid["speed"].where(bare).values
    both = np.isfinite(measured) & np.isfinite(true)
    assert both.sum() >= 50, "too few bare-ice points to judge"
    assert both.sum() >= 0.8 * np.asarray(bare).sum()  # velocity found on most of the bare ice
    ratio = np.median(measured[both]) / np.median(true[both])
    print(f"\nbare ice: {both.sum()} points, median speed measured {np.median(measured[both]):.0f}, "
          f"true {np.median(true[both]):.0f} m/year, ratio {ratio:.3f}")
    assert abs(ratio - 1) <= 0.15


def _close_clients(namespace: dict, before: set) -> None:
    """Close every Client the page opened (recipes replace `client` without closing the last),
    so that none stays the default scheduler of later tests, and the page's local clusters."""
    from dask.distributed import Client

    for client in list(Client._instances):
        if id(client) not in before:
            client.close()
    for value in list(namespace.values()):
        close = getattr(value, "close", None)
        if isinstance(value, _StandInCluster) or type(value).__name__ == "LocalCluster":
            close()
