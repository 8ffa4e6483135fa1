"""Tests of glacierxr.sample: the embedded synthetic Landsat C2 L2 sample and its ground truth."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage, optimize

import glacierxr as gx
from glacierxr.errors import CatalogError, ConfigError
from glacierxr.landsat import QA_BITS, SR_OFFSET, SR_SCALE

BANDS = {"green", "swir16", "qa_pixel"}
CLOUDY_BITS = (1 << QA_BITS["dilated_cloud"]) | (1 << QA_BITS["cirrus"]) | (1 << QA_BITS["cloud"])
SHADOW_BIT = 1 << QA_BITS["cloud_shadow"]
SQUARE = np.ones((3, 3), bool)  # 8-connected structuring element


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _items(catalog_path) -> list[pystac.Item]:
    catalog = pystac.read_file(str(catalog_path))
    return sorted(catalog.get_items(recursive=True), key=lambda item: item.datetime)


def _read(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(item.assets[key].get_absolute_href()) as src:
        return src.read(1)


def _reflectance(item: pystac.Item, key: str) -> np.ndarray:
    dn = _read(item, key)
    band = item.assets[key].extra_fields["raster:bands"][0]
    refl = dn * band["scale"] + band["offset"]
    return np.where(dn == band["nodata"], np.nan, refl)


def _ndsi(item: pystac.Item) -> np.ndarray:
    green, swir = _reflectance(item, "green"), _reflectance(item, "swir16")
    return (green - swir) / (green + swir)


def _snow_ice(truth) -> np.ndarray:
    classes = gx.sample.SURFACE_CLASSES
    return np.isin(truth.surface.values, (classes["snow"], classes["ice"]))


def _usable(qa: np.ndarray) -> np.ndarray:
    """Not fill and no cloud, dilated cloud, cirrus or shadow bit."""
    return (qa & (1 | CLOUDY_BITS | SHADOW_BIT)) == 0


@pytest.fixture(scope="module")
def items(sample_catalog):
    return _items(sample_catalog)


@pytest.fixture(scope="module")
def truth(sample_catalog):
    return gx.sample.open_truth(sample_catalog)


@pytest.fixture(scope="module")
def qa_stack(items):
    return np.stack([_read(item, "qa_pixel") for item in items])


def _bare_ice_pairs(truth, qa_stack, *, min_pixels=120):
    """Consecutive scenes with enough bare glacier ice, usable (cloud-free) in both.

    Returns ``(a, b, ok_a, ok_b)``: the masks are in each scene's own (misregistered) frame.
    """
    bare = truth.surface.values == gx.sample.SURFACE_CLASSES["ice"]
    pairs = []
    for a in range(truth.sizes["time"] - 1):
        b = a + 1
        ok_a = ndimage.binary_erosion(bare[a], iterations=2) & _usable(qa_stack[a])
        ok_b = ndimage.binary_erosion(bare[b], iterations=2) & _usable(qa_stack[b])
        if ok_b.sum() >= min_pixels and ok_a.sum() >= min_pixels:
            pairs.append((a, b, ok_a, ok_b))
    return pairs


def _warp(image: np.ndarray, d_col, d_row, order: int = 3) -> np.ndarray:
    """Sample ``image`` at (row - d_row, col - d_col): moves content by (+d_col, +d_row)."""
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(float)
    return ndimage.map_coordinates(image, [rows - d_row, cols - d_col], order=order,
                                   mode="constant", cval=0.0)


def _fill_outside(image: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``image`` with pixels outside ``ok`` set to the mean inside.

    Cubic-spline interpolation weighs pixels a few px away; bright clouds or snow next to the
    compared area would leak into it.
    """
    return np.where(ok, image, image[ok].mean())


def _compare_where(ok_a, ok_b, d_col, d_row) -> np.ndarray:
    """Pixels of scene b whose warped scene-a values come only from ``ok_a`` pixels, 2 px inside."""
    sources_ok = _warp(ok_a.astype(float), d_col, d_row, order=1) > 0.999
    return ndimage.binary_erosion(sources_ok & ok_b, iterations=2)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


