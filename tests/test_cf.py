"""CF-1.8 helpers (glacierxr._cf): attributes only, read back by cf-xarray after a file round trip."""

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import dask.array as da_
import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr

from glacierxr import _cf
from glacierxr.errors import GlacierXRError


def _cube(lazy: bool = True, epsg: int = 32643) -> xr.DataArray:
    data = np.arange(2 * 4 * 5, dtype="float32").reshape(2, 4, 5)
    arr = xr.DataArray(
        da_.from_array(data, chunks=(1, 4, 5)) if lazy else data,
        dims=("time", "y", "x"),
        coords={
            "time": np.array(["2020-01-01", "2020-04-01"], dtype="datetime64[ns]"),
            "y": 3_960_000.0 - 30.0 * np.arange(4),
            "x": 600_000.0 + 30.0 * np.arange(5),
        },
        name="vx",
        attrs={"source": "catalog.json"},
    )
    return arr.rio.write_crs(epsg)


def test_finalize_is_read_by_cf_xarray_after_a_netcdf_round_trip(tmp_path):
    out = _cf.finalize(_cf.describe(_cube(), "vx"), "flow(feature='green')")
    assert isinstance(out.data, da_.Array)  # attributes only: still lazy
    path = tmp_path / "v.nc"
    _cf.to_dataset(out).to_netcdf(path)
    ds = xr.open_dataset(path)
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert ds.attrs["source"].startswith("glacierxr ") and "catalog.json" in ds.attrs["source"]
    assert "flow(feature='green')" in ds.attrs["history"]
    assert ds.cf.axes == {"X": ["x"], "Y": ["y"], "T": ["time"]}
    assert ds.cf.grid_mapping_names == {"transverse_mercator": ["spatial_ref"]}
    assert ds.cf.standard_names["land_ice_surface_x_velocity"] == ["vx"]
    assert ds["vx"].cf.grid_mapping_name == "transverse_mercator"
    assert ds["vx"].attrs["units"] == "m/year"


def test_history_appends_and_long_name_is_kept():
    first = _cf.finalize(_cube().assign_attrs(long_name="mine"), "a()")
    second = _cf.finalize(_cf.describe(first, "vx"), "b()")
    assert second.attrs["long_name"] == "mine"
    lines = second.attrs["history"].splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["a()", "b()"]
    assert second.attrs["source"].count("glacierxr") == 1


def test_geographic_grid_gets_longitude_latitude():
    out = _cf.finalize(_cube(epsg=4326), "x()")
    assert out["x"].attrs["standard_name"] == "longitude"
    assert out["y"].attrs["units"] == "degrees_north"


def test_dataset_variables_get_grid_mapping_and_describe_needs_a_variable():
    ds = _cube().to_dataset().assign(count=lambda d: d["vx"].count("time"))
    ds = _cf.finalize(_cf.describe(ds, "count", variable="count"), "c()")
    assert ds["count"].attrs["grid_mapping"] == "spatial_ref"
    assert ds["count"].attrs["units"] == "1"
    with pytest.raises(GlacierXRError, match="variable="):
        _cf.describe(ds, "count")
    with pytest.raises(GlacierXRError, match="unknown CF table entry"):
        _cf.describe(_cube(), "speed_of_light")


def test_cell_method():
    assert _cf.cell_method("mean") == "time: mean"
    assert _cf.cell_method("max") == "time: maximum"
    assert _cf.cell_method("mystery") is None
