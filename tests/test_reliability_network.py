"""Reliability under network faults: COG range reads, a STAC API and Planetary Computer tokens.

Every fault is injected by real loopback servers:

- :class:`faultserver.FaultyRangeServer` (a child process serving real COGs with ``Range``
  support) answers chosen range requests with 5xx, drops the connection, cuts the body short or
  stalls; with ``require_sas()`` it refuses expired SAS tokens with 403 like Azure Blob Storage;
- a scripted STAC API on loopback answers 5xx, drops connections or never answers;
- a loopback SAS-token endpoint stands in for the Planetary Computer's, and GDAL reaches
  ``http://<account>.blob.core.windows.net/...`` hrefs through ``GDAL_HTTP_PROXY`` pointed at
  the fault server, so the real signing code path (``planetary_computer`` token cache,
  :func:`glacierxr.stac.resign_href`, :class:`glacierxr.io.LandsatReader`) runs end to end.

Retry back-off and time-outs are patched down so that the whole file runs in seconds.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import socket
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from rasterio.warp import transform_bounds

import glacierxr as gx
from glacierxr import io as gio
from glacierxr import stac
from glacierxr.errors import AssetReadError, CatalogError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faultserver import FaultyRangeServer  # noqa: E402
from httpserver import JSONServer  # noqa: E402

pytestmark = pytest.mark.network

BLOB = "landsateuwest.blob.core.windows.net"
SECRET = "SECRETtoken"  # a stand-in SAS signature that must never show up in messages


# ------------------------------------------------------------------------------------------
# fixtures: small real COGs described by real-looking STAC items
# ------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _fast_failures(monkeypatch):
    """Tiny back-off and time-outs (the behaviour is the same, only faster)."""
    monkeypatch.setattr(gio.reader, "RETRY_BACKOFF_S", 0.01)
    monkeypatch.setattr(gio.reader, "READ_TIMEOUT_S", 1.0)
    monkeypatch.setattr(stac, "RETRY_BACKOFF_FACTOR", 0.01)
    monkeypatch.setattr(stac, "REQUEST_TIMEOUT", (1.0, 1.0))


@pytest.fixture(scope="module")
def cog_dir(tmp_path_factory) -> Path:
    """The embedded sample's items (5 scenes), each band rewritten as a 320 x 320 noisy COG.

    Big enough (about 200 kB per band, 256-pixel tiles) that GDAL reads the header and the
    tiles with separate range requests, so faults can hit either.
    """
    directory = tmp_path_factory.mktemp("reliability-cogs")
    catalog = gx.sample.write_catalog(
        directory / "sample", seed=3, width=32, height=32, start="2020-06-01", end="2020-09-30"
    )
    items = gx.search(datetime=None, max_cloud=None, catalog=catalog, sign=False)
    size, res = 320, 30.0
    rng = np.random.default_rng(0)
    documents = []
    for item in items:
        document = item.to_dict(include_self_link=False, transform_hrefs=False)
        properties = document["properties"]
        x0, _, _, _, _, y1 = properties["proj:transform"][:6]
        transform = Affine(res, 0, x0, 0, -res, y1)
        epsg = int(properties["proj:code"].split(":")[1])
        native = (x0, y1 - size * res, x0 + size * res, y1)
        properties.update({"proj:shape": [size, size], "proj:transform": list(transform)[:6], "proj:bbox": list(native)})
        west, south, east, north = transform_bounds(epsg, 4326, *native, densify_pts=21)
        document["bbox"] = [west, south, east, north]
        document["geometry"] = {
            "type": "Polygon",
            "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]],
        }
        document["links"] = []
        for key, asset in document["assets"].items():
            if key not in ("green", "swir16", "qa_pixel"):
                continue
            for field in ("proj:shape", "proj:transform", "proj:bbox"):
                asset.pop(field, None)
            if key == "qa_pixel":
                dn = rng.choice(np.array([21824, 21952, 30048, 22280], "uint16"), size=(size, size))
                nodata = 1
            else:
                dn = rng.integers(7_300, 40_000, size=(size, size)).astype("uint16")
                dn[:3, :7] = 0
                nodata = 0
            name = Path(asset["href"]).name
            # one container, like Planetary Computer's landsat-c2 (one SAS token for all)
            path = directory / "cogs" / "landsat-c2" / document["id"] / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(
                path, "w", driver="COG", width=size, height=size, count=1, dtype="uint16",
                crs=f"EPSG:{epsg}", transform=transform, nodata=nodata, blocksize=256,
            ) as dst:  # fmt: skip
                dst.write(dn, 1)
            asset["href"] = path.relative_to(directory / "cogs").as_posix()
        document["assets"] = {k: v for k, v in document["assets"].items() if k in ("green", "swir16", "qa_pixel")}
        documents.append(document)
    (directory / "items.json").write_text(json.dumps(documents))
    return directory


@pytest.fixture(scope="module")
def documents(cog_dir) -> list[dict]:
    """Item dicts whose hrefs are relative to ``cog_dir / 'cogs'``."""
    return json.loads((cog_dir / "items.json").read_text())


@pytest.fixture(scope="module")
def reference(cog_dir, documents) -> xr.Dataset:
    """The cube read from local files: what every faulty remote load must equal."""
    local = _with_hrefs(documents, lambda rel: str(cog_dir / "cogs" / rel))
    return gx.load(local).compute()


@pytest.fixture(scope="module")
def server(cog_dir):
    with FaultyRangeServer(cog_dir / "cogs") as running:
        yield running


@pytest.fixture
def faulty(server):
    """The module's fault server, with no planned fault and an empty request log."""
    server.reset()
    yield server
    server.reset()


