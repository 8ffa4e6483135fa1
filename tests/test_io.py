"""Tests of glacierxr.io: load() on real recorded STAC items pointed at small real COGs
(local files and a loopback HTTP server with Range support), and write()/read()."""

from __future__ import annotations

import copy
import json
import pickle
import string
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
import rasterio
import xarray as xr
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

import glacierxr as gx
from glacierxr import _remote
from glacierxr import io as gio
from glacierxr.errors import (
    AssetReadError,
    CatalogError,
    DataTypeError,
    GridError,
    MissingBandError,
    NoScenesError,
)
from glacierxr._synthetic import write_cog
from glacierxr.landsat import QA_FILL, SR_NODATA, SR_OFFSET, SR_SCALE, resolve_asset_key
from glacierxr.testing import raise_if_dask_computes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpserver import FileServer  # noqa: E402

C2 = "pc_landsat-c2-l2_items_20250722_L9_path084.geojson"
C8 = "pc_landsat-8-c2-l2_items_path197_row023_62dates.geojson"
BANDS = ("green", "swir16", "qa_pixel")
SIZE = 64
RES = 30.0
# QA_PIXEL values of real Landsat-9 scenes: clear land, clear water, snow, cloud, fill.
QA_VALUES = np.array([21824, 21952, 30048, 22280, 23826], dtype="uint16")


# ------------------------------------------------------------------------------------------
# helpers: recorded items -> small real COGs
# ------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    """Keep retry back-off tiny in tests (the behaviour is the same)."""
    monkeypatch.setattr(gio.reader, "RETRY_BACKOFF_S", 0.01)


def _features(shared_data: Path, name: str) -> dict[str, dict]:
    with open(shared_data / "stac" / name) as f:
        return {feature["id"]: feature for feature in json.load(f)["features"]}


def _by_row(features: dict[str, dict], row: str) -> dict:
    return next(f for f in features.values() if f["properties"]["landsat:wrs_row"] == row)


def make_item(
    feature: dict,
    directory: Path,
    *,
    lon: float = 162.0,
    lat: float = -20.0,
    seed: int = 0,
    declare_nodata: bool = True,
    dtype: str = "uint16",
    href=None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Point a recorded item at small COGs near (lon, lat) in the item's own UTM zone.

    Returns the rewritten item dict and the DN arrays written, by canonical band name.
    """
    item = copy.deepcopy(feature)
    properties = item["properties"]
    epsg = int(properties.get("proj:epsg") or properties["proj:code"].split(":")[1])
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    x0, y0 = round(x / RES) * RES + 15, round(y / RES) * RES + 15  # Landsat pixel edges
    transform = Affine(RES, 0, x0, 0, -RES, y0)
    native = (x0, y0 - SIZE * RES, x0 + SIZE * RES, y0)
    west, south, east, north = transform_bounds(epsg, 4326, *native, densify_pts=21)
    item["bbox"] = [west, south, east, north]
    item["geometry"] = {
        "type": "Polygon",
        "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]],
    }
    for holder in [properties] + list(item["assets"].values()):
        if "proj:shape" in holder:
            holder["proj:shape"] = [SIZE, SIZE]
        if "proj:transform" in holder:
            holder["proj:transform"] = list(transform)[:6]
        if "proj:bbox" in holder:
            holder["proj:bbox"] = list(native)
    rng = np.random.default_rng(seed)
    data = {}
    for band in BANDS:
        key = resolve_asset_key(item["assets"], band)
        if band == "qa_pixel":
            dn = rng.choice(QA_VALUES, size=(SIZE, SIZE)).astype("uint16")
            nodata = QA_FILL
        else:
            dn = rng.integers(7_300, 36_000, size=(SIZE, SIZE)).astype(dtype)
            nodata = SR_NODATA
        dn[0, :5] = nodata
        dn[10:12, 20:23] = nodata
        path = directory / f"{item['id']}_{key}.tif"
        write_cog(path, dn, transform, f"EPSG:{epsg}", nodata if declare_nodata else None)
        item["assets"][key]["href"] = href(path) if href else str(path)
        data[band] = dn
    return item, data


def reference(ds: xr.Dataset, href: str, *, scale=SR_SCALE, offset=SR_OFFSET, qa=False) -> np.ndarray:
    """Read one COG with rasterio onto the cube's grid (nearest), as load() promises."""
    with rasterio.open(href) as src, WarpedVRT(
        src,
        crs=ds.rio.crs,
        transform=Affine(RES, 0, float(ds.x[0]) - RES / 2, 0, -RES, float(ds.y[0]) + RES / 2),
        width=ds.sizes["x"],
        height=ds.sizes["y"],
        resampling=Resampling.nearest,
        add_alpha=src.nodata is None,
    ) as vrt:
        raw = vrt.read(masked=True)
    if raw.shape[0] == 2:  # alpha band marks the footprint
        dn = np.ma.masked_array(raw[0], mask=raw[1] == 0)
    else:
        dn = raw[0]
    if qa:
        return np.ma.filled(dn, 1).astype("uint16")
    values = dn.astype("float64") * scale + offset
    values = np.ma.filled(np.ma.masked_where(np.ma.filled(dn, 0) == 0, values), np.nan)
    return values.astype("float32")


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.nan_to_num(actual), np.nan_to_num(expected))


