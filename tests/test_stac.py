"""Tests of glacierxr.stac: static catalogs, a real STAC API on loopback, signing, bad input.

Real parts: the recorded Planetary Computer items in ../shared/data/stac, the embedded sample,
``rustac serve`` (a Rust STAC API server) on 127.0.0.1, and a loopback SAS-token endpoint that
``planetary_computer`` talks to through ``PC_SDK_SAS_URL``. Nothing leaves the machine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pystac
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glacierxr import _remote
from glacierxr import stac
from glacierxr.errors import (
    AssetReadError,
    CatalogError,
    ConfigError,
    GlacierXRError,
    GridError,
    NoScenesError,
)
from glacierxr.stac import cql2_filter, parse_datetime, resign_href, search
from httpserver import JSONServer

L9_ITEMS = "stac/pc_landsat-c2-l2_items_20250722_L9_path084.geojson"
L8_ITEMS = "stac/pc_landsat-8-c2-l2_items_path197_row023_62dates.geojson"
L8_NETHERLANDS = "stac/pc_landsat-8-c2-l2_search_netherlands_250items.geojson"


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _features(shared_data: Path, name: str) -> list[dict]:
    return json.loads((shared_data / name).read_text())["features"]


def _ids(items) -> list[str]:
    return [item.id for item in items]


def _write_static_catalog(directory: Path, features: list[dict]) -> Path:
    """A static catalog (catalog.json -> collection -> items) holding ``features``."""
    items = [pystac.Item.from_dict(feature) for feature in features]
    for item in items:
        item.clear_links()
    catalog = pystac.Catalog(id="test-catalog", description="recorded PC items")
    by_collection: dict[str, list[pystac.Item]] = {}
    for item in items:
        by_collection.setdefault(item.collection_id, []).append(item)
    for collection_id, members in by_collection.items():
        collection = pystac.Collection(
            id=collection_id,
            description="test",
            extent=pystac.Extent(
                pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
                pystac.TemporalExtent([[None, None]]),
            ),
        )
        for item in members:
            collection.add_item(item)
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(directory))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return directory / "catalog.json"


class _TokenEndpoint:
    """Loopback stand-in for the Planetary Computer SAS endpoint ``/{account}/{container}``."""

    def __init__(self, ttl_s: float = 3600.0):
        self.ttl_s = ttl_s
        self.mode = "ok"  # "ok" | "fail" | "garbage"
        self.requests: list[str] = []
        self.server = JSONServer(self._answer)
        self.url = self.server.url + "/token"

    def _answer(self, handler):
        self.requests.append(handler.path)
        n = len(self.requests)
        if self.mode == "fail":
            return 500, {"detail": "token service down"}
        document = {"token": f"sv=2024-05-04&se=x{n}&sp=rl&sr=c&sig=SECRET{n}"}
        if self.mode == "ok":
            expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.ttl_s)
            document["msft:expiry"] = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        return 200, document

    def close(self):
        self.server.close()


def _use_sas_url(monkeypatch, url: str) -> None:
    from planetary_computer.sas import TOKEN_CACHE
    from planetary_computer.settings import Settings

    monkeypatch.setenv("PC_SDK_SAS_URL", url)
    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    Settings.get.cache_clear()  # Settings reads PC_SDK_SAS_URL once per process
    TOKEN_CACHE.clear()


@pytest.fixture(autouse=True)
def _no_real_network(monkeypatch):
    """Tiny backoff, and a SAS endpoint on a closed loopback port unless a test sets one."""
    from planetary_computer.sas import TOKEN_CACHE
    from planetary_computer.settings import Settings

    monkeypatch.setattr(stac, "RETRY_BACKOFF_FACTOR", 0.01)
    monkeypatch.setattr(stac, "REQUEST_TIMEOUT", (2.0, 10.0))
    _use_sas_url(monkeypatch, f"http://127.0.0.1:{_free_port()}/token")
    yield
    Settings.get.cache_clear()
    TOKEN_CACHE.clear()


@pytest.fixture
def token_endpoint(monkeypatch):
    endpoint = _TokenEndpoint()
    _use_sas_url(monkeypatch, endpoint.url)
    yield endpoint
    endpoint.close()


@pytest.fixture
def l9_features(shared_data):
    return _features(shared_data, L9_ITEMS)


@pytest.fixture
def l9_catalog(tmp_path, l9_features):
    return _write_static_catalog(tmp_path / "catalog", l9_features)


# --------------------------------------------------------------------------- static catalogs


def test_search__static_catalog_filters_cloud_and_sorts_by_time(l9_catalog, l9_features):
    items = search(datetime="2025-07-22", max_cloud=20, catalog=l9_catalog, sign=False)
    expected = {f["id"] for f in l9_features if f["properties"]["eo:cloud_cover"] <= 20}
    assert len(expected) == 6  # 4.26, 5.07, 8.21, 11.33, 14.59, 15.45
    assert set(_ids(items)) == expected
    times = [item.datetime for item in items]
    assert times == sorted(times)
    assert isinstance(items, pystac.ItemCollection)


def test_search__static_catalog_bbox_selects_overlapping_scenes(l9_catalog):
    # a small box in the middle of row 082 (south of every other scene of the path)
    items = search(bbox=(159.5, -32.0, 160.0, -31.5), datetime=None, max_cloud=None,
                   catalog=l9_catalog, sign=False)
    assert _ids(items) == ["LC09_L2SR_084082_20250722_02_T1"]
    # rows 073 and 074 overlap around 19.5 S
    items = search(bbox=(162.5, -19.6, 163.0, -19.5), datetime=None, max_cloud=None,
                   catalog=l9_catalog, sign=False)
    assert sorted(_ids(items)) == ["LC09_L2SR_084073_20250722_02_T1",
                                   "LC09_L2SR_084074_20250722_02_T1"]


def test_search__static_catalog_datetime_open_ends(l9_catalog, l9_features):
    cut = "2025-07-22T23:05:00Z"
    late = search(datetime=f"{cut}/..", max_cloud=None, catalog=l9_catalog, sign=False)
    early = search(datetime=f"../{cut}", max_cloud=None, catalog=l9_catalog, sign=False)
    assert len(late) == 7 and len(early) == 3
    assert set(_ids(late)) | set(_ids(early)) == {f["id"] for f in l9_features}
    bound = dt.datetime(2025, 7, 22, 23, 5, tzinfo=dt.timezone.utc)
    assert all(item.datetime >= bound for item in late)
    pair = search(datetime=(dt.datetime(2025, 7, 22, 23, 5), None), max_cloud=None,
                  catalog=l9_catalog, sign=False)
    assert _ids(pair) == _ids(late)  # a naive datetime is UTC


def test_search__static_catalog_intersects_geometry(l9_catalog):
    items = search(intersects=_POLYGON_IN_ROW_082, datetime=None, max_cloud=None,
                   catalog=l9_catalog, sign=False)
    assert _ids(items) == ["LC09_L2SR_084082_20250722_02_T1"]


def test_search__limit_keeps_first_matches_sorted(l9_catalog):
    everything = search(datetime=None, max_cloud=None, catalog=l9_catalog, sign=False)
    first = search(datetime=None, max_cloud=None, catalog=l9_catalog, sign=False, limit=3)
    assert _ids(first) == _ids(everything)[:3]


def test_search__antimeridian_box_is_split(l9_catalog, l9_features):
    crossing = search(bbox=(166.5, -12.0, -170.0, 7.0), datetime=None, max_cloud=None,
                      catalog=l9_catalog, sign=False)
    # only the part east of 166.5 E holds scenes; a box read as (-170 .. 166.5) would also
    # catch rows 067-069 (163-166 E)
    expected = {f["id"] for f in l9_features
                if f["bbox"][2] >= 166.5 and f["bbox"][3] >= -12 and f["bbox"][1] <= 7}
    assert len(expected) == 3
    assert set(_ids(crossing)) == expected


def test_search__item_collection_file_and_deprecated_collection(shared_data):
    features = _features(shared_data, L8_NETHERLANDS)
    items = search(datetime="2020", max_cloud=10, collection="landsat-8-c2-l2",
                   platforms=["LANDSAT_8"], catalog=shared_data / L8_NETHERLANDS, sign=False)
    expected = {f["id"] for f in features if f["properties"]["datetime"].startswith("2020")
                and f["properties"]["eo:cloud_cover"] <= 10}
    assert expected and set(_ids(items)) == expected
    assert all("SR_B3" in item.assets for item in items)


def test_search__sample_catalog_matches_ground_truth(sample_catalog):
    import glacierxr as gx

    truth = gx.sample.open_truth(sample_catalog)
    every = search(datetime=None, max_cloud=None, catalog=sample_catalog)
    assert _ids(every) == [str(i) for i in truth["id"].values]
    clear = search(datetime=None, max_cloud=20, catalog=sample_catalog)
    cover = {i.id: i.properties["eo:cloud_cover"] for i in every}
    assert _ids(clear) == [i for i in _ids(every) if cover[i] <= 20]
    assert 0 < len(clear) < len(every)
    for item in clear:
        for asset in item.assets.values():
            assert Path(asset.href).is_absolute() and Path(asset.href).is_file()


def test_search__sample_catalog_bbox_elsewhere_says_where_items_are(sample_catalog):
    with pytest.raises(NoScenesError, match="Its items cover lon/lat") as info:
        search(glacier="aletsch", datetime=None, catalog=sample_catalog)
    assert "glacier='aletsch'" in str(info.value)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(max_cloud=st.floats(0, 100))
def test_search__cloud_filter_is_exact(l9_catalog, l9_features, max_cloud):
    expected = {f["id"] for f in l9_features if f["properties"]["eo:cloud_cover"] <= max_cloud}
    if not expected:
        with pytest.raises(NoScenesError):
            search(datetime=None, max_cloud=max_cloud, catalog=l9_catalog, sign=False)
        return
    items = search(datetime=None, max_cloud=max_cloud, catalog=l9_catalog, sign=False)
    assert set(_ids(items)) == expected


@given(
    a=st.datetimes(min_value=dt.datetime(1980, 1, 1), max_value=dt.datetime(2100, 1, 1)),
    b=st.datetimes(min_value=dt.datetime(1980, 1, 1), max_value=dt.datetime(2100, 1, 1)),
)
def test_parse_datetime__string_and_pair_agree(a, b):
    a, b = sorted((a, b))
    text = f"{a.isoformat()}Z/{b.isoformat()}Z"
    start, end = parse_datetime(text)
    assert (start, end) == parse_datetime((a, b))
    assert start.tzinfo is not None and start <= end


def test_parse_datetime__date_only_end_includes_the_whole_day():
    start, end = parse_datetime("2013-01-01/2021-01-01")
    assert start == dt.datetime(2013, 1, 1, tzinfo=dt.timezone.utc)
    assert end.date() == dt.date(2021, 1, 1) and end.hour == 23
    assert parse_datetime(None) == (None, None)
    assert parse_datetime("2020-12")[1].date() == dt.date(2020, 12, 31)


# --------------------------------------------------------------------------- bad input


def test_search__no_scenes_repeats_query_and_suggests(l9_catalog):
    with pytest.raises(NoScenesError) as info:
        search(bbox=(159.5, -32.0, 160.0, -31.5), datetime="2025-07-01/2025-07-31", max_cloud=20,
               catalog=l9_catalog, sign=False)
    message = str(info.value)
    for fragment in ("bbox=(159.5, -32.0, 160.0, -31.5)", "'2025-07-01/2025-07-31'",
                     "max_cloud=20", "collection='landsat-c2-l2'", "landsat-9", "catalog.json",
                     "1 by max_cloud", "raise max_cloud", "widen datetime",
                     "(west, south, east, north)"):
        assert fragment in message
    assert isinstance(info.value, LookupError)


def test_search__wrong_platform_says_so(l9_catalog):
    with pytest.raises(NoScenesError, match="10 by platform"):
        search(datetime=None, max_cloud=None, platforms="landsat-8", catalog=l9_catalog,
               sign=False)


def test_search__unknown_collection_lists_available(l9_catalog):
    with pytest.raises(CatalogError, match=r"It has: \['landsat-c2-l2'\]"):
        search(datetime=None, collection="sentinel-2-l2a", catalog=l9_catalog, sign=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        (dict(bbox=(31.99, 77.49, 32.22, 177.82)), GridError, "(south, west, north, east)"),
        (dict(bbox=(77.8, 32.2, 77.5, 31.9)), GridError, "south (32.2) > north"),
        (dict(bbox=(77.8, 31.9, 77.5, 32.2)), GridError, "probably swapped"),
        (dict(bbox=(600000, 3500000, 610000, 3510000)), GridError, "projected coordinates"),
        (dict(bbox=(1, 2, 3)), GridError, "four numbers"),
        (dict(bbox=(77, 31, 78, 32), intersects={"type": "Point", "coordinates": [77, 31]}),
         GridError, "only one of bbox, intersects"),
        (dict(bbox=(77, 31, 78, 32), glacier="parvati"), GridError, "only one of"),
        (dict(glacier="atlantis"), CatalogError, "Known regions: ['aletsch'"),
        (dict(max_cloud=120), CatalogError, "outside 0–100"),
        (dict(datetime="last summer"), CatalogError, "not a period"),
        (dict(datetime="2021-01-01/2013-01-01"), CatalogError, "starts"),
        (dict(limit=0), ConfigError, "limit must be a positive integer"),
        (dict(platforms=[]), CatalogError, "non-empty list"),
        (dict(catalog=42), GlacierXRError, "catalog must be a STAC API URL"),
    ],
)
def test_search__bad_arguments(tmp_path, kwargs, error, fragment):
    kwargs = {"datetime": None, "catalog": tmp_path / "missing.json", **kwargs}
    with pytest.raises(error) as info:
        search(**kwargs)
    assert fragment in str(info.value)


def test_search__missing_catalog_path(tmp_path):
    with pytest.raises(CatalogError, match="the file does not exist"):
        search(datetime=None, catalog=tmp_path / "nowhere" / "catalog.json")
    with pytest.raises(CatalogError, match="neither catalog.json nor"):
        search(datetime=None, catalog=tmp_path)
    (tmp_path / "catalog.json").write_text("{not json")
    with pytest.raises(CatalogError, match="Could not read a STAC catalog"):
        search(datetime=None, catalog=tmp_path)


def test_search__glacier_name_uses_registry_bbox(l9_catalog):
    with pytest.raises(NoScenesError, match=r"bbox=\(77.488, 31.993, 77.821, 32.225\)"):
        search(glacier="Parvati", datetime=None, catalog=l9_catalog, sign=False)


# --------------------------------------------------------------------------- API failures


@pytest.mark.network
def test_search__api_down_raises_catalog_error_quickly():
    url = f"http://127.0.0.1:{_free_port()}/api/stac/v1"
    started = time.perf_counter()
    with pytest.raises(CatalogError) as info:
        search(bbox=(77, 31, 78, 32), datetime=None, catalog=url, max_retries=2)
    assert time.perf_counter() - started < 20
    message = str(info.value)
    assert url in message and "after 2 retries" in message and "max_retries" in message


class _ScriptedServer:
    """Loopback HTTP server answering a scripted list of (status, JSON) and counting requests."""

    def __init__(self, script, default):
        self.script = list(script)
        self.default = default
        self.count = 0
        self.server = JSONServer(self._answer)
        self.url = self.server.url

    def _answer(self, handler):
        self.count += 1
        status, document = self.script.pop(0) if self.script else self.default
        return status, document(handler.path) if callable(document) else document

    def close(self):
        self.server.close()


@pytest.mark.network
def test_search__api_5xx_is_retried_then_reported():
    server = _ScriptedServer([], default=(503, {"detail": "busy"}))
    try:
        with pytest.raises(CatalogError, match="HTTP 503") as info:
            search(datetime=None, catalog=server.url + "/", max_retries=2)
        assert server.count == 3  # first try + 2 retries
        assert server.url in str(info.value)
    finally:
        server.close()


@pytest.mark.network
def test_search__flaky_server_recovers_and_static_catalog_over_http(l9_features):
    feature = dict(l9_features[1])  # cloud 4.26

    def document(path):
        if path.rstrip("/") == "":
            return {"type": "Catalog", "stac_version": "1.0.0", "id": "http-static",
                    "description": "static catalog over HTTP",
                    "links": [{"rel": "item", "href": f"{server.url}/item.json"},
                              {"rel": "root", "href": f"{server.url}/"},
                              {"rel": "self", "href": f"{server.url}/"}]}
        return {**feature, "links": [{"rel": "self", "href": f"{server.url}/item.json"}]}

    server = _ScriptedServer([(503, {}), (502, {})], default=(200, document))
    try:
        items = search(datetime=None, catalog=server.url + "/", max_retries=3, sign=False)
        assert _ids(items) == [feature["id"]]
        assert server.count >= 4  # two failures, landing page, item
    finally:
        server.close()


# --------------------------------------------------------------------------- rustac serve


def _rustac_binary() -> str | None:
    candidate = Path(sys.executable).with_name("rustac")
    return str(candidate) if candidate.exists() else shutil.which("rustac")


@pytest.fixture(scope="module")
def rustac_items(shared_data, tmp_path_factory) -> Path:
    rustac = pytest.importorskip("rustac")
    features = _features(shared_data, L9_ITEMS) + _features(shared_data, L8_ITEMS)
    for feature in features:
        feature["links"] = []
    path = tmp_path_factory.mktemp("rustac") / "items.parquet"
    rustac.write_sync(str(path), features)  # stac-geoparquet, inferred from the extension
    return path


def _serve(parquet: Path, tmp: Path, backend: str):
    binary = _rustac_binary()
    if binary is None:
        pytest.skip("the rustac command is not installed (pip install rustac)")
    env = dict(os.environ)
    args = [binary, "serve"]
    if backend == "duckdb":
        # `rustac serve` lets DuckDB install its extensions into ~/.duckdb, from the network;
        # point HOME at a folder where the bundled ones are already "installed".
        try:
            from rustac_duckdb_extensions import extension_directory
        except ImportError:
            pytest.skip("rustac-duckdb-extensions is not installed; DuckDB would need network")
        bundled = Path(extension_directory())
        home = tmp / "home"
        for version_dir in bundled.iterdir():
            target = home / ".duckdb" / "extensions" / version_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for platform_dir in version_dir.iterdir():
                link = target / platform_dir.name
                if not link.exists():
                    link.symlink_to(platform_dir, target_is_directory=True)
        env["HOME"] = str(home)
        args += ["--use-duckdb", "true"]
    else:
        args += ["--use-duckdb", "false"]
    port = _free_port()
    log = open(tmp / f"rustac-{backend}.log", "w+")
    process = subprocess.Popen(args + ["--addr", f"127.0.0.1:{port}", str(parquet)],
                               stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            log.seek(0)
            pytest.skip(f"rustac serve ({backend}) exited with {process.returncode}: "
                        f"{log.read()[-500:]}")
        try:
            if requests.get(url + "/", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            process.kill()
            log.seek(0)
            pytest.skip(f"rustac serve ({backend}) did not answer within 60 s: {log.read()[-500:]}")
        time.sleep(0.1)
    return process, url, log


def _stop(process, log) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def rustac_duckdb(rustac_items, tmp_path_factory):
    """rustac's DuckDB backend: evaluates CQL2 filters (without advertising them); no paging."""
    process, url, log = _serve(rustac_items, tmp_path_factory.mktemp("duckdb"), "duckdb")
    yield url
    _stop(process, log)


