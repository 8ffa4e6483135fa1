"""A loopback Range file server that fails on purpose: 5xx, dropped connections, stalls, SAS expiry.

It is :class:`httpserver.FileServer` (same child process, same Range support, same request
log) with fault injection for the reliability tests:

- ``server.fault("status", status=503, times=2, path_contains="_green", after=1)``: skip the
  first ``after`` matching requests, then answer the next ``times`` with ``status``;
- ``server.fault("reset", ...)``: close the connection without answering (curl: "Empty reply");
- ``server.fault("truncate", ...)``: send the headers and half of the body, then close
  (curl: "transfer closed with ... bytes remaining");
- ``server.fault("stall", stall_s=30, ...)``: hold the request for ``stall_s`` seconds before
  handling it (a server that hangs); with ``then="answer"`` (default) it is then served;
- ``server.require_sas()``: every file request must carry ``sig=...&se=<unix time>`` and
  ``se`` must not be in the past (checked *after* any stall, like a request that was in flight
  when its token expired); otherwise 403 ``AuthenticationFailed`` like Azure Blob Storage.

By default faults match only ``GET`` requests with a ``Range`` header (the COG reads GDAL makes);
pass ``ranged_only=False`` to match any request.  Requests made through an HTTP proxy (an
absolute URI such as ``http://acc.blob.core.windows.net/c/x.tif``) are mapped by their path, so
``GDAL_HTTP_PROXY=127.0.0.1:<port>`` makes Planetary-Computer-looking URLs read from here.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpserver import _CONTROL, FileServer, _Handler, _State, _ThreadingServer  # noqa: E402

__all__ = ["FaultyRangeServer"]

_KINDS = ("status", "reset", "truncate", "stall")


@dataclass
class _Fault:
    kind: str
    remaining: int
    skip: int
    path_contains: str
    ranged_only: bool
    status: int
    stall_s: float
    then: str
    fired: int = 0


class _FaultState(_State):
    def __init__(self, root: Path) -> None:
        super().__init__(root=root)
        self.faults: list[_Fault] = []
        self.require_sas = False
        self.fired: list[dict] = []


class _FaultyHandler(_Handler):
    def _choose_fault(self) -> _Fault | None:
        path = urlsplit(self.path).path
        ranged = self.command == "GET" and self.headers.get("Range") is not None
        with self.state.lock:
            for fault in self.state.faults:
                if fault.remaining <= 0 or fault.path_contains not in path:
                    continue
                if fault.ranged_only and not ranged:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.remaining -= 1
                fault.fired += 1
                self.state.fired.append({"kind": fault.kind, "path": path, "range": self.headers.get("Range")})
                return fault
        return None

    def _sas_refusal(self) -> bytes | None:
        if not self.state.require_sas:
            return None
        query = parse_qs(urlsplit(self.path).query)
        if "sig" not in query or "se" not in query:
            return b"AuthenticationFailed: no SAS token\n"
        try:
            expiry = float(query["se"][0])
        except ValueError:
            return b"AuthenticationFailed: malformed se\n"
        if time.time() > expiry:
            return b"AuthenticationFailed: Signature not valid in the specified time frame\n"
        return None

    def _serve(self, *, head: bool) -> None:
        if self.path.startswith(_CONTROL):
            self._control()
            return
        fault = self._choose_fault()
        if fault is not None:
            if fault.kind == "stall":
                time.sleep(fault.stall_s)
                if fault.then == "reset":
                    self._drop()
                    return
            elif fault.kind == "status":
                self._send_status(fault.status, f"injected failure {fault.status}\n".encode())
                return
            elif fault.kind == "reset":
                self._drop()
                return
            elif fault.kind == "truncate":
                self._truncate()
                return
        refusal = self._sas_refusal()
        if refusal is not None:
            self._send_status(403, refusal)
            return
        super()._serve(head=head)

    def _drop(self) -> None:
        self._record(0)
        self.close_connection = True
        self.wfile.flush()
        try:
            self.connection.shutdown(2)
        except OSError:
            pass

    def _truncate(self) -> None:
        path = self._resolve()
        size = path.stat().st_size if path is not None else 1024
        self._record(-206)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes 0-{size - 1}/{size}")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        data = path.read_bytes() if path is not None else b"\0" * size
        self.wfile.write(data[: size // 2])
        self._drop()

    def _control(self) -> None:
        parts = urlsplit(self.path)
        action = parts.path[len(_CONTROL) :]
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if action == "fault":
            fault = _Fault(
                kind=query["kind"],
                remaining=int(query.get("times", 1)),
                skip=int(query.get("after", 0)),
                path_contains=query.get("path", ""),
                ranged_only=query.get("ranged_only", "1") == "1",
                status=int(query.get("status", 503)),
                stall_s=float(query.get("stall_s", 30)),
                then=query.get("then", "answer"),
            )
            with self.state.lock:
                self.state.faults.append(fault)
            payload = "ok"
        elif action == "require_sas":
            self.state.require_sas = query.get("on", "1") == "1"
            payload = "ok"
        elif action == "fired":
            with self.state.lock:
                payload = list(self.state.fired)
        elif action == "reset":
            with self.state.lock:
                self.state.faults.clear()
                self.state.fired.clear()
                self.state.require_sas = False
            super()._control()
            return
        else:
            super()._control()
            return
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve_forever(directory: str) -> None:
    state = _FaultState(Path(directory))
    handler = type("BoundFaultyHandler", (_FaultyHandler,), {"state": state})
    with _ThreadingServer(("127.0.0.1", 0), handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


class FaultyRangeServer(FileServer):
    """:class:`httpserver.FileServer` that injects network faults into chosen requests."""

    script = Path(__file__).resolve()
    what = "fault server"

    def fault(
        self,
        kind: str,
        *,
        times: int = 1,
        after: int = 0,
        path_contains: str = "",
        ranged_only: bool = True,
        status: int = 503,
        stall_s: float = 30.0,
        then: str = "answer",
    ) -> None:
        """Plan ``times`` faults of ``kind`` on matching requests, after ``after`` clean ones."""
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        self._call(
            "fault", kind=kind, times=times, after=after, path=path_contains,
            ranged_only=int(ranged_only), status=status, stall_s=stall_s, then=then,
        )  # fmt: skip

    def require_sas(self, on: bool = True) -> None:
        """Refuse (403) file requests without an unexpired ``se=<unix time>&sig=...`` query."""
        self._call("require_sas", on=int(on))

    @property
    def fired(self) -> list[dict]:
        """The faults injected so far (kind, path, Range header), oldest first."""
        return self._call("fired")


if __name__ == "__main__":
    _serve_forever(sys.argv[1])
