"""Test helpers: an HTTP proxy on 127.0.0.1 that delays or fails requests.

Put it in front of a local S3 server (moto's) to see how a loader rides out a slow or
flaky object store. Only loopback addresses are used.

    with FaultProxy("http://127.0.0.1:5000", fault=every_nth(4)) as proxy:
        opts = {"client_kwargs": {"endpoint_url": proxy.url}, ...}
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

Fault = Literal["503", "500", "reset"]
#: decides the fault, if any, for the n-th request (1-based) and its n-th try of this path.
FaultRule = Callable[[str, str, int, int], Fault | None]

_BODIES = {
    "503": b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
    "500": b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>",
}
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def every_nth(n: int, fault: Fault = "503") -> FaultRule:
    """Fail every ``n``-th request the proxy sees."""
    return lambda method, path, count, tries: fault if count % n == 0 else None


def failing_keys(match: Callable[[str], bool], times: int, fault: Fault = "503") -> FaultRule:
    """Fail the first ``times`` requests for every path ``match`` accepts."""
    return lambda method, path, count, tries: fault if match(path) and tries <= times else None


def _upstream_connection(host: str, port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


class FaultProxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 that forwards to ``target``.

    Each request waits ``delay`` seconds (and one whose path ``hold`` accepts, until
    ``released`` is set), then ``fault`` may answer it with a 503 SlowDown or 500
    InternalError, or reset the connection, instead of forwarding it.
    ``requests`` counts what was forwarded or failed per (method, path).
    """

    def __init__(
        self,
        target: str,
        *,
        delay: float = 0.0,
        fault: FaultRule | None = None,
        hold: Callable[[str], bool] | None = None,
    ) -> None:
        parts = urlsplit(target)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"FaultProxy only forwards to loopback, not {parts.hostname!r}")
        self.target = (parts.hostname, parts.port or 80)
        self.delay = delay
        self.fault = fault
        self.hold = hold
        #: set to let the requests ``hold`` holds go on (each waits at most 30 s).
        self.released = threading.Event()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.faults: Counter[str] = Counter()
        self._count = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(), bind_and_activate=False)
        # A real endpoint does not refuse connections: a backlog of 5 (socketserver's
        # default) would, when a batch opens dozens at once.
        self._server.request_queue_size = 256
        self._server.server_bind()
        self._server.server_activate()
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _decide(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self._count += 1
            self.requests[(method, path)] += 1
            fault = self.fault and self.fault(method, path, self._count, self.requests[(method, path)])
            if fault:
                self.faults[fault] += 1
            return fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self
        local = threading.local()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # an idle keep-alive connection is closed, never waited on forever

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle's algorithm
                # and delayed ACKs add ~40 ms to a request, far more than the delay asked for.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.delay:
                    time.sleep(proxy.delay)
                if proxy.hold and proxy.hold(self.path.split("?")[0]):
                    proxy.released.wait(timeout=30)
                fault = proxy._decide(self.command, self.path.split("?")[0])
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault:
                    payload = b"" if self.command == "HEAD" else _BODIES[fault]
                    self.send_response(int(fault))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                status, headers, data = self._upstream(body)
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in _HOP_HEADERS and k.lower() != "content-length":
                        self.send_header(k, v)
                sent_length = dict((k.lower(), v) for k, v in headers).get("content-length")
                self.send_header(
                    "Content-Length",
                    sent_length if self.command == "HEAD" and sent_length else str(len(data)),
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _upstream(self, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                for attempt in range(2):  # a pooled upstream connection may have gone stale
                    conn = getattr(local, "conn", None) or _upstream_connection(*proxy.target)
                    local.conn = conn
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        resp = conn.getresponse()
                        return resp.status, resp.getheaders(), resp.read()
                    except (ConnectionError, http.client.HTTPException):
                        conn.close()
                        local.conn = None
                        if attempt:
                            raise
                raise AssertionError("unreachable")

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        return Handler