@pytest.fixture(scope="module")
def rustac_memory(rustac_items, tmp_path_factory):
    """rustac's in-memory backend: pages with ``next`` links; no filter conformance."""
    process, url, log = _serve(rustac_items, tmp_path_factory.mktemp("memory"), "memory")
    yield url
    _stop(process, log)


@pytest.fixture
def request_counter(monkeypatch):
    from pystac_client.stac_api_io import StacApiIO

    calls: list[str] = []
    original = StacApiIO.request

    def counting(self, href, *args, **kwargs):
        calls.append(href)
        return original(self, href, *args, **kwargs)

    monkeypatch.setattr(StacApiIO, "request", counting)
    return calls


@pytest.mark.network
def test_api__bbox_datetime_cloud_on_rustac(rustac_duckdb, l9_features):
    items = search(bbox=(160.0, -22.0, 170.0, 7.0), datetime="2025-07-22T23:05:00Z/..",
                   max_cloud=20, catalog=rustac_duckdb, sign=False)
    expected = {f["id"] for f in l9_features
                if f["bbox"][0] >= 160 and f["properties"]["datetime"] >= "2025-07-22T23:05"
                and f["properties"]["eo:cloud_cover"] <= 20}
    assert len(expected) == 5
    assert set(_ids(items)) == expected
    assert [i.datetime for i in items] == sorted(i.datetime for i in items)



