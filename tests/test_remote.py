"""glacierxr._remote: one redaction, one blob rule, one retry rule for search and load."""

from __future__ import annotations

import logging
import pickle

import pytest

from glacierxr import _remote, io, stac
from glacierxr._remote import is_blob, is_transient, redact

SECRETS = ("S3CR3T", "T0K3N", "AMZSIG")

# Every form a signed URL takes in an error message or a log line. Each holds SECRETS.
URL_FORMS = [
    # Azure SAS, plain, behind GDAL's /vsicurl/, quoted, in angle brackets, with a fragment
    "https://acc.blob.core.windows.net/c/x.tif?sv=2021&se=2030&sr=c&sp=rl&sig=S3CR3T",
    "/vsicurl/https://acc.blob.core.windows.net/c/x.tif?st=1&se=2&sig=S3CR3T%2BT0K3N",
    "'https://acc.blob.core.windows.net/c/x.tif?sig=S3CR3T&token=T0K3N'",
    '"https://acc.blob.core.windows.net/c/x.tif?sig=S3CR3T"',
    "<https://acc.blob.core.windows.net/c/x.tif?sig=S3CR3T>",
    "https://acc.blob.core.windows.net/c/x.tif?sig=S3CR3T#frag",
    # not Azure: a bearer token, S3 and GCS presigned URLs, another scheme, no scheme
    "http://example.com/x.tif?token=T0K3N",
    "https://example.com:8443/x.tif?a=1&access_token=T0K3N",
    "https://bucket.s3.amazonaws.com/x.tif?X-Amz-Credential=AK&X-Amz-Signature=AMZSIG",
    "s3://bucket/x.tif?X-Amz-Signature=AMZSIG",
    "https://storage.googleapis.com/b/x.tif?X-Goog-Signature=AMZSIG",
    "//acc.blob.core.windows.net/c/x.tif?sig=S3CR3T",
    "acc.blob.core.windows.net/c/x.tif?se=2030&sig=S3CR3T",
    "x.tif?token=T0K3N",
    # bare query strings and key=value pairs in prose, also upper case and URL-encoded
    "sp=rl&se=2030&sv=1&sr=b&sig=S3CR3T",
    "no: token=T0K3N and SIG=S3CR3T.",
    "https://proxy.example/fetch?url=https%3A%2F%2Fa.blob.core.windows.net%2Fx%3Fsig%3DS3CR3T",
    "url=https%3A%2F%2Fa.blob.core.windows.net%2Fx%3Fsig%3DS3CR3T%26se%3D1",
    "subscription-key=T0K3N",
]


@pytest.mark.parametrize("form", URL_FORMS)
def test_redact__removes_the_secret_of_every_url_form(form):
    text = f"Error reading {form}: HTTP response code: 403"
    redacted = redact(text)
    assert not any(secret in redacted for secret in SECRETS), redacted
    assert redacted.startswith("Error reading ") and redacted.endswith(" HTTP response code: 403")
    assert redact(redacted) == redacted  # idempotent


def test_redact__keeps_the_path_and_plain_text():
    assert redact("open 'https://acc.blob.core.windows.net/c/LC09_SR_B3.TIF?sig=S3CR3T' failed") == (
        "open 'https://acc.blob.core.windows.net/c/LC09_SR_B3.TIF' failed"
    )
    assert redact("x.tif?token=T0K3N") == "x.tif?token=<redacted>"
    plain = "band 'green' of item LC09 (first=1, cost=2) is missing; HTTP response code: 404"
    assert redact(plain) == plain


def test_redact__search_and_load_use_the_same_function():
    assert stac.redact is io.reader.redact is io.items.redact is _remote.redact
    assert stac.redact_tokens_in_logs is _remote.redact_tokens_in_logs


def test_log_filter__redacts_non_azure_tokens_too(caplog):
    """The log filter once left ``?token=`` of non-Azure URLs in records; it uses redact now."""
    loggers = [logging.getLogger(name) for name in ("rasterio._base", "glacierxr.io")]
    _remote.redact_tokens_in_logs()
    caplog.set_level(logging.DEBUG)
    loggers[0].debug("open %s", "http://example.com/x.tif?token=T0K3N")
    loggers[1].debug("open %s", "s3://b/x.tif?X-Amz-Signature=AMZSIG")
    assert caplog.records and "T0K3N" not in caplog.text and "AMZSIG" not in caplog.text
    assert "example.com/x.tif" in caplog.text


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("https://landsateuwest.blob.core.windows.net/landsat-c2/x.tif", True),
        ("https://user@landsateuwest.blob.core.windows.net:443/c/x.tif?sig=1", True),
        ("HTTPS://LANDSATEUWEST.BLOB.CORE.WINDOWS.NET/c/x.tif", True),
        ("https://ai4edatasetspublicassets.blob.core.windows.net/assets/t.png", False),
        ("https://example.com/blob.core.windows.net/x.tif", False),
        ("/vsicurl/https://a.blob.core.windows.net/c/x.tif", False),
        ("/data/x.tif", False),
        ("s3://a.blob.core.windows.net/c/x.tif", False),
    ],
)
def test_is_blob(href, expected):
    assert is_blob(href) is expected


def test_sign__leaves_other_hrefs_and_signed_ones_alone():
    for href in ("/data/x.tif", "https://example.com/x.tif?token=1",
                 "https://a.blob.core.windows.net/c/x.tif?se=2099&sp=r&sig=ok"):
        assert _remote.sign(href) == href
    assert pickle.loads(pickle.dumps(_remote.resign)) is _remote.resign


@pytest.mark.parametrize(
    ("message", "href", "expected"),
    [
        ("HTTP response code: 503", "/x.tif", True),
        ("HTTP response code: 429", "https://example.com/x.tif", True),
        ("Connection reset by peer", "/x.tif", True),
        ("Operation timed out after 30000 milliseconds", "https://example.com/x.tif", True),
        ("HTTP response code: 403", "https://a.blob.core.windows.net/c/x.tif", True),  # expired token
        ("HTTP response code: 403", "https://example.com/x.tif", False),
        ("HTTP response code: 404", "https://a.blob.core.windows.net/c/x.tif", False),
        ("'x.tif' not recognized as being in a supported file format", "https://example.com/x.tif", True),
        ("'x.tif' not recognized as being in a supported file format", "/data/x.tif", False),
    ],
)
def test_is_transient(message, href, expected):
    assert is_transient(OSError(message), href) is expected


def test_is_transient__reads_the_causes():
    try:
        try:
            raise OSError("HTTP response code: 502")
        except OSError as inner:
            raise RuntimeError("read failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer, "/x.tif")
