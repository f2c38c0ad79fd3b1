"""Retries of transient storage failures, strict missing chunks and per-host request
limits, through real faults and real servers.

S3 runs as moto's server on 127.0.0.1; a FaultProxy in front of it fails or resets
requests; reads go through s3fs over HTTP and real DataLoader workers. Plain HTTP is the
standard library's threaded http.server, counting the requests it has in flight.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time

import numpy as np
import pytest
import torch
import zarr
from botocore.exceptions import ClientError, EndpointConnectionError
from checks import assert_every_frame_once, shuffled_loader
from conftest import SIZE, reference
from torch.utils.data import DataLoader
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.storage import LocalStore
from zarr.testing.store import StoreTests

from zarr_torch import SelectionIndex, ZarrFrameDataset, read_zarr
from zarr_torch.errors import ReadError
from zarr_torch.process import run
from zarr_torch.storage import HostLimit, ReliableStore, RetryPolicy, is_transient, retrying
from zarr_torch.stores import REQUESTS_PER_HOST, get_store, host_limit, make_store, request_host
from zarr_torch.synth import write_stores
from zarr_torch.testing import FaultProxy, every_nth, failing_keys

ARRAY = "data/camera0_rgb"
STORES, FRAMES = 3, 16
#: fast retries with room for the connection hiccups of two local test servers under load.
FAST = RetryPolicy(max_attempts=30, base_delay=0.01, max_delay=0.2, deadline=20)


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (client_error("SlowDown", 503), True),
        (client_error("InternalError", 500), True),
        (client_error("Whatever", 502), True),
        (client_error("NoSuchKey", 404), False),
        (client_error("AccessDenied", 403), False),
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (TimeoutError(), True),
        (ValueError("SlowDown please reduce your request rate"), False),  # text alone is not enough
        (FileNotFoundError("x"), False),
    ],
)
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient
    wrapped = OSError(errno.EIO, "translated")
    wrapped.__cause__ = exc
    assert is_transient(wrapped) is transient


def test_retrying_gives_up_after_max_attempts():
    calls = []

    async def flaky():
        calls.append(1)
        raise client_error("SlowDown", 503)

    with pytest.raises(ClientError):
        asyncio.run(retrying(flaky, RetryPolicy(max_attempts=4, base_delay=0.001)))
    assert len(calls) == 4


def test_retrying_does_not_retry_permanent_errors():
    calls = []

    async def missing():
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        asyncio.run(retrying(missing, FAST))
    assert len(calls) == 1


@pytest.fixture
def s3_stores(s3_bucket, s3_options) -> str:
    write_stores(
        f"{s3_bucket}/eps", stores=STORES, frames=FRAMES, size=SIZE, chunk=4, storage_options=s3_options
    )
    return f"{s3_bucket}/eps"


def through(proxy: FaultProxy, s3_options: dict) -> dict:
    """``s3_options`` reaching S3 through ``proxy`` (zarr_torch's own retries only: its S3
    stores turn s3fs's and botocore's off)."""
    return {**s3_options, "client_kwargs": {**s3_options["client_kwargs"], "endpoint_url": proxy.url}}


def chunk_key(path: str) -> bool:
    return f"/{ARRAY}/c/" in path


@pytest.mark.parametrize(
    "rule",
    [every_nth(4, "503"), every_nth(5, "500"), every_nth(3, "reset")],
    ids=["every-4th-503", "every-5th-500", "every-3rd-reset"],
)
def test_epoch_over_flaky_s3(s3_stores, s3_options, s3_endpoint, rule):
    with FaultProxy(s3_endpoint) as clean:
        ds = ZarrFrameDataset(s3_stores, array=ARRAY, storage_options=through(clean, s3_options))
    with FaultProxy(s3_endpoint, fault=rule) as proxy:
        ds = ZarrFrameDataset(ds.index, storage_options=through(proxy, s3_options), retry=FAST)
        assert_every_frame_once(shuffled_loader(ds), reference(STORES, FRAMES), FRAMES)
        assert sum(proxy.faults.values()) > 0


def test_a_metadata_document_or_chunk_is_one_get(s3_stores, s3_options, s3_endpoint):
    """s3fs sizes a whole object with a HEAD before the GET unless told not to split it:
    a second round trip for every chunk (fsspec/s3fs#1027)."""
    with FaultProxy(s3_endpoint) as proxy:
        options = through(proxy, s3_options)
        stores = [s.uri for s in read_zarr(s3_stores, storage_options=options)]
        proxy.requests.clear()
        ds = ZarrFrameDataset(stores, array=ARRAY, storage_options=options)
        batch = ds.__getitems__(list(range(len(ds))))
        np.testing.assert_array_equal(torch.stack(batch).numpy(), reference(STORES, FRAMES))
        assert {method for method, _ in proxy.requests} == {"GET"}, proxy.requests
        documents = {p: n for (_, p), n in proxy.requests.items() if p.endswith(f"{ARRAY}/zarr.json")}
        assert sorted(documents.values()) == [1] * STORES
        chunks = [n for (_, p), n in proxy.requests.items() if chunk_key(p)]
        assert chunks == [1] * (STORES * FRAMES // 4)


def test_a_worker_opens_each_array_with_one_get_of_its_format(s3_stores, s3_options, s3_endpoint):
    """A worker opens the arrays of the index it was given with one GET each, of the
    metadata document of the format the index names, not zarr's probe of every format's
    (zarr.json, .zarray and .zattrs: three round trips, two of them misses)."""
    with FaultProxy(s3_endpoint) as proxy:
        ds = ZarrFrameDataset(s3_stores, array=ARRAY, storage_options=through(proxy, s3_options))
        proxy.requests.clear()
        loader = DataLoader(ds, batch_size=len(ds), num_workers=1, multiprocessing_context="fork")
        [batch] = list(loader)
        np.testing.assert_array_equal(batch.numpy(), reference(STORES, FRAMES))
        documents = [p.rsplit("/", 1)[-1] for (_, p), n in proxy.requests.items() if not chunk_key(p)]
        assert sorted(documents) == ["zarr.json"] * STORES, proxy.requests


def test_keys_failing_six_times_in_a_row(s3_stores, s3_options, s3_endpoint):
    with FaultProxy(s3_endpoint, fault=failing_keys(chunk_key, times=6)) as proxy:
        ds = ZarrFrameDataset(s3_stores, array=ARRAY, storage_options=through(proxy, s3_options), retry=FAST)
        assert_every_frame_once(shuffled_loader(ds), reference(STORES, FRAMES), FRAMES)
        chunk_gets = [
            n for (method, path), n in proxy.requests.items() if method == "GET" and chunk_key(path)
        ]
        assert len(chunk_gets) == STORES * FRAMES // 4
        # 6 failures, then 1 success in each worker that reads the chunk (a retry layer
        # stacked under zarr_torch's would make 7 x 5 or more); a connection the local
        # servers drop under load may add a try.
        assert min(chunk_gets) >= 7 and max(chunk_gets) <= 9, chunk_gets


def test_a_key_that_never_recovers_is_a_read_error(s3_stores, s3_options, s3_endpoint):
    bad = f"{ARRAY}/c/1/0/0/0"
    with FaultProxy(s3_endpoint, fault=failing_keys(lambda p: p.endswith(bad), times=10**6)) as proxy:
        ds = ZarrFrameDataset(
            s3_stores,
            array=ARRAY,
            storage_options=through(proxy, s3_options),
            retry=RetryPolicy(max_attempts=3, base_delay=0.01),
        )
        with pytest.raises(
            ReadError,
            match=r"cannot read sample 5: array 'data/camera0_rgb' in store "
            r"'s3://.*/eps/episode_00000.zarr', index 5",
        ) as info:
            ds.__getitems__([0, 5])
        assert is_transient(info.value.__cause__)
        tries = sum(n for (_, path), n in proxy.requests.items() if path.endswith(bad))
        assert tries == 3, f"the dataset's policy (3 attempts) alone makes the tries, not {tries}"

        np.testing.assert_array_equal(ds[0].numpy(), reference(STORES, FRAMES)[0])


def test_an_endpoint_that_never_answers_fails_within_the_deadline(s3_stores, s3_options, s3_endpoint):
    with FaultProxy(s3_endpoint) as proxy:
        ds = ZarrFrameDataset(
            s3_stores, array=ARRAY, storage_options=through(proxy, s3_options), retry=RetryPolicy(deadline=3)
        )
        proxy.delay = 60  # from now on every request hangs for a minute
        started = time.monotonic()
        with pytest.raises(
            ReadError,
            match=r"sample 0: .*episode_00000.zarr', index 0: TimeoutError: no answer "
            r"within the retry deadline of 3 s",
        ):
            ds[0]
        assert time.monotonic() - started < 6, "the deadline bounds the whole read, paid once"
        proxy.delay = 0


def test_strict_makes_a_missing_chunk_an_error(tmp_path):
    root = str(tmp_path / "s")
    write_stores(root, stores=1, frames=8, size=SIZE, chunk=4)
    os.remove(f"{root}/episode_00000.zarr/{ARRAY}/c/1/0/0/0")
    lenient = ZarrFrameDataset(root, array=ARRAY)
    assert not lenient[6].numpy().any()  # zarr's default: the fill value, silently
    strict = ZarrFrameDataset(root, array=ARRAY, strict=True)
    np.testing.assert_array_equal(strict[1].numpy(), reference(1, 8)[1])
    with pytest.raises(
        ReadError,
        match=r"sample 6: .*index 6: MissingChunkError: chunk "
        r"'data/camera0_rgb/c/1/0/0/0' is missing",
    ):
        strict[6]


def test_strict_sharded_store(tmp_path):
    root = str(tmp_path / "s")
    write_stores(root, stores=1, frames=16, size=SIZE, chunk=2, shard=8)
    os.remove(f"{root}/episode_00000.zarr/{ARRAY}/c/1/0/0/0")
    strict = ZarrFrameDataset(root, array=ARRAY, strict=True)
    np.testing.assert_array_equal(strict[7].numpy(), reference(1, 16)[7])
    with pytest.raises(ReadError, match="MissingChunkError"):
        strict[9]


def test_build_reports_missing_chunks(tmp_path):
    from zarr_torch import SelectionIndex
    from zarr_torch.storage import MissingChunkError

    root = str(tmp_path / "s")
    write_stores(root, stores=2, frames=12, size=SIZE, chunk=2, shard=4)
    assert len(SelectionIndex.build(root, array=ARRAY, check_chunks=True)) == 24
    os.remove(f"{root}/episode_00001.zarr/{ARRAY}/c/2/0/0/0")
    with pytest.raises(
        MissingChunkError,
        match=r"1 chunk\(s\) of 'data/camera0_rgb' missing:\n"
        r"  .*episode_00001.zarr/data/camera0_rgb/c/2/0/0/0$",
    ):
        SelectionIndex.build(root, array=ARRAY, check_chunks=True)
    assert len(SelectionIndex.build(root, array=ARRAY)) == 24, "unchecked builds do not list"


# -- requests in flight per host ---------------------------------------------------------

HTTP_STORES, HTTP_FRAMES = 3, 32


@pytest.fixture
def http_stores(http_server) -> tuple[list[str], np.ndarray]:
    """Chunk-1 stores served over plain HTTP (their URLs: http.server lists no prefix for
    discovery), and every frame as zarr itself reads the local stores."""
    paths = write_stores(
        f"{http_server.directory}/eps", stores=HTTP_STORES, frames=HTTP_FRAMES, size=SIZE, chunk=1
    )
    urls = [f"{http_server.url}/eps/{os.path.basename(p)}" for p in paths]
    expected = np.concatenate([zarr.open_array(p, path=ARRAY, mode="r")[:] for p in paths])
    np.testing.assert_array_equal(expected, reference(HTTP_STORES, HTTP_FRAMES))
    return urls, expected


def every_batch(ds: ZarrFrameDataset) -> list[torch.Tensor]:
    return list(DataLoader(ds, batch_size=32))


def test_max_requests_per_host_bounds_the_requests_in_flight(http_server, http_stores):
    urls, expected = http_stores
    http_server.delay = 0.02  # requests sent together overlap on the server
    index = SelectionIndex.build(urls, array=ARRAY, storage_options={"max_requests_per_host": 3})
    assert_every_frame_once(every_batch(ZarrFrameDataset(index)), expected, HTTP_FRAMES)
    assert http_server.requests >= HTTP_STORES * HTTP_FRAMES
    assert 0 < http_server.peak <= 3, "discovery and batch reads both keep to the limit"

    http_server.reset()
    ds = ZarrFrameDataset(index, storage_options={"max_requests_per_host": 32})
    assert_every_frame_once(every_batch(ds), expected, HTTP_FRAMES)
    assert http_server.requests >= HTTP_STORES * HTTP_FRAMES
    assert 3 < http_server.peak <= 32, "a batch's 32 chunk requests go out together"


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_stores_over_plain_http_read_pixel_exact_in_workers_and_from_a_saved_index(
    http_server, http_stores, tmp_path, context
):
    urls, expected = http_stores
    options = {"max_requests_per_host": 4}
    SelectionIndex.build(urls, array=ARRAY, storage_options=options).save(tmp_path / "web.zti")
    index = SelectionIndex.load(tmp_path / "web.zti", storage_options=options)
    assert [s.uri for s in index.stores] == urls
    assert [s.uri for s in read_zarr(f"{http_server.url}/eps/", options)] == urls, "found from its listing"
    assert_every_frame_once(shuffled_loader(ZarrFrameDataset(index), context), expected, HTTP_FRAMES)
    assert http_server.peak <= 2 * 4, "each of the two workers keeps to the limit"


def test_max_requests_per_host_is_zarr_torchs_own_option(http_server, http_stores):
    urls, _ = http_stores
    limited = get_store(urls[0], {"max_requests_per_host": 2})
    assert limited.limit == HostLimit(http_server.url, 2)
    assert get_store(urls[0], {"max_requests_per_host": 2}) is limited
    assert get_store(urls[1], {"max_requests_per_host": 2}).limit == limited.limit, "one host, one limit"
    other = get_store(urls[0], {"max_requests_per_host": 5})
    assert other is not limited and other.limit == HostLimit(http_server.url, 5)
    assert get_store(urls[0]).limit == HostLimit(http_server.url, REQUESTS_PER_HOST)
    # never passed to fsspec: aiohttp would refuse it as a keyword of every request
    raw = make_store(urls[0], {"max_requests_per_host": 2})
    assert run(raw.get("zarr.json", default_buffer_prototype())) is not None
    with open(f"{http_server.directory}/eps/episode_00000.zarr/zarr.json", "rb") as f:
        document = f.read()
    assert run(limited.getsize("zarr.json")) == len(document)
    ranges = [("zarr.json", None), ("absent.json", None), ("zarr.json", None)]  # http.server ignores Range
    got = run(limited.get_partial_values(default_buffer_prototype(), ranges))
    assert [b and b.to_bytes() for b in got] == [document, None, document]


def test_host_slots_are_per_event_loop(http_server, http_stores):
    urls, _ = http_stores
    http_server.delay = 0.01
    keys = [f"{ARRAY}/c/{t}/0/0/0" for t in range(8)]

    async def read_together() -> None:
        # a new HTTP session for this loop (an aiohttp session serves one), the host's slots
        store = ReliableStore(
            make_store(urls[0], {"skip_instance_cache": True}), limit=HostLimit(http_server.url, 1)
        )
        got = await asyncio.gather(*(store.get(k, default_buffer_prototype()) for k in keys))
        assert all(b is not None for b in got)
        await (await store._store.fs.set_session()).close()

    http_server.reset()
    asyncio.run(read_together())
    asyncio.run(read_together())  # a semaphore of the first loop would refuse this one
    run(read_together())  # zarr's own loop
    assert http_server.requests == 24 and http_server.peak == 1


def test_host_limits(tmp_path):
    assert host_limit(str(tmp_path)) is None and host_limit(f"file://{tmp_path}") is None
    assert host_limit(f"{tmp_path}/ep.zarr.zip", {"max_requests_per_host": 4}) is None
    assert host_limit("https://example.com/ep.zarr") == HostLimit("https://example.com", REQUESTS_PER_HOST)
    assert request_host("http://user:hunter2@Example.com:8000/a/ep.zarr") == "http://example.com:8000"
    assert request_host("zip::http://[::1]:81/ep.zarr.zip") == "http://[::1]:81"
    assert request_host("s3://bucket/ep.zarr") == "s3://bucket"
    endpoint = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert request_host("s3://bucket/ep.zarr", endpoint) == "http://127.0.0.1:9000"
    for bad in (0, -1, 2.5, "4", True):
        options = {"max_requests_per_host": bad, "secret": "hunter2"}
        with pytest.raises(ValueError, match="max_requests_per_host") as info:
            get_store("http://user:hunter2@127.0.0.1:1/ep.zarr", options)
        assert "hunter2" not in str(info.value)


# -- zarr's store conformance suite ------------------------------------------------------


class TestReliableStoreConformance(StoreTests[ReliableStore, Buffer]):
    """zarr's own ``StoreTests`` over a ReliableStore wrapping a LocalStore: the wrapper
    reads, lists and writes exactly as the store it wraps."""

    store_cls = ReliableStore
    buffer_cls = Buffer

    async def get(self, store: ReliableStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes((store._store.root / key).read_bytes())

    async def set(self, store: ReliableStore, key: str, value: Buffer) -> None:
        path = store._store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    @pytest.fixture
    def store_kwargs(self, tmp_path) -> dict:
        return {"store": LocalStore(str(tmp_path))}

    @pytest.fixture
    def open_kwargs(self, tmp_path) -> dict:
        return {"store_cls": LocalStore, "root": str(tmp_path)}

    def test_store_supports_writes(self, store: ReliableStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ReliableStore) -> None:
        assert store.supports_listing

    def test_store_repr(self, store: ReliableStore) -> None:
        assert repr(store) == f"ReliableStore({store._store!r})"
