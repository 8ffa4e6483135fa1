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


def _check_product(ds: xr.Dataset, variable: str, standard_name: str | None) -> None:
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert ds.attrs["source"].startswith("glacierxr ")
    assert ds.cf.axes["X"] == ["x"] and ds.cf.axes["Y"] == ["y"] and ds.cf.axes["T"] == ["time"]
    assert ds.cf.grid_mapping_names == {"transverse_mercator": ["spatial_ref"]}
    assert ds[variable].cf.grid_mapping_name == "transverse_mercator"
    assert ds[variable].attrs["units"] == "1"
    if standard_name:
        assert ds.cf.standard_names[standard_name] == [variable]


@pytest.mark.parametrize("binary", [False, True])
def test_composites_are_cf(tmp_path, binary):
    from glacierxr import io
    from glacierxr.testing import make_scene_cube, raise_if_dask_computes

    cube = make_scene_cube(times=8, height=16, width=16, chunks={"time": 1})
    snow = cube.glacier.mask(max_missing=1.0).glacier.ndsi().glacier.snow_mask(binary=binary)
    with raise_if_dask_computes():  # the CF attributes read nothing
        comp = snow.glacier.monthly(months=1)
    assert "monthly(months=1" in comp.attrs["history"]
    assert comp.attrs["cell_methods"] == "time: mean"
    io.write(comp, tmp_path / "c.nc")
    _check_product(xr.open_dataset(tmp_path / "c.nc"), "snow_mask", "surface_snow_binary_mask" if binary else None)


def test_forecasts_are_cf(tmp_path):
    torch = pytest.importorskip("torch")
    from glacierxr import io
    from glacierxr.ml.predict import predict
    from glacierxr.testing import make_series

    class Last(torch.nn.Module):
        input_steps = 2

        def forward(self, inputs, steps, targets=None):
            return inputs[:, -1:].repeat(1, steps, 1, 1, 1)

    series = make_series(np.random.default_rng(0).random((4, 20, 20), dtype=np.float32), freq="3MS")
    series = _cf.finalize(series.assign_attrs(months=3, binary=1), "monthly(months=3)")
    forecast = predict(series, Last(), steps=2, patch=10)
    lines = forecast.attrs["history"].splitlines()
    assert len(lines) == 2 and "monthly(months=3)" in lines[0] and "predict(model=" in lines[1]
    io.write(forecast, tmp_path / "f.zarr")
    _check_product(xr.open_zarr(tmp_path / "f.zarr"), "snow_mask_forecast", "surface_snow_binary_mask")


def test_prepared_composites_store_is_cf(tmp_path):
    """What `glacierxr prepare` and the demo write: pipeline.composites_dataset through io.write."""
    from glacierxr import io, pipeline
    from glacierxr.testing import make_scene_cube

    cube = make_scene_cube(times=6, height=16, width=16)
    composites = cube.glacier.mask(max_missing=1.0).glacier.ndsi().glacier.snow_mask().glacier.monthly(months=1)
    io.write(pipeline.composites_dataset(composites), tmp_path / "composites.zarr")
    stored = xr.open_zarr(tmp_path / "composites.zarr")
    _check_product(stored, "snow_mask", None)
    assert "monthly(months=1" in stored.attrs["history"]


def test_gridded_baseline_forecasts_are_cf():
    from glacierxr.evaluate import climatology, seasonal_naive
    from glacierxr.testing import make_series

    series = make_series(np.random.default_rng(1).random((8, 6, 5), dtype=np.float32), freq="QS")
    for baseline in (seasonal_naive(series, steps=2), climatology(series)):
        ds = _cf.to_dataset(baseline)
        assert ds.attrs["Conventions"] == "CF-1.8"
        assert ds.cf.grid_mapping_names == {"transverse_mercator": ["spatial_ref"]}
        assert ds.cf.axes["X"] == ["x"] and ds.cf.axes["Y"] == ["y"]
        assert baseline.attrs["grid_mapping"] == "spatial_ref"


def test_table__is_read_from_the_package_data_file():
    """TABLE is data/cf.toml as written: every entry has UDUNITS units and a long name."""
    import tomllib
    from importlib import resources

    text = resources.files("glacierxr").joinpath("data/cf.toml").read_text(encoding="utf-8")
    assert _cf.TABLE == tomllib.loads(text)
    assert _cf.TABLE["vx"]["standard_name"] == "land_ice_surface_x_velocity"
    assert all(entry["units"] in {"1", "m/year"} and entry["long_name"] for entry in _cf.TABLE.values())


@pytest.mark.parametrize(
    "text",
    ["[v]\nunits = 'm/year'\n", "[v]\nunits = 1\nlong_name = 'speed'\n", "[v]\nunits = '1'\nlong_name = 'x'\nunit = '1'\n"],
)
def test_table__a_bad_data_file_is_refused_by_entry(text):
    with pytest.raises(GlacierXRError, match=r"cf.toml: \[v\] must hold units and long_name"):
        _cf._read_table(text, source="cf.toml")