# ------------------------------------------------------------------------------------------
# STAC catalog and COGs
# ------------------------------------------------------------------------------------------
def test_write_catalog__items_look_like_planetary_computer(sample_catalog, items, truth):
    catalog = pystac.read_file(str(sample_catalog))
    (collection,) = catalog.get_children()
    assert collection.id == "landsat-c2-l2"
    assert len(items) == truth.sizes["time"] > 20
    assert [item.id for item in items] == list(truth.id.values)
    for item in items:
        assert set(item.assets) == BANDS
        assert item.collection_id == "landsat-c2-l2"
        props = item.properties
        assert props["proj:code"] == "EPSG:32643"
        assert props["platform"] in ("landsat-8", "landsat-9")
        assert props["landsat:wrs_path"] + props["landsat:wrs_row"] == item.id[10:16]
        assert item.id.startswith("LC08_L2SP_") and item.id.endswith("_02_T1")
        assert item.id[17:25] == f"{item.datetime:%Y%m%d}"
        for key in ("green", "swir16"):
            asset = item.assets[key]
            assert asset.media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
            (band,) = asset.extra_fields["raster:bands"]
            assert (band["scale"], band["offset"], band["nodata"], band["data_type"]) == (
                SR_SCALE, SR_OFFSET, 0, "uint16")
            assert asset.extra_fields["eo:bands"][0]["common_name"] == key
            assert "data" in asset.roles
        qa = item.assets["qa_pixel"].extra_fields
        assert qa["raster:bands"][0]["nodata"] == 1
        offsets = {f["name"]: f["offset"] for f in qa["classification:bitfields"]}
        assert offsets["snow"] == 5 and offsets["cloud"] == 3 and offsets["snow_confidence"] == 12
    # hrefs are relative: the catalog is self-contained
    raw = json.loads(items[0].get_self_href() and open(items[0].get_self_href()).read())
    assert all(not a["href"].startswith("/") for a in raw["assets"].values())
    assert raw["properties"]["proj:epsg"] == 32643  # on disk both proj:epsg and proj:code


def test_write_catalog__has_every_field_of_a_real_pc_item(sample_catalog, items, shared_data):
    real = json.loads(
        (shared_data / "stac" / "pc_landsat-c2-l2_item_LC09_L2SR_084082_20250722_02_T1.json")
        .read_text()
    )
    ours = json.loads(open(items[0].get_self_href()).read())
    missing = set(real["properties"]) - set(ours["properties"])
    assert not missing, missing
    for key in BANDS:
        assert set(real["assets"][key]) <= set(ours["assets"][key])
        ours_band = ours["assets"][key]["raster:bands"][0]
        assert set(real["assets"][key]["raster:bands"][0]) <= set(ours_band)
    real_fields = real["assets"]["qa_pixel"]["classification:bitfields"]
    ours_fields = ours["assets"]["qa_pixel"]["classification:bitfields"]
    assert [(f["name"], f["offset"], f["length"]) for f in ours_fields] == [
        (f["name"], f["offset"], f["length"]) for f in real_fields]
    real_ext = {u.rsplit("/", 3)[-3] for u in real["stac_extensions"]}
    ours_ext = {u.rsplit("/", 3)[-3] for u in ours["stac_extensions"]}
    assert real_ext <= ours_ext


def test_write_catalog__geometry_matches_projected_bbox(items):
    from pyproj import Transformer

    item = items[0]
    xmin, ymin, xmax, ymax = item.properties["proj:bbox"]
    to_lonlat = Transformer.from_crs(32643, 4326, always_xy=True)
    lon, lat = to_lonlat.transform([xmin, xmax], [ymin, ymax])
    w, s, e, n = item.bbox
    assert w <= min(lon) + 1e-9 and e >= max(lon) - 1e-9 and s <= min(lat) + 1e-9
    assert 75 < w < e < 78 and 35 < s < n < 37  # Karakoram, UTM 43N
    a, b, c, d, e_, f = item.properties["proj:transform"]
    assert (a, b, d, e_) == (30.0, 0.0, 0.0, -30.0) and (c, f) == (xmin, ymax)
    assert item.properties["proj:shape"] == [96, 96]


def test_cogs__are_valid_tiled_geotiffs_on_the_item_grid(items):
    from affine import Affine

    for item in items[:3]:
        for key in BANDS:
            with rasterio.open(item.assets[key].get_absolute_href()) as src:
                assert src.driver == "GTiff"
                assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
                assert src.profile["tiled"] and src.block_shapes[0][0] == src.block_shapes[0][1]
                assert src.compression.name.upper() == "DEFLATE"
                assert src.dtypes == ("uint16",)
                assert src.crs.to_epsg() == 32643
                assert src.transform == Affine(*item.properties["proj:transform"])
                assert [src.height, src.width] == item.properties["proj:shape"]
                assert src.nodata == (1 if key == "qa_pixel" else 0)


def test_write_catalog__cloud_cover_matches_qa(items, qa_stack, truth):
    covers = []
    for item, qa in zip(items, qa_stack):
        valid = (qa & 1) == 0
        cloud = (qa & (1 << QA_BITS["cloud"])) != 0
        fraction = (cloud & valid).sum() / valid.sum()
        assert item.properties["eo:cloud_cover"] == pytest.approx(100 * fraction, abs=0.01)
        covers.append(item.properties["eo:cloud_cover"])
    np.testing.assert_allclose(truth.cloud_fraction * 100, covers, atol=0.01)
    under = np.mean(np.asarray(covers) <= 20)
    assert 0.35 < under < 0.9, "max_cloud=20 must keep some scenes and drop others"


