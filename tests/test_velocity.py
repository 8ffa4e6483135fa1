"""Velocity cubes: ITS_LIVE-style pair selection, one lazy Dask task per pair, robust composites."""

from __future__ import annotations

import threading

import cf_xarray  # noqa: F401  (registers .cf)
import dask
import dask.array
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
import xarray as xr

import glacierxr.velocity as velocity_module
from glacierxr.errors import ConfigError, DataTypeError, DimensionError, GridError, NoPairsError
from glacierxr.testing import make_series, raise_if_dask_computes
from glacierxr.velocity import composite, select_pairs, velocity_cube

SIZE = 96
PIXEL = 30.0
#: True content displacement per 16 days in pixels: east (columns) and north (up the rows).
EAST, NORTH = 1.5, 0.75


def _texture(seed: int = 0) -> np.ndarray:
    return ndi.gaussian_filter(np.random.default_rng(seed).standard_normal((SIZE, SIZE)), 2.0).astype(np.float32)


#: The moving "glacier": rows GLACIER[0] to GLACIER[1]; the rest of the scene is stable ground.
GLACIER = (24, 72)


def _moving_frames(count: int) -> np.ndarray:
    """``count`` scenes 16 days apart: a band of texture moving EAST, NORTH px per scene (exact
    shifts), between stable ground that does not move."""
    texture, ground = _texture(0), _texture(1)
    band = np.zeros((SIZE, SIZE), bool)
    band[GLACIER[0]:GLACIER[1]] = True
    moved = [ndi.shift(texture, (-NORTH * k, EAST * k), order=3, mode="wrap") for k in range(count)]
    return np.stack([np.where(band, m, ground) for m in moved]).astype(np.float32)


def _stable(scenes: xr.DataArray) -> xr.DataArray:
    """Stable ground: off the moving band, with a margin of 8 px."""
    rows = np.arange(SIZE)[:, None] * np.ones((1, SIZE))
    stable = (rows < GLACIER[0] - 8) | (rows >= GLACIER[1] + 8)
    return xr.DataArray(stable, dims=("y", "x"), coords={"y": scenes.y, "x": scenes.x})


def _scenes(values: np.ndarray, **kwargs) -> xr.DataArray:
    da = make_series(values, name="green", freq="16D", **kwargs)
    n = values.shape[0]
    return da.assign_coords(
        platform=("time", np.array(["landsat-8", "landsat-9"] * n, dtype=object)[:n]),
        id=("time", np.array([f"scene-{k}" for k in range(n)], dtype=object)),
    )


# ------------------------------------------------------------------------------------------
# select_pairs
# ------------------------------------------------------------------------------------------
def _cloudy_series() -> xr.DataArray:
    """6 scenes 16 days apart; scene 2 is 60 % cloud (on the west), scene 4 cloudy only off the ice."""
    values = np.ones((6, 10, 10), np.float32)
    values[2, :, :6] = np.nan  # 60 % of scene 2, over the ice too
    values[4, :, 7:] = np.nan  # 30 % of scene 4, all off the ice (columns 0-4)
    return _scenes(values)


def test_select_pairs__days_clear_fraction_and_table():
    scenes = _cloudy_series()
    lazy = scenes.copy(data=dask.array.from_array(scenes.values, chunks=(1, 10, 10)))
    with raise_if_dask_computes(max_computes=1):  # one compute of the clear fractions
        table = select_pairs(lazy, min_days=16, max_days=32, min_clear=0.5)
    pairs = list(zip(table["index_img1"], table["index_img2"]))
    # scene 2 is only 40 % clear; every other pair 16 or 32 days apart is kept
    assert pairs == [(0, 1), (1, 3), (3, 4), (3, 5), (4, 5)]
    assert table["date_dt"].tolist() == [16.0, 32.0, 16.0, 32.0, 16.0]
    assert (table["mid_date"] == table["time_start"] + (table["time_end"] - table["time_start"]) / 2).all()
    assert table["clear_img2"].tolist() == pytest.approx([1.0, 1.0, 0.7, 1.0, 1.0])
    assert table.loc[0, "satellite_img1"] == "landsat-8" and table.loc[0, "satellite_img2"] == "landsat-9"
    assert table.loc[1, "scene_id_img2"] == "scene-3"
    assert table["mid_date"].is_monotonic_increasing


