"""Shared fixtures: the real data beside the project, the embedded sample and a reader of it, a cluster."""

from __future__ import annotations

import os
from pathlib import Path

import dask
import pytest
import xarray as xr

import glacierxr as gx

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GLACIERXR_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Small sample used by most integration tests: two years, 96 x 96 px.
SMALL_SAMPLE = dict(width=96, height=96, start="2018-01-01", end="2020-01-01")

dask.config.set(scheduler="threads")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that use it skip cleanly where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_catalog(tmp_path_factory) -> Path:
    """A small embedded-sample catalog (real COGs + STAC), written once per session."""
    directory = tmp_path_factory.mktemp("sample")
    return gx.sample.write_catalog(directory, seed=0, **SMALL_SAMPLE)


@pytest.fixture(scope="session")
def yahtse_pan(shared_data) -> xr.DataArray:
    """The two real Yahtse scenes as a ``(time, y, x)`` float32 DN cube with their real dates.

    Shared by the session: derive new arrays from it, never modify it in place.
    """
    pytest.importorskip("rioxarray")
    from yahtse_data import read_yahtse

    return read_yahtse(shared_data)


@pytest.fixture(scope="session")
def stack_sample_cogs():
    """``stack(catalog) -> xr.Dataset``: a sample catalog read without :func:`glacierxr.load`
    (:func:`references.stack_sample_cogs`)."""
    pytest.importorskip("rioxarray")
    from references import stack_sample_cogs

    return stack_sample_cogs


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory):
    """A real 2-worker ``dask.distributed`` LocalCluster (processes), shared by the session."""
    from dask.distributed import Client, LocalCluster

    scratch = tmp_path_factory.mktemp("dask-scratch")
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # a free port: None still binds 8787 (distributed 2026.8)
        local_directory=str(scratch),
        memory_limit="2GiB",
    ) as cluster, Client(cluster, set_as_default=False) as client:
        # Not the default client: other tests keep the threaded scheduler. Use client.compute().
        yield client


@pytest.fixture
def one_torch_thread():
    """Torch on one intra-op thread for the test: tiny models gain nothing from more, and on a
    small shared CPU extra threads only contend (measured several times slower)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
