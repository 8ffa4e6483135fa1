"""Tests of glacierxr.flow: known displacement fields (slow, fast, > 30 px), units and signs,
stable-surface shift and its flags, calibrated errors, CF metadata, laziness, bad input, the
real Yahtse Glacier pair against a plain OpenCV reference, and the embedded sample's truth."""

from __future__ import annotations


import dask
import dask.array
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import ndimage

import glacierxr as gx
from glacierxr.errors import ChunkingError, ConfigError, DataTypeError, DimensionError, GridError
from glacierxr.flow import EmptyPairWarning, flow
from glacierxr import testing
from glacierxr.testing import make_series, raise_if_dask_computes
from references import end_point_error, neighbour_consistent, on_grid, reference_ncc, sample_errors

SIZE = 128
RESOLUTION = 30.0
PER_YEAR = 365.25 / 16.0


def smooth_texture(seed: int, size: int = SIZE, wavelength: float = 5.0) -> np.ndarray:
    return testing.smooth_texture(seed, size, wavelength)  # this file's defaults


def glacier_field(
    size: int = SIZE, peak: float = 3.0, width: float = 40.0, power: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 'glacier' displacement (pixels): a diagonal band flowing down-right, zero outside.

    The speed depends only on the distance from the diagonal, so it is constant along the flow
    and the backward warp of :func:`advect` is exact.  ``power`` > 2 makes a plug flow (a fast
    core with shear at the margins, like a tidewater tongue).
    """
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    distance = np.abs((rows - cols) / np.sqrt(2))  # distance from the main diagonal
    profile = peak * np.clip(1 - (distance / width) ** power, 0, None) ** 2
    return profile / np.sqrt(2), profile / np.sqrt(2)  # (d_col, d_row): along the diagonal


def advect(image: np.ndarray, d_col: np.ndarray, d_row: np.ndarray) -> np.ndarray:
    """Move the content by (+d_col, +d_row) pixels (backward warp, periodic image).

    The backward warp samples the first image at ``p - d(p)``: exact for smooth fields, where
    the displacement at the source and the destination are nearly equal.
    """
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(float)
    return ndimage.map_coordinates(image, [rows - d_row, cols - d_col], order=3, mode="grid-wrap")


def pair(d_col, d_row, *, seed=0, freq="16D", chunks=None, offset=(0.0, 0.0), noise=0.0, size=SIZE):
    rng = np.random.default_rng(seed + 7)
    first = smooth_texture(seed, size)
    shape = (size, size)
    second = advect(first, np.broadcast_to(d_col, shape) + offset[0], np.broadcast_to(d_row, shape) + offset[1])
    second = second + rng.normal(0, noise, second.shape)
    return make_series(np.stack([first, second]).astype(np.float32), freq=freq, name="ndsi", chunks=chunks)


def interior(result: xr.Dataset, cube, margin: int = 12) -> np.ndarray:
    inside = np.zeros((cube.sizes["y"], cube.sizes["x"]), bool)
    inside[margin:-margin, margin:-margin] = True
    return on_grid(result, cube, inside)


# ------------------------------------------------------------------------------------------
# known truth
# ------------------------------------------------------------------------------------------
def test_flow__ncc_recovers_a_smooth_glacier_field_to_a_fifth_of_a_pixel():
    d_col, d_row = glacier_field()
    cube = pair(d_col, d_row, noise=0.02)
    speed = np.hypot(d_col, d_row)
    stable = xr.DataArray(speed == 0, dims=("y", "x"), coords={"y": cube.y, "x": cube.x})
    result = flow(cube, stable=stable).compute()
    error = end_point_error(result, cube, d_col, d_row)
    inside = interior(result, cube)
    moving = inside & (on_grid(result, cube, speed) >= 1)
    still = inside & on_grid(result, cube, speed == 0)
    assert moving.sum() > 100 and still.sum() > 100
    assert np.nanmedian(error[moving]) <= 0.2
    dx, dy = result.dx.values[0][still], result.dy.values[0][still]
    assert np.hypot(np.nanmedian(dx), np.nanmedian(dy)) <= 0.05
    assert np.nanmedian(np.hypot(dx, dy)) <= 0.1


def test_flow__ncc_finds_a_fast_tongue_of_35_pixels_next_to_still_ground():
    # a 35 px/pair band between still rock: the coarse pass must find it, the rock stay still
    d_col, d_row = glacier_field(size=192, peak=35.0, width=40.0, power=8)
    cube = pair(d_col, d_row, size=192, noise=0.02)
    speed = np.hypot(d_col, d_row)
    result = flow(cube).compute()
    error = end_point_error(result, cube, d_col, d_row)
    inside = interior(result, cube, margin=40)
    core = inside & (on_grid(result, cube, speed) >= 30)
    still = inside & on_grid(result, cube, speed == 0)
    assert core.sum() >= 20 and still.sum() >= 20
    assert np.nanmedian(error[core]) <= 0.3
    assert np.nanmedian(np.hypot(result.dx.values[0], result.dy.values[0])[still]) <= 0.1
    assert result.attrs["flow_search_px"] >= 35


def test_flow__converts_pixels_to_metres_per_year_by_hand():
    # uniform motion: 2 px right (east) and 1 px down the rows (south), 30 m pixels, 16 days
    result = flow(pair(2.0, 1.0), stable_shift=False)
    core = result.isel(y=slice(4, -4), x=slice(4, -4))
    assert float(core.dx.median()) == pytest.approx(2.0, abs=0.05)
    assert float(core.dy.median()) == pytest.approx(1.0, abs=0.05)
    assert float(core.vx.median()) == pytest.approx(2.0 * 30 * PER_YEAR, rel=0.02)  # ~1370 m/yr east
    assert float(core.vy.median()) == pytest.approx(-1.0 * 30 * PER_YEAR, rel=0.02)  # ~685 m/yr south
    assert float(core.v.median()) == pytest.approx(np.hypot(2, 1) * 30 * PER_YEAR, rel=0.02)
    assert result.date_dt.values[0] == 16.0
    assert int(result.stable_shift_flag[0]) == 0 and float(result.stable_shift_dx[0]) == 0.0


def test_flow__north_sign_follows_the_y_coordinate_direction():
    cube = pair(0.0, 1.0)  # 1 px down the rows
    south_up = cube.assign_coords(y=cube.y.values[::-1].copy())  # y grows downwards
    down_is_south = float(flow(cube, stable_shift=False).vy.median())
    down_is_north = float(flow(south_up, stable_shift=False).vy.median())
    assert down_is_south < 0 < down_is_north
    assert down_is_north == pytest.approx(-down_is_south, rel=1e-3)


def test_flow__time_is_the_later_scene_with_pair_dates():
    frames = np.stack([smooth_texture(0)] * 4).astype(np.float32)
    cube = make_series(frames, freq="8D")
    cube = cube.assign_coords(time=pd.to_datetime(["2020-01-01", "2020-01-09", "2020-02-02", "2020-03-01"]))
    result = flow(cube)
    assert result.sizes["time"] == 3
    np.testing.assert_array_equal(result.time.values, cube.time.values[1:])
    np.testing.assert_array_equal(result.time_start.values, cube.time.values[:-1])
    np.testing.assert_array_equal(result.time_end.values, cube.time.values[1:])
    np.testing.assert_allclose(result.date_dt.values, [8, 24, 28])
    np.testing.assert_array_equal(
        result.mid_date.values, pd.to_datetime(["2020-01-05", "2020-01-21", "2020-02-16"]).values
    )
    assert result.date_dt.attrs["units"] == "days"
    # identical frames: no motion (a sub-pixel fit of an asymmetric peak can move a few points)
    assert float(np.abs(result.dx).median()) < 0.02 and float(np.abs(result.dx).max()) < 0.15


def test_flow__posting_grid_is_chip_centres_every_spacing_metres():
    cube = pair(1.0, 0.0)
    result = flow(cube, spacing=240.0, chip=21)
    np.testing.assert_array_equal(result.x.values, cube.x.values[4::8])  # 240 m = 8 px of 30 m
    np.testing.assert_array_equal(result.y.values, cube.y.values[4::8])
    assert result.attrs["flow_spacing_m"] == 240.0 and result.attrs["flow_chip_size_px"] == 21
    assert result.rio.transform().a == 240.0 and result.rio.crs == cube.rio.crs
    # an even chip is made odd (a centre pixel); the default chip at 30 m is 15 px
    assert flow(cube, chip=20).attrs["flow_chip_size_px"] == 21
    assert flow(cube).attrs["flow_chip_size_px"] == 15


def test_flow__quality_and_interpolated_points():
    d_col, d_row = glacier_field()
    cube = pair(d_col, d_row, noise=0.02)
    # decorrelate a patch of the later scene on the ice: its points cannot be matched
    later = cube.values[1].copy()
    later[56:72, 56:72] = np.random.default_rng(3).normal(0, 1, (16, 16))
    cube = cube.copy(data=np.stack([cube.values[0], later]))
    result = flow(cube, max_chip=15).isel(time=0).compute()  # no larger chips: no rescue
    patch = np.zeros((SIZE, SIZE), bool)
    patch[60:68, 60:68] = True
    in_patch = on_grid(result, cube, patch)
    assert result.interpolated.dtype == bool
    assert result.interpolated.values[in_patch].mean() >= 0.5
    assert result.interpolated.values[~in_patch].mean() < 0.05
    # interpolated vectors still follow the field; quality per point is sane
    error = end_point_error(result.expand_dims("time"), cube, d_col, d_row)
    assert np.nanmedian(error[in_patch]) < 0.5
    correlation = result.correlation.values
    assert np.nanmin(correlation) > 0 and np.nanmax(correlation) <= 1 + 1e-6
    assert np.nanmedian(correlation[~in_patch]) > 0.9
    assert np.nanmin(result.peak_ratio.values) >= 1.0
    assert np.nanmedian(result.v_error.values[in_patch]) > np.nanmedian(result.v_error.values[~in_patch])
    # with chip growth (the default), chips 2x larger reach past the patch and match there
    grown = flow(cube).isel(time=0).compute()
    assert (grown.chip_size.values[in_patch] > 15).any()
    assert grown.interpolated.values[in_patch].mean() < result.interpolated.values[in_patch].mean()


# ------------------------------------------------------------------------------------------
# stable surface: shift, flags, errors
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shifted_glacier():
    d_col, d_row = glacier_field()
    offset = (0.7, -0.4)  # misregistration of the second scene
    cube = pair(d_col, d_row, offset=offset, noise=0.05)
    still = np.hypot(d_col, d_row) == 0
    stable = xr.DataArray(still, dims=("y", "x"), coords={"y": cube.y, "x": cube.x})
    return cube, stable, offset, (d_col, d_row)


@pytest.mark.parametrize("how", ["mask", "outlines", "slowest"])
def test_flow__stable_shift_is_removed_with_its_flag(shifted_glacier, how):
    cube, stable, offset, (d_col, d_row) = shifted_glacier
    if how == "outlines":
        # the glacier band as a polygon in the grid's CRS (metres)
        x0, y0 = float(cube.x[0]), float(cube.y[0])
        corners = [(0, 0), (34, 0), (SIZE, SIZE - 34), (SIZE, SIZE), (SIZE - 34, SIZE), (0, 34), (0, 0)]
        ring = [(x0 + c * RESOLUTION, y0 - r * RESOLUTION) for c, r in corners]
        polygon = {"type": "Polygon", "coordinates": [ring]}
        result = flow(cube, outlines=polygon, outlines_crs=cube.rio.crs, buffer=60.0)
    else:
        result = flow(cube, stable=stable if how == "mask" else None)
    result = result.compute()
    assert int(result.stable_shift_flag[0]) == (2 if how == "slowest" else 1)
    assert float(result.stable_shift_dx[0]) == pytest.approx(offset[0], abs=0.05)
    assert float(result.stable_shift_dy[0]) == pytest.approx(offset[1], abs=0.05)
    assert float(result.stable_shift_x[0]) == pytest.approx(offset[0] * 30 * PER_YEAR, rel=0.1)
    assert float(result.stable_shift_y[0]) == pytest.approx(-offset[1] * 30 * PER_YEAR, rel=0.15)
    inside = interior(result, cube)
    moving = inside & (on_grid(result, cube, np.hypot(d_col, d_row)) >= 1)
    assert np.nanmedian(end_point_error(result, cube, d_col, d_row)[moving]) <= 0.2
    assert int(result.stable_count[0]) >= 10


def test_flow__without_stable_shift_the_offset_stays_and_the_flag_is_0(shifted_glacier):
    cube, stable, offset, _ = shifted_glacier
    result = flow(cube, stable=stable, stable_shift=False).compute()
    assert int(result.stable_shift_flag[0]) == 0 and float(result.stable_shift_dx[0]) == 0.0
    still = on_grid(result, cube, stable.values) & interior(result, cube)
    assert np.nanmedian(result.dx.values[0][still]) == pytest.approx(offset[0], abs=0.05)


def test_flow__errors_are_calibrated_on_stable_ground():
    # a plug flow (uniform core): stable-ground NMAD must cover the core's true errors about as
    # a normal 1-sigma / 2-sigma band would (68 % / 95 %); on shear margins the chip averages
    # the gradient, an error that stable ground cannot see (said in flow's docstring)
    d_col, d_row = glacier_field(peak=4.0, power=8)
    cube = pair(d_col, d_row, offset=(0.7, -0.4), noise=0.05)
    speed = np.hypot(d_col, d_row)
    stable = xr.DataArray(speed == 0, dims=("y", "x"), coords={"y": cube.y, "x": cube.x})
    result = flow(cube, stable=stable).isel(time=0).compute()
    core = interior(result, cube) & (on_grid(result, cube, speed) >= 0.95 * speed.max())
    assert core.sum() >= 100
    error_x = np.abs(result.dx.values - on_grid(result, cube, d_col))[core]
    sigma_x = (result.vx_error.values / (30 * PER_YEAR))[core]
    within_1, within_2 = np.mean(error_x <= sigma_x), np.mean(error_x <= 2 * sigma_x)
    assert 0.55 <= within_1 <= 0.9 and within_2 >= 0.85, (within_1, within_2)
    # stable-ground statistics in m/yr, by the same factor as vx
    assert float(result.stable_nmad_x) > 0
    median_sigma = np.nanmedian(result.vx_error.values[on_grid(result, cube, stable.values)])
    assert median_sigma == pytest.approx(float(result.stable_nmad_x), rel=0.1)
    vx, vy, ex, ey = (result[n].values for n in ("vx", "vy", "vx_error", "vy_error"))
    expected = np.hypot(vx * ex, vy * ey) / np.hypot(vx, vy)
    fast = np.hypot(vx, vy) > 100
    np.testing.assert_allclose(result.v_error.values[fast], expected[fast], rtol=1e-4)


# ------------------------------------------------------------------------------------------
# Farnebäck stays available
# ------------------------------------------------------------------------------------------
def test_flow__farneback_on_every_pixel_with_its_parameters():
    cube = pair(1.5, -0.5)
    result = flow(cube, method="farneback", winsize=9, stable_shift=False)
    assert result.sizes["y"] == SIZE and result.sizes["x"] == SIZE
    core = result.isel(y=slice(16, -16), x=slice(16, -16))
    assert float(core.dx.median()) == pytest.approx(1.5, abs=0.1)
    assert float(core.dy.median()) == pytest.approx(-0.5, abs=0.1)
    assert result.attrs["flow_winsize"] == 9 and result.attrs["flow_levels"] == 6
    assert result.attrs["flow_method"] == "farneback" and "correlation" not in result
    with pytest.raises(ConfigError, match="parameters of method='farneback'"):
        flow(cube, winsize=9)


# ------------------------------------------------------------------------------------------
# laziness, Dask, metadata
# ------------------------------------------------------------------------------------------
def test_flow__is_lazy_one_task_per_pair_and_dask_equals_numpy():
    d_col, d_row = glacier_field()
    base = smooth_texture(0)
    frames = np.stack([base, advect(base, d_col, d_row), advect(base, 2 * d_col, 2 * d_row)]).astype(np.float32)
    stable = xr.DataArray(np.hypot(d_col, d_row) == 0, dims=("y", "x"))
    eager = flow(make_series(frames), stable=stable)
    with raise_if_dask_computes():
        lazy = flow(make_series(frames, chunks={"time": -1}), stable=stable.chunk())
    assert isinstance(lazy.vx.data, dask.array.Array)
    assert isinstance(lazy.stable_shift_dx.data, dask.array.Array)
    graph = dict(lazy.vx.data.__dask_graph__())
    kernel_tasks = [k for k in graph if isinstance(k, tuple) and k[0].startswith("ncc_block-")]
    assert len(kernel_tasks) == 2  # one task per pair, even with all times in one input chunk
    xr.testing.assert_allclose(lazy.compute(), eager)


def test_flow__cf_conventions_checked_with_cf_xarray():
    cf_xarray = pytest.importorskip("cf_xarray")
    cube = pair(1.0, 0.0).assign_coords(cloud_cover=("time", [1.0, 2.0]), platform=("time", ["landsat-8", "landsat-9"]))
    result = flow(cube)
    assert cf_xarray.__version__
    assert result.attrs["Conventions"] == "CF-1.8"
    assert result.cf["land_ice_surface_x_velocity"].name == "vx"
    assert result.cf["land_ice_surface_y_velocity"].name == "vy"
    assert result.cf["projection_x_coordinate"].name == "x"
    assert "spatial_ref" in result.cf.grid_mapping_names.get("transverse_mercator", [])
    for name in ("vx", "vy", "v", "vx_error", "vy_error", "v_error"):
        assert result[name].attrs["units"] == "m/year" and result[name].attrs["grid_mapping"] == "spatial_ref"
        assert result[name].dims == ("time", "y", "x")
    assert result.attrs["source_variable"] == "ndsi" and result.attrs["flow_method"] == "ncc"
    assert result.satellite_img1.values.tolist() == ["landsat-8"]
    assert "cloud_cover" not in result.coords  # a per-scene coordinate has no meaning per pair
    assert list(result.stable_shift_flag.attrs["flag_values"]) == [0, 1, 2]


@pytest.mark.parametrize("method", ["ncc", "farneback"])
def test_flow__outputs_do_not_inherit_the_input_band_s_attributes(method):
    band = {"long_name": "green surface reflectance", "units": "1", "scale_offset": "2.75e-05, -0.2"}
    result = flow(pair(1.0, 0.0).assign_attrs(band), method=method)
    for name in ("vx", "vy", "v", "v_error"):
        attrs = result[name].attrs
        assert "scale_offset" not in attrs and "reflectance" not in attrs["long_name"], attrs
        assert attrs["units"] == "m/year" and attrs["grid_mapping"] == "spatial_ref"


def test_flow__accessor_forwards():
    cube = pair(1.0, 0.0)
    xr.testing.assert_identical(cube.glacier.flow(spacing=90.0), flow(cube, spacing=90.0))


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
def test_flow__lon_lat_degrees_are_refused_with_the_reprojection_fix():
    cube = make_series(np.zeros((2, 32, 32), np.float32))
    with pytest.raises(GridError, match=r"geographic.*rio\.reproject"):
        flow(cube.rio.write_crs(4326))
    degrees = xr.DataArray(
        np.zeros((2, 32, 32), np.float32), dims=("time", "lat", "lon"),
        coords={"time": cube.time, "lat": np.linspace(60, 59.7, 32), "lon": np.linspace(-141, -140.5, 32)},
    )
    with pytest.raises(GridError, match="degrees") as error:
        flow(degrees, y_dim="lat", x_dim="lon")
    # the fix in the message works as written
    fix = str(error.value).split("`")
    ll = eval(fix[1].removeprefix("ll = "), {"da": degrees})
    projected = eval(fix[3].removeprefix("flow(").removesuffix(")"), {"ll": ll})
    assert projected.rio.crs.is_projected
    assert flow(projected, stable_shift=False).attrs["pixel_size_x"] > 1  # metres


def test_flow__chip_larger_than_the_scene_is_refused():
    with pytest.raises(DimensionError, match=r"chip of 41 px is larger than the scene \(32 x 32 px\)"):
        flow(make_series(np.zeros((2, 32, 32), np.float32)), chip=41)


def test_flow__an_all_cloud_pair_is_nan_with_flags_and_a_warning():
    cube = pair(1.0, 0.0)
    frames = cube.values.copy()
    frames[1] = np.nan  # the later scene is all cloud
    with pytest.warns(EmptyPairWarning, match="no point with data in both scenes"):
        result = flow(cube.copy(data=frames)).compute()
    assert np.isnan(result.vx.values).all() and np.isnan(result.v_error.values).all()
    assert float(result.valid_fraction[0]) == 0.0 and int(result.stable_shift_flag[0]) == 0


def test_flow__a_pair_without_overlap_is_nan_with_a_warning():
    cube = pair(1.0, 0.0)
    frames = cube.values.copy()
    frames[0, :, 64:] = np.nan  # the earlier scene covers the west half only,
    frames[1, :, :64] = np.nan  # the later one the east half
    with pytest.warns(EmptyPairWarning):
        result = flow(cube.copy(data=frames)).compute()
    assert np.isnan(result.vx.values).all() and float(result.valid_fraction[0]) == 0.0


def test_flow__single_time_step_raises():
    with pytest.raises(DimensionError, match="flow needs at least two time steps"):
        flow(make_series(np.zeros((1, 16, 16), np.float32)))


def test_flow__split_spatial_chunks_raise_with_the_fix():
    cube = make_series(np.zeros((2, 64, 64), np.float32), chunks={"x": 32})
    with pytest.raises(ChunkingError, match=r'\.chunk\(\{"y": -1, "x": -1\}\)'):
        flow(cube)


def test_flow__bad_grids_masks_and_options_raise():
    cube = make_series(np.zeros((2, 32, 32), np.float32))
    irregular = cube.assign_coords(x=np.r_[cube.x.values[:-1], cube.x.values[-1] + 100])
    with pytest.raises(GridError, match="regular grid"):
        flow(irregular)
    with pytest.raises(DataTypeError, match="boolean"):
        flow(cube, stable=cube.isel(time=0))
    with pytest.raises(GridError):
        flow(cube, stable=(cube.isel(time=0, x=slice(0, 16)) > 0))
    with pytest.raises(DimensionError, match="strictly increasing"):
        flow(cube.assign_coords(time=[cube.time.values[0]] * 2))
    with pytest.raises(ConfigError, match="prefilter"):
        flow(cube, prefilter="sobel")
    with pytest.raises(ConfigError, match="method"):
        flow(cube, method="pwc")
    with pytest.raises(ConfigError, match="spacing"):
        flow(cube, spacing=-120)


# ------------------------------------------------------------------------------------------
# real data: Landsat-8 panchromatic pair of Yahtse Glacier, 16 days apart
# ------------------------------------------------------------------------------------------
#: The fast terminus tongue (rows, cols of the 1087 x 1698 scene).
YAHTSE_TONGUE = ((680, 960), (880, 1060))


@pytest.fixture(scope="module")
def yahtse(yahtse_pan):
    """flow() with its defaults on the real pair, and the plain reference on its points."""
    cube = yahtse_pan.chunk({"time": 1})
    with raise_if_dask_computes():
        motion = flow(cube)
    motion = motion.compute()
    first, second = cube.values
    rows = np.searchsorted(-cube.y.values, -motion.y.values)
    cols = np.searchsorted(cube.x.values, motion.x.values)
    return cube, motion, first, second, rows, cols


@pytest.mark.slow
def test_flow__real_yahtse_default_matches_a_plain_ncc_reference_on_the_fast_tongue(yahtse):
    cube, motion, first, second, rows, cols = yahtse
    (r0, r1), (c0, c1) = YAHTSE_TONGUE
    in_rows, in_cols = (rows >= r0) & (rows <= r1), (cols >= c0) & (cols <= c1)
    reference = reference_ncc(first, second, rows[in_rows], cols[in_cols])
    good = (reference[..., 2] >= 0.5) & neighbour_consistent(reference)
    assert good.sum() >= 300
    ref_dx, ref_dy = reference[..., 0][good], reference[..., 1][good]
    ours = motion.isel(time=0, y=np.flatnonzero(in_rows), x=np.flatnonzero(in_cols))
    dx, dy = ours.dx.values[good], ours.dy.values[good]
    assert np.isfinite(dx).mean() >= 0.95
    ref_speed, speed = np.median(np.hypot(ref_dx, ref_dy)), np.nanmedian(np.hypot(dx, dy))
    assert ref_speed > 10  # the tongue is fast: > 10 px per 16 days (> 9 m/day)
    assert speed == pytest.approx(ref_speed, rel=0.15)
    ref_angle = np.degrees(np.arctan2(np.median(ref_dy), np.median(ref_dx)))
    angle = np.degrees(np.arctan2(np.nanmedian(dy), np.nanmedian(dx)))
    assert abs((angle - ref_angle + 180) % 360 - 180) <= 15
    # in metres: Yahtse's terminus flows ~10-20 m/day (Durkin et al., 2017, Front. Earth Sci.)
    assert 9 < float(np.nanmedian(ours.v.values[good])) / 365.25 < 20


@pytest.mark.slow
def test_flow__real_yahtse_stable_ground_of_the_reference_does_not_move(yahtse):
    cube, motion, first, second, rows, cols = yahtse
    sub_rows, sub_cols = rows[::4], cols[::4]
    reference = reference_ncc(first, second, sub_rows, sub_cols)
    good = reference[..., 2] >= 0.5
    ref_speed = np.hypot(reference[..., 0], reference[..., 1])
    slowest = good & (ref_speed <= np.quantile(ref_speed[good], 0.3))
    assert slowest.sum() >= 200
    ours = motion.isel(time=0, y=slice(None, None, 4), x=slice(None, None, 4))
    magnitude = np.hypot(ours.dx.values, ours.dy.values)[slowest]
    assert np.nanmedian(magnitude) <= 0.3
    # the stable-surface statistics: automatic (flag 2), small, in m/yr like ITS_LIVE's
    assert int(motion.stable_shift_flag[0]) == 2
    assert np.hypot(float(motion.stable_shift_dx[0]), float(motion.stable_shift_dy[0])) < 0.5
    assert 5 < float(motion.stable_nmad_x[0]) < 100 and 5 < float(motion.stable_nmad_y[0]) < 100
    assert float(np.nanmedian(motion.v_error.values)) < 200


@pytest.mark.slow
def test_flow__real_yahtse_arrow_figure(yahtse, tmp_path):
    cube, motion, *_ = yahtse
    fig = gx.plot.flow_arrows(motion, background=cube, step=5)
    path = gx.plot.save(fig, tmp_path / "yahtse_flow.png")
    assert path.stat().st_size > 10_000
    quiver = fig.axes[0].collections[0]
    assert quiver.N == len(range(2, motion.sizes["y"], 5)) * len(range(2, motion.sizes["x"], 5))


# ------------------------------------------------------------------------------------------
# the embedded sample: slow (valley) and fast (tidewater-like) glaciers with exact truth
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["valley", "fast"])
def test_flow__sample_glacier_motion_matches_truth(tmp_path_factory, stack_sample_cogs, kind):
    catalog = gx.sample.write_catalog(
        tmp_path_factory.mktemp(f"flow-{kind}"), seed=0, width=256, height=256,
        start="2018-07-10", end="2018-09-25", flow=kind,
    )
    errors, still, fastest = sample_errors(catalog, stack_sample_cogs)
    assert errors.size >= 100
    epe = np.nanmedian(errors)
    bias = np.hypot(*np.nanmedian(still, axis=0))
    print(f"sample {kind}: max {fastest:.1f} px/pair, median EPE {epe:.3f} px, stable bias {bias:.3f} px, "
          f"stable median |d| {np.nanmedian(np.hypot(*still.T)):.3f} px")
    assert fastest >= (10 if kind == "fast" else 0.5)
    assert epe <= 0.2
    assert bias <= 0.05