def test_select_pairs__ice_mask_counts_only_the_ice():
    scenes = _cloudy_series()
    ice = xr.DataArray(np.zeros((10, 10), bool), dims=("y", "x"), coords={"y": scenes.y, "x": scenes.x})
    ice[:, :5] = True
    strict = select_pairs(scenes, min_days=16, max_days=16, min_clear=0.8)
    over_ice = select_pairs(scenes, min_days=16, max_days=16, min_clear=0.8, ice=ice)
    strict_pairs = set(zip(strict["index_img1"], strict["index_img2"]))
    ice_pairs = set(zip(over_ice["index_img1"], over_ice["index_img2"]))
    assert (3, 4) not in strict_pairs and (3, 4) in ice_pairs  # scene 4's cloud is off the ice
    assert (1, 2) not in ice_pairs  # scene 2 is cloudy over the ice
    assert over_ice.loc[over_ice["index_img2"] == 4, "clear_img2"].item() == 1.0


def test_select_pairs__uses_missing_fraction_without_reading_pixels():
    scenes = _cloudy_series()
    flagged = scenes.chunk({"time": 1}).assign_coords(
        missing_fraction=("time", [0.0, 0.0, 0.9, 0.0, 0.0, 0.0]))
    with raise_if_dask_computes():
        table = select_pairs(flagged, min_days=16, max_days=16, min_clear=0.5)
    assert 2 not in set(table["index_img1"]) | set(table["index_img2"])
    assert 4 in set(table["index_img2"])  # its real 30 % cloud is not looked at


def test_select_pairs__months_keep_late_summer_pairs():
    scenes = make_series(np.ones((24, 4, 4)), start="2020-01-01", freq="16D")
    table = select_pairs(scenes, max_days=40, months=(7, 8, 9))
    months = pd.DatetimeIndex(table["time_start"]).month.union(pd.DatetimeIndex(table["time_end"]).month)
    assert set(months) <= {7, 8, 9} and len(table) > 0


def test_select_pairs__no_pair_says_what_was_found():
    scenes = _cloudy_series()
    with pytest.raises(NoPairsError, match=r"6 scenes, consecutive separations 16-16 days.*max_days=20"):
        select_pairs(scenes, min_days=5, max_days=10)
    with pytest.raises(NoPairsError, match="clear fractions 0.40-1.00"):
        select_pairs(scenes, min_clear=1.0, months=(2, 3), max_days=16)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"min_days": -1}, ConfigError),
        ({"min_days": 30, "max_days": 10}, ConfigError),
        ({"min_clear": 1.5}, ConfigError),
        ({"months": (0, 13)}, ConfigError),
    ],
)
def test_select_pairs__bad_rules(kwargs, error):
    with pytest.raises(error):
        select_pairs(_cloudy_series(), **kwargs)


def test_select_pairs__bad_input():
    scenes = _cloudy_series()
    with pytest.raises(DimensionError, match="lacks"):
        select_pairs(scenes.isel(time=0))
    with pytest.raises(DimensionError, match="strictly increasing"):
        select_pairs(scenes.isel(time=[1, 0, 2]))
    with pytest.raises(GridError):
        select_pairs(scenes, ice=xr.DataArray(np.ones((3, 3), bool), dims=("y", "x")))
    with pytest.raises(DataTypeError):
        select_pairs(np.ones((3, 4, 4)))


# ------------------------------------------------------------------------------------------
# velocity_cube
# ------------------------------------------------------------------------------------------
def _counted_frames(values: np.ndarray, reads: list) -> dask.array.Array:
    """A Dask array whose every frame read is recorded in ``reads``."""
    def read(k):
        reads.append(k)
        return values[k]

    parts = [dask.array.from_delayed(dask.delayed(read)(k), values.shape[1:], dtype=values.dtype)
             for k in range(values.shape[0])]
    return dask.array.stack(parts)


