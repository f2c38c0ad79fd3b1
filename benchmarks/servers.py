"""Local servers for the benchmarks, each in its own process: moto's S3 server and a
FaultProxy that adds latency in front of it. Only 127.0.0.1.

    moto, port = start(serve_moto)
    proxy, proxy_port = start(serve_proxy, port, 0.020)   # +20 ms per request
    opts = s3_options(proxy_port)
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any


def serve_moto(queue: Any) -> None:
    """Child process: moto's S3 server on 127.0.0.1; puts its port on ``queue``."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    queue.put(server.get_host_and_port()[1])
    time.sleep(24 * 3600)


def serve_proxy(upstream: int, delay: float, queue: Any) -> None:
    """Child process: a FaultProxy to ``upstream`` holding each request ``delay`` seconds."""
    from zarr_torch.testing import FaultProxy

    with FaultProxy(f"http://127.0.0.1:{upstream}", delay=delay) as proxy:
        queue.put(int(proxy.url.rsplit(":", 1)[1]))
        time.sleep(24 * 3600)


def start(target: Callable[..., None], *args: Any) -> tuple[multiprocessing.Process, int]:
    """Start ``target(*args, queue)`` in a spawned daemon process; return it and its port."""
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
