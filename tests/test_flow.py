"""Tests of glacierxr.flow: known displacement fields, units and signs, stable-ground correction,
laziness, errors, the real Yahtse Glacier pair and the embedded sample's ground truth."""

from __future__ import annotations

import importlib.util

import dask.array
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import ndimage

import glacierxr as gx
from glacierxr.errors import ChunkingError, DataTypeError, DimensionError, GridError
from glacierxr.flow import flow
from glacierxr import testing
from glacierxr.testing import make_series, raise_if_dask_computes

SIZE = 128
RESOLUTION = 30.0


def smooth_texture(seed: int, size: int = SIZE, wavelength: float = 5.0) -> np.ndarray:
    return testing.smooth_texture(seed, size, wavelength)  # this file's defaults


def glacier_field(size: int = SIZE, peak: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 'glacier' displacement (pixels): a diagonal band flowing down-right, zero outside."""
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    distance = np.abs((rows - cols) / np.sqrt(2))  # distance from the main diagonal
    profile = peak * np.clip(1 - (distance / 22.0) ** 2, 0, None) ** 2
    return profile / np.sqrt(2), profile / np.sqrt(2)  # (d_col, d_row): along the diagonal


def advect(image: np.ndarray, d_col: np.ndarray, d_row: np.ndarray) -> np.ndarray:
    """Move the content by (+d_col, +d_row) pixels (backward warp, periodic image)."""
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(float)
    return ndimage.map_coordinates(image, [rows - d_row, cols - d_col], order=3, mode="grid-wrap")


def pair(d_col, d_row, *, seed=0, freq="16D", chunks=None, offset=(0.0, 0.0), noise=0.0):
    rng = np.random.default_rng(seed + 7)
    first = smooth_texture(seed)
    second = advect(first, np.asarray(d_col) + offset[0], np.asarray(d_row) + offset[1])
    second = second + rng.normal(0, noise, second.shape)
    return make_series(np.stack([first, second]).astype(np.float32), freq=freq, name="ndsi", chunks=chunks)


def end_point_error(result: xr.Dataset, d_col, d_row) -> np.ndarray:
    return np.hypot(result.u_pixels.values[0] - d_col, result.v_pixels.values[0] - d_row)


# ------------------------------------------------------------------------------------------
# known truth
# ------------------------------------------------------------------------------------------
def test_flow__recovers_a_known_smooth_displacement_field():
    d_col, d_row = glacier_field()
    result = flow(pair(d_col, d_row, noise=0.02)).compute()
    speed = np.hypot(d_col, d_row)
    error = end_point_error(result, d_col, d_row)
    interior = np.zeros_like(speed, bool)
    interior[8:-8, 8:-8] = True
    assert np.median(error[(speed >= 1) & interior]) <= 0.5
    still = np.hypot(result.u_pixels.values[0], result.v_pixels.values[0])[(speed == 0) & interior]
    assert np.median(still) <= 0.1


def test_flow__converts_pixels_to_metres_per_year_by_hand():
    # uniform motion: 2 px right (east) and 1 px down the rows (south), 30 m pixels, 16 days
    result = flow(pair(np.full((SIZE, SIZE), 2.0), np.full((SIZE, SIZE), 1.0)))
    core = result.isel(y=slice(16, -16), x=slice(16, -16))
    assert float(core.u_pixels.median()) == pytest.approx(2.0, abs=0.05)
    assert float(core.v_pixels.median()) == pytest.approx(1.0, abs=0.05)
    per_year = 365.25 / 16.0
    assert float(core.u.median()) == pytest.approx(2.0 * 30 * per_year, rel=0.03)  # ~1370 m/yr east
    assert float(core.v.median()) == pytest.approx(-1.0 * 30 * per_year, rel=0.03)  # ~685 m/yr south
    assert float(core.speed.median()) == pytest.approx(np.hypot(2, 1) * 30 * per_year, rel=0.03)
    assert result.step_days.values[0] == 16.0
    assert result.u.attrs["units"] == "m/yr" and result.u_pixels.attrs["units"] == "pixels"


def test_flow__north_sign_follows_the_y_coordinate_direction():
    cube = pair(np.zeros((SIZE, SIZE)), np.full((SIZE, SIZE), 1.0))  # 1 px down the rows
    south_up = cube.assign_coords(y=cube.y.values[::-1].copy())  # y grows downwards
    down_is_south = float(flow(cube).v.median())
    down_is_north = float(flow(south_up).v.median())
    assert down_is_south < 0 < down_is_north
    assert down_is_north == pytest.approx(-down_is_south, rel=1e-3)


def test_flow__time_is_the_later_frame_with_pair_coordinates():
    frames = np.stack([smooth_texture(0)] * 4).astype(np.float32)
    cube = make_series(frames, freq="8D")
    cube = cube.isel(time=[0, 1, 3, 2]).sortby("time")  # 0, 8, 16, 24 days
    cube = cube.assign_coords(time=pd.to_datetime(["2020-01-01", "2020-01-09", "2020-02-02", "2020-03-01"]))
    result = flow(cube)
    assert result.sizes["time"] == 3
    np.testing.assert_array_equal(result.time.values, cube.time.values[1:])
    np.testing.assert_array_equal(result.time_start.values, cube.time.values[:-1])
    np.testing.assert_array_equal(result.time_end.values, cube.time.values[1:])
    np.testing.assert_allclose(result.step_days.values, [8, 24, 28])
    assert float(np.abs(result.u_pixels).median()) < 1e-3  # identical frames: no motion
    assert float(np.abs(result.u_pixels).max()) < 0.1


def test_flow__missing_pixels_are_invalid_and_nan():
    cube = pair(np.full((SIZE, SIZE), 1.0), np.zeros((SIZE, SIZE)))
    cube[0, 10:20, 10:20] = np.nan
    cube[1, 50:60, 70:80] = np.nan
    result = flow(cube)
    valid = result.valid.values[0]
    assert not valid[10:20, 10:20].any() and not valid[50:60, 70:80].any()
    assert valid.sum() == SIZE * SIZE - 200
    assert np.isnan(result.u.values[0][~valid]).all() and np.isfinite(result.u.values[0][valid]).all()
    core = result.u_pixels.isel(y=slice(30, 45), x=slice(30, 60))
    assert float(core.median()) == pytest.approx(1.0, abs=0.1)


def test_flow__stable_ground_correction_removes_an_injected_offset():
    d_col, d_row = glacier_field()
    offset = (0.7, -0.4)  # misregistration of the second frame
    cube = pair(d_col, d_row, offset=offset, noise=0.02)
    speed = np.hypot(d_col, d_row)
    stable = xr.DataArray(speed == 0, dims=("y", "x"), coords={"y": cube.y, "x": cube.x})
    raw = flow(cube)
    corrected = flow(cube, stable=stable)
    assert float(corrected.stable_offset_u_pixels[0]) == pytest.approx(offset[0], abs=0.1)
    assert float(corrected.stable_offset_v_pixels[0]) == pytest.approx(offset[1], abs=0.1)
    # raw flow carries the offset on stable ground; corrected flow does not
    on_stable = stable.values
    assert np.median(raw.u_pixels.values[0][on_stable]) == pytest.approx(offset[0], abs=0.1)
    assert abs(np.median(corrected.u_pixels.values[0][on_stable])) < 0.05
    assert abs(np.median(corrected.v_pixels.values[0][on_stable])) < 0.05
    # and the glacier's own motion is recovered
    interior = np.zeros_like(on_stable)
    interior[8:-8, 8:-8] = True
    assert np.median(end_point_error(corrected, d_col, d_row)[(speed >= 1) & interior]) <= 0.5
    # error statistics, with units; m/yr from px by the same factors as u, v
    assert int(corrected.stable_count[0]) == on_stable.sum()
    assert 0 < float(corrected.stable_nmad_u_pixels[0]) < 0.5
    per_year = 30 * 365.25 / 16
    assert float(corrected.u_error[0]) == pytest.approx(float(corrected.stable_rmse_u_pixels[0]) * per_year)
    assert float(corrected.stable_offset_v[0]) == pytest.approx(-offset[1] * per_year, rel=0.2)
    assert corrected.u_error.attrs["units"] == "m/yr"
    assert corrected.stable.dims == ("y", "x")
    assert "stable_offset_u_pixels" not in raw


def test_flow__prefilters_keep_a_uniform_motion():
    cube = pair(np.full((SIZE, SIZE), 1.5), np.full((SIZE, SIZE), -0.5))
    for prefilter in ("highpass", "wallis"):
        result = flow(cube, prefilter=prefilter, prefilter_sigma=4.0).isel(y=slice(16, -16), x=slice(16, -16))
        assert float(result.u_pixels.median()) == pytest.approx(1.5, abs=0.1)
        assert float(result.v_pixels.median()) == pytest.approx(-0.5, abs=0.1)
        assert result.attrs["flow_prefilter"] == prefilter


# ------------------------------------------------------------------------------------------
# laziness, Dask, metadata
# ------------------------------------------------------------------------------------------
def test_flow__is_lazy_and_dask_equals_numpy():
    d_col, d_row = glacier_field()
    frames = np.stack([smooth_texture(0), advect(smooth_texture(0), d_col, d_row),
                       advect(smooth_texture(0), 2 * d_col, 2 * d_row)]).astype(np.float32)
    stable = xr.DataArray(np.hypot(d_col, d_row) == 0, dims=("y", "x"))
    eager = flow(make_series(frames), stable=stable)
    with raise_if_dask_computes():
        lazy = flow(make_series(frames, chunks={"time": 1}), stable=stable.chunk())
    assert isinstance(lazy.u.data, dask.array.Array)
    assert isinstance(lazy.stable_offset_u_pixels.data, dask.array.Array)
    xr.testing.assert_allclose(lazy.compute(), eager)


def test_flow__keeps_grid_crs_and_records_parameters():
    cube = pair(np.full((SIZE, SIZE), 1.0), np.zeros((SIZE, SIZE))).assign_coords(
        cloud_cover=("time", [1.0, 2.0])
    )
    result = flow(cube, winsize=9)
    assert result.rio.crs == cube.rio.crs
    np.testing.assert_array_equal(result.x.values, cube.x.values)
    np.testing.assert_array_equal(result.y.values, cube.y.values)
    assert result.attrs["flow_winsize"] == 9 and result.attrs["flow_levels"] == 6
    assert result.attrs["source_variable"] == "ndsi"
    for name in ("u_pixels", "v_pixels", "u", "v", "speed", "valid"):
        assert {"units", "long_name"} <= set(result[name].attrs)
        assert result[name].dims == ("time", "y", "x")
    assert "cloud_cover" not in result.coords  # a per-scene coordinate has no meaning per pair


def test_flow__accessor_forwards():
    cube = pair(np.full((SIZE, SIZE), 1.0), np.zeros((SIZE, SIZE)))
    xr.testing.assert_identical(cube.glacier.flow(winsize=9), flow(cube, winsize=9))


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
def test_flow__single_time_step_raises():
    with pytest.raises(DimensionError, match="flow needs at least two time steps"):
        flow(make_series(np.zeros((1, 16, 16), np.float32)))


def test_flow__split_spatial_chunks_raise_with_the_fix():
    cube = make_series(np.zeros((2, 64, 64), np.float32), chunks={"x": 32})
    with pytest.raises(ChunkingError, match=r'\.chunk\(\{"y": -1, "x": -1\}\)'):
        flow(cube)


def test_flow__bad_grids_and_masks_raise():
    cube = make_series(np.zeros((2, 32, 32), np.float32))
    irregular = cube.assign_coords(x=np.r_[cube.x.values[:-1], cube.x.values[-1] + 100])
    with pytest.raises(GridError, match="regular grid"):
        flow(irregular)
    with pytest.raises(GridError, match="geographic"):
        flow(cube.rio.write_crs(4326))
    with pytest.raises(DataTypeError, match="stable must be boolean"):
        flow(cube, stable=cube.isel(time=0))
    with pytest.raises(GridError, match="not on the grid"):
        flow(cube, stable=(cube.isel(time=0, x=slice(0, 16)) > 0))
    with pytest.raises(DimensionError, match="strictly increasing"):
        flow(cube.assign_coords(time=[cube.time.values[0]] * 2))
    with pytest.raises(DataTypeError, match="prefilter"):
        flow(cube, prefilter="sobel")


# ------------------------------------------------------------------------------------------
# real data: Landsat-8 panchromatic pair of Yahtse Glacier, 16 days apart
# ------------------------------------------------------------------------------------------
#: Crop of the scene used here (rows, cols of the original 1087 x 1698 grid): the lower main
#: trunk, its terminus tongue and the rock around it.
YAHTSE_CROP = (slice(200, 1087), slice(550, 1300))
#: Stable rock, chosen by eye on the images before any motion was computed: dark, textured,
#: snow-free mountain slopes off the ice, west of the lower trunk and east of the tongue
#: (rows, cols of the original grid).
YAHTSE_ROCK = [((720, 860), (640, 790)), ((870, 1000), (1050, 1250)), ((1000, 1080), (1050, 1150))]
#: The main trunk above the icefall (rows, cols of the original grid), clearly crevassed ice.
YAHTSE_UPPER_GLACIER = ((280, 520), (780, 900))


def box_mask(grid: xr.DataArray, boxes) -> xr.DataArray:
    """Boolean (y, x) mask of boxes given in rows/cols of the original Yahtse grid."""
    rows = np.arange(YAHTSE_CROP[0].start, YAHTSE_CROP[0].start + grid.sizes["y"])[:, None]
    cols = np.arange(YAHTSE_CROP[1].start, YAHTSE_CROP[1].start + grid.sizes["x"])[None, :]
    mask = np.zeros((grid.sizes["y"], grid.sizes["x"]), bool)
    for (r0, r1), (c0, c1) in boxes:
        mask |= (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    return xr.DataArray(mask, dims=("y", "x"), coords={"y": grid.y, "x": grid.x})


def ncc_displacements(first: np.ndarray, second: np.ndarray, points, half=24, search=20):
    """Independent reference: normalised cross-correlation feature tracking (integer + parabola)."""
    import cv2

    out = []
    for row, col in points:
        template = first[row - half : row + half, col - half : col + half]
        window = second[row - half - search : row + half + search, col - half - search : col + half + search]
        score = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (j, i) = cv2.minMaxLoc(score)

        def vertex(m, c, p):
            denominator = m - 2 * c + p
            return 0.0 if denominator == 0 else 0.5 * (m - p) / denominator

        dx = j - search + (vertex(score[i, j - 1], score[i, j], score[i, j + 1]) if 0 < j < score.shape[1] - 1 else 0)
        dy = i - search + (vertex(score[i - 1, j], score[i, j], score[i + 1, j]) if 0 < i < score.shape[0] - 1 else 0)
        out.append((dx, dy, best))
    return np.array(out)


@pytest.fixture(scope="module")
def yahtse(shared_data):
    """align -> flow on the real pair; Wallis prefilter because the second scene is hazy."""
    from test_align import read_yahtse

    cube = read_yahtse(shared_data).isel(y=YAHTSE_CROP[0], x=YAHTSE_CROP[1]).chunk({"time": 1})
    rock = box_mask(cube, YAHTSE_ROCK)
    with raise_if_dask_computes():
        aligned = cube.glacier.align(reference=0, stable=rock)
        motion = aligned.glacier.flow(prefilter="wallis", stable=rock)
    return cube, rock, aligned.compute(), motion.compute()


@pytest.mark.slow
def test_flow__real_yahtse_stable_rock_does_not_move(yahtse):
    cube, rock, aligned, motion = yahtse
    assert motion.step_days.values[0] == 16.0
    magnitude = np.hypot(motion.u_pixels.values[0], motion.v_pixels.values[0])[rock.values]
    assert np.nanmedian(magnitude) < 0.5
    # the residual misregistration after align is small too
    assert np.hypot(float(motion.stable_offset_u_pixels[0]), float(motion.stable_offset_v_pixels[0])) < 0.5
    assert float(motion.stable_nmad_u_pixels[0]) < 0.5


@pytest.mark.slow
def test_flow__real_yahtse_glacier_speed_is_plausible_and_matches_feature_tracking(yahtse):
    cube, rock, aligned, motion = yahtse
    glacier = box_mask(cube, [YAHTSE_UPPER_GLACIER]).values
    speed_m_per_day = float(np.nanmedian(motion.speed.values[0][glacier])) / 365.25
    # Durkin et al. (2017, Front. Earth Sci. 5:21): Yahtse flows a few m/day above its icefall
    # and ~10-20 m/day near the terminus; a fast tidewater glacier
    assert 1.0 < speed_m_per_day < 20.0
    # flows down-glacier (south-east here): +x east, +y down the rows
    assert float(np.nanmedian(motion.u_pixels.values[0][glacier])) > 0.5
    assert float(np.nanmedian(motion.v_pixels.values[0][glacier])) > 0.5
    # independent check: NCC feature tracking on a grid of points in the same box
    from glacierxr.flow import _prefilter

    first, second = (_prefilter(np.nan_to_num(aligned.values[i]), "wallis", 5.0) for i in range(2))
    (r0, r1), (c0, c1) = YAHTSE_UPPER_GLACIER
    points = [(r, c) for r in range(r0, r1 + 1, 40) for c in range(c0, c1 + 1, 40)]
    local = [(r - YAHTSE_CROP[0].start, c - YAHTSE_CROP[1].start) for r, c in points]
    reference = ncc_displacements(first, second, local)
    good = reference[:, 2] > 0.6
    assert good.sum() >= 10
    farneback = np.array([[motion.u_pixels.values[0][r, c], motion.v_pixels.values[0][r, c]] for r, c in local])
    # NCC tracks the aligned frames; flow also had the stable-rock offset removed: add it back
    offset = [float(motion.stable_offset_u_pixels[0]), float(motion.stable_offset_v_pixels[0])]
    difference = np.hypot(*(farneback[good] + offset - reference[good, :2]).T)
    assert np.median(difference) < 0.5


@pytest.mark.slow
def test_flow__real_yahtse_arrow_figure(yahtse, tmp_path):
    cube, rock, aligned, motion = yahtse
    fig = gx.plot.flow_arrows(motion, background=cube, step=40)
    path = gx.plot.save(fig, tmp_path / "yahtse_flow.png")
    assert path.stat().st_size > 10_000
    quiver = fig.axes[0].collections[0]
    assert quiver.N == len(range(20, cube.sizes["y"], 40)) * len(range(20, cube.sizes["x"], 40))


# ------------------------------------------------------------------------------------------
# the embedded sample: consecutive clear scenes vs the true ice velocity
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("via", ["rioxarray", "gx.load"])
def test_flow__sample_bare_ice_motion_matches_truth(sample_catalog, via):
    needed = ["glacierxr.qa", "glacierxr.indices"] + (["glacierxr.io"] if via == "gx.load" else [])
    if any(importlib.util.find_spec(module) is None for module in needed):
        pytest.skip(f"{needed} not all available yet")
    from test_align import load_sample

    cube = load_sample(sample_catalog, via=via).glacier.mask(drop=False).compute()
    snow_free = (cube.glacier.ndsi() < 0.3).values  # bare rock in the scene itself
    truth = gx.sample.open_truth(sample_catalog)
    qa = cube.qa_pixel.values.astype(np.int64)
    usable = (qa & 0b11111) == 0  # not fill, dilated cloud, cirrus, cloud, shadow
    stable = xr.DataArray(truth["stable"].values, dims=("y", "x"), coords={"y": cube.y, "x": cube.x})
    resolution = truth.attrs["resolution"]
    errors, still = [], []
    for a in range(cube.sizes["time"] - 1):
        b = a + 1
        # evaluation pixels: glacier ice below the snow line of both dates, clear in both
        snow_line = min(float(truth.snow_line[a]), float(truth.snow_line[b])) - 150
        ice = truth["glacier"].values & (truth.elevation.values < snow_line)
        ok = ndimage.binary_erosion(ice & usable[a] & usable[b], iterations=3)
        if ok.sum() < 120:
            continue
        # green reflectance carries the ice texture (NDSI flattens it); 96 px scenes: small window
        result = flow(cube.green.isel(time=[a, b]), stable=stable, winsize=9).isel(time=0)
        years = float(result.step_days) / 365.25
        true_col = truth.u.values * years / resolution
        true_row = -truth.v.values * years / resolution
        moving = ok & (np.hypot(true_col, true_row) >= 1) & result.valid.values
        errors.append(np.hypot(result.u_pixels.values - true_col, result.v_pixels.values - true_row)[moving])
        rock = stable.values & snow_free[a] & snow_free[b] & result.valid.values
        still.append(np.stack([result.u_pixels.values[rock], result.v_pixels.values[rock]], axis=1))
    assert len(errors) >= 4
    assert np.median(np.concatenate(errors)) <= 0.5
    still = np.concatenate(still)
    print("sample: median EPE", np.median(np.concatenate(errors)), "bare-rock median motion",
          np.median(still, axis=0), "median |motion|", np.median(np.hypot(*still.T)))
    # bare stable rock: no systematic motion left after the stable-ground correction
    assert np.all(np.abs(np.median(still, axis=0)) <= 0.2)