def test_velocity_cube__lazy_one_task_per_pair_each_scene_read_once(monkeypatch):
    values = _moving_frames(4)
    reads: list = []
    scenes = _scenes(values).copy(data=_counted_frames(values, reads))
    pairs = [(0, 1), (1, 2), (0, 2), (2, 3), (1, 3)]
    with raise_if_dask_computes():
        cube = velocity_cube(scenes, pairs)
    assert reads == []  # building the cube read no pixel
    graph = dict(cube.__dask_graph__())
    names = [key[0] if isinstance(key, tuple) else key for key in graph]
    assert sum(str(name).startswith("velocity-pair-") for name in names) == len(pairs)

    calls = []
    lock = threading.Lock()
    real_flow = velocity_module.flow

    def counting_flow(*args, **kwargs):
        with lock:
            calls.append(1)
        return real_flow(*args, **kwargs)

    monkeypatch.setattr(velocity_module, "flow", counting_flow)
    computed = cube.compute()
    assert len(calls) == len(pairs)  # every variable of a pair from one flow run
    assert sorted(reads) == [0, 1, 2, 3]  # each scene read once, though shared by pairs
    assert computed.sizes["mid_date"] == len(pairs)


def test_velocity_cube__pairs_coords_and_velocities_against_the_true_shift():
    scenes = _scenes(_moving_frames(3))
    table = select_pairs(scenes, min_days=10, max_days=40)
    cube = velocity_cube(scenes, table, stable=_stable(scenes)).compute()
    assert cube["date_dt"].values.tolist() == [16.0, 32.0, 16.0]
    np.testing.assert_array_equal(cube["time_start"].values, scenes["time"].values[[0, 0, 1]])
    assert cube["satellite_img1"].values.tolist() == ["landsat-8", "landsat-8", "landsat-9"]
    assert cube["scene_id_img2"].values.tolist() == ["scene-1", "scene-2", "scene-2"]
    # inside the band, away from its edges and from the wrapped scene edges
    inner = dict(y=(cube.y < scenes.y[GLACIER[0] + 10]) & (cube.y > scenes.y[GLACIER[1] - 10]),
                 x=(cube.x > scenes.x[10]) & (cube.x < scenes.x[-10]))
    true_vx = EAST * PIXEL * 365.25 / 16.0  # m/yr, the same for 16- and 32-day pairs
    true_vy = NORTH * PIXEL * 365.25 / 16.0
    tolerance = 0.1 * PIXEL * 365.25 / 16.0  # 0.1 px of a 16-day pair
    vx = cube["vx"].sel(inner).median(("y", "x")).values
    vy = cube["vy"].sel(inner).median(("y", "x")).values
    np.testing.assert_allclose(vx, true_vx, atol=tolerance)
    np.testing.assert_allclose(vy, true_vy, atol=tolerance)


def test_velocity_cube__cf_conventions_found_by_cf_xarray():
    cube = velocity_cube(_scenes(_moving_frames(3)), [(0, 1), (1, 2)])
    assert cube.attrs["Conventions"] == "CF-1.8"
    axes = cube.cf.axes
    assert axes["X"] == ["x"] and axes["Y"] == ["y"] and axes["T"] == ["mid_date"]
    assert cube.cf.grid_mapping_names == {"transverse_mercator": ["spatial_ref"]}
    names = cube.cf.standard_names
    assert names["land_ice_surface_x_velocity"] == ["vx"]
    assert names["land_ice_surface_y_velocity"] == ["vy"]
    assert cube.cf["land_ice_surface_x_velocity"].attrs["grid_mapping"] == "spatial_ref"
    assert cube["vx"].attrs["units"] in ("m/year", "m/yr")
    assert cube["date_dt"].attrs["units"] == "day"