def test_qa__snow_never_carries_cloud_bits(qa_stack):
    snow = (qa_stack & (1 << QA_BITS["snow"])) != 0
    assert snow.mean() > 0.2
    assert not np.any(snow & ((qa_stack & (CLOUDY_BITS | SHADOW_BIT | 1)) != 0))
    # clear bit = neither cloud nor dilated cloud (fill excluded)
    not_fill = (qa_stack & 1) == 0
    clear = (qa_stack & (1 << QA_BITS["clear"])) != 0
    cloudy = (qa_stack & ((1 << QA_BITS["cloud"]) | (1 << QA_BITS["dilated_cloud"]))) != 0
    assert np.array_equal(clear[not_fill], ~cloudy[not_fill])


def test_qa__dilated_cloud_is_a_ring_around_clouds(qa_stack):
    checked = 0
    for qa in qa_stack:
        cloud = (qa & (1 << QA_BITS["cloud"])) != 0
        if not 0.01 < cloud.mean() < 0.6 or (qa & 1).any():  # fill may hide clouds
            continue
        dilated = (qa & (1 << QA_BITS["dilated_cloud"])) != 0
        ring = ndimage.binary_dilation(cloud, iterations=2) & ~cloud
        assert np.array_equal(dilated, ring)
        assert not np.any(dilated & cloud)
        checked += 1
    assert checked >= 3


def test_qa__nodata_scenes_have_fill_and_zero_dn(items, qa_stack, truth):
    with_fill = [i for i in range(len(items)) if (qa_stack[i] == 1).any()]
    assert 1 <= len(with_fill) < len(items) // 2
    for i in with_fill[:3]:
        fill = qa_stack[i] == 1
        assert np.all(_read(items[i], "green")[fill] == 0)
        assert np.all(_read(items[i], "swir16")[fill] == 0)
        assert np.all(_read(items[i], "green")[~fill] > 0)
        assert truth.nodata_fraction[i] == pytest.approx(fill.mean())


def test_qa__lake_is_flagged_water(truth, qa_stack):
    water = (qa_stack & (1 << QA_BITS["water"])) != 0
    assert water.any()
    # water only where the truth has the lake (allowing for the misregistration of 1.5 px)
    lake_zone = ndimage.binary_dilation(truth.lake.values, np.ones((3, 3), bool), iterations=2)
    assert not np.any(water & ~lake_zone[None])


# ------------------------------------------------------------------------------------------
# truth
# ------------------------------------------------------------------------------------------
def test_open_truth__shapes_coords_and_attrs(sample_catalog, items, truth):
    scene_months = truth.time.values.astype("datetime64[M]")
    months = np.arange(scene_months.min(), scene_months.max() + 1)  # every month, gaps too
    assert truth.sizes == {"time": len(items), "y": 96, "x": 96, "month": months.size}
    np.testing.assert_array_equal(truth.month.values.astype("datetime64[M]"), months)
    transform = rasterio.Affine(*items[0].properties["proj:transform"])
    np.testing.assert_allclose(truth.x, transform.c + 30 * (np.arange(96) + 0.5))
    np.testing.assert_allclose(truth.y, transform.f - 30 * (np.arange(96) + 0.5))
    assert truth.rio.crs.to_epsg() == 32643
    for name in ("shift_x", "shift_y", "snow_line", "cloud_fraction"):
        assert truth[name].dims == ("time",)
        assert "units" in truth[name].attrs and "long_name" in truth[name].attrs
    for name in ("u", "v", "elevation", "glacier", "stable"):
        assert truth[name].dims == ("y", "x")
    assert truth["glacier"].dtype == bool and truth.stable.dtype == bool
    assert not np.any(truth["glacier"] & truth.stable)
    assert np.all(np.abs(truth.shift_x) <= 1.5) and np.all(np.abs(truth.shift_y) <= 1.5)
    speed = np.hypot(truth.u, truth.v)
    assert 650 < float(speed.max()) < 1050
    assert float(speed.where(~truth["glacier"]).max()) == 0.0
    assert truth.attrs["seed"] == 0 and truth.attrs["width"] == 96
    times = np.array([np.datetime64(item.datetime.replace(tzinfo=None), "ns") for item in items])
    np.testing.assert_array_equal(truth.time.values, times)
    # the glacier retreats: terminus moves up-valley
    assert np.all(np.diff(truth.terminus_distance) < 0)


def test_open_truth__rejects_a_catalog_without_truth(tmp_path):
    with pytest.raises(CatalogError, match="No sample catalog"):
        gx.sample.open_truth(tmp_path / "nothing.json")
    catalog = pystac.Catalog(id="x", description="no truth")
    catalog.normalize_hrefs(str(tmp_path))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    with pytest.raises(CatalogError, match="no ground-truth link"):
        gx.sample.open_truth(tmp_path / "catalog.json")


