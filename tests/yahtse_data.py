"""The real Yahtse Glacier Landsat-8 panchromatic pair of ``../shared/data/yahtse_l8_pan``.

A plain module (not a test module), so the tests' fixture (``conftest.yahtse_pan``) and the
benchmarks (``benchmarks/coreg.py``, ``benchmarks/velocity.py``) read the scenes the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

#: Acquisition date -> file name of the two scenes (same path/row 63/18, 16 days apart).
SCENES = {
    "2016-07-18": "LC80630182016200LGN00_B8_yahtse.TIF",
    "2016-08-03": "LC80630182016216LGN00_B8_yahtse.TIF",
}


def read_yahtse(shared_data: Path) -> xr.DataArray:
    """The two scenes as a ``(time, y, x)`` float32 DN cube with their real dates."""
    import rioxarray

    folder = Path(shared_data) / "yahtse_l8_pan"
    arrays = [rioxarray.open_rasterio(folder / name).squeeze("band", drop=True) for name in SCENES.values()]
    cube = xr.concat(arrays, dim=pd.Index(pd.to_datetime(list(SCENES)), name="time"))
    cube = cube.astype(np.float32)
    cube.name = "pan"
    cube.attrs = {"units": "DN", "long_name": "Landsat-8 OLI band 8 (pan) DN"}
    return cube
