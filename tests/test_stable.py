"""Stable ground (glacierxr.stable): outlines burnt on the grid, the user's mask validated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from glacierxr.errors import ChunkingError, ConfigError, DataTypeError, DimensionError, GridError
from glacierxr.stable import (
    FLAG_NONE,
    FLAG_USER,
    rasterize_outlines,
    resolve_stable,
    stable_from_variability,
    temporal_variability,
)
from glacierxr.testing import raise_if_dask_computes
from glacierxr.testing import changing_ground, make_series

RES = 30.0


def grid(height: int = 40, width: int = 50, epsg: int = 32607) -> xr.DataArray:
    """A (time, y, x) cube on a UTM grid (pixel centres at 500 015 + 30 i, 3 549 985 - 30 j)."""
    return make_series(np.zeros((2, height, width), np.float32), resolution=RES, epsg=epsg)


def square(x0: float, y0: float, x1: float, y1: float) -> dict:
    return {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]}


def reference_mask(cube: xr.DataArray, x0, y0, x1, y1, buffer=0.0) -> np.ndarray:
    """Independent answer: pixel cells that overlap the box, grown by ``buffer`` (centre distance)."""
    xs, ys = cube.x.values, cube.y.values
    col = (xs + RES / 2 > x0) & (xs - RES / 2 < x1)
    row = (ys + RES / 2 > y0) & (ys - RES / 2 < y1)
    ice = row[:, None] & col[None, :]
    if buffer:
        centres = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1)
        inside = centres[ice]
        d = np.sqrt(((centres[:, :, None, :] - inside[None, None]) ** 2).sum(-1)).min(-1)
        ice = d <= buffer
    return ice


def test_rasterize__utm_box_matches_the_pixel_cells_it_overlaps():
    cube = grid()
    box = (500_000 + 10 * RES + 7, 3_550_000 - 30 * RES + 3, 500_000 + 25 * RES - 4, 3_550_000 - 12 * RES - 9)
    mask = rasterize_outlines(square(*box), cube, crs="EPSG:32607")
    assert mask.dtype == bool and mask.dims == ("y", "x")
    np.testing.assert_array_equal(mask.values, reference_mask(cube, *box))
    assert mask.rio.crs.to_epsg() == 32607
    np.testing.assert_array_equal(mask.x.values, cube.x.values)


def test_rasterize__buffer_in_metres_grows_the_ice_by_centre_distance():
    cube = grid()
    box = (500_000 + 10 * RES, 3_550_000 - 30 * RES, 500_000 + 25 * RES, 3_550_000 - 12 * RES)
    mask = rasterize_outlines(square(*box), cube, crs="EPSG:32607", buffer=75.0)
    np.testing.assert_array_equal(mask.values, reference_mask(cube, *box, buffer=75.0))
    assert mask.sum() > rasterize_outlines(square(*box), cube, crs="EPSG:32607").sum()


def test_rasterize__lonlat_geojson_file_is_reprojected(tmp_path):
    from pyproj import Transformer

    cube = grid()
    box = (500_000 + 5 * RES, 3_550_000 - 35 * RES, 500_000 + 20 * RES, 3_550_000 - 8 * RES)
    to_lonlat = Transformer.from_crs(32607, 4326, always_xy=True)
    ring = [to_lonlat.transform(x, y) for x, y in square(*box)["coordinates"][0]]
    features = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"RGIId": "RGI60-01.00001"},
         "geometry": {"type": "Polygon", "coordinates": [ring]}}]}
    path = tmp_path / "rgi.geojson"
    path.write_text(json.dumps(features))
    mask = rasterize_outlines(path, cube)
    expected = reference_mask(cube, *box)
    # the projected square's edges bend slightly in lon/lat: at most one ring of pixels differs
    assert (mask.values != expected).sum() <= 0.05 * expected.sum()
    assert mask.values[expected].mean() > 0.95


def test_rasterize__geo_interface_objects_and_lists_are_accepted():
    class Shape:  # what shapely geometries expose
        def __init__(self, geometry):
            self.__geo_interface__ = geometry

    cube = grid()
    a = square(500_000 + 2 * RES, 3_550_000 - 6 * RES, 500_000 + 6 * RES, 3_550_000 - 2 * RES)
    b = square(500_000 + 30 * RES, 3_550_000 - 36 * RES, 500_000 + 40 * RES, 3_550_000 - 30 * RES)
    both = rasterize_outlines([Shape(a), Shape(b)], cube, crs=32607)
    assert both.sum() == rasterize_outlines(a, cube, crs=32607).sum() + rasterize_outlines(b, cube, crs=32607).sum()


def test_rasterize__outlines_off_the_grid_warn():
    with pytest.warns(UserWarning, match="do not touch the grid"):
        mask = rasterize_outlines(square(0, 0, 10, 10), grid(), crs=32607)
    assert not mask.any()


@pytest.mark.parametrize(
    "outlines, error, fragment",
    [
        ("/nonexistent/rgi.geojson", ConfigError, "does not exist"),
        ({"type": "Topology"}, DataTypeError, "not understood"),
        (42, DataTypeError, "GeoJSON path"),
    ],
)
def test_rasterize__bad_outlines_raise(outlines, error, fragment):
    with pytest.raises(error, match=fragment):
        rasterize_outlines(outlines, grid())


def test_rasterize__grid_without_crs_or_bad_buffer_raise():
    cube = grid()
    with pytest.raises(GridError, match="write_crs"):
        rasterize_outlines(square(0, 0, 1, 1), cube.drop_vars("spatial_ref"))
    with pytest.raises(ConfigError, match="buffer"):
        rasterize_outlines(square(0, 0, 1, 1), cube, buffer=-1)


def test_rasterize__not_a_file_of_json(tmp_path):
    path = tmp_path / "x.geojson"
    path.write_text("not json")
    with pytest.raises(ConfigError, match="not GeoJSON"):
        rasterize_outlines(path, grid())


def test_resolve__nothing_given_is_flag_0_and_a_mask_is_flag_1():
    cube = grid(6, 8)
    assert resolve_stable(cube) == (None, FLAG_NONE)
    user = xr.DataArray(np.eye(6, 8, dtype=bool), dims=("x", "y")[::-1], coords={"y": cube.y, "x": cube.x})
    mask, flag = resolve_stable(cube, stable=user.transpose("x", "y"))
    assert flag == FLAG_USER and mask.dims == ("y", "x")
    np.testing.assert_array_equal(mask.values, np.eye(6, 8, dtype=bool))


def test_resolve__outlines_remove_buffered_ice_from_the_mask():
    cube = grid()
    box = (500_000 + 10 * RES, 3_550_000 - 30 * RES, 500_000 + 25 * RES, 3_550_000 - 12 * RES)
    half = xr.DataArray(np.arange(50)[None, :].repeat(40, 0) < 25, dims=("y", "x"))
    mask, flag = resolve_stable(cube, stable=half, outlines=square(*box), crs=32607, buffer=60.0)
    assert flag == FLAG_USER
    expected = (np.arange(50)[None, :] < 25) & ~reference_mask(cube, *box, buffer=60.0)
    np.testing.assert_array_equal(mask.values, expected)
    only, _ = resolve_stable(cube, outlines=square(*box), crs=32607, buffer=60.0)
    np.testing.assert_array_equal(only.values, ~reference_mask(cube, *box, buffer=60.0))


@pytest.mark.parametrize(
    "stable, error, fragment",
    [
        (np.ones((40, 50), bool), DataTypeError, "DataArray"),
        (xr.DataArray(np.ones((40, 50)), dims=("y", "x")), DataTypeError, "boolean"),
        (xr.DataArray(np.ones((40, 5, 50), bool), dims=("y", "b", "x")), DimensionError, "dims"),
        (xr.DataArray(np.ones((40, 49), bool), dims=("y", "x")), GridError, "not on the grid"),
        (xr.DataArray(np.ones((40, 50), bool), dims=("y", "x"), coords={"x": np.arange(50.0)}),
         GridError, "not on the grid"),
        (xr.DataArray(np.ones((40, 50), bool), dims=("y", "x")).chunk({"y": 20}), ChunkingError, "one Dask chunk"),
    ],
)
def test_resolve__bad_masks_raise(stable, error, fragment):
    with pytest.raises(error, match=fragment):
        resolve_stable(grid(), stable=stable, what="flow")


def test_variability__zero_on_unchanged_texture_and_high_where_it_changes():
    cube = changing_ground(24)
    with raise_if_dask_computes():
        lazy = temporal_variability(cube.chunk({"time": 2}), window=2.0)
    v = lazy.compute().values
    # independent: the share of the local high-pass energy that is temporal variance, ~0 / ~1
    assert v[:, :16].max() < 0.01 and v[:, 32:].min() > 0.5
    np.testing.assert_allclose(v, temporal_variability(cube, window=2.0).values, atol=1e-5)
    # a NaN pixel in every scene but one is unknown
    holed = cube.copy(data=np.where(np.arange(5)[:, None, None] > 0, np.nan, 0) + cube.values)
    assert np.isnan(temporal_variability(holed, window=2.0).values).all()


def test_stable_from_variability__threshold_minimum_share_and_nothing_clear():
    mask = stable_from_variability(changing_ground(24), window=2.0)
    assert mask[:, :16].all() and not mask[:, 32:].any()
    # 4 of 64 columns unchanged: under 20 % pass, the 20 % least changing are kept
    few = stable_from_variability(changing_ground(4), window=1.0).values
    assert few.mean() == pytest.approx(0.2, abs=0.02) and few[:, :3].mean() > 0.9
    # nothing unchanged at all: no restriction rather than the least changing noise
    assert stable_from_variability(changing_ground(0), window=1.0).values.all()
    with pytest.raises(ConfigError, match="min_fraction"):
        stable_from_variability(changing_ground(4), min_fraction=2.0)
    # the shared option check: booleans and NaN are not thresholds
    for bad in (dict(threshold=True), dict(min_clear=float("nan")), dict(threshold=-0.1)):
        with pytest.raises(ConfigError, match="must be a non-negative number"):
            stable_from_variability(changing_ground(4), **bad)