_RUN = itertools.count()


def _with_hrefs(documents, make_href) -> list[dict]:
    out = copy.deepcopy(documents)
    for document in out:
        for asset in document["assets"].values():
            asset["href"] = make_href(asset["href"])
    return out


def _remote(documents, server, *, query: str = "") -> list[dict]:
    """Items pointing at ``server``. Each call gets new URLs (``run=N``), so GDAL's /vsicurl/
    cache of earlier reads cannot hide a fault."""
    run = next(_RUN)
    extra = f"&{query}" if query else ""
    return _with_hrefs(documents, lambda rel: f"{server.url(rel)}?run={run}{extra}")


def _assert_same_cube(actual: xr.Dataset, expected: xr.Dataset) -> None:
    for name in expected.data_vars:
        np.testing.assert_array_equal(actual[name].values, expected[name].values, err_msg=name)
    assert list(actual["id"].values) == list(expected["id"].values)


def _asset(documents, index: int, band: str) -> str:
    return Path(documents[index]["assets"][band]["href"]).name


# ------------------------------------------------------------------------------------------
# transient faults on range requests: retried, the load completes and is exact
# ------------------------------------------------------------------------------------------
TRANSIENT_FAULTS = [
    # (kind, options, which ranged request of the asset: 0 = header read at open, 1 = tile read)
    pytest.param("status", {"status": 500}, 0, id="500-at-open"),
    pytest.param("status", {"status": 502}, 1, id="502-on-tile"),
    pytest.param("status", {"status": 503}, 0, id="503-at-open"),
    pytest.param("status", {"status": 503}, 1, id="503-on-tile"),
    pytest.param("status", {"status": 504}, 1, id="504-on-tile"),
    pytest.param("status", {"status": 429}, 0, id="429-at-open"),
    pytest.param("reset", {}, 0, id="connection-dropped-at-open"),
    pytest.param("reset", {}, 1, id="connection-dropped-on-tile"),
    pytest.param("truncate", {}, 1, id="body-cut-short-on-tile"),
    pytest.param("stall", {"stall_s": 20.0}, 0, id="stall-at-open"),
    pytest.param("stall", {"stall_s": 20.0}, 1, id="stall-on-tile"),
]