# ------------------------------------------------------------------------------------------
# reproducibility, arguments
# ------------------------------------------------------------------------------------------
def test_write_catalog__reproducible_for_a_seed_and_different_for_another(tmp_path):
    small = dict(width=48, height=48, start="2019-06-01", end="2019-08-01")
    a = gx.sample.write_catalog(tmp_path / "a", seed=3, **small)
    b = gx.sample.write_catalog(tmp_path / "b", seed=3, **small)
    c = gx.sample.write_catalog(tmp_path / "c", seed=4, **small)
    items_a, items_b, items_c = _items(a), _items(b), _items(c)
    assert [i.id for i in items_a] == [i.id for i in items_b]
    assert [i.properties for i in items_a] == [i.properties for i in items_b]
    for ia, ib in zip(items_a, items_b):
        for key in BANDS:
            assert np.array_equal(_read(ia, key), _read(ib, key))
    ta, tb, tc = (gx.sample.open_truth(p) for p in (a, b, c))
    assert ta.identical(tb)
    assert not np.array_equal(ta.elevation, tc.elevation)
    assert items_a[0].bbox != items_c[0].bbox  # another glacier, another place
    assert not np.array_equal(_read(items_a[0], "green"), _read(items_c[0], "green"))


def test_write_catalog__refuses_to_overwrite_unless_asked(tmp_path):
    small = dict(width=32, height=32, start="2019-07-01", end="2019-07-20")
    gx.sample.write_catalog(tmp_path, **small)
    with pytest.raises(CatalogError, match="overwrite=True"):
        gx.sample.write_catalog(tmp_path, **small)
    path = gx.sample.write_catalog(tmp_path, overwrite=True, seed=1, **small)
    assert gx.sample.open_truth(path).attrs["seed"] == 1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(width=8), "width=8"),
        (dict(start="2020-01-01", end="2019-01-01"), "not after start"),
        (dict(start="yesterday"), "not a date"),
        (dict(epsg=4326), "projected CRS"),
        (dict(resolution=0), "not positive"),
        (dict(revisit_days=1), "revisit_days=1"),
        (dict(origin=(1.0,)), "origin"),
        (dict(flow="surge"), "flow='surge'"),
        (dict(max_speed=-5.0), "max_speed"),
        (dict(glacier_fraction=0.95), "glacier_fraction"),
    ],
)
def test_write_catalog__rejects_bad_arguments(tmp_path, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        gx.sample.write_catalog(tmp_path, **{"width": 32, "height": 32, **kwargs})


def test_write_catalog__landsat9_interleaves_eight_days_after_landsat8(tmp_path):
    path = gx.sample.write_catalog(tmp_path, width=32, height=32, start="2021-10-01",
                                   end="2022-03-01")
    items = _items(path)
    platforms = {item.properties["platform"] for item in items}
    assert platforms == {"landsat-8", "landsat-9"}
    l8 = [item.datetime.date() for item in items if item.properties["platform"] == "landsat-8"]
    l9 = [item.datetime.date() for item in items if item.properties["platform"] == "landsat-9"]
    assert min(l9).isoformat() >= "2021-11-01"
    start = dt.date(2021, 10, 1)  # the first possible acquisition (it may be dropped)
    assert all((d - start).days % 16 == 0 for d in l8)
    assert all((d - start).days % 16 == 8 for d in l9)
    for item in items:
        landsat9 = item.properties["platform"] == "landsat-9"
        assert item.id.startswith("LC09_" if landsat9 else "LC08_")


# ------------------------------------------------------------------------------------------
# the science embedded in the pixels
# ------------------------------------------------------------------------------------------
def test_ndsi__high_on_snow_and_ice_low_on_rock(items, qa_stack, truth):
    checked = 0
    for i, item in enumerate(items):
        if truth.cloud_fraction[i] > 0.1:
            continue
        ndsi = _ndsi(item)
        usable = _usable(qa_stack[i])
        snow_ice = _snow_ice(truth)[i]
        water = (qa_stack[i] & (1 << QA_BITS["water"])) != 0
        assert np.all(ndsi[usable & snow_ice] >= 0.3)
        rock = usable & ~snow_ice & ~water
        if rock.sum() > 50:
            assert np.mean(ndsi[rock] < 0.3) > 0.95
        # QA snow flag and the truth agree
        snow_flag = (qa_stack[i] & (1 << QA_BITS["snow"])) != 0
        assert np.array_equal(snow_flag[usable], snow_ice[usable])
        checked += 1
    assert checked >= 5


def test_ndsi__ice_texture_is_visible(items, qa_stack, truth):
    (a, _, ok, _), *_ = _bare_ice_pairs(truth, qa_stack)
    ndsi = _ndsi(items[a])[ok]
    assert 0.45 < ndsi.min() and ndsi.max() < 0.95
    assert ndsi.std() > 0.04
    green = _reflectance(items[a], "green")[ok]
    assert green.std() > 0.03


def test_texture__moves_with_the_true_velocity(items, qa_stack, truth):
    _check_texture_moves_with_truth(items, qa_stack, truth, min_motion_px=0.8)


@pytest.fixture(scope="module")
def fast_sample(tmp_path_factory):
    catalog = gx.sample.write_catalog(tmp_path_factory.mktemp("fast"), seed=0, width=96,
                                      height=96, start="2018-07-01", end="2018-09-30",
                                      flow="fast", dynamics="cycle")  # summer bare ice
    return _items(catalog), gx.sample.open_truth(catalog)


def test_fast_flow__truth_is_12_px_per_16_days_and_plug_like(fast_sample):
    _, truth = fast_sample
    res = truth.attrs["resolution"]
    speed_px = truth["speed"].values * 16.0 / 365.25 / res
    ice = truth["glacier"].values
    assert speed_px[ice].max() == pytest.approx(12.0, rel=0.01)
    assert np.percentile(speed_px[ice], 5) > 10.0  # 90 % sliding: >= 10 px nearly everywhere
    assert np.all(speed_px[~ice] == 0.0)
    assert truth.attrs["flow"] == "fast" and truth.attrs["sliding_fraction"] == 0.9


def test_fast_flow__texture_moves_with_the_true_velocity(fast_sample):
    items, truth = fast_sample
    qa_stack = np.stack([_read(item, "qa_pixel") for item in items])
    _check_texture_moves_with_truth(items, qa_stack, truth, min_motion_px=10.0, min_pixels=60)


def test_glacier_fraction__covers_half_the_scene_and_renders_as_ice(tmp_path):
    catalog = gx.sample.write_catalog(tmp_path, seed=1, width=64, height=64,
                                      start="2018-07-15", end="2018-08-31",
                                      glacier_fraction=0.5)
    truth = gx.sample.open_truth(catalog)
    glacier = truth["glacier"].values
    assert glacier.mean() == pytest.approx(0.5, abs=0.02)
    assert truth.attrs["glacier_fraction"] == pytest.approx(glacier.mean())
    assert truth["stable"].values.mean() > 0.3  # rock left for co-registration
    assert not (truth["stable"].values & glacier).any()
    # what is rendered on the glacier is ice or snow (scene frame: allow the 1.5 px shift)
    core = ndimage.binary_erosion(glacier, iterations=2)
    classes = gx.sample.SURFACE_CLASSES
    on_ice = np.isin(truth.surface.values[:, core], (classes["ice"], classes["snow"]))
    assert on_ice.all()


def _check_texture_moves_with_truth(items, qa_stack, truth, *, min_motion_px, min_pixels=120):
    pairs = _bare_ice_pairs(truth, qa_stack, min_pixels=min_pixels)
    assert pairs, "no pair of consecutive scenes with bare, clear glacier ice"
    res = truth.attrs["resolution"]
    rows, cols = np.mgrid[0 : truth.sizes["y"], 0 : truth.sizes["x"]].astype(float)
    best_scales = []
    for a, b, ok_a, ok_b in pairs:
        years = (truth.time[b] - truth.time[a]).values / np.timedelta64(1, "D") / 365.25
        shift_col = float(truth.shift_x[b] - truth.shift_x[a])
        shift_row = float(truth.shift_y[b] - truth.shift_y[a])
        # velocity where scene b's pixels really are (its frame is shifted by its misregistration)
        at_b = [rows - float(truth.shift_y[b]), cols - float(truth.shift_x[b])]
        u = ndimage.map_coordinates(truth.u.values, at_b, order=1, mode="nearest")
        v = ndimage.map_coordinates(truth.v.values, at_b, order=1, mode="nearest")
        flow_col, flow_row = u * years / res, -v * years / res  # v is north, rows point south
        ok = _compare_where(ok_a, ok_b, shift_col + flow_col, shift_row + flow_row)
        if ok.sum() < 80:
            continue
        assert np.hypot(flow_col, flow_row)[ok].max() > min_motion_px
        green_a = _fill_outside(_reflectance(items[a], "green"), ok_a)
        green_b = _reflectance(items[b], "green")[ok]

        def rms(scale):
            moved = _warp(green_a, shift_col + scale * flow_col, shift_row + scale * flow_row)[ok]
            return float(np.sqrt(np.mean((moved - green_b) ** 2)))

        # the velocity scale that best explains the change is 1: the texture moves at the truth
        best = optimize.minimize_scalar(rms, bounds=(0.0, 2.0), method="bounded").x
        assert best == pytest.approx(1.0, abs=0.2), best
        best_scales.append(best)
        assert rms(1.0) < 0.7 * rms(0.0)  # and motion matters: much better than none
        moved = _warp(green_a, shift_col + flow_col, shift_row + flow_row)[ok]
        assert _corr(moved, green_b) > 0.9
        if len(best_scales) == 3:
            break
    assert best_scales, "no pair with enough comparable bare ice"
    assert np.mean(best_scales) == pytest.approx(1.0, abs=0.07), best_scales


def _clear_scenes(truth, qa_stack, max_cloud=0.01):
    """Indices of (nearly) cloud-free scenes with their usable-pixel masks."""
    return [(i, _usable(qa_stack[i])) for i in range(truth.sizes["time"])
            if truth.cloud_fraction[i] <= max_cloud]


def test_steep_rock__truth_is_consistent_with_the_elevation(truth):
    # slope: central differences of the analytic elevation (interior pixels)
    d_row, d_col = np.gradient(truth.elevation.values.astype(np.float64), truth.attrs["resolution"])
    slope = np.degrees(np.arctan(np.hypot(d_row, d_col)))
    np.testing.assert_allclose(truth.slope.values[1:-1, 1:-1], slope[1:-1, 1:-1], atol=0.01)
    assert truth.steep_rock.dtype == bool and truth.slope.attrs["units"] == "degree"
    hold, noise = truth.attrs["snow_hold_slope_deg"], truth.attrs["snow_hold_noise_deg"]
    steep = truth.steep_rock.values
    # the threshold varies in space around snow_hold_slope, by a few noise std at most
    assert np.all(truth.slope.values[steep] > hold - 5 * noise)
    off_ice = ~truth["glacier"].values & ~truth.lake.values
    assert np.all(steep[off_ice & (truth.slope.values > hold + 5 * noise)])
    assert not np.any(steep & truth["glacier"].values)
    # irregular patches, not one block: separate faces
    assert ndimage.label(steep)[1] >= 5


def test_steep_rock__stays_bare_in_every_scene(items, qa_stack, truth):
    # 2 px inside the steep faces (in x and y): whatever the misregistration (<= 1.5 px in
    # each direction), still steep rock
    core = ndimage.binary_erosion(truth.steep_rock.values, SQUARE, iterations=2)
    assert core.sum() > 200
    rock = gx.sample.SURFACE_CLASSES["rock"]
    # all year round, winter included (a few pixels where slope and threshold are nearly
    # equal over an area may flip between the grid points)
    assert np.all(np.mean(truth.surface.values[:, core] == rock, axis=1) > 0.99)
    checked = 0
    for i, usable in _clear_scenes(truth, qa_stack):
        ndsi = _ndsi(items[i])
        bare = ndsi < 0.3
        # NDSI of bare rock is < 0 but noisy where faces lie in deep shadow
        assert np.mean(bare[core & usable]) > 0.95
        # every clear scene keeps a good share of snow-free steep rock to register on
        assert np.sum(bare & core & usable) / usable.sum() >= 0.15
        checked += 1
    assert checked >= 8


def test_steep_rock__winter_snow_covers_the_gentle_ground_only(items, qa_stack, truth):
    core = ndimage.binary_erosion(truth.steep_rock.values, SQUARE, iterations=2)
    gentle = ndimage.binary_erosion(~truth.steep_rock.values & ~truth.lake.values, SQUARE,
                                    iterations=2)
    winter = [(i, usable) for i, usable in _clear_scenes(truth, qa_stack, max_cloud=0.05)
              if float(truth.snow_line[i]) < truth.attrs["snow_line_winter"] + 100]
    assert winter, "no clear winter scene"
    for i, usable in winter:
        above = gentle & usable & (truth.elevation.values > float(truth.snow_line[i]) + 150)
        snow = _ndsi(items[i]) >= 0.3
        assert np.mean(snow[above]) > 0.95  # gentle ground well above the snow line: snow
        assert np.mean(snow[core & usable]) < 0.05  # steep faces: bare


def _fit_shift(a, b, mask, start):
    """Shift (d_col, d_row) moving ``a``'s content onto ``b`` on ``mask``, by least squares."""
    def cost(d):
        warped = _warp(a, np.full(a.shape, d[0]), np.full(a.shape, d[1]))[mask]
        target = b[mask]
        warped = (warped - warped.mean()) / warped.std()
        target = (target - target.mean()) / target.std()
        return float(np.mean((warped - target) ** 2))

    # start 0.5 px off the truth in both directions: the fit has to find its way back
    x0 = [start[0] + 0.5, start[1] - 0.5]
    result = optimize.minimize(cost, x0=x0, method="Nelder-Mead",
                               options={"xatol": 1e-3, "fatol": 1e-7})
    return result.x


def test_misregistration__truth_matches_content_shift_on_stable_ground(items, qa_stack, truth):
    stable = ndimage.binary_erosion(truth.stable.values, iterations=2)
    checked = 0
    for a in range(truth.sizes["time"] - 1):
        b = a + 1
        shift_col = float(truth.shift_x[b] - truth.shift_x[a])
        shift_row = float(truth.shift_y[b] - truth.shift_y[a])
        snow_ice = _snow_ice(truth)  # in each scene's own frame
        ok_a = stable & ~snow_ice[a] & _usable(qa_stack[a])
        ok_b = stable & ~snow_ice[b] & _usable(qa_stack[b])
        # compare where the sources are valid for any shift within 1 px of the true one
        ok = ok_b
        for dc in (-1, 1):
            for dr in (-1, 1):
                ok = ok & _compare_where(ok_a, ok_b, shift_col + dc, shift_row + dr)
        if ok.sum() < 150:
            continue
        green_a = _fill_outside(_reflectance(items[a], "green"), ok_a)
        green_b = _reflectance(items[b], "green")
        d_col, d_row = _fit_shift(green_a, green_b, ok, start=(shift_col, shift_row))
        assert d_col == pytest.approx(shift_col, abs=0.1)
        assert d_row == pytest.approx(shift_row, abs=0.1)
        checked += 1
        if checked == 3:
            break
    assert checked >= 1


def test_open_truth__grid_is_the_grid_gx_load_gives(sample_catalog, items, truth):
    items_found = gx.search(datetime=None, max_cloud=None, catalog=sample_catalog)
    cube = gx.load(items_found, resolution=30)
    np.testing.assert_allclose(cube.x, truth.x)
    np.testing.assert_allclose(cube.y, truth.y)
    assert cube.rio.crs == truth.rio.crs
    assert list(cube["id"].values) == list(truth["id"].values)
    # native grid: the loaded pixels are the COG pixels, not resampled
    green = cube.green.isel(time=0).values
    np.testing.assert_allclose(green, _reflectance(items[0], "green"), rtol=1e-6, atol=1e-6)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), day=st.integers(0, 364))