_POLYGON_IN_ROW_082 = {
    "type": "Polygon",
    "coordinates": [[[159.5, -32.0], [160.0, -32.0], [160.0, -31.5], [159.5, -31.5],
                     [159.5, -32.0]]],
}


@pytest.mark.network
def test_api__antimeridian_box_and_intersects(rustac_duckdb, l9_features):
    crossing = search(bbox=(166.5, -12.0, -170.0, 7.0), datetime=None, max_cloud=None,
                      catalog=rustac_duckdb, sign=False)
    expected = {f["id"] for f in l9_features
                if f["bbox"][2] >= 166.5 and f["bbox"][3] >= -12 and f["bbox"][1] <= 7}
    assert set(_ids(crossing)) == expected and len(crossing) == 3
    inside = search(intersects=_POLYGON_IN_ROW_082, datetime=None, max_cloud=None,
                    catalog=rustac_duckdb, sign=False)
    assert _ids(inside) == ["LC09_L2SR_084082_20250722_02_T1"]

@pytest.mark.network
def test_api__server_side_cql2_filter_gives_the_same_result(rustac_duckdb, l9_features):
    import requests

    query = dict(datetime=None, max_cloud=15, catalog=rustac_duckdb, sign=False)
    client_side = search(server_filter=False, **query)
    server_side = search(server_filter=True, **query)
    assert _ids(server_side) == _ids(client_side)
    # the filter we send is one a real CQL2 implementation evaluates to the right set
    body = {"collections": ["landsat-c2-l2"], "limit": 100,
            "filter": cql2_filter(max_cloud=15, platforms=("landsat-8", "landsat-9")),
            "filter-lang": "cql2-json"}
    response = requests.post(rustac_duckdb + "/search", json=body, timeout=10)
    response.raise_for_status()
    served = {f["id"] for f in response.json()["features"]}
    assert served == {f["id"] for f in l9_features if f["properties"]["eo:cloud_cover"] <= 15}
    assert served == set(_ids(server_side))


