"""Remote access shared by search (stac.py) and load (io.py): signing, redaction, retries.

One home for each rule about remote hrefs:

=========================  ==================================================================
name                       what it does
=========================  ==================================================================
redact                     removes tokens and signatures from any text, on every URL form
RedactTokensFilter         a logging filter applying :func:`redact` to every record
redact_tokens_in_logs      attaches that filter to the loggers that see signed URLs
is_blob                    Planetary Computer blob storage (needs a SAS token to read)
is_remote                  an http(s) href
sign                       appends a SAS token to a blob href (keeps a present one)
resign                     replaces a blob href's token by a currently valid one
is_transient               a read failure worth another attempt (5xx, 429, time-outs, 403 of
                           an expired token, a short read of a remote file)
=========================  ==================================================================

Planetary Computer signing: assets on ``*.blob.core.windows.net`` are readable with a SAS token
appended as the URL's query. :mod:`planetary_computer` fetches one token per storage account
and container and caches it until less than a minute of its life remains; :func:`resign` strips
an old token and asks that cache again, so long computations keep working.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from glacierxr.errors import AssetReadError, DataTypeError

__all__ = [
    "RETRY_BACKOFF_FACTOR",
    "TOKEN_LOGGER_PACKAGES",
    "RedactTokensFilter",
    "redact",
    "redact_tokens_in_logs",
    "is_blob",
    "is_remote",
    "sign",
    "resign",
    "is_transient",
]

#: Seconds of the exponential backoff between retries: ``factor * 2 ** (retry - 1)``.
RETRY_BACKOFF_FACTOR = 0.5

BLOB_DOMAIN = ".blob.core.windows.net"
# Planetary Computer's public thumbnails account needs no token (planetary_computer skips it).
PUBLIC_BLOB_ACCOUNTS = frozenset({"ai4edatasetspublicassets.blob.core.windows.net"})
# Query keys of an Azure SAS token (service, account and user-delegation SAS).
SAS_KEYS = frozenset({
    "sv", "ss", "srt", "sp", "se", "st", "spr", "sig", "sr", "si", "sdd", "ses", "skoid",
    "sktid", "skt", "ske", "sks", "skv", "saoid", "suoid", "scid", "sip", "rscc", "rscd",
    "rsce", "rscl", "rsct",
})  # fmt: skip
# Keys whose presence means "already signed".
SAS_MARKERS = frozenset({"st", "se", "sp", "sig"})
# Other query keys that carry credentials (bearer tokens, S3 / GCS presigned URLs, API keys).
_OTHER_SECRET_KEYS = (
    "token", "access_token", "id_token", "api_key", "apikey", "access_key", "signature",
    "subscription-key", "x-amz-[a-z-]+", "x-goog-[a-z-]+",
)  # fmt: skip

# A URL (any scheme, behind GDAL's /vsicurl/ or not; also scheme-relative //host/...) with a
# query: the query goes whole, whatever it holds, up to whitespace, a quote or a bracket.
_URL_QUERY = re.compile(
    r"""((?:/vsicurl/)?(?:[a-z][a-z0-9+.-]*:)?//[^\s'"<>?#]+)\?[^\s'"<>]*""", re.IGNORECASE
)
# A blob host without a scheme ("acc.blob.core.windows.net/c/x.tif?sig=..."): the query goes.
_BLOB_QUERY = re.compile(r"""(\.blob\.core\.windows\.net/[^\s'"<>?#]*)\?[^\s'"<>]*""", re.IGNORECASE)
# key=value (or key%3Dvalue, URL-encoded) of every secret key anywhere else in the text.
_SECRET_PARAM = re.compile(
    r"(?:(?<![a-z0-9_-])|(?<=%3F)|(?<=%26))(" + "|".join(sorted(SAS_KEYS) + list(_OTHER_SECRET_KEYS))
    + r""")(=|%3D)(?:(?!%26)[^&\s'"<>])+""",
    re.IGNORECASE,
)