@pytest.fixture
def path084(shared_data):
    return _features(shared_data, C2)


@pytest.fixture
def zones(path084, tmp_path):
    """Four items of three UTM zones (two in 32658), close together near 162 E, 20 S."""
    rows = [("082", 0.00, 0.000), ("074", 0.30, 0.010), ("073", 0.45, 0.020), ("057", 0.60, 0.030)]
    items, arrays = [], []
    for seed, (row, dlon, dlat) in enumerate(rows):
        item, data = make_item(_by_row(path084, row), tmp_path, lon=162.0 + dlon / 10, lat=-20.0 + dlat, seed=seed)
        items.append(item)
        arrays.append(data)
    order = np.argsort([i["properties"]["datetime"] for i in items])  # the cube's time order
    return [items[i] for i in order], [arrays[i] for i in order]


# ------------------------------------------------------------------------------------------
# the grid, the values
# ------------------------------------------------------------------------------------------
def test_load__three_utm_zones_land_on_the_most_common_crs(zones):
    items, _ = zones
    assert {i["properties"]["proj:epsg"] for i in items} == {32657, 32658, 32659}
    ds = gx.load(items, groupby=None)
    assert ds.attrs["epsg"] == 32658
    assert ds.rio.crs.to_epsg() == 32658
    assert ds.sizes["time"] == 4
    assert dict(ds.sizes) == {"time": 4, "y": ds.sizes["y"], "x": ds.sizes["x"]}
    assert np.allclose(np.diff(ds.x), RES) and np.allclose(np.diff(ds.y), -RES)
    # The grid keeps the native Landsat pixel edges of the items already in EPSG:32658.
    native = items[1]["properties"]["proj:transform"]
    assert (ds.x.values[0] - RES / 2 - native[2]) % RES == 0
    assert (ds.y.values[0] + RES / 2 - native[5]) % RES == 0
    assert ds.green.dtype == np.float32 and ds.swir16.dtype == np.float32
    assert ds.qa_pixel.dtype == np.uint16
    # every scene has data somewhere on the common grid
    assert bool(ds.green.notnull().any(["y", "x"]).all())


def test_load__explicit_epsg_wins(zones):
    items, _ = zones
    ds = gx.load(items, groupby=None, epsg=32657)
    assert ds.rio.crs.to_epsg() == 32657 and ds.attrs["epsg"] == 32657


def test_load__values_equal_direct_rasterio_reads(zones):
    items, _ = zones
    ds = gx.load(items, groupby=None).compute()
    for t, item in enumerate(items):
        for band in ("green", "swir16"):
            href = item["assets"][band]["href"]
            rb = item["assets"][band]["raster:bands"][0]
            expected = reference(ds, href, scale=rb["scale"], offset=rb["offset"])
            assert_same(ds[band].isel(time=t).values, expected)
        expected_qa = reference(ds, item["assets"]["qa_pixel"]["href"], qa=True)
        np.testing.assert_array_equal(ds.qa_pixel.isel(time=t).values, expected_qa)


