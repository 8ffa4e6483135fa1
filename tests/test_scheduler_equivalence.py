"""The whole chain gives the same numbers on the threaded scheduler and on a LocalCluster.

Each chain is *built* under the scheduler that computes it, so the one compute that happens while
building (``mask`` finding the scenes to drop) runs there too.  All outputs of a chain are computed
in one ``dask.compute`` call: one graph, shared steps computed once, and no second submission of
keys the scheduler already knows under another task spec (what one ``.compute()`` after the other
does; the scheduler warns about it, dask/dask#9888).  The task stream
proves that the cluster did the work.
"""

from __future__ import annotations

import dask
import pytest
import xarray as xr

import glacierxr as gx
from glacierxr.testing import make_scene_cube

#: Float tolerance between schedulers (the same kernels on the same blocks: usually bit-equal).
TOLERANCE = dict(rtol=1e-6, atol=1e-6)


def chain(cube: xr.Dataset, *, months: int) -> dict[str, xr.DataArray | xr.Dataset]:
    """mask → NDSI → snow mask → fill → align → composites → flow, lazily, as a user writes it."""
    masked = cube.glacier.mask(max_missing=0.6)
    snow = masked.glacier.ndsi().glacier.snow_mask().glacier.fill_gaps()
    aligned = snow.chunk({"y": -1, "x": -1}).glacier.align()
    spatial = {"y": cube.chunks["y"][0], "x": cube.chunks["x"][0]}
    composites = aligned.chunk(spatial).glacier.monthly(months=months)
    motion = composites.chunk({"y": -1, "x": -1}).glacier.flow()
    return {"masked": masked, "snow": snow, "aligned": aligned, "composites": composites, "flow": motion}


def computed_with(scheduler, build) -> dict:
    """Build the chain and compute all its outputs in one go (one graph, shared steps once).

    ``optimize_graph=False``: with fusion, an output that is also an intermediate of another
    output (``snow`` feeds ``aligned`` ...) loses its key (pydata/xarray#11329).
    """
    with dask.config.set(scheduler=scheduler):
        lazy = build()
        return dict(zip(lazy, dask.compute(*lazy.values(), optimize_graph=False), strict=True))


def assert_same(threaded: dict, distributed: dict) -> None:
    assert threaded.keys() == distributed.keys()
    for name in threaded:
        try:
            xr.testing.assert_allclose(distributed[name], threaded[name], **TOLERANCE)
        except AssertionError as error:
            raise AssertionError(f"{name!r} differs between the schedulers:\n{error}") from None
        assert distributed[name].attrs == threaded[name].attrs, name


@pytest.mark.slow  # ~4 s unloaded; 10-15 s on 2 busy cores (a cold cluster, ~1200 tasks)
def test_chain__threaded_equals_local_cluster(local_cluster):
    from distributed import get_task_stream

    def build():
        cube = make_scene_cube(
            times=7, height=32, width=28, seed=3, cloud_fraction=0.15, freq="14D",
            chunks={"time": 1, "y": 16, "x": 28},  # two blocks per scene: fill_gaps overlaps
        )
        return chain(cube, months=1)

    threaded = computed_with("threads", build)
    with get_task_stream(local_cluster) as stream:
        distributed = computed_with(local_cluster, build)
    assert len(stream.data) > 0, "the LocalCluster ran no task"
    assert threaded["composites"].sizes["time"] >= 3  # several composites, so flow has pairs
    assert threaded["flow"].sizes["time"] == threaded["composites"].sizes["time"] - 1
    assert_same(threaded, distributed)


@pytest.mark.slow
def test_chain_from_cogs__threaded_equals_local_cluster(local_cluster, sample_catalog):
    """The same through the real loader: sample COGs + STAC catalog → gx.search → gx.load."""
    from distributed import get_task_stream

    def build():
        items = gx.search(catalog=sample_catalog, datetime="2018-01-01/2019-01-01", max_cloud=100)
        cube = gx.load(items, resolution=30, chunks={"time": 1, "y": 96, "x": 96})
        return chain(cube, months=3)

    threaded = computed_with("threads", build)
    with get_task_stream(local_cluster) as stream:
        distributed = computed_with(local_cluster, build)
    assert len(stream.data) > 0, "the LocalCluster ran no task"
    assert threaded["composites"].sizes["time"] >= 3
    assert_same(threaded, distributed)