def test_write_catalog__qa_and_metadata_invariants_hold_for_any_seed(tmp_path_factory, seed, day):
    start = dt.date(2019, 1, 1) + dt.timedelta(days=day)
    try:
        path = gx.sample.write_catalog(tmp_path_factory.mktemp("any"), seed=seed, width=32,
                                       height=32, start=start.isoformat(),
                                       end=(start + dt.timedelta(days=40)).isoformat())
    except ConfigError as error:  # every acquisition of the window dropped (rare, allowed)
        assert "No acquisition" in str(error)
        assume(False)
    truth = gx.sample.open_truth(path)
    items = _items(path)
    assert len({item.id for item in items}) == len(items) == truth.sizes["time"] >= 1
    assert np.all(np.abs(truth.shift_x) <= 1.5) and np.all(np.abs(truth.shift_y) <= 1.5)
    for item in items:
        qa, green, swir = (_read(item, key) for key in ("qa_pixel", "green", "swir16"))
        fill = (qa & 1) != 0
        assert np.array_equal(fill, green == 0) and np.array_equal(fill, swir == 0)
        assert np.all(qa[fill] == 1)
        snow = (qa & (1 << QA_BITS["snow"])) != 0
        assert not np.any(snow & ((qa & (CLOUDY_BITS | SHADOW_BIT)) != 0))
        if (~fill).any():
            cloud = ((qa & (1 << QA_BITS["cloud"])) != 0)[~fill].mean()
            assert item.properties["eo:cloud_cover"] == pytest.approx(100 * cloud, abs=0.01)