def test_velocity_cube__default_pairs_and_errors():
    scenes = _scenes(_moving_frames(3)).assign_coords(missing_fraction=("time", [0.0, 0.9, 0.0]))
    cube = velocity_cube(scenes)  # scene 1 is 90 % missing: only (0, 2) is left
    assert cube.sizes["mid_date"] == 1 and cube["date_dt"].item() == 32.0
    with pytest.raises(NoPairsError):
        velocity_cube(scenes.isel(time=[0, 1]))
    with pytest.raises(ConfigError, match="positions"):
        velocity_cube(scenes, [(1, 0)])
    with pytest.raises(ConfigError, match="not a time"):
        velocity_cube(scenes, pd.DataFrame({"time_start": ["2019-01-01"], "time_end": ["2020-01-17"]}))
    with pytest.raises(DataTypeError):
        velocity_cube(scenes, 3)


# ------------------------------------------------------------------------------------------
# composite
# ------------------------------------------------------------------------------------------
def _tiny_cube() -> xr.Dataset:
    rng = np.random.default_rng(3)
    vx = rng.normal(100.0, 20.0, (7, 2, 3))
    vy = rng.normal(-50.0, 20.0, (7, 2, 3))
    vx[1, 0, 0] = np.nan  # one pair missing at one pixel
    vy[4, 1, 2] = np.nan
    vx[:, 1, 1] = np.nan  # a pixel never measured
    mid = pd.to_datetime(["2019-03-01", "2019-07-01", "2019-08-01", "2019-11-30", "2020-02-01",
                          "2020-06-01", "2020-09-01"])
    cube = xr.Dataset(
        {"vx": (("mid_date", "y", "x"), vx), "vy": (("mid_date", "y", "x"), vy)},
        coords={"mid_date": mid, "y": [15.0, -15.0], "x": [15.0, 45.0, 75.0]},
    )
    return cube.chunk({"mid_date": 1})


def _by_hand(vx: np.ndarray, vy: np.ndarray) -> dict[str, np.ndarray]:
    ok = np.isfinite(vx) & np.isfinite(vy)
    out = {k: np.full(vx.shape[1:], np.nan) for k in ("vx", "vy", "vx_spread", "vy_spread")}
    out["count"] = ok.sum(0)
    for r in range(vx.shape[1]):
        for c in range(vx.shape[2]):
            use = ok[:, r, c]
            if not use.any():
                continue
            for name, values in (("vx", vx[use, r, c]), ("vy", vy[use, r, c])):
                centre = np.median(values)
                out[name][r, c] = centre
                if use.sum() >= 2:  # no spread from one pair
                    out[f"{name}_spread"][r, c] = 1.4826 * np.median(np.abs(values - centre))
    out["v"] = np.hypot(out["vx"], out["vy"])
    return out


def test_composite__yearly_medians_count_and_spread_by_hand():
    cube = _tiny_cube()
    with raise_if_dask_computes():
        result = composite(cube, "YS")
    assert result["time"].values.tolist() == list(pd.to_datetime(["2019-01-01", "2020-01-01"]).values.astype(int))
    assert result["pairs"].values.tolist() == [4, 3]
    assert result["period_end"].values[0] == np.datetime64("2020-01-01")
    vx, vy = cube["vx"].values, cube["vy"].values
    for k, members in enumerate((slice(0, 4), slice(4, 7))):
        expected = _by_hand(vx[members], vy[members])
        for name, values in expected.items():
            np.testing.assert_allclose(result[name].isel(time=k).values, values, rtol=1e-5, equal_nan=True,
                                       err_msg=name)


def test_composite__speed_of_the_medians_not_the_median_speed():
    # pure noise around zero: every pair's speed is large, the median velocity is small
    vx = np.array([10.0, -10.0, 0.5, 10.0, -10.0])[:, None, None]
    vy = np.array([10.0, 10.0, 0.0, -10.0, -10.0])[:, None, None]
    cube = xr.Dataset({"vx": (("mid_date", "y", "x"), vx), "vy": (("mid_date", "y", "x"), vy)},
                      coords={"mid_date": pd.date_range("2020-01-01", periods=5, freq="16D")})
    result = composite(cube)
    assert result["v"].item() == pytest.approx(0.5)
    assert float(np.median(np.hypot(vx, vy))) > 14  # what the median of speed would say
    assert result["vx"].attrs["standard_name"] == "land_ice_surface_x_velocity"
    assert result["vx"].attrs["cell_methods"] == "mid_date: median"


