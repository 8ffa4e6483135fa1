"""A small loopback HTTP file server with real ``Range`` support, for tests and benchmarks.

GDAL reads Cloud-Optimized GeoTIFFs over HTTP with ``Range`` requests (``206 Partial Content``),
sometimes several ranges at once (``multipart/byteranges``).  This server answers those like a
static-file host or a blob store does, records every request it receives, and can be told to
fail on purpose (to test retries and error messages).

The server runs in a **separate Python process**: a client that holds the GIL while it waits
for a response (GDAL inside rasterio sometimes does) cannot deadlock it, and it behaves like a
remote host.  The parent talks to it through a few control URLs under ``/__control__/``
(never recorded, never served as files).

Use it as a context manager::

    with FileServer(directory) as server:
        url = server.url("scene_B3.tif")       # http://127.0.0.1:PORT/scene_B3.tif
        ...
        server.requests                         # [Request(method="GET", path=..., ...), ...]
        server.fail(status=503, times=2)        # the next 2 requests answer 503

Query strings are accepted and recorded but ignored when mapping a URL to a file, so signed
URLs (``...?sig=...``) work against it.  Run ``python tests/httpserver.py DIR`` to serve a
folder by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import os
import re
import socketserver
import subprocess
import sys
import threading
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

__all__ = ["FileServer", "JSONServer", "Request"]

_RANGE_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
_CONTROL = "/__control__/"


@dataclass(frozen=True)
class Request:
    """One request the server received."""

    method: str
    path: str
    query: str
    range: str | None
    status: int


@dataclass
class _Failure:
    status: int
    remaining: int
    path_contains: str


@dataclass
class _State:
    root: Path
    requests: list[Request] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """``bytes=a-b,c-d`` -> inclusive (start, end) pairs clipped to the file; None if unsatisfiable."""
    unit, _, specs = header.partition("=")
    if unit.strip() != "bytes":
        return None
    ranges = []
    for spec in specs.split(","):
        match = _RANGE_SPEC.match(spec)
        if match is None:
            return None
        first, last = match.groups()
        if first == "" and last == "":
            return None
        if first == "":  # suffix range: the last N bytes
            length = int(last)
            if length == 0:
                continue
            start, end = max(size - length, 0), size - 1
        else:
            start = int(first)
            end = size - 1 if last == "" else min(int(last), size - 1)
            if start >= size or start > end:
                continue
        ranges.append((start, end))
    return ranges or None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State  # set on the subclass made per server

    def log_message(self, format, *args):  # noqa: A002  (keep test output quiet)
        pass

    # -- helpers ---------------------------------------------------------------------------
    def _record(self, status: int) -> None:
        parts = urlsplit(self.path)
        with self.state.lock:
            self.state.requests.append(
                Request(self.command, unquote(parts.path), parts.query, self.headers.get("Range"), status)
            )

    def _planned_failure(self) -> int | None:
        path = urlsplit(self.path).path
        with self.state.lock:
            for failure in self.state.failures:
                if failure.remaining > 0 and failure.path_contains in path:
                    failure.remaining -= 1
                    return failure.status
        return None

    def _send_status(self, status: int, body: bytes = b"") -> None:
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _resolve(self) -> Path | None:
        relative = unquote(urlsplit(self.path).path).lstrip("/")
        root = self.state.root.resolve()
        candidate = (root / relative).resolve()
        if root != candidate and root not in candidate.parents:
            return None
        return candidate if candidate.is_file() else None

    # -- verbs -----------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _control(self) -> None:
        parts = urlsplit(self.path)
        action = parts.path[len(_CONTROL) :]
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.state.lock:
            if action == "requests":
                payload = [dataclasses.asdict(r) for r in self.state.requests]
            elif action == "reset":
                self.state.requests.clear()
                self.state.failures.clear()
                payload = "ok"
            elif action == "fail":
                self.state.failures.append(
                    _Failure(int(query["status"]), int(query["times"]), query.get("path", ""))
                )
                payload = "ok"
            else:
                payload = None
        body = json.dumps(payload).encode()
        self.send_response(200 if payload is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, *, head: bool) -> None:
        if self.path.startswith(_CONTROL):
            self._control()
            return
        failure = self._planned_failure()
        if failure is not None:
            self._send_status(failure, f"planned failure {failure}\n".encode())
            return
        path = self._resolve()
        if path is None:
            self._send_status(404, b"not found\n")
            return
        data = path.read_bytes()
        size = len(data)
        header = self.headers.get("Range")
        if header is None:
            self._record(200)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if not head:
                self.wfile.write(data)
            return
        ranges = _parse_ranges(header, size)
        if ranges is None:
            self._record(416)
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._record(206)
        if len(ranges) == 1:
            start, end = ranges[0]
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            boundary = uuid.uuid4().hex
            chunks = []
            for start, end in ranges:
                chunks.append(
                    f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n".encode()
                )
                chunks.append(data[start : end + 1])
            chunks.append(f"\r\n--{boundary}--\r\n".encode())
            body = b"".join(chunks)
            self.send_response(206)
            self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True




def _serve_forever(directory: str, port: int = 0) -> None:
    """Serve ``directory`` until killed; print the port on the first stdout line."""
    state = _State(root=Path(directory))
    handler = type("BoundHandler", (_Handler,), {"state": state})
    with _ThreadingServer(("127.0.0.1", port), handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


class FileServer:
    """Serve ``directory`` on ``http://127.0.0.1:<free port>/`` from a child process.

    Parameters
    ----------
    directory
        Folder whose files are served (paths outside it are refused with 404).

    Examples
    --------
    >>> import tempfile, urllib.request
    >>> with tempfile.TemporaryDirectory() as d, FileServer(d) as server:
    ...     _ = Path(d, "a.bin").write_bytes(b"0123456789")
    ...     req = urllib.request.Request(server.url("a.bin"), headers={"Range": "bytes=2-4"})
    ...     urllib.request.urlopen(req).read(), server.requests[0].status
    (b'234', 206)
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._process: subprocess.Popen | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    #: The script run as the server process (a subclass's module serves its own handler).
    script = Path(__file__).resolve()
    what = "test HTTP server"

    def start(self) -> FileServer:
        if self._process is None:
            self._process = subprocess.Popen(
                [sys.executable, "-u", str(self.script), str(self.directory)],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            line = self._process.stdout.readline()
            if not line.strip().isdigit():
                self.stop()
                raise RuntimeError(f"{self.what} did not start (said {line!r})")
            self._port = int(line)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process.stdout.close()
            self._process = None

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:
        self.stop()

    # -- API ---------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not started; use `with FileServer(dir) as server:`")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def url(self, relative_path: str | os.PathLike) -> str:
        """URL of a file given relative to the served directory."""
        return self.base_url + Path(relative_path).as_posix().lstrip("/")

    def _call(self, action: str, **params) -> object:
        url = f"{self.base_url}{_CONTROL.lstrip('/')}{action}"
        if params:
            url += "?" + urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    @property
    def requests(self) -> list[Request]:
        """Every request received so far (control calls excluded), oldest first."""
        return [Request(**r) for r in self._call("requests")]

    def reset(self) -> None:
        """Forget the recorded requests and the planned failures."""
        self._call("reset")

    def fail(self, *, status: int = 503, times: int = 1, path_contains: str = "") -> None:
        """Answer the next ``times`` requests whose path contains ``path_contains`` with ``status``."""
        self._call("fail", status=status, times=times, path=path_contains)

    def byte_requests(self, path_contains: str = "") -> list[Request]:
        """GET requests (the ones that move file bytes) whose path contains ``path_contains``."""
        return [r for r in self.requests if r.method == "GET" and path_contains in r.path]


class JSONServer:
    """A small JSON service on ``http://127.0.0.1:<free port>`` in a thread of this process.

    The stand-in for a token endpoint or a STAC API: ``answer(handler)`` is called for every GET
    or POST (the request body already read; ``handler.path`` and ``handler.command`` say what was
    asked) and returns ``(status, document)``, sent as JSON, or ``None`` to close the connection
    without an answer (a reset; sleep first to stall). Use it as a context manager or call
    :meth:`close`.

    Examples
    --------
    >>> import urllib.request
    >>> with JSONServer(lambda handler: (200, {"path": handler.path})) as server:
    ...     json.load(urllib.request.urlopen(server.url + "/token"))
    {'path': '/token'}
    """

    def __init__(self, answer, *, http11: bool = False) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if http11 else "HTTP/1.0"

            def _reply(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                reply = answer(self)
                if reply is None:
                    self.close_connection = True
                    return
                status, document = reply
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _reply  # noqa: N815
            do_POST = _reply  # noqa: N815

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> JSONServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    _serve_forever(args.directory, args.port)