def test_load__nodata_is_nan_with_and_without_declared_nodata(path084, tmp_path):
    feature = _by_row(path084, "074")
    for declare in (True, False):
        folder = tmp_path / str(declare)
        folder.mkdir()
        item, data = make_item(feature, folder, declare_nodata=declare)
        ds = gx.load([item]).isel(time=0).compute()
        green = ds.green.values
        # same CRS and anchored grid: the cube is exactly the COG
        assert green.shape == (SIZE, SIZE)
        assert np.isnan(green[0, :5]).all() and np.isnan(green[10:12, 20:23]).all()
        assert np.isnan(green).sum() == (data["green"] == 0).sum()
        valid = data["green"] != 0
        expected = (data["green"][valid] * SR_SCALE + SR_OFFSET).astype("float32")
        np.testing.assert_array_equal(green[valid], expected)
        assert (ds.qa_pixel.values[~valid] == QA_FILL).all()


def test_load__scale_offset_from_each_items_raster_bands(path084, tmp_path):
    a, data_a = make_item(_by_row(path084, "074"), tmp_path, seed=1)
    b, data_b = make_item(_by_row(path084, "073"), tmp_path, seed=2)
    b["assets"]["green"]["raster:bands"][0].update(scale=5e-05, offset=-0.1)
    ds = gx.load([a, b], groupby=None, epsg=32658, bbox=a["bbox"]).compute()
    for item, scale, offset in [(a, SR_SCALE, SR_OFFSET), (b, 5e-05, -0.1)]:
        t = list(ds["id"].values).index(item["id"])
        expected = reference(ds, item["assets"]["green"]["href"], scale=scale, offset=offset)
        assert_same(ds.green.isel(time=t).values, expected)


def test_load__deprecated_collection_keys_and_constants(shared_data, tmp_path):
    features = _features(shared_data, C8)
    feature = next(iter(features.values()))
    assert "SR_B3" in feature["assets"] and "raster:bands" not in feature["assets"]["SR_B3"]
    item, data = make_item(feature, tmp_path, lon=9.0, lat=52.5)
    ds = gx.load([item])
    assert sorted(ds.data_vars) == ["green", "qa_pixel", "swir16"]
    assert ds.attrs["collection"] == "landsat-8-c2-l2"
    out = ds.compute()
    for band in ("green", "swir16"):
        expected = reference(out, item["assets"][resolve_asset_key(item["assets"], band)]["href"])
        assert_same(out[band].isel(time=0).values, expected)


def test_load__pystac_items_and_item_collection(zones):
    import pystac

    items, _ = zones
    objects = [pystac.Item.from_dict(copy.deepcopy(i)) for i in items]
    # pystac moves proj:epsg to proj:code: load() must still find the CRS of each item
    assert "proj:epsg" not in objects[0].properties
    from_dicts = gx.load(items, groupby=None)
    for value in (objects, pystac.ItemCollection(objects)):
        ds = gx.load(value, groupby=None)
        assert ds.attrs["epsg"] == 32658
        xr.testing.assert_identical(ds.compute(), from_dicts.compute())


def test_load__solar_day_merges_adjacent_rows(path084, tmp_path):
    # rows 073 and 074 of one overpass, 23 s apart, overlapping by half a scene
    first, data_first = make_item(_by_row(path084, "073"), tmp_path, lon=162.0, lat=-20.0, seed=3)
    second, data_second = make_item(_by_row(path084, "074"), tmp_path, lon=162.0, lat=-20.0 - 0.009, seed=4)
    # and a scene 16 days later, which stays on its own
    (tmp_path / "later").mkdir()
    later, _ = make_item(_by_row(path084, "074"), tmp_path / "later", lon=162.0, lat=-20.0, seed=5)
    later["id"] = later["id"].replace("20250722", "20250807")
    later["properties"]["datetime"] = "2025-08-07T23:09:10Z"
    separate = gx.load([later, first, second], groupby=None).compute()
    merged = gx.load([later, first, second]).compute()
    assert separate.sizes["time"] == 3 and merged.sizes["time"] == 2
    assert_same(merged.green.values[1], separate.green.values[2])
    assert merged["id"].values[1] == later["id"]
    separate, merged = separate.isel(time=[0, 1]), merged.isel(time=[0])
    assert merged["id"].values[0] == f"{first['id']}+{second['id']}"  # time order: 073 then 074
    assert merged["time"].values[0] == separate["time"].values[0]
    assert merged["cloud_cover"].values[0] == pytest.approx(
        np.mean([first["properties"]["eo:cloud_cover"], second["properties"]["eo:cloud_cover"]])
    )
    assert merged["wrs_row"].values[0] == "073+074"
    # last on top: the later scene where it has data, the earlier one elsewhere
    for band, nodata in (("green", np.nan), ("swir16", np.nan), ("qa_pixel", QA_FILL)):
        early, late = separate[band].values
        late_valid = ~np.isnan(late) if band != "qa_pixel" else late != nodata
        expected = np.where(late_valid, late, early)
        assert_same(merged[band].values[0].astype("float64"), expected.astype("float64"))
    both = (~np.isnan(separate.green.values)).all(axis=0)
    assert both.any() and (~both & ~np.isnan(merged.green.values[0])).any()