def test_composite__min_count_interpolated_and_errors():
    cube = _tiny_cube().compute()
    flagged = cube.assign(interpolated=xr.zeros_like(cube["vx"], dtype=bool))
    flagged["interpolated"][0, 0, 0] = True
    result = composite(flagged, min_count=6)
    assert int(result["count"][0, 0]) == 5  # pair 1 missing, pair 0 interpolated
    assert np.isnan(result["vx"][0, 0]) and np.isfinite(result["vx"][0, 1])
    with pytest.raises(ConfigError, match="offset alias"):
        composite(cube, "fortnight")
    with pytest.raises(ConfigError):
        composite(cube, min_count=0)
    with pytest.raises(Exception, match="vx, vy"):
        composite(cube.drop_vars("vy"))


# ------------------------------------------------------------------------------------------
# figure
# ------------------------------------------------------------------------------------------
def test_velocity_figure__three_panels_for_a_pair_and_a_composite():
    from glacierxr.errors import MissingBandError
    from glacierxr.report import velocity_figure

    scenes = _scenes(_moving_frames(3))
    cube = velocity_cube(scenes, [(0, 1), (1, 2)], stable=_stable(scenes)).compute()
    fig = velocity_figure(cube.isel(mid_date=0), background=scenes.isel(time=1), title="one pair")
    titles = [ax.get_title() for ax in fig.axes]
    assert "speed v" in titles and "speed error v_error" in titles
    fig = velocity_figure(composite(cube))
    assert any("spread" in ax.get_title() for ax in fig.axes)
    with pytest.raises(DimensionError, match="one pair"):
        velocity_figure(cube)
    with pytest.raises(MissingBandError):
        velocity_figure(cube.isel(mid_date=0).drop_vars("v_error"))


# ------------------------------------------------------------------------------------------
# the `glacierxr velocity` command on the embedded sample
# ------------------------------------------------------------------------------------------
#: The valley glacier (about 1 px per 16 days) in the scenes of one late summer, 256 x 256 px at 30 m.
VELOCITY_SAMPLE = dict(width=256, height=256, start="2018-07-10", end="2018-09-25")
VELOCITY_PERIOD = "2018-07-10/2018-09-25"


@pytest.fixture(scope="module")
def velocity_sample(tmp_path_factory):
    import glacierxr as gx

    root = tmp_path_factory.mktemp("velocity")
    catalog = gx.sample.write_catalog(root / "sample", seed=0, **VELOCITY_SAMPLE)
    return root, catalog, gx.sample.open_truth(catalog)


def _bare_ice(truth: xr.Dataset, like: xr.Dataset) -> np.ndarray:
    """Glacier points below the lowest snow line of the period (150 m margin), on ``like``'s grid."""
    on_grid = truth[["glacier", "elevation"]].sel(x=like.x, y=like.y, method="nearest")
    low = float(truth["snow_line"].min()) - 150.0
    return np.asarray(on_grid["glacier"].values, bool) & (on_grid["elevation"].values < low)


