"""moto's S3 server for the benchmarks, in its own process, on 127.0.0.1 only.

Latency is added inside moto's process: one port per latency, all serving the same
buckets, each request held ``delay`` seconds by a sleeping server thread before moto
answers it. A sleeping thread costs no CPU, so the added latency is never what bounds a
run (a proxy in front did: it parsed and copied every request on the client's cores).

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
    """Child process: moto's S3 server, one port per delay; puts ``{delay: port}`` on ``queue``.

    The server ``moto.server.ThreadedMotoServer`` starts (threaded werkzeug, moto's request
    handler), once per port, over one shared in-memory backend, serving moto's S3 app
    itself: ThreadedMotoServer's dispatcher, which finds the service of every request
    under one lock, took a third of moto's CPU per GET (2.3 ms against 1.5 ms here).
    """
    import logging

    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_backend_app("s3")
    ports = {}
    for delay in delays:
        server = make_server(
            "127.0.0.1", 0, delayed(app, delay) if delay else app, True, request_handler=MotoRequestHandler
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ports[delay] = server.server_address[1]
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
