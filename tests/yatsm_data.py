"""Loader for the real YATSM Landsat surface-reflectance series in ``../shared/data``.

447 dates (1984-04-17 to 2013-05-27, Landsat 4/5/7) of a 5 x 5 pixel stack, 8 int16 bands
(nodata -9999): SR bands 1-5 x 1e4 (band 2 green, band 5 SWIR-1), SR band 7, thermal, Fmask
(0 clear, 1 water, 2 shadow, 3 snow, 4 cloud, 255 fill). The loader turns it into a cube shaped
like :func:`glacierxr.load` output — ``green``/``swir16`` float32 reflectance with NaN nodata and a
Collection-2 style ``qa_pixel`` encoded from Fmask — with the Fmask classes kept as a
``(time, y, x)`` coordinate ``fmask`` so tests can compare against it.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from glacierxr.landsat import qa_word

FMASK_CLEAR, FMASK_WATER, FMASK_SHADOW, FMASK_SNOW, FMASK_CLOUD, FMASK_FILL = 0, 1, 2, 3, 4, 255
NODATA = -9999
PLATFORMS = {"LT4": "landsat-4", "LT5": "landsat-5", "LE7": "landsat-7"}

_CACHE: dict[Path, xr.Dataset] = {}


def fmask_to_qa_pixel(fmask: np.ndarray) -> np.ndarray:
    """Encode Fmask classes as Landsat Collection-2 QA_PIXEL bits (uint16).

    clear -> clear; water -> water + clear; shadow -> cloud_shadow; snow -> snow + clear (snow is
    a clear-sky class, as in Collection 2); cloud -> cloud (no dilation: Fmask has none); fill
    (255) and nodata (-9999) -> fill. Bit positions from :data:`glacierxr.landsat.QA_BITS`.
    """
    fmask = np.asarray(fmask)
    qa = np.zeros(fmask.shape, dtype=np.uint16)
    qa[fmask == FMASK_CLEAR] = qa_word("clear")
    qa[fmask == FMASK_WATER] = qa_word("water", "clear")
    qa[fmask == FMASK_SHADOW] = qa_word("cloud_shadow")
    qa[fmask == FMASK_SNOW] = qa_word("snow", "clear")
    qa[fmask == FMASK_CLOUD] = qa_word("cloud")
    qa[(fmask == FMASK_FILL) | (fmask == NODATA)] = qa_word("fill")
    return qa


def load_yatsm(data_dir: Path, workdir: Path) -> xr.Dataset:
    """Extract ``p035r032_testdata.tar.gz`` into ``workdir`` (once) and build the cube."""
    import rasterio
    import rioxarray  # noqa: F401  (registers .rio)

    data_dir = Path(data_dir)
    key = data_dir.resolve()
    if key in _CACHE:
        return _CACHE[key]
    root = Path(workdir) / "yatsm"
    if not (root / "p035r032").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(data_dir / "p035r032_testdata.tar.gz") as archive:
            archive.extractall(root, filter="data")
    dates = pd.read_csv(data_dir / "dates.csv", parse_dates=["date"])
    stacks = []
    transform = crs = None
    for path in dates["path"]:
        with rasterio.open(root / path) as src:
            stacks.append(src.read())
            transform, crs = src.transform, src.crs
    stack = np.stack(stacks)  # (time, band, y, x)
    nodata = stack == NODATA
    green = np.where(nodata[:, 1], np.nan, stack[:, 1] / 1e4).astype(np.float32)
    swir = np.where(nodata[:, 4], np.nan, stack[:, 4] / 1e4).astype(np.float32)
    fmask = stack[:, 7].astype(np.int16)
    height, width = fmask.shape[1:]
    x = transform.c + transform.a * (np.arange(width) + 0.5)
    y = transform.f + transform.e * (np.arange(height) + 0.5)
    cloud_cover = (fmask == FMASK_CLOUD).mean(axis=(1, 2)) * 100
    ds = xr.Dataset(
        {
            "green": (("time", "y", "x"), green, {"units": "1", "long_name": "green surface reflectance"}),
            "swir16": (("time", "y", "x"), swir, {"units": "1", "long_name": "swir16 surface reflectance"}),
            "qa_pixel": (("time", "y", "x"), fmask_to_qa_pixel(fmask)),
        },
        coords={
            "time": dates["date"].to_numpy("datetime64[ns]"),
            "y": y,
            "x": x,
            "id": ("time", dates["scene_id"].to_numpy(str)),
            "cloud_cover": ("time", cloud_cover.round(2)),
            "platform": ("time", [PLATFORMS[s] for s in dates["sensor"]]),
            "fmask": (("time", "y", "x"), fmask),
        },
        attrs={"collection": "yatsm-p035r032", "source": str(data_dir)},
    )
    ds = ds.rio.write_crs(crs.to_epsg())
    _CACHE[key] = ds
    return ds


@pytest.fixture(scope="session")
def yatsm_cube(shared_data, tmp_path_factory) -> xr.Dataset:
    """The real 447-date series as a (time, y, x) cube; skips where the data are absent."""
    directory = shared_data / "yatsm_landsat_sr"
    if not (directory / "p035r032_testdata.tar.gz").is_file():
        pytest.skip(f"YATSM test data not found in {directory}")
    return load_yatsm(directory, tmp_path_factory.getbasetemp())