def test_cli_velocity__catalog_to_zarr_against_the_truth(velocity_sample, capsys):
    from glacierxr.cli import main

    root, catalog, truth = velocity_sample
    out = root / "velocity.zarr"
    config = root / "velocity.toml"  # a [velocity] table; the command line overrides max_days
    config.write_text(f'[data]\ndatetime = "{VELOCITY_PERIOD}"\n\n'
                      '[velocity]\nmax_days = 20.0\nmonths = [7, 8, 9]\ncomposite = "YS"\n')
    args = ["velocity", "--config", str(config), "--catalog", str(catalog), "--max-days", "48", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-2].endswith("velocity.zarr")
    assert printed[-1].startswith(str(root / "velocity-composite.zarr")) and "YS" in printed[-1]
    cube = xr.open_zarr(out, decode_coords="all")
    for name in ("vx", "vy", "v", "v_error", "vx_error", "vy_error", "stable_shift_flag"):
        assert name in cube, name
    assert cube.attrs["Conventions"] == "CF-1.8" and "[velocity]" in cube.attrs["glacierxr_config"]
    assert cube.cf.axes["T"] == ["mid_date"] and cube.cf.standard_names["land_ice_surface_y_velocity"] == ["vy"]
    assert 20 < float(cube["date_dt"].max()) <= 48 and cube.attrs["source_variable"] == "green"
    assert 'months = [7, 8, 9]' in cube.attrs["glacierxr_config"]

    merged = composite(cube.compute())  # the written composite is the same computation
    written = xr.open_zarr(root / "velocity-composite.zarr").isel(time=0)
    np.testing.assert_allclose(written["vx"].values, merged["vx"].values, rtol=1e-6, equal_nan=True)
    # against the exact truth, on bare ice (below every scene's snow line): the composite is off by
    # at most what the issue allows one pair (0.2 px median end-point error) at the shortest
    # separation of the cube, i.e. the largest velocity error that bound admits
    bare = _bare_ice(truth, merged)
    true = truth[["u", "v", "speed"]].sel(x=merged.x, y=merged.y, method="nearest")
    error = np.hypot(merged["vx"].values - true["u"].values, merged["vy"].values - true["v"].values)
    bound = 0.2 * truth.attrs["resolution"] * 365.25 / float(cube["date_dt"].min())  # m/yr
    with capsys.disabled():  # the figures, with pytest -s
        print(f"velocity CLI on the sample: {cube.sizes['mid_date']} pairs, composite median error on "
              f"{bare.sum()} bare-ice points {np.nanmedian(error[bare]):.0f} m/yr (bound {bound:.0f}), "
              f"true speed {np.median(true['speed'].values[bare]):.0f} m/yr")
    assert bare.sum() >= 100 and np.isfinite(error[bare]).mean() > 0.9
    assert np.nanmedian(error[bare]) <= bound, (np.nanmedian(error[bare]), bound)
    assert np.nanmedian(error[bare]) <= 0.2 * np.median(true["speed"].values[bare])
    assert main(args) == 2  # no --overwrite: refused, the output is kept
    assert "--overwrite" in capsys.readouterr().err and out.exists()


def test_cli_velocity__prepared_cube_to_netcdf(velocity_sample, capsys):
    import glacierxr as gx
    from glacierxr.cli import main

    root, catalog, _ = velocity_sample
    items = gx.search(catalog=str(catalog), datetime=VELOCITY_PERIOD)
    scenes = gx.load(items, bands=("green", "qa_pixel"))
    prepared = gx.io.write(scenes, root / "scenes.zarr", overwrite=True)
    out = root / "velocity.nc"
    assert main(["velocity", "--data", str(prepared), "--max-days", "48", "--min-clear", "0.55",
                 "--out", str(out)]) == 0
    cube = xr.open_dataset(out, decode_coords="all")
    assert {"vx", "vy", "v", "v_error"} <= set(cube.data_vars)
    assert cube["vx"].encoding["grid_mapping"] == "spatial_ref"  # decoded by xarray
    assert (cube["clear_img1"] >= 0.55).all() and cube.rio.crs.to_epsg() == 32643
    middle = cube["time_start"] + (cube["time_end"] - cube["time_start"]) / 2  # read back exactly
    np.testing.assert_array_equal(cube["mid_date"].values, middle.values)
    assert main(["velocity", "--data", str(prepared), "--max-days", "8", "--out", str(root / "x.nc")]) == 2
    assert "--max-days 16" in capsys.readouterr().err  # the library's advice in the command's words
    assert main(["velocity", "--data", str(prepared), "--band", "pan", "--out", str(root / "x.nc")]) == 2
    assert "no band 'pan'" in capsys.readouterr().err
    # a panchromatic band, where the scenes have one, is tracked by default
    with_pan = gx.io.write(scenes.rename(green="pan"), root / "pan.zarr", overwrite=True)
    assert main(["velocity", "--data", str(with_pan), "--max-days", "48", "--out", str(root / "pan.nc")]) == 0
    assert xr.open_dataset(root / "pan.nc").attrs["source_variable"] == "pan"