@pytest.mark.parametrize("kind, options, after", TRANSIENT_FAULTS)
def test_network__transient_range_fault_is_retried_and_load_is_exact(
    faulty, documents, reference, kind, options, after
):
    target = _asset(documents, 2, "green")
    items = _remote(documents, faulty)
    faulty.fault(kind, times=2 if kind != "stall" else 1, after=after, path_contains=target, **options)
    started = time.monotonic()
    out = gx.load(items).compute()
    elapsed = time.monotonic() - started
    fired = faulty.fired
    assert fired and all(target in f["path"] for f in fired), fired  # the fault did happen
    _assert_same_cube(out, reference)
    if kind == "stall":  # a hung server is given up on after READ_TIMEOUT_S, not waited for
        assert elapsed < 15, f"a stalled read took {elapsed:.1f} s: no time-out on HTTP reads?"


def test_network__faults_on_many_assets_at_once_are_all_survived(faulty, documents, reference):
    items = _remote(documents, faulty)
    for index, band in [(0, "green"), (1, "swir16"), (3, "qa_pixel"), (4, "green")]:
        faulty.fault("status", status=503, times=1, path_contains=_asset(documents, index, band))
    faulty.fault("reset", times=1, after=1, path_contains=_asset(documents, 2, "swir16"))
    out = gx.load(items).compute()
    assert len(faulty.fired) == 5
    _assert_same_cube(out, reference)


# ------------------------------------------------------------------------------------------
# persistent faults: a clear error naming the asset (never its token), or skip when asked
# ------------------------------------------------------------------------------------------
PERSISTENT_FAULTS = [
    pytest.param("status", {"status": 503}, 0, id="503-at-open"),
    pytest.param("status", {"status": 500}, 1, id="500-on-tile"),
    pytest.param("reset", {}, 1, id="connection-dropped-on-tile"),
    pytest.param("stall", {"stall_s": 20.0}, 1, id="stall-on-tile"),
]


@pytest.mark.parametrize("kind, options, after", PERSISTENT_FAULTS)
def test_network__persistent_fault_names_the_href_without_token(faulty, documents, kind, options, after):
    target = _asset(documents, 1, "swir16")
    items = _remote(documents, faulty, query=f"se=2099-01-01&sig={SECRET}")
    faulty.fault(kind, times=1000, after=after, path_contains=target, **options)
    started = time.monotonic()
    with pytest.raises(AssetReadError) as info:
        gx.load(items).swir16.compute()
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert target in message  # names the asset
    assert SECRET not in message and "sig=" not in message  # never the token
    assert "attempts" in message  # it was retried before giving up
    assert "on_error='skip'" in message  # and says how to go on without it
    hits = [f for f in faulty.fired if target in f["path"]]  # counted when met (stalls too)
    assert len(hits) >= gio.READ_ATTEMPTS


def test_network__on_error_skip_treats_scene_as_missing_and_records_it(faulty, documents, reference):
    bad = 1
    target = _asset(documents, bad, "green")
    items = _remote(documents, faulty, query=f"sig={SECRET}")
    faulty.fault("status", status=503, times=1000, path_contains=target)
    cube = gx.load(items, on_error="skip")
    with pytest.warns(gio.SkippedAssetWarning, match=target) as record:
        masked = cube.glacier.mask(max_missing=0.5)
    assert all(SECRET not in str(w.message) for w in record)
    bad_id = documents[bad]["id"]
    # the scene is treated as missing: dropped like a cloudy one, the others are intact
    assert bad_id not in list(masked["id"].values)
    assert bad_id in masked.attrs["dropped_scene_ids"].split()
    unreadable = masked.attrs["unreadable_assets"].split()
    assert len(unreadable) == 1 and unreadable[0].endswith(target)
    assert SECRET not in unreadable[0] and "?" not in unreadable[0]
    # the record follows the result down the chain
    snow = masked.glacier.ndsi().glacier.snow_mask()
    assert snow.attrs["unreadable_assets"] == masked.attrs["unreadable_assets"]
    kept = [i for i in reference["id"].values if i in set(masked["id"].values)]
    expected = reference.sel(time=reference["id"].isin(kept)).glacier.mask(max_missing=0.5, drop=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gio.SkippedAssetWarning)
        np.testing.assert_array_equal(masked.green.values, expected.green.values)