def test_load__coords_attrs_and_chunks(zones):
    items, _ = zones
    ds = gx.load(items, groupby=None)
    assert set(ds.coords) == {"time", "y", "x", "id", "cloud_cover", "platform", "wrs_path", "wrs_row", "spatial_ref"}
    assert list(ds["id"].values) == [i["id"] for i in items]
    assert ds["cloud_cover"].dtype == np.float64
    assert set(ds["platform"].values) == {"landsat-9"}
    assert ds.attrs["collection"] == "landsat-c2-l2"
    assert ds.attrs["source"] == "https://planetarycomputer.microsoft.com/api/stac/v1/"
    assert ds.attrs["resolution"] == 30.0 and ds.attrs["epsg"] == 32658
    for band in BANDS:
        assert ds[band].attrs["units"] == "1" and ds[band].attrs["long_name"]
        assert ds[band].dims == ("time", "y", "x")
        assert ds[band].chunks[0] == (1,) * 4
    assert ds["qa_pixel"].attrs["flag_masks"][0] == 1
    small = gx.load(items, groupby=None, chunks={"time": 2, "y": 16, "x": 16})
    assert small.green.chunks[0] == (2, 2) and max(small.green.chunks[1]) == 16


def test_load__bbox_clips_and_drops_items_outside(path084, tmp_path):
    a, _ = make_item(_by_row(path084, "074"), tmp_path, lon=162.0, lat=-20.0, seed=1)
    b, _ = make_item(_by_row(path084, "073"), tmp_path, lon=163.0, lat=-20.0, seed=2)
    west, south, east, north = a["bbox"]
    box = (west + 0.003, south + 0.003, west + 0.009, south + 0.009)
    ds = gx.load([a, b], bbox=box, groupby=None)
    assert list(ds["id"].values) == [a["id"]]
    assert 20 <= ds.sizes["x"] <= 26 and 20 <= ds.sizes["y"] <= 26
    assert ds.attrs["bbox"] == list(box)


def test_load__is_lazy_and_requests_no_bytes_over_http(zones, tmp_path):
    items, _ = zones
    with FileServer(tmp_path) as server:
        remote = copy.deepcopy(items)
        for item in remote:
            for asset in item["assets"].values():
                if asset["href"].startswith(str(tmp_path)):
                    asset["href"] = server.url(Path(asset["href"]).relative_to(tmp_path))
        with raise_if_dask_computes():
            ds = gx.load(remote, groupby=None)
            ds.green.mean()  # building more graph on top is still fine
        assert server.requests == []  # not even a HEAD while building
        over_http = ds.compute()
        requests = server.requests
        assert any(r.status == 206 and r.range for r in requests)  # real range requests
        assert {r.status for r in requests} <= {200, 206, 404}
    xr.testing.assert_identical(over_http, gx.load(items, groupby=None).compute())


# ------------------------------------------------------------------------------------------
# reading: failures, retries, signing, skipping
# ------------------------------------------------------------------------------------------
def test_load__unreachable_href_raises_asset_read_error_without_token(path084, tmp_path):
    item, _ = make_item(_by_row(path084, "074"), tmp_path)
    href = "http://127.0.0.1:9/nowhere/LC09_SR_B3.TIF"  # discard port: nothing listens
    item["assets"]["green"]["href"] = href + "?st=2025&se=2099&sig=SECRET%2Btoken"
    ds = gx.load([item])  # building does not touch it
    with pytest.raises(AssetReadError, match="nowhere/LC09_SR_B3.TIF") as info:
        ds.green.compute()
    assert "SECRET" not in str(info.value) and "sig=" not in str(info.value)
    assert isinstance(info.value, OSError)
    assert "attempts" in str(info.value)  # connection failures are retried