_TRANSIENT = re.compile(
    r"HTTP response code: (?:5\d\d|429|408)|couldn'?t connect|connection (?:reset|refused|timed out)"
    r"|failed to connect|timed? ?out|timeout|could not resolve|recv failure|send failure"
    r"|transfer closed"
    r"|empty reply|ssl",
    re.IGNORECASE,
)
_EXPIRED_TOKEN = re.compile(r"HTTP response code: 403", re.IGNORECASE)
# What GDAL says when the bytes of a *remote* file did not arrive whole: an error page or a
# refused token read instead of the TIFF header ("not recognized"), or a short tile read.
# GDAL does not always carry the HTTP status into the exception, so for http(s) hrefs these
# are retried too (a truly corrupt remote file then fails after the last attempt).
_REMOTE_SHORT_READ = re.compile(
    r"not recognized as being in a supported file format|read error at|got \d+ bytes, expected"
    r"|ireadblock failed|tiffreadencoded|tifffilltile|tiffreadblock",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- redaction
def redact(text: str) -> str:
    """``text`` without tokens: URL queries removed, secret ``key=value`` pairs blanked.

    Every URL's query is removed whole (Azure or not, behind ``/vsicurl/``, scheme-relative,
    or a blob host without a scheme); elsewhere the values of SAS keys (``sig``, ``se``,
    ``sp``, ``sv``, ``sr`` …), ``token``, ``X-Amz-*`` and other credential keys become
    ``<redacted>``, also URL-encoded (``sig%3D…``).

    Examples
    --------
    >>> redact("Error opening 'https://a.blob.core.windows.net/c/x.tif?st=1&sig=abc': 403")
    "Error opening 'https://a.blob.core.windows.net/c/x.tif': 403"
    >>> redact("GET http://example.com/x.tif?token=abc failed")
    'GET http://example.com/x.tif failed'
    >>> redact("retry with sp=rl&se=2030&sig=zzz")
    'retry with sp=<redacted>&se=<redacted>&sig=<redacted>'
    """
    text = _URL_QUERY.sub(r"\1", str(text))
    text = _BLOB_QUERY.sub(r"\1", text)
    return _SECRET_PARAM.sub(r"\1\2<redacted>", text)


#: Packages whose loggers see signed URLs; rasterio and stackstac log them at DEBUG level
#: ("Dataset <open DatasetReader name='https://...?...&sig=...'> is started").
TOKEN_LOGGER_PACKAGES = (
    "rasterio", "stackstac", "urllib3", "requests", "pystac", "pystac_client",
    "planetary_computer", "fsspec", "glacierxr",
)  # fmt: skip


class RedactTokensFilter(logging.Filter):
    """A :class:`logging.Filter` that removes tokens from log records (it never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is not ours to fix
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_TOKEN_FILTER = RedactTokensFilter()


def redact_tokens_in_logs() -> None:
    """Attach :class:`RedactTokensFilter` to the loggers of :data:`TOKEN_LOGGER_PACKAGES`.

    Filters of a logger apply to the records logged on it, not on its children, so every
    logger of those packages that exists when it runs is equipped. Idempotent and cheap;
    :func:`glacierxr.search`, :func:`resign` and :func:`glacierxr.load` call it. Filters run
    only for records at an enabled level, so this costs nothing unless DEBUG logging is on.

    Examples
    --------
    >>> import logging
    >>> redact_tokens_in_logs()
    >>> any(isinstance(f, RedactTokensFilter) for f in logging.getLogger("rasterio._base").filters)
    True
    """
    names = set(TOKEN_LOGGER_PACKAGES) | {"rasterio._base", "rasterio._env", "stackstac.timer"}
    names |= {
        name
        for name in list(logging.root.manager.loggerDict)
        if name.split(".", 1)[0] in TOKEN_LOGGER_PACKAGES
    }
    for name in names:
        logger = logging.getLogger(name)
        if _TOKEN_FILTER not in logger.filters:
            logger.addFilter(_TOKEN_FILTER)


# --------------------------------------------------------------------------- hrefs
def is_blob(href: str) -> bool:
    """True for an http(s) URL on Planetary Computer blob storage that needs a token.

    Examples
    --------
    >>> is_blob("https://landsateuwest.blob.core.windows.net/landsat-c2/x.tif?sig=1")
    True
    >>> is_blob("https://ai4edatasetspublicassets.blob.core.windows.net/t.png"), is_blob("/data/x.tif")
    (False, False)
    """
    parts = urlsplit(str(href))
    if parts.scheme.lower() not in ("http", "https"):
        return False
    host = parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0].lower()
    return host.endswith(BLOB_DOMAIN) and host not in PUBLIC_BLOB_ACCOUNTS


def is_remote(href: str) -> bool:
    """True for an http(s) href."""
    return urlsplit(str(href)).scheme.lower() in ("http", "https")


def sign(href: str, *, strip: bool = False, max_retries: int = 5, error: type[Exception] = AssetReadError) -> str:
    """``href`` with a Planetary Computer SAS token; other hrefs come back unchanged.

    Parameters
    ----------
    href
        Asset URL.
    strip
        Replace a token already there (``False``: a signed href is returned as it is).
    max_retries
        Retries of the token request (connection errors, HTTP 429/5xx).
    error
        The :class:`glacierxr.errors.GlacierXRError` class raised when no token is obtained
        (its message names the URL without any token).
    """
    if not isinstance(href, str):
        raise DataTypeError(f"An asset href must be a string; got {type(href).__name__}.")
    if not is_blob(href):
        return href
    parts = urlsplit(href)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not strip and SAS_MARKERS & {k.lower() for k, _ in pairs}:
        return href  # already signed; resign() refreshes it when needed
    kept_query = urlencode([(k, v) for k, v in pairs if k.lower() not in SAS_KEYS])
    bare = urlunsplit((parts.scheme, parts.netloc, parts.path, kept_query, ""))
    path = parts.path.lstrip("/").split("/", 1)
    account = parts.netloc.split(".", 1)[0]
    container = path[0] if len(path) == 2 and path[0] else None
    if container is None:
        raise error(
            f"Cannot sign {bare}: a blob URL needs a container and a blob path "
            "(https://<account>.blob.core.windows.net/<container>/<path>)."
        )
    token = _get_token(account, container, bare=bare, max_retries=max_retries, error=error)
    query = "&".join(q for q in (kept_query, token.token.lstrip("?")) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def resign(href: str, *, max_retries: int = 5) -> str:
    """``href`` with a token that is still valid (blob hrefs only; see :func:`sign`).

    Examples
    --------
    >>> resign("/data/LC08_SR_B3.TIF")
    '/data/LC08_SR_B3.TIF'
    """
    redact_tokens_in_logs()
    return sign(href, strip=True, max_retries=max_retries, error=AssetReadError)


def _get_token(account: str, container: str, *, bare: str, max_retries: int, error):
    from planetary_computer.sas import get_token
    from planetary_computer.settings import Settings

    try:
        return get_token(account, container, retry_total=max_retries,
                         retry_backoff_factor=RETRY_BACKOFF_FACTOR)
    except Exception as err:  # requests errors, a malformed token response ...
        sas_url = Settings.get().sas_url
        detail = (shorten(redact(str(err)), 200) if _is_requests_error(err)
                  else type(err).__name__)  # a decoding error could quote the token: name only
        raise error(
            f"Could not get a Planetary Computer SAS token for {account}/{container} from "
            f"{sas_url} (after {max_retries} retries): {detail}. It is needed to read {bare}. "
            "Check the network connection and PC_SDK_SAS_URL / PC_SDK_SUBSCRIPTION_KEY, or pass "
            "sign=False to keep the hrefs unsigned."
        ) from None


def _is_requests_error(err: Exception) -> bool:
    import requests

    return isinstance(err, requests.RequestException)


def shorten(text: str, size: int) -> str:
    """``text`` on one line, at most ``size`` characters (``...`` where cut)."""
    text = " ".join(str(text).split())
    return text if len(text) <= size else text[: size - 3] + "..."


# --------------------------------------------------------------------------- retries
def messages(exc: BaseException | None) -> str:
    """The messages of ``exc`` and of the exceptions it was raised from, joined by ``|``."""
    parts = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " | ".join(parts)


def is_transient(exc: BaseException, href: str) -> bool:
    """True when reading ``href`` again may succeed after ``exc``.

    Examples
    --------
    >>> is_transient(OSError("HTTP response code: 503"), "/x.tif")
    True
    >>> is_transient(OSError("HTTP response code: 403"), "https://a.blob.core.windows.net/c/x.tif")
    True
    >>> is_transient(OSError("HTTP response code: 403"), "https://example.com/x.tif")
    False
    """
    text = messages(exc)
    if _TRANSIENT.search(text):
        return True
    if is_remote(href) and _REMOTE_SHORT_READ.search(text):
        return True
    # An expired SAS token answers 403; signing again (next attempt) fixes it.
    return is_blob(href) and bool(_EXPIRED_TOKEN.search(text))
