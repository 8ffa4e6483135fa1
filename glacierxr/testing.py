"""Small factories and helpers used by the tests, the doctests and the benchmarks.

Nothing here touches the network or the disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dask
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from glacierxr._synthetic import PLAIN_QA, blank

__all__ = ["make_scene_cube", "make_series", "smooth_texture", "changing_ground", "count_computes",
           "raise_if_dask_computes"]


class _CountingScheduler:
    """A dask scheduler that counts how often it is asked to compute (xarray's test pattern)."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many computes. Total: {self.total_computes} > max: {self.max_computes}."
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[_CountingScheduler]:
    """Fail if Dask computes more than ``max_computes`` times inside the block.

    Examples
    --------
    >>> import dask.array as da
    >>> with raise_if_dask_computes():
    ...     y = da.ones(4) + 1          # building a graph is fine
    """
    scheduler = _CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler


@contextlib.contextmanager
def count_computes() -> Iterator[_CountingScheduler]:
    """Count Dask computes inside the block without failing."""
    scheduler = _CountingScheduler(max_computes=10**9)
    with dask.config.set(scheduler=scheduler):
        yield scheduler


def make_scene_cube(
    *,
    times: int = 6,
    height: int = 32,
    width: int = 32,
    seed: int = 0,
    chunks: dict | None = None,
    epsg: int = 32643,
    resolution: float = 30.0,
    cloud_fraction: float = 0.1,
    start: str = "2020-01-01",
    freq: str = "16D",
) -> xr.Dataset:
    """A small cube shaped like :func:`glacierxr.load` output, with random snow and clouds.

    Parameters
    ----------
    times, height, width
        Shape of the cube ``(time, y, x)``.
    seed
        Seed of the random generator.
    chunks
        If given, the cube is Dask-backed with these chunks (for example ``{"time": 1}``).
    epsg, resolution
        CRS and pixel size of the grid (written as a ``spatial_ref`` coordinate).
    cloud_fraction
        Expected fraction of cloud-flagged pixels per scene.

    Returns
    -------
    xarray.Dataset
        ``green`` and ``swir16`` (float32 reflectance, NaN at fill), ``qa_pixel`` (uint16, the
        single-bit words of ``glacierxr._synthetic.PLAIN_QA``), with per-scene coordinates
        ``id``, ``cloud_cover`` and ``platform``.

    Examples
    --------
    >>> cube = make_scene_cube(times=3, height=8, width=8)
    >>> sorted(cube.data_vars)
    ['green', 'qa_pixel', 'swir16']
    """
    rng = np.random.default_rng(seed)
    shape = (times, height, width)
    snow = rng.random(shape) < 0.4
    cloud = rng.random(shape) < cloud_fraction
    shadow = (~cloud) & (rng.random(shape) < cloud_fraction / 4)
    fill = np.zeros(shape, bool)
    fill[:, :, :1] = True  # a nodata edge
    green = np.where(snow, rng.uniform(0.5, 0.9, shape), rng.uniform(0.05, 0.2, shape))
    swir = np.where(snow, rng.uniform(0.01, 0.1, shape), rng.uniform(0.1, 0.3, shape))
    green = np.where(cloud, rng.uniform(0.5, 0.8, shape), green)
    swir = np.where(cloud, rng.uniform(0.3, 0.5, shape), swir)
    green, swir = blank(fill, green, swir)
    qa = PLAIN_QA.encode(shape, snow=snow & ~cloud, cloud_shadow=shadow, cloud=cloud, fill=fill)

    time = pd.date_range(start, periods=times, freq=freq)
    x = 500_000.0 + resolution * (np.arange(width) + 0.5)
    y = 3_550_000.0 - resolution * (np.arange(height) + 0.5)
    ds = xr.Dataset(
        {
            "green": (("time", "y", "x"), green.astype(np.float32)),
            "swir16": (("time", "y", "x"), swir.astype(np.float32)),
            "qa_pixel": (("time", "y", "x"), qa),
        },
        coords={
            "time": time,
            "y": y,
            "x": x,
            "id": ("time", [f"LC09_SYN_{i:03d}" for i in range(times)]),
            "cloud_cover": ("time", (cloud.mean(axis=(1, 2)) * 100).round(2)),
            "platform": ("time", ["landsat-9" if i % 2 else "landsat-8" for i in range(times)]),
        },
        attrs={"collection": "landsat-c2-l2", "source": "glacierxr.testing.make_scene_cube"},
    )
    for name in ("green", "swir16"):
        ds[name].attrs.update(units="1", long_name=f"{name} surface reflectance")
    ds = ds.rio.write_crs(epsg)
    if chunks is not None:
        for name in ds.data_vars:
            ds[name] = ds[name].chunk(chunks)
    return ds


def make_series(
    values: np.ndarray,
    *,
    start: str = "2020-01-01",
    freq: str = "16D",
    resolution: float = 30.0,
    epsg: int = 32643,
    name: str = "snow_mask",
    chunks: dict | None = None,
) -> xr.DataArray:
    """Wrap a ``(time, y, x)`` numpy array as a georeferenced DataArray.

    Examples
    --------
    >>> make_series(np.zeros((2, 3, 4))).dims
    ('time', 'y', 'x')
    """
    values = np.asarray(values)
    times, height, width = values.shape
    da = xr.DataArray(
        values,
        dims=("time", "y", "x"),
        coords={
            "time": pd.date_range(start, periods=times, freq=freq),
            "y": 3_550_000.0 - resolution * (np.arange(height) + 0.5),
            "x": 500_000.0 + resolution * (np.arange(width) + 0.5),
        },
        name=name,
        attrs={"units": "1", "long_name": name.replace("_", " ")},
    )
    da = da.rio.write_crs(epsg)
    if chunks is not None:
        da = da.chunk(chunks)
    return da


def smooth_texture(seed: int, size: int = 96, wavelength: float = 6.0) -> np.ndarray:
    """A periodic, band-limited random ``(size, size)`` texture with std 1.

    Smooth enough for sub-pixel registration and tracking (features of about ``wavelength``
    pixels), and periodic, so :func:`numpy.fft` shifts of it are exact.

    Examples
    --------
    >>> texture = smooth_texture(0, 32)
    >>> texture.shape, round(float(texture.std()), 6)
    ((32, 32), 1.0)
    """
    rng = np.random.default_rng(seed)
    k = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    spectrum = np.exp(-((k * wavelength) ** 2)) * (k > 0)
    texture = np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * spectrum).real
    return texture / texture.std()


def changing_ground(
    stable_columns: int, *, times: int = 5, height: int = 48, width: int = 64, seed: int = 0
) -> xr.DataArray:
    """Scenes of noise texture whose first ``stable_columns`` columns are the same in all.

    Those columns are rock seen again and again; every other pixel is new texture in each
    scene (ground that changes), the case :mod:`glacierxr.stable` tells apart.

    Examples
    --------
    >>> scenes = changing_ground(2, times=3, height=4, width=6)
    >>> scenes.dims, bool((scenes[:, :, :2] == scenes[0, :, :2]).all())
    (('time', 'y', 'x'), True)
    >>> bool((scenes[1, :, 2:] == scenes[0, :, 2:]).any())
    False
    """
    rng = np.random.default_rng(seed)
    rock = rng.standard_normal((height, width))
    scenes = rng.standard_normal((times, height, width))
    scenes[:, :, :stable_columns] = rock[:, :stable_columns]
    return make_series(scenes.astype(np.float32))
