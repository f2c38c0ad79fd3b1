"""moto's S3 server for the benchmarks, in its own process, on 127.0.0.1 only.

moto's S3 app (the one ``moto.server.ThreadedMotoServer`` dispatches S3 requests to, over
the same in-memory backend) is served by waitress instead of werkzeug's development
server, which closes every connection after one response and finds each request's service
under one lock: 1.3 ms of moto's CPU per small GET there against 0.9 ms here, with
connections kept alive as S3's are. The server is then less of the bound on the client's
two cores; the tests keep ThreadedMotoServer itself.

Latency is added inside that process: one port per latency, all serving the same buckets,
each request held ``delay`` seconds by a sleeping server thread before moto answers it. A
sleeping thread costs no CPU, so the added latency is never what bounds a run (a proxy in
front did: it parsed and copied every request on the client's cores).

    moto, ports = start(serve_moto, [0, 0.020])   # ports[0]: loopback, ports[0.02]: +20 ms
    opts = s3_options(ports[0.02])
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any


def delayed(app: Callable[..., Any], delay: float) -> Callable[..., Any]:
    """The WSGI ``app`` with every request held ``delay`` seconds first."""

    def wrapper(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        time.sleep(delay)
        return app(environ, start_response)

    return wrapper


def serve_moto(delays: Iterable[float], queue: Any) -> None:
    """Child process: moto's S3 app served by waitress, one port per delay; puts
    ``{delay: port}`` on ``queue``."""
    import logging

    from moto.moto_server.werkzeug_app import create_backend_app
    from waitress.server import create_server

    logging.getLogger("waitress").setLevel(logging.ERROR)  # "Task queue depth is 2" per burst
    app = create_backend_app("s3")
    ports = {}
    for delay in delays:
        # a thread per request in flight: a held request must not hold up the others
        server = create_server(
            delayed(app, delay) if delay else app,
            host="127.0.0.1",
            port=0,
            threads=128,
            connection_limit=2048,
            outbuf_overflow=1 << 26,  # bodies stay in memory, not a temp file beyond 1 MiB
        )
        threading.Thread(target=server.run, daemon=True).start()
        ports[delay] = server.effective_port
    queue.put(ports)
    time.sleep(24 * 3600)


def start(target: Callable[..., None], *args: Any) -> tuple[multiprocessing.Process, Any]:
    """Start ``target(*args, queue)`` in a spawned daemon process; return it and what it put."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(*args, queue), daemon=True)
    process.start()
    return process, queue.get(timeout=60)


def s3_options(port: int) -> dict[str, Any]:
    """s3fs options for the S3 endpoint on 127.0.0.1:``port``."""
    return {
        "key": "bench",
        "secret": "bench",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "eu-west-1"},
    }