def test_load__corrupt_cog_raises_asset_read_error_naming_href(path084, tmp_path):
    item, _ = make_item(_by_row(path084, "074"), tmp_path)
    bad = tmp_path / "garbage_SR_B6.TIF"
    bad.write_bytes(b"this is not a GeoTIFF " * 200)
    item["assets"]["swir16"]["href"] = str(bad)
    ds = gx.load([item])
    with pytest.raises(AssetReadError, match="garbage_SR_B6.TIF"):
        ds.swir16.compute()
    ds.green.compute()  # the other band of the same scene is fine


def test_load__retries_transient_http_errors(path084, tmp_path):
    item, data = make_item(_by_row(path084, "074"), tmp_path)
    with FileServer(tmp_path) as server:
        for asset in item["assets"].values():
            if asset["href"].startswith(str(tmp_path)):
                asset["href"] = server.url(Path(asset["href"]).name)
        ds = gx.load([item], bands=("green",))
        server.fail(status=503, times=2, path_contains="_green")
        green = ds.green.isel(time=0).values
        statuses = [r.status for r in server.requests]
    assert statuses[:2] == [503, 503] and 206 in statuses
    valid = data["green"] != 0
    np.testing.assert_array_equal(green[valid], (data["green"][valid] * SR_SCALE + SR_OFFSET).astype("float32"))


def test_load__retries_a_transient_read_failure_after_reopening(path084, tmp_path, monkeypatch):
    from stackstac.rio_reader import AutoParallelRioReader

    item, data = make_item(_by_row(path084, "074"), tmp_path)
    original, calls = AutoParallelRioReader.read, []

    def flaky(self, window, **kwargs):
        calls.append(self.url)
        if len(calls) == 1:
            raise RuntimeError(f"Error reading {window} from {self.url!r}: HTTP response code: 502")
        return original(self, window, **kwargs)

    monkeypatch.setattr(AutoParallelRioReader, "read", flaky)
    green = gx.load([item], bands=("green",)).green.values[0]
    assert len(calls) == 2
    valid = data["green"] != 0
    np.testing.assert_array_equal(green[valid], (data["green"][valid] * SR_SCALE + SR_OFFSET).astype("float32"))
    assert np.isnan(green[~valid]).all()


def test_load__404_is_not_retried(path084, tmp_path, monkeypatch):
    item, _ = make_item(_by_row(path084, "074"), tmp_path)
    with FileServer(tmp_path) as server:
        item["assets"]["green"]["href"] = server.url("missing_SR_B3.TIF")
        ds = gx.load([item], bands=("green",))
        with pytest.raises(AssetReadError, match="missing_SR_B3.TIF") as info:
            ds.compute()
        heads = [r for r in server.requests if r.path.endswith("missing_SR_B3.TIF")]
    assert "attempts" not in str(info.value)
    assert len(heads) == 1


def test_load__resigns_blob_hrefs_at_open_time(path084, tmp_path, monkeypatch):
    item, data = make_item(_by_row(path084, "074"), tmp_path)
    blob = "https://landsateuwest.blob.core.windows.net/landsat-c2/"
    calls = []
    with FileServer(tmp_path) as server:
        for asset in item["assets"].values():
            if asset["href"].startswith(str(tmp_path)):
                asset["href"] = blob + Path(asset["href"]).name + "?se=2000-01-01&sig=EXPIRED"

        def resign_href(href):
            calls.append(href)
            name = href.split("?")[0].rsplit("/", 1)[1]
            return server.url(name) + "?se=2099-01-01&sig=FRESH"

        monkeypatch.setattr("glacierxr._remote.resign", resign_href)
        ds = gx.load([item], bands=("green", "qa_pixel"))
        assert calls == []  # nothing signed while building
        out = ds.compute()
        queries = {r.query for r in server.requests}
    assert calls and all("sig=EXPIRED" in c for c in calls)
    assert queries == {"se=2099-01-01&sig=FRESH"}
    assert ds.attrs["source"] == "https://planetarycomputer.microsoft.com/api/stac/v1/"
    assert np.isnan(out.green.values).sum() == (data["green"] == 0).sum()


