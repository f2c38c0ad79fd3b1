"""Shared fixtures: moto's S3 server on 127.0.0.1, synthetic stores of every layout."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from zarr_torch.synth import make_frames, write_stores

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
logging.getLogger("werkzeug").setLevel(logging.WARNING)

#: the store layouts every read path must handle, as ``write_stores`` arguments.
LAYOUTS = {
    "v3-chunk1-zstd": {"chunk": 1, "codec": "zstd"},
    "v3-chunk16": {"chunk": 16, "codec": "zstd"},
    "v3-sharded": {"chunk": 4, "shard": 16, "codec": "zstd"},
    "v3-sharded-chunk1": {"chunk": 1, "shard": 8, "codec": "zstd"},
    "v3-tiles": {"chunk": 1, "tile": 5, "codec": "zstd"},
    "v2-blosc": {"chunk": 4, "codec": "blosc", "zarr_format": 2},
    "nested": {"chunk": 4, "codec": "zstd", "nested": True},
}
SIZE = 12  # frame height and width in the test stores


def reference(stores: int, frames: int, size: int = SIZE) -> np.ndarray:
    """Every frame of ``write_stores(stores=stores, frames=frames)``, in index order."""
    return np.concatenate([make_frames(s, frames, size) for s in range(stores)])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server listening on 127.0.0.1 for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_options(s3_endpoint: str) -> dict:
    """s3fs storage options that reach the moto server over real HTTP."""
    return {
        "key": "testing-key",
        "secret": "testing-secret",
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "eu-west-1"},
    }


@pytest.fixture
def s3_bucket(s3_options: dict) -> str:
    """A new, empty bucket: ``s3://<name>``."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True, **s3_options).mkdir(name)
    return f"s3://{name}"


@pytest.fixture(params=sorted(LAYOUTS))
def layout(request: pytest.FixtureRequest) -> dict:
    """Each store layout in turn."""
    return LAYOUTS[request.param]


@pytest.fixture
def local_stores(tmp_path) -> str:
    """Three local chunk-4 stores of 10 frames each; returns their root folder."""
    write_stores(str(tmp_path / "stores"), stores=3, frames=10, size=SIZE, chunk=4)
    return str(tmp_path / "stores")


class CountingHTTPServer:
    """``directory`` served by the standard library's ``ThreadingHTTPServer`` and
    ``SimpleHTTPRequestHandler`` on 127.0.0.1 in a thread, counting the requests in flight
    (from the request line read until just before the answer goes out, a span within the
    client's wait for it): ``peak`` is their most at once.

    ``delay`` seconds of wait in every request make concurrent requests overlap. Its listen
    backlog is 128, not http.server's 5 (whose one-second stalls the benchmarks show).
    """

    def __init__(self, directory: str, delay: float = 0.0) -> None:
        import functools
        import threading
        import time
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        self.directory, self.delay = directory, delay
        self.lock = threading.Lock()
        self.in_flight = self.peak = self.requests = 0
        counter = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                self.counted(super().do_GET)

            def do_HEAD(self) -> None:
                self.counted(super().do_HEAD)

            def counted(self, respond) -> None:
                with counter.lock:
                    counter.in_flight += 1
                    counter.requests += 1
                    counter.peak = max(counter.peak, counter.in_flight)
                try:
                    time.sleep(counter.delay)
                finally:
                    with counter.lock:  # before answering: a client that has its answer may
                        counter.in_flight -= 1  # send the next request before this thread runs on
                respond()

            def log_message(self, format: str, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), functools.partial(Handler, directory=directory))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()

    def reset(self) -> None:
        """Count afresh: no requests seen, peak 0."""
        with self.lock:
            self.peak = self.requests = 0

    def close(self) -> None:
        """Stop serving: the serving loop ends within its 0.05 s poll; requests in flight are
        daemon threads, never waited for."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def http_server(tmp_path) -> Iterator[CountingHTTPServer]:
    """A :class:`CountingHTTPServer` of the folder ``tmp_path / "www"`` (empty at first)."""
    root = tmp_path / "www"
    root.mkdir()
    server = CountingHTTPServer(str(root))
    yield server
    server.close()