def test_write_catalog__later_end_keeps_the_earlier_scenes(tmp_path):
    small = dict(seed=5, width=32, height=32, start="2019-05-01")
    short = _items(gx.sample.write_catalog(tmp_path / "short", end="2019-06-15", **small))
    longer = _items(gx.sample.write_catalog(tmp_path / "long", end="2019-08-15", **small))
    assert [i.id for i in longer[: len(short)]] == [i.id for i in short]
    assert len(longer) > len(short)
    for a, b in zip(short, longer):
        assert np.array_equal(_read(a, "green"), _read(b, "green"))


# ------------------------------------------------------------------------------------------
# dynamics="memory": snow-line anomalies with memory, and the oracle forecast
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def memory_truth(tmp_path_factory):
    catalog = gx.sample.write_catalog(tmp_path_factory.mktemp("memory"), seed=4, width=40,
                                      height=40, start="2013-01-01", end="2022-12-31",
                                      dynamics="memory")
    return gx.sample.open_truth(catalog)


def _summer_weight(times) -> np.ndarray:
    doy = pd.DatetimeIndex(times).dayofyear.to_numpy()
    return 0.5 * (1 + np.cos(2 * np.pi * (doy - 218) / 365.25))


def test_memory__snow_line_is_cycle_plus_ar1_anomalies_plus_noise(memory_truth):
    truth = memory_truth
    fast, melt = truth["fast_anomaly"].values, truth["melt_anomaly"].values
    assert fast.size == 120
    # the stated month-scale persistence and size (10 years: loose sampling bounds)
    assert 0.5 < np.corrcoef(fast[:-1], fast[1:])[0, 1] < 0.85
    assert 80.0 < fast.std() < 160.0
    assert np.corrcoef(melt[:-1], melt[1:])[0, 1] > 0.8
    # each scene: climatology + fast(month) + summer weight * melt(month) + white noise
    month = np.searchsorted(truth["month"].values, truth["time"].values, side="right") - 1
    anomaly = fast[month] + _summer_weight(truth["time"].values) * melt[month]
    np.testing.assert_allclose(truth["snow_line_anomaly"].values, anomaly, atol=1e-6)
    noise = truth["snow_line"] - truth["snow_line_climatology"] - truth["snow_line_anomaly"]
    assert 30.0 < float(noise.std()) < 50.0
    assert abs(np.corrcoef(noise[:-1], noise[1:])[0, 1]) < 0.2  # white