def test_load__on_error_skip_reads_failed_scene_as_nan(path084, tmp_path):
    good, _ = make_item(_by_row(path084, "074"), tmp_path, seed=1)
    bad, _ = make_item(_by_row(path084, "073"), tmp_path, seed=2)
    bad["assets"]["green"]["href"] = str(tmp_path / "vanished_SR_B3.TIF")
    ds = gx.load([good, bad], groupby=None, epsg=32658, bbox=good["bbox"], on_error="skip")
    with pytest.warns(gio.SkippedAssetWarning, match="vanished_SR_B3.TIF") as record:
        out = ds.compute()
    assert any(w.message.href.endswith("vanished_SR_B3.TIF") for w in record)
    t_bad = list(out["id"].values).index(bad["id"])
    assert np.isnan(out.green.values[t_bad]).all()
    assert not np.isnan(out.swir16.values[t_bad]).all()  # the scene's other assets still read
    assert not np.isnan(out.green.values[1 - t_bad]).all()
    with pytest.raises(AssetReadError, match="vanished"):
        gx.load([good, bad], groupby=None, epsg=32658, bbox=good["bbox"]).green.compute()


def test_reader__pickles_without_token():
    from stackstac.raster_spec import RasterSpec

    spec = RasterSpec(epsg=32658, bounds=(0, 0, 300, 300), resolutions_xy=(30, 30))
    reader = gio.LandsatReader(
        url="https://x.blob.core.windows.net/c/a.tif", spec=spec, resampling=Resampling.nearest,
        dtype=np.dtype("float32"), fill_value=np.float32(np.nan), scale_offset=(1, 0),
        errors_as_nodata=(AssetReadError(".*"),),
    )  # fmt: skip
    clone = pickle.loads(pickle.dumps(reader))
    assert isinstance(clone, gio.LandsatReader)
    assert clone.url == reader.url and clone.errors_as_nodata[0].args == (".*",)


def test_redact__removes_tokens():
    text = "Error opening '/vsicurl/https://a.blob.core.windows.net/c/x.TIF?st=1&se=2&sig=abc%2Bdef': 403"
    assert _remote.redact(text) == "Error opening '/vsicurl/https://a.blob.core.windows.net/c/x.TIF': 403"
    assert "abc" not in _remote.redact("token sig=abc&se=2 in a log line")


@given(
    query=st.text(alphabet=string.ascii_letters + string.digits + "%&=-_.:", min_size=1, max_size=80),
    quote=st.sampled_from(["'", '"', " "]),
)
def test_redact__never_leaves_a_query_string(query, quote):
    url = "https://landsateuwest.blob.core.windows.net/landsat-c2/x/LC09_SR_B3.TIF"
    text = f"Error reading {quote}{url}?{query}{quote}: HTTP response code: 403"
    assert _remote.redact(text) == f"Error reading {quote}{url}{quote}: HTTP response code: 403"


@given(
    minx=st.floats(-1e6, 1e6), miny=st.floats(-1e7, 1e7), width=st.floats(1, 1e5),
    height=st.floats(1, 1e5), resolution=st.sampled_from([10.0, 15.0, 30.0, 60.0]),
    anchor=st.floats(0, 60),
)  # fmt: skip
def test_snap__covers_the_bounds_on_the_anchored_grid(minx, miny, width, height, resolution, anchor):
    anchor = (anchor % resolution, anchor % resolution)
    bounds = (minx, miny, minx + width, miny + height)
    snapped = gio.grid._snap(bounds, resolution, anchor)
    tolerance = 1e-5 * resolution
    assert snapped[0] <= bounds[0] + tolerance and snapped[1] <= bounds[1] + tolerance
    assert snapped[2] >= bounds[2] - tolerance and snapped[3] >= bounds[3] - tolerance
    for value, origin in zip(snapped, anchor * 2):
        steps = (value - origin) / resolution
        assert abs(steps - round(steps)) < 1e-6
    assert snapped[2] - snapped[0] < width + 2 * resolution + tolerance


@pytest.mark.slow
def test_load__on_a_distributed_cluster(zones, local_cluster):
    items, _ = zones
    ds = gx.load(items, groupby=None)
    threaded = ds.compute(scheduler="threads")
    distributed = local_cluster.compute(ds).result()
    xr.testing.assert_identical(distributed, threaded)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
