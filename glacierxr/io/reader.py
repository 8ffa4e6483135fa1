"""The raster reader behind :func:`glacierxr.load`: signs at open time, retries, redacts.

:class:`LandsatReader` is what stackstac opens every asset with. Planetary Computer hrefs get a
fresh token each time a file is opened (:func:`glacierxr._remote.resign`), transient failures
are retried (:func:`glacierxr._remote.is_transient`) with exponential backoff, and failures are
reported without tokens, or read as nodata with ``load(..., on_error="skip")``.
"""

from __future__ import annotations

import contextlib
import math
import time as _time
import warnings

import numpy as np
import rasterio
from stackstac.nodata_reader import NodataReader, exception_matches, nodata_for_window
from stackstac.rio_reader import AutoParallelRioReader

from glacierxr import _remote
from glacierxr._remote import redact
from glacierxr.errors import AssetReadError

__all__ = ["LandsatReader", "SkippedAssetWarning", "READ_ATTEMPTS", "RETRY_BACKOFF_S", "READ_TIMEOUT_S"]


#: How often a raster asset is tried (open or read) before :class:`AssetReadError`.
READ_ATTEMPTS = 3
#: Seconds before the first retry; doubled before each further one.
RETRY_BACKOFF_S = 0.5
#: Seconds a server may take to accept a connection, or stay silent in the middle of a
#: response, before GDAL gives the request up (it is then retried like a 5xx). Slow but
#: moving transfers are never cut.
READ_TIMEOUT_S = 30.0


def _skipped_text(error: str) -> str:
    """The warning of a skipped asset: the failure, without the advice to skip (it is on)."""
    failure = error.split(" Check that the file", 1)[0]
    return (
        f"{failure} It reads as nodata (NaN) because on_error='skip' is set; if that is "
        "unexpected, check that the file exists and that the server answers."
    )


class SkippedAssetWarning(UserWarning):
    """``load(..., on_error="skip")`` replaced an unreadable asset by nodata.

    Raised at compute time, once per asset; ``href`` (without its token) names the file, whose
    name for Landsat holds the scene id.  Collect them with ``warnings.catch_warnings(record=True)``
    around ``.compute()``.  On a ``dask.distributed`` cluster they are emitted in the workers.
    """

    def __init__(self, message: str, href: str) -> None:
        super().__init__(message)
        self.href = href


def _short_cause(exc: BaseException) -> str:
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    return redact(f"{type(root).__name__}: {root}")


@contextlib.contextmanager
def _uncached(url: str, attempt: int):
    """Make GDAL ask the server again on a retry (it remembers failed URLs otherwise)."""
    if attempt == 0 or "://" not in url:
        yield
        return
    with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=f"/vsicurl/{url}"):
        yield


class LandsatReader(AutoParallelRioReader):
    """stackstac reader that signs Planetary Computer hrefs at open time and retries.

    A drop-in for :class:`stackstac.rio_reader.AutoParallelRioReader` (same constructor, pickles
    the same way, so it runs on ``dask.distributed`` workers):

    - hrefs on ``*.blob.core.windows.net`` are signed with :func:`glacierxr._remote.resign`
      each time the file is opened, so a token that expired since the search is renewed;
    - transient failures (HTTP 5xx/429, dropped connections, time-outs after
      :data:`READ_TIMEOUT_S` of silence, HTTP 403 on a blob URL, and bytes of a remote file
      that did not arrive whole) are retried :data:`READ_ATTEMPTS` times with exponential
      backoff from :data:`RETRY_BACKOFF_S` seconds; other failures (404, a corrupt local
      file) fail at once;
    - a failure raises :class:`~glacierxr.errors.AssetReadError` naming the href without its
      query string, or, when the error matches ``errors_as_nodata`` (``load(on_error="skip")``
      passes ``AssetReadError(".*")``), warns :class:`SkippedAssetWarning` and reads as nodata.
    """

    def _failure(self, action: str, exc: BaseException, attempts: int) -> AssetReadError:
        href = redact(self.url)
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return AssetReadError(
            f"Could not {action} raster asset {href!r}{tries}: {_short_cause(exc)}. "
            "Check that the file exists and is a readable GeoTIFF, that the server answers, and "
            "for Planetary Computer that the item was signed; pass on_error='skip' to load() "
            "to read unreadable scenes as NaN instead."
        )

    def _skip(self, error: AssetReadError) -> bool:
        if exception_matches(error, self.errors_as_nodata):
            warnings.warn(
                SkippedAssetWarning(_skipped_text(str(error)), redact(self.url)),
                stacklevel=2,
            )
            return True
        return False

    def _open(self):
        href = self.url
        attempts = 0
        error: BaseException | None = None
        try:
            for attempt in range(max(1, READ_ATTEMPTS)):
                attempts = attempt + 1
                try:
                    self.url = _remote.resign(href)
                    with _uncached(self.url, attempt):
                        return super()._open()
                except AssetReadError as exc:  # signing failed for good
                    error = exc
                    break
                except Exception as exc:  # noqa: BLE001 - classified, redacted and re-raised
                    error = exc
                    if attempts >= READ_ATTEMPTS or not _remote.is_transient(exc, href):
                        break
                    _time.sleep(RETRY_BACKOFF_S * 2**attempt)
        finally:
            self.url = href  # never keep a token on the object (it is pickled, printed)
        failure = error if isinstance(error, AssetReadError) else self._failure("open", error, attempts)
        if self._skip(failure):
            return NodataReader(dtype=self.dtype, fill_value=self.fill_value)
        raise failure from None

    def read(self, window, **kwargs) -> np.ndarray:
        for attempt in range(max(1, READ_ATTEMPTS)):
            try:
                with _uncached(self.url, attempt):  # a retry must not get cached partial bytes
                    return super().read(window, **kwargs)
            except AssetReadError:
                raise  # from _open: already retried and explained
            except Exception as exc:  # noqa: BLE001 - classified, redacted and re-raised
                if attempt + 1 >= READ_ATTEMPTS or not _remote.is_transient(exc, self.url):
                    failure = self._failure("read", exc, attempt + 1)
                    if self._skip(failure):
                        return nodata_for_window(window, self.fill_value, self.dtype)
                    raise failure from None
                _time.sleep(RETRY_BACKOFF_S * 2**attempt)
                self.close()  # reopen (and sign again) on the next attempt
        raise AssertionError("unreachable")  # pragma: no cover


def _gdal_env():
    """stackstac's GDAL settings plus time-outs, so that a stalled server is given up on."""
    from stackstac.rio_reader import DEFAULT_GDAL_ENV

    seconds = str(max(1, math.ceil(READ_TIMEOUT_S)))
    return DEFAULT_GDAL_ENV.updated(
        always=dict(
            GDAL_HTTP_CONNECTTIMEOUT=seconds,
            # abort a response that stays below 1 byte/s for that long (a hung server)
            GDAL_HTTP_LOW_SPEED_TIME=seconds,
            GDAL_HTTP_LOW_SPEED_LIMIT="1",
        )
    )