def test_memory__retreat_rate_varies_from_year_to_year(memory_truth):
    truth = memory_truth
    yearly = truth["terminus_distance"].groupby("time.year").first().values
    retreat = -np.diff(yearly)
    assert retreat.min() > 0
    assert retreat.max() > 1.8 * retreat.min()  # not a constant rate
    assert np.mean(retreat) == pytest.approx(truth.attrs["retreat_rate"], rel=0.5)


def test_oracle__is_the_mean_of_simulated_futures(memory_truth):
    """Monte-Carlo over the process, written here from its definition: same expectation."""
    truth = memory_truth
    attrs = {k[len("process_"):]: v for k, v in truth.attrs.items() if k.startswith("process_")}
    issue = 40  # month index of the issue month (May 2016)
    periods = truth["month"].values[issue + 1 : issue + 4]
    oracle = gx.sample.oracle_forecast(truth, truth["month"].values[issue], periods)
    rng = np.random.default_rng(0)
    n_sims = 4000
    fast = np.full(n_sims, truth["fast_anomaly"].values[issue])
    melt = np.full(n_sims, truth["melt_anomaly"].values[issue])
    threshold = truth["snow_threshold"].values
    for k, start in enumerate(periods):
        fast = attrs["phi_fast"] * fast + attrs["std_fast"] * np.sqrt(
            1 - attrs["phi_fast"] ** 2) * rng.standard_normal(n_sims)
        melt = attrs["phi_melt"] * melt + attrs["std_melt"] * np.sqrt(
            1 - attrs["phi_melt"] ** 2) * rng.standard_normal(n_sims)
        in_month = truth["time"].values.astype("datetime64[M]") == np.datetime64(start, "M")
        covered = np.zeros(threshold.shape)
        for i in np.flatnonzero(in_month):
            line = (truth["snow_line_climatology"].values[i] + fast
                    + _summer_weight(truth["time"].values[i : i + 1]) * melt
                    + attrs["std_scene"] * rng.standard_normal(n_sims))
            covered += np.mean(np.nan_to_num(threshold, nan=-np.inf)[None]
                               > line[:, None, None], axis=0)
        simulated = covered / in_month.sum()
        # Monte-Carlo std of a mean of 4000 indicators is at most 0.008
        np.testing.assert_allclose(oracle.values[k], simulated, atol=0.035)
        assert np.abs(oracle.values[k] - simulated).mean() < 0.01