@pytest.mark.network
def test_api__paging_without_filter_conformance(rustac_memory, shared_data, request_counter):
    features = _features(shared_data, L8_ITEMS)
    items = search(datetime="2019-01-01/2020-12-31", max_cloud=30, collection="landsat-8-c2-l2",
                   catalog=rustac_memory, page_size=10, sign=False)
    expected = {f["id"] for f in features if f["properties"]["datetime"] < "2021"
                and f["properties"]["eo:cloud_cover"] <= 30}
    assert expected and set(_ids(items)) == expected
    search_pages = [href for href in request_counter if "/search" in href]
    n_period = sum(f["properties"]["datetime"] < "2021" for f in features)
    assert len(search_pages) >= -(-n_period // 10) >= 3  # the server paged, the client followed


@pytest.mark.network
def test_api__limit_stops_paging_early(rustac_memory, request_counter):
    everything = search(datetime=None, max_cloud=None, collection="landsat-8-c2-l2",
                        catalog=rustac_memory, page_size=4, sign=False)
    request_counter.clear()
    first = search(datetime=None, max_cloud=None, collection="landsat-8-c2-l2",
                   catalog=rustac_memory, page_size=4, sign=False, limit=6)
    assert len(everything) == 62 and len(first) == 6
    assert set(_ids(first)) <= set(_ids(everything))
    assert len([h for h in request_counter if "/search" in h]) == 2  # not all 16 pages


@pytest.mark.network
def test_api__unknown_collection_lists_api_collections(rustac_memory):
    with pytest.raises(CatalogError) as info:
        search(datetime=None, collection="landsat-c2l2", catalog=rustac_memory, sign=False)
    assert "'landsat-8-c2-l2'" in str(info.value) and "'landsat-c2-l2'" in str(info.value)


@pytest.mark.network
def test_api__no_scenes_says_what_the_server_returned(rustac_memory):
    with pytest.raises(NoScenesError, match="all were dropped: 3 by max_cloud"):
        search(datetime="2025-07-22T23:08:00Z/2025-07-22T23:10:00Z", max_cloud=3,
               catalog=rustac_memory, sign=False)


# --------------------------------------------------------------------------- signing


@pytest.mark.network
def test_search__signs_blob_hrefs_from_a_loopback_api(rustac_memory, token_endpoint):
    items = search(datetime=None, max_cloud=10, catalog=rustac_memory, sign=True)
    hrefs = [a.href for item in items for a in item.assets.values()]
    blob = [h for h in hrefs if ".blob.core.windows.net" in h]
    assert blob and all("sig=SECRET1" in h for h in blob)
    assert all(h.count("?") == 1 for h in blob)
    other = [h for h in hrefs if ".blob.core.windows.net" not in h]
    assert all("sig=" not in h for h in other)  # e.g. the rendered preview
    # one token per account/container, fetched once and then served from the cache
    assert set(token_endpoint.requests) == {"/token/landsateuwest/landsat-c2"}
    assert len(token_endpoint.requests) == 1


@pytest.mark.network
def test_search__sign_false_keeps_hrefs(l9_catalog, token_endpoint):
    items = search(datetime=None, max_cloud=None, catalog=l9_catalog, sign=False)
    hrefs = [a.href for item in items for a in item.assets.values()]
    assert any(".blob.core.windows.net" in h for h in hrefs)
    assert all("sig=" not in h for h in hrefs)
    assert token_endpoint.requests == []


@pytest.mark.network
def test_resign_href__refreshes_an_expired_token(token_endpoint):
    token_endpoint.ttl_s = 61.5  # planetary_computer refreshes tokens with < 60 s left
    href = ("https://landsateuwest.blob.core.windows.net/landsat-c2/level-2/a/LC09_SR_B3.TIF"
            "?versionid=7&sv=2020&se=2000-01-01&sp=rl&sig=OLDSECRET")
    first = resign_href(href)
    again = resign_href(first)
    assert first == again and len(token_endpoint.requests) == 1
    query = parse_qs(urlsplit(first).query)
    assert query["sig"] == ["SECRET1"] and query["versionid"] == ["7"]
    assert "OLDSECRET" not in first
    time.sleep(1.7)  # the cached token now has less than 60 s left
    fresh = resign_href(first)
    assert len(token_endpoint.requests) == 2
    assert parse_qs(urlsplit(fresh).query)["sig"] == ["SECRET2"]
    assert urlsplit(fresh).path == urlsplit(href).path


def test_resign_href__leaves_other_hrefs_and_pickles(tmp_path):
    import pickle

    assert pickle.loads(pickle.dumps(resign_href)) is resign_href
    for href in (str(tmp_path / "a.tif"), "https://example.com/a.tif?sig=keep",
                 "https://ai4edatasetspublicassets.blob.core.windows.net/a/thumb.png"):
        assert resign_href(href) == href


@pytest.mark.network
@pytest.mark.parametrize("mode", ["fail", "garbage"])
def test_resign_href__token_failure_does_not_leak_tokens(token_endpoint, mode):
    token_endpoint.mode = mode
    href = ("https://landsateuwest.blob.core.windows.net/landsat-c2/x/B3.TIF"
            "?sv=2020&se=2000-01-01&sp=rl&sig=OLDSECRET")
    with pytest.raises(AssetReadError) as info:
        resign_href(href, max_retries=1)
    message = str(info.value)
    assert "landsateuwest/landsat-c2" in message and token_endpoint.url in message
    assert "SECRET" not in message and "sig=" not in message
    assert isinstance(info.value, OSError)


@pytest.mark.network
def test_search__token_failure_is_a_catalog_error_without_tokens(l9_catalog, token_endpoint):
    token_endpoint.mode = "garbage"  # the response holds a token but no expiry
    with pytest.raises(CatalogError) as info:
        search(datetime=None, max_cloud=10, catalog=l9_catalog, max_retries=1)
    assert "SECRET" not in str(info.value) and "sign=False" in str(info.value)


def test_redact__removes_sas_queries():
    text = ("GET https://acc.blob.core.windows.net/c/x.tif?sv=1&sig=abc%2Bd failed; "
            "token sp=rl&se=2030&sig=zzz")
    redacted = _remote.redact(text)
    assert "abc" not in redacted and "zzz" not in redacted and "x.tif" in redacted