def test_accessor_and_top_level_names():
    import glacierxr as gx

    scenes = _scenes(_moving_frames(3))
    pd.testing.assert_frame_equal(scenes.glacier.select_pairs(max_days=20), gx.select_pairs(scenes, max_days=20))
    cube = scenes.glacier.velocity_cube([(0, 2)], stable=_stable(scenes))
    assert cube.sizes["mid_date"] == 1 and cube["date_dt"].item() == 32.0
    assert gx.velocity_cube is velocity_cube and gx.velocity.composite is composite


def test_velocity_cube__on_loaded_cogs_builds_without_reading(velocity_sample):
    import glacierxr as gx

    _, catalog, _ = velocity_sample
    scenes = gx.load(gx.search(catalog=str(catalog), datetime=VELOCITY_PERIOD), bands=("green",))
    with raise_if_dask_computes():  # stackstac reads COGs only in a compute
        cube = velocity_cube(scenes["green"], [(0, 1), (1, 2)])
    assert cube.sizes["mid_date"] == 2 and dask.is_dask_collection(cube["vx"].data)


def test_velocity_cube__same_result_on_a_distributed_cluster(local_cluster):
    scenes = _scenes(_moving_frames(3)).chunk({"time": 1})
    cube = velocity_cube(scenes, [(0, 1), (0, 2)], stable=_stable(scenes).chunk())
    here = cube.compute()
    there = local_cluster.compute(cube).result()
    xr.testing.assert_identical(here, there)


def test_velocity_cube__keeps_the_clear_fractions_of_the_given_table():
    # e.g. fractions over the ice from select_pairs(ice=...); the rest is filled in from the scenes
    scenes = _scenes(_moving_frames(3))
    given = pd.DataFrame({"index_img1": [1, 0], "index_img2": [2, 2], "clear_img1": [0.9, 0.8],
                          "clear_img2": [0.7, 0.7]})
    cube = velocity_cube(scenes, given, stable=_stable(scenes))
    assert cube["clear_img1"].values.tolist() == [0.8, 0.9]  # sorted by mid_date
    assert cube["date_dt"].values.tolist() == [32.0, 16.0]
    assert cube["scene_id_img1"].values.tolist() == ["scene-0", "scene-1"]


def test_pipeline_velocity_stage__one_small_compute_before_the_write(velocity_sample):
    """Catalog → scenes → pairs → cube: only the QA mask's per-scene missing fractions are computed."""
    from glacierxr import pipeline
    from glacierxr.config import RunConfig
    from glacierxr.testing import count_computes

    _, catalog, _ = velocity_sample
    config = RunConfig.from_dict({"data": {"catalog": str(catalog), "datetime": VELOCITY_PERIOD}})
    with count_computes() as counter:
        scenes = pipeline.velocity_scenes(config)
        pairs = select_pairs(scenes, max_days=48)  # from the in-memory missing fractions
        cube = velocity_cube(scenes, pairs)
    assert counter.total_computes == 1
    assert scenes.name == "green" and dask.is_dask_collection(cube["vx"].data)


def test_composite__errors_match_the_scatter_of_medians_over_independent_draws():
    """v_error against a Monte Carlo written here: many pixels, each the median of 15 noisy pairs."""
    from glacierxr.velocity import composite

    rng = np.random.default_rng(3)
    n, sigma, shape = 15, 12.0, (60, 60)
    mid = pd.date_range("2020-06-01", periods=n, freq="7D")
    vx = 300.0 + sigma * rng.standard_normal((n, *shape))
    vy = -400.0 + sigma * rng.standard_normal((n, *shape))
    cube = xr.Dataset({"vx": (("mid_date", "y", "x"), vx), "vy": (("mid_date", "y", "x"), vy)},
                      coords={"mid_date": mid})
    out = composite(cube)
    scatter_x = float(out["vx"].std())  # how far each pixel's median is from the truth, across pixels
    scatter_v = float(out["v"].std())
    assert float(out["vx_error"].mean()) == pytest.approx(scatter_x, rel=0.15)
    assert float(out["v_error"].mean()) == pytest.approx(scatter_v, rel=0.15)
    assert out["v_error"].attrs["units"] == "m/year"
    single = composite(cube.isel(mid_date=[0]))
    assert np.isnan(single["v_error"]).all()  # one pair: no spread, no error