def test_oracle__beats_climatology_and_persistence_on_the_truth(memory_truth):
    truth = memory_truth
    months = truth["month"].values
    cover = gx.sample.snow_cover(truth, months).values
    index = pd.DatetimeIndex(months)
    calendar, year = index.month.to_numpy(), index.year.to_numpy()
    # out of sample: the mean of the same calendar month in the other years
    climatology = np.stack([np.nanmean(cover[(calendar == m) & (year != y)], axis=0)
                            for m, y in zip(calendar, year)])
    errors = {"oracle": [], "climatology": [], "persistence": []}
    for issue in range(12, months.size - 3):
        targets = months[issue + 1 : issue + 4]
        truth_future = cover[issue + 1 : issue + 4]
        forecasts = {
            "oracle": gx.sample.oracle_forecast(truth, months[issue], targets).values,
            "climatology": climatology[issue + 1 : issue + 4],
            "persistence": np.repeat(cover[issue : issue + 1], 3, axis=0),
        }
        for name, forecast in forecasts.items():
            errors[name].append((forecast - truth_future) ** 2)
    mse = {name: float(np.nanmean(values)) for name, values in errors.items()}
    assert mse["oracle"] < 0.9 * mse["climatology"], mse
    assert mse["oracle"] < 0.9 * mse["persistence"], mse


def test_oracle__rejects_periods_before_the_issue_month(memory_truth):
    months = memory_truth["month"].values
    with pytest.raises(ConfigError, match="not after issue_time"):
        gx.sample.oracle_forecast(memory_truth, months[10], months[10:12])


def test_calving__the_terminus_steps_back_at_the_event_times(tmp_path):
    catalog = gx.sample.write_catalog(tmp_path, seed=4, width=40, height=40, start="2013-01-01",
                                      end="2020-12-31", calving=True)
    truth = gx.sample.open_truth(catalog)
    years = (truth.time.values - np.datetime64("2013-01-01")) / np.timedelta64(1, "D") / 365.25
    events = [y for y in np.atleast_1d(truth.attrs["calving_years"]) if years[0] < y <= years[-1]]
    assert events, "seed 4 calves at least once in eight years"
    steps = -np.diff(truth["terminus_distance"].values)
    big = np.flatnonzero(steps > 0.8 * truth.attrs["calving_step_m"])
    assert len(big) == len(events)  # one step per event, between the scenes around it
    for i, event in zip(big, events):
        assert years[i] < event <= years[i + 1] + 1e-9
    assert np.median(steps) < 10.0  # otherwise the ordinary, slow retreat