def test_load__empty_items_raise_no_scenes():
    with pytest.raises(NoScenesError, match="No STAC items"):
        gx.load([])


def test_load__missing_band_lists_available_keys(path084, tmp_path):
    item, _ = make_item(_by_row(path084, "074"), tmp_path)
    del item["assets"]["swir16"]
    with pytest.raises(MissingBandError, match="swir16") as info:
        gx.load([item])
    assert item["id"] in str(info.value) and "'green'" in str(info.value)
    assert isinstance(info.value, KeyError)
    with pytest.raises(MissingBandError, match="Unknown band"):
        gx.load([item], bands=("ndvi",))


def test_load__unsupported_collection_is_refused(path084, tmp_path):
    item, _ = make_item(_by_row(path084, "074"), tmp_path)
    item["collection"] = "sentinel-2-l2a"
    with pytest.raises(CatalogError, match="sentinel-2-l2a"):
        gx.load([item])


def test_load__bbox_outside_every_item_names_the_extent(path084, tmp_path):
    item, _ = make_item(_by_row(path084, "074"), tmp_path)
    with pytest.raises(GridError, match=r"does not overlap any of the 1 items.*union extent") as info:
        gx.load([item], bbox=(10.0, 45.0, 10.5, 45.5))
    assert "(10.0, 45.0, 10.5, 45.5)" in str(info.value) and "161.9" in str(info.value)
    # a box crossing the antimeridian is taken (like search takes it), and here misses the item
    with pytest.raises(GridError, match=r"\(170.0, -21.0, -170.0, -19.0\) does not overlap"):
        gx.load([item], bbox=(170.0, -21.0, -170.0, -19.0))
    with pytest.raises(GridError, match="probably swapped"):
        gx.load([item], bbox=(10.0, 45.0, -10.0, 45.5))


def test_load__mixed_dn_types_are_read_each_with_its_own_metadata(path084, tmp_path):
    a, data_a = make_item(_by_row(path084, "074"), tmp_path, seed=1)
    b, data_b = make_item(_by_row(path084, "073"), tmp_path, seed=2, dtype="int16")
    rb = b["assets"]["green"]["raster:bands"][0]
    rb.update(data_type="int16", scale=1e-4, offset=0.0)
    ds = gx.load([a, b], groupby=None, epsg=32658, bbox=a["bbox"]).compute()
    assert ds.green.dtype == np.float32
    expected_b = reference(ds, b["assets"]["green"]["href"], scale=1e-4, offset=0.0)
    assert_same(ds.green.values[list(ds["id"].values).index(b["id"])], expected_b)


def test_load__qa_with_float_data_type_is_refused(path084, tmp_path):
    item, _ = make_item(_by_row(path084, "074"), tmp_path)
    item["assets"]["qa_pixel"]["raster:bands"][0]["data_type"] = "float32"
    with pytest.raises(DataTypeError, match="QA_PIXEL bit flags must be unsigned"):
        gx.load([item])


def test_load__not_items_is_a_type_error(path084, tmp_path):
    item, _ = make_item(_by_row(path084, "074"), tmp_path)
    with pytest.raises(DataTypeError, match="Wrap it in a list"):
        gx.load(item)
    with pytest.raises(DataTypeError, match="not a STAC item"):
        gx.load([{"id": "x"}])