# ------------------------------------------------------------------------------------------
# Planetary Computer: a SAS token that expires in the middle of a load
# ------------------------------------------------------------------------------------------
class _TokenEndpoint:
    """Loopback stand-in for ``{PC_SDK_SAS_URL}/{account}/{container}``.

    Token ``n`` is valid for ``ttl_s`` seconds: its ``se`` (what the blob server checks) is the
    Unix time it expires, and ``msft:expiry`` (what ``planetary_computer`` caches) is ``se + 60``
    because ``planetary_computer`` renews a cached token once less than 60 s are left. So the
    client renews exactly when the server starts refusing.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.issued: list[str] = []
        self.server = JSONServer(self._answer)
        self.url = self.server.url + "/token"

    def _answer(self, handler):
        n = len(self.issued) + 1
        deadline = time.time() + self.ttl_s
        token = f"sv=2024-05-04&se={deadline:.3f}&sp=rl&sr=c&sig={SECRET}{n}"
        self.issued.append(token)
        expiry = dt.datetime.fromtimestamp(deadline + 60, dt.timezone.utc)
        return 200, {"token": token, "msft:expiry": expiry.isoformat().replace("+00:00", "Z")}

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def pc_tokens(monkeypatch):
    from planetary_computer.sas import TOKEN_CACHE
    from planetary_computer.settings import Settings

    endpoint = _TokenEndpoint(ttl_s=1.0)
    monkeypatch.setenv("PC_SDK_SAS_URL", endpoint.url)
    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    Settings.get.cache_clear()
    TOKEN_CACHE.clear()
    yield endpoint
    endpoint.close()
    Settings.get.cache_clear()
    TOKEN_CACHE.clear()


def test_network__pc_token_expiring_mid_load_is_renewed_and_load_completes(
    faulty, documents, reference, pc_tokens, monkeypatch
):
    faulty.require_sas()
    # GDAL sends every /vsicurl/ request for http://<account>.blob.core.windows.net/... to the
    # fault server (as to an HTTP proxy); nothing leaves the machine.
    monkeypatch.setenv("GDAL_HTTP_PROXY", f"127.0.0.1:{faulty.port}")
    run = next(_RUN)
    unsigned = _with_hrefs(documents, lambda rel: f"http://{BLOB}/{rel}?run={run}")
    # signed at search time (token 1), as glacierxr.search(sign=True) does
    signed = copy.deepcopy(unsigned)
    for document in signed:
        for asset in document["assets"].values():
            asset["href"] = stac.resign_href(asset["href"])
    assert all(f"sig={SECRET}1" in a["href"] for d in signed for a in d["assets"].values())
    # One tile request is held in flight past its token's expiry, then refused with 403.
    faulty.fault("stall", stall_s=1.5, times=1, after=1, path_contains=_asset(documents, 3, "swir16"))
    cube = gx.load(signed)
    time.sleep(1.1)  # token 1, from the search, has expired before the load starts
    out = cube.compute()
    _assert_same_cube(out, reference)
    requests = faulty.requests
    refused = [r for r in requests if r.status == 403]
    # the server is shared by the module's tests: judge only this run's requests (a late request
    # of an earlier test, still in flight on a loaded machine, is not this load's)
    mine = [r for r in requests if f"run={run}" in r.query]
    assert all("sig=" in r.query for r in mine), "a blob request went out unsigned"
    served = {r.query.split("sig=")[1] for r in mine if r.status in (200, 206)}
    refused = [r for r in mine if r.status == 403]
    assert refused, "no request met an expired token: the test did not exercise expiry"
    assert len(pc_tokens.issued) >= 3 and len(served) >= 2  # renewed at least twice
    assert f"{SECRET}1" not in served  # the search-time token expired unused


def test_network__pc_token_endpoint_down_is_a_clear_error(faulty, documents, monkeypatch):
    from planetary_computer.sas import TOKEN_CACHE
    from planetary_computer.settings import Settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/token"
    monkeypatch.setenv("PC_SDK_SAS_URL", dead)
    Settings.get.cache_clear()
    TOKEN_CACHE.clear()
    monkeypatch.setenv("GDAL_HTTP_PROXY", f"127.0.0.1:{faulty.port}")
    items = _with_hrefs(documents, lambda rel: f"http://{BLOB}/{rel}?se=1&sig={SECRET}")
    try:
        with pytest.raises(AssetReadError) as info:
            gx.load(items).green.compute()
    finally:
        Settings.get.cache_clear()
        TOKEN_CACHE.clear()
    message = str(info.value)
    assert BLOB in message and SECRET not in message and "PC_SDK_SAS_URL" in message


# ------------------------------------------------------------------------------------------
# a STAC API that errors or times out: retried, then a clear error
# ------------------------------------------------------------------------------------------
class _FlakyStacApi:
    """A minimal STAC item-search API on loopback with a script of faults for the next requests.

    ``faults`` holds "503", "reset" or "stall" (no answer for 30 s) entries consumed one per
    request; then it answers.
    """

    def __init__(self, features: list[dict], faults=()) -> None:
        self.features = features
        self.faults = list(faults)
        self.log: list[tuple[str, str]] = []
        self.server = JSONServer(self._answer, http11=True)
        self.url = self.server.url

    def _answer(self, handler):
        fault = self.faults.pop(0) if self.faults else None
        self.log.append((handler.command, handler.path, fault))
        if fault == "stall":
            time.sleep(30)  # longer than any test may wait: only a time-out ends it
        if fault in ("stall", "reset"):
            return None
        if fault == "503":
            return 503, {"code": "ServiceUnavailable"}
        path = urlsplit(handler.path).path.rstrip("/")
        if path == "":
            return 200, self.landing()
        if path == "/search":
            return 200, {"type": "FeatureCollection", "features": self.features, "links": []}
        if path == "/collections":
            return 200, {"collections": [{"id": "landsat-c2-l2"}], "links": []}
        return 404, {"code": "NotFound"}

    def landing(self) -> dict:
        return {
            "type": "Catalog", "id": "flaky", "description": "flaky loopback STAC API",
            "stac_version": "1.0.0",
            "conformsTo": [
                "https://api.stacspec.org/v1.0.0/core",
                "https://api.stacspec.org/v1.0.0/item-search",
            ],
            "links": [
                {"rel": "self", "href": self.url + "/"},
                {"rel": "root", "href": self.url + "/"},
                {"rel": "search", "href": self.url + "/search", "method": "GET"},
                {"rel": "search", "href": self.url + "/search", "method": "POST"},
                {"rel": "data", "href": self.url + "/collections"},
            ],
        }  # fmt: skip

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.close()


@pytest.fixture(scope="module")
def api_features(documents) -> list[dict]:
    out = []
    for document in documents:
        feature = copy.deepcopy(document)
        feature["collection"] = "landsat-c2-l2"
        out.append(feature)
    return out


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param(["503", "503"], id="landing-503-twice"),
        pytest.param(["reset"], id="landing-connection-dropped"),
        pytest.param(["stall"], id="landing-stalls"),
        pytest.param([None, "503", "stall"], id="search-503-then-stall"),
    ],
)
def test_network__stac_api_faults_are_retried_and_search_completes(api_features, faults):
    with _FlakyStacApi(api_features, faults) as api:
        started = time.monotonic()
        items = gx.search(datetime=None, max_cloud=None, catalog=api.url + "/", max_retries=3)
        elapsed = time.monotonic() - started
        assert not api.faults  # every planned fault was met
    assert sorted(i.id for i in items) == sorted(f["id"] for f in api_features)
    assert elapsed < 15, f"search took {elapsed:.1f} s: is REQUEST_TIMEOUT applied?"


@pytest.mark.parametrize("fault", ["503", "reset", "stall"])
def test_network__stac_api_that_keeps_failing_is_a_clear_error(api_features, fault):
    with _FlakyStacApi(api_features, [fault] * 20) as api:
        started = time.monotonic()
        with pytest.raises(CatalogError) as info:
            gx.search(datetime=None, catalog=api.url + "/", max_retries=2)
        elapsed = time.monotonic() - started
        attempts = len(api.log)
    message = str(info.value)
    assert api.url in message and "after 2 retries" in message and "max_retries" in message
    assert attempts == 3  # the first try and two retries, then it stops
    assert elapsed < 15, f"search took {elapsed:.1f} s: is REQUEST_TIMEOUT applied?"