# ------------------------------------------------------------------------------------------
# the embedded sample, read with pystac directly
# ------------------------------------------------------------------------------------------
def test_load__embedded_sample_catalog(sample_catalog):
    import pystac

    catalog = pystac.Catalog.from_file(str(sample_catalog))
    items = list(catalog.get_items(recursive=True))
    assert items
    with raise_if_dask_computes():
        ds = gx.load(items)
    assert set(ds.data_vars) == set(BANDS)
    assert ds.sizes["time"] <= len(items)
    assert ds.sizes["y"] >= 96 and ds.sizes["x"] >= 96
    assert ds["time"].to_index().is_monotonic_increasing
    assert ds.rio.crs is not None
    first = ds.isel(time=0).compute()
    assert np.isfinite(first.green.values).any()
    assert np.nanmin(first.green.values) >= -0.2 and np.nanmax(first.green.values) <= 1.7


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
@pytest.fixture
def cube():
    return gx.testing.make_scene_cube(times=3, height=8, width=10, chunks={"time": 1})


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_write__round_trips_dataset(cube, tmp_path, suffix):
    out = gx.io.write(cube, tmp_path / f"cube{suffix}")
    assert out.exists()
    back = gx.io.read(out)
    assert back.rio.crs.to_epsg() == cube.rio.crs.to_epsg()
    for name in cube.data_vars:
        assert_same(back[name].values.astype("float64"), cube[name].values.astype("float64"))
        assert back[name].attrs.get("long_name") == cube[name].attrs.get("long_name")
    np.testing.assert_array_equal(back["time"].values, cube["time"].values)
    assert list(back["id"].values) == list(cube["id"].values)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind


def test_write__zarr_with_irregular_and_differing_chunks(cube, tmp_path):
    odd = cube.assign(
        green=cube.green.chunk({"time": (1, 2), "y": (3, 5), "x": (4, 2, 4)}),
        swir16=cube.swir16.chunk({"time": 3}),
    )
    back = gx.io.read(gx.io.write(odd, tmp_path / "odd.zarr"))
    for name in ("green", "swir16"):
        assert_same(back[name].values, cube[name].values)
    assert odd.green.chunks[2] == (4, 2, 4)  # the caller's object is untouched


def test_write__cog_one_band_per_time(cube, tmp_path):
    out = gx.io.write(cube["green"], tmp_path / "green.tif")
    with rasterio.open(out) as src:
        assert src.count == 3 and src.crs.to_epsg() == 32643
        assert src.descriptions[0].startswith(str(cube.time.values[0])[:10])
        assert src.profile["tiled"]
        assert_same(src.read(2), cube.green.values[1])
    back = gx.io.read(out)
    assert back.dims == ("time", "y", "x") and back.name == "green"
    np.testing.assert_array_equal(back["time"].values, cube["time"].values)
    assert_same(back.values, cube.green.values)
    with pytest.raises(DataTypeError, match="one variable"):
        gx.io.write(cube, tmp_path / "all.tif")


def test_write__refuses_to_overwrite_unless_asked(cube, tmp_path):
    path = tmp_path / "cube.zarr"
    gx.io.write(cube, path)
    with pytest.raises(gio.OutputExistsError, match="overwrite=True"):
        gx.io.write(cube, path)
    changed = cube.assign(green=cube.green * 0 + 0.5)
    gx.io.write(changed, path, overwrite=True)
    assert float(gx.io.read(path).green.max()) == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.zarr"]


def test_write__interrupted_write_leaves_nothing_that_reads_as_complete(cube, tmp_path):
    class PowerCut(Exception):
        pass

    def explode(block):
        raise PowerCut("power cut")

    broken = cube.assign(green=cube.green.copy(data=cube.green.data.map_blocks(explode, dtype="float32")))
    for suffix in (".zarr", ".nc", ".tif"):
        target = tmp_path / f"cube{suffix}"
        obj = broken["green"] if suffix == ".tif" else broken
        with pytest.raises(PowerCut):
            gx.io.write(obj, target)
        assert list(tmp_path.iterdir()) == []
    # an existing output survives a failed overwrite untouched
    gx.io.write(cube, tmp_path / "cube.zarr")
    with pytest.raises(PowerCut):
        gx.io.write(broken, tmp_path / "cube.zarr", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.zarr"]
    assert_same(gx.io.read(tmp_path / "cube.zarr").green.values, cube.green.values)


def test_write__load_output_round_trips_through_zarr(zones, tmp_path):
    items, _ = zones
    ds = gx.load(items, groupby=None)
    back = gx.io.read(gx.io.write(ds, tmp_path / "cube.zarr"))
    xr.testing.assert_equal(back.compute(), ds.compute())
    assert back.qa_pixel.dtype == np.uint16


def test_write__bad_format_and_type(cube, tmp_path):
    with pytest.raises(gx.errors.ConfigError, match="suffix"):
        gx.io.write(cube, tmp_path / "cube.csv")
    with pytest.raises(DataTypeError, match="xarray"):
        gx.io.write(np.zeros(3), tmp_path / "x.zarr")
