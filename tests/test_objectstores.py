"""obstore as a store's backend (``{"backend": "obstore"}``): options, reads pixel-exact
in every kind of DataLoader worker, retries, strict missing chunks, fork safety and no
credentials shown.

S3 is moto's server on 127.0.0.1 reached over real HTTP (a FaultProxy in front of it
fails requests); the stores are written through s3fs and read through obstore. Forked
workers run in a fresh interpreter each: whether fork works depends on whether the
process that forks ever started obstore's runtime, which this test process has.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback

import numpy as np
import pytest
import s3fs
from checks import assert_every_frame_once, shuffled_loader
from conftest import LAYOUTS, SIZE, reference
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import FsspecStore

from zarr_torch import SelectionIndex, ZarrFrameDataset
from zarr_torch.errors import ReadError
from zarr_torch.objectstores import (
    DEFAULT_BACKEND,
    FSSPEC,
    ObstoreStore,
    backend_of,
    make_obstore,
    obstore_config,
)
from zarr_torch.process import run
from zarr_torch.storage import RetryPolicy, is_transient
from zarr_torch.stores import fsspec_options, get_store, make_store
from zarr_torch.synth import write_stores
from zarr_torch.testing import FaultProxy, every_nth, failing_keys

obstore = pytest.importorskip("obstore")

ARRAY = "data/camera0_rgb"
STORES, FRAMES = 3, 16
FAST = RetryPolicy(max_attempts=30, base_delay=0.01, max_delay=0.2, deadline=20)
OBSTORE = {"backend": "obstore"}
TESTS = os.path.dirname(os.path.abspath(__file__))


def with_obstore(s3_options: dict, endpoint: str | None = None) -> dict:
    """``s3_options`` read through obstore (and through ``endpoint``, e.g. a FaultProxy)."""
    options = {**OBSTORE, **s3_options}
    if endpoint:
        options["client_kwargs"] = {**s3_options["client_kwargs"], "endpoint_url": endpoint}
    return options


@pytest.fixture
def s3_stores(s3_bucket, s3_options) -> str:
    write_stores(
        f"{s3_bucket}/eps", stores=STORES, frames=FRAMES, size=SIZE, chunk=1, storage_options=s3_options
    )
    return f"{s3_bucket}/eps"


def messages(exc: BaseException) -> str:
    """Every message (and note) of ``exc`` and the exceptions it chains: what a traceback
    shows besides source lines."""
    out = []
    while exc is not None:
        out += traceback.format_exception_only(exc)
        exc = exc.__cause__ or exc.__context__
    return "".join(out)


def every_frame(ds: ZarrFrameDataset, batch: int = 8) -> list:
    return [ds.__getitems__(list(range(i, min(i + batch, len(ds))))) for i in range(0, len(ds), batch)]


def stacked(samples: list) -> list:
    import torch

    return [torch.stack(batch) if isinstance(batch, list) else batch for batch in samples]


# -- choosing the backend, translating the options ------------------------------------


def test_the_backend_is_chosen_per_store_and_fsspec_by_default(s3_options):
    assert DEFAULT_BACKEND == FSSPEC
    assert backend_of("s3://b/ep.zarr") == "fsspec"
    assert backend_of("s3://b/ep.zarr", OBSTORE) == "obstore"
    assert backend_of("https://h/ep.zarr", {"backend": "fsspec"}) == "fsspec"
    with pytest.raises(ValueError, match=r"'backend' is one of \('fsspec', 'obstore'\), not 'boto'"):
        backend_of("s3://b/ep.zarr", {"backend": "boto"})
    with pytest.raises(ValueError, match="use backend 'fsspec' for it"):
        backend_of("memory://ep.zarr", OBSTORE)
    with pytest.raises(ValueError, match=r"not 'simplecache::s3://\*\*\*@b/ep.zarr'"):
        backend_of("simplecache::s3://k:hunter2@b/ep.zarr", OBSTORE)
    # zarr_torch's own option: never reaches fsspec (aiohttp would refuse it)
    assert fsspec_options({**OBSTORE, "max_requests_per_host": 3, "anon": True}) == {"anon": True}
    assert isinstance(make_store("s3://b/ep.zarr", {"backend": "fsspec", **s3_options}), FsspecStore)
    # local folders and zips are read as always, whatever the backend
    assert type(make_store("/tmp/ep.zarr", OBSTORE)).__name__ == "LocalStore"
    assert isinstance(make_store("s3://b/ep.zarr", with_obstore(s3_options)), ObstoreStore)


def test_s3fs_options_translate_to_obstore_config():
    options = {
        "key": "AKIA0000000000000000",
        "secret": "hunter2",
        "token": "session",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"},
        "config_kwargs": {
            "max_pool_connections": 8,
            "connect_timeout": 2,
            "s3": {"addressing_style": "path"},
        },
        "skip_instance_cache": True,
    }
    got = obstore_config("s3://b/ep.zarr", options)
    assert got["config"] == {
        "access_key_id": "AKIA0000000000000000",
        "secret_access_key": "hunter2",
        "session_token": "session",
        "endpoint": "http://127.0.0.1:9000",
        "region": "eu-west-1",
        "virtual_hosted_style_request": False,
    }
    assert got["client_options"]["allow_http"] is True
    assert got["client_options"]["connect_timeout"].total_seconds() == 2
    assert got["retry_config"] == {"max_retries": 0}, "ReliableStore is the one layer that retries"
    assert obstore_config("s3://b/ep.zarr", {"anon": True})["config"] == {"skip_signature": True}
    assert obstore_config("gs://b/ep.zarr", {"token": "anon"})["config"] == {"skip_signature": True}
    assert obstore_config("az://c/ep.zarr", {"account_name": "a", "sas_token": "?sv=1&sig=x"})["config"] == {
        "account_name": "a",
        "sas_key": "sv=1&sig=x",
    }
    assert obstore_config("http://127.0.0.1:8000/ep.zarr", {}) == {
        "client_options": {"allow_http": True},
        "retry_config": {"max_retries": 0},
    }
    with pytest.raises(
        ValueError, match=r"option\(s\) profile, s3_additional_kwargs of s3 have no obstore"
    ) as info:
        obstore_config("s3://b/ep.zarr", {"profile": "hunter2", "s3_additional_kwargs": {}, "secret": "x"})
    assert "hunter2" not in str(info.value), "options are named, never shown"


def test_obstore_errors_are_classified_by_type():
    from obstore.exceptions import GenericError, PermissionDeniedError, UnauthenticatedError

    assert is_transient(GenericError("Server returned non-2xx status code: 503"))
    assert not is_transient(PermissionDeniedError("403"))
    assert not is_transient(UnauthenticatedError("401"))
    assert not is_transient(FileNotFoundError("404"))


# -- reading through obstore --------------------------------------------------------------


def test_the_store_reads_what_s3fs_reads(s3_stores, s3_options):
    uri = f"{s3_stores}/episode_00001.zarr"
    ours, theirs = make_store(uri, with_obstore(s3_options)), make_store(uri, s3_options)
    key = f"{ARRAY}/c/3/0/0/0"
    proto = default_buffer_prototype()
    whole = run(theirs.get(key, proto)).to_bytes()
    assert run(ours.get(key, proto)).to_bytes() == whole
    from zarr.abc.store import RangeByteRequest, SuffixByteRequest

    assert run(ours.get(key, proto, RangeByteRequest(2, 9))).to_bytes() == whole[2:9]
    assert run(ours.get(key, proto, SuffixByteRequest(5))).to_bytes() == whole[-5:]
    assert run(ours.get(f"{ARRAY}/c/99/0/0/0", proto)) is None, "absent: None, as zarr expects"
    assert run(ours.exists(key)) and not run(ours.exists("nope"))
    assert run(ours.getsize(key)) == len(whole)

    async def keys(store):
        return sorted([k async for k in store.list_prefix(f"{ARRAY}/")])

    async def listed(store):
        return sorted([k async for k in store.list_dir(f"{ARRAY}/c/")])

    assert run(keys(ours)) == run(keys(theirs)) and run(listed(ours)) == run(listed(theirs))

    # the stores of one bucket share a client (and its connections), each its own keys
    other = make_store(f"{s3_stores}/episode_00002.zarr", with_obstore(s3_options))
    assert other.store is ours.store and other != ours
    assert run(other.get(key, proto)).to_bytes() != whole
    writable = make_store(f"{s3_stores}/scratch.zarr", with_obstore(s3_options), read_only=False)
    run(writable.set("a/b", proto.buffer.from_bytes(b"xy")))
    assert run(keys(writable)) == [] and run(_all(writable)) == ["a/b"]
    run(writable.delete_dir("a"))
    assert run(_all(writable)) == [] and run(theirs.exists(key))
    reliable = get_store(uri, with_obstore(s3_options))
    assert reliable is get_store(uri, with_obstore(s3_options)) is not get_store(uri, s3_options)
    assert reliable.limit is not None and reliable.limit.requests == 64


async def _all(store) -> list[str]:
    return sorted([k async for k in store.list()])


@pytest.mark.parametrize("name", ["v3-sharded", "v3-sharded-chunk1", "v2-blosc", "v3-tiles"])
def test_every_layout_reads_pixel_exact(s3_bucket, s3_options, name):
    write_stores(
        f"{s3_bucket}/eps", stores=2, frames=FRAMES, size=SIZE, storage_options=s3_options, **LAYOUTS[name]
    )
    ds = ZarrFrameDataset(f"{s3_bucket}/eps", array=ARRAY, storage_options=with_obstore(s3_options))
    assert_every_frame_once(stacked(every_frame(ds)), reference(2, FRAMES), FRAMES)
    assert all(isinstance(get_store(s.uri, s.storage_options)._store, ObstoreStore) for s in ds.index.stores)


def test_stores_over_plain_http(http_server):
    paths = write_stores(f"{http_server.directory}/eps", stores=2, frames=FRAMES, size=SIZE, chunk=4)
    urls = [f"{http_server.url}/eps/{os.path.basename(p)}" for p in paths]
    ds = ZarrFrameDataset(urls, array=ARRAY, storage_options={**OBSTORE, "max_requests_per_host": 4})
    assert_every_frame_once(stacked(every_frame(ds)), reference(2, FRAMES), FRAMES)
    assert 0 < http_server.peak <= 4


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_an_epoch_in_workers(s3_stores, s3_options, context):
    # built here: this process reads the metadata through obstore, starting its runtime
    ds = ZarrFrameDataset(s3_stores, array=ARRAY, storage_options=with_obstore(s3_options))
    assert_every_frame_once(shuffled_loader(ds, context), reference(STORES, FRAMES), FRAMES)


def fork_case(index_path: str, options: dict, build: bool) -> None:
    """Run in a fresh interpreter: an epoch through fork workers, the dataset either made
    from a saved index (this process makes no obstore request) or built here (it does)."""
    if build:
        stores = os.path.dirname(SelectionIndex.load(index_path).stores[0].uri)
        ds = ZarrFrameDataset(stores, array=ARRAY, storage_options=options)
    else:
        ds = ZarrFrameDataset(SelectionIndex.load(index_path, storage_options=options))
    try:
        assert_every_frame_once(shuffled_loader(ds, "fork"), reference(STORES, FRAMES), FRAMES)
    except Exception as exc:
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        raise SystemExit(3) from None
    print("EVERY FRAME ONCE", flush=True)


@pytest.mark.parametrize("build", [False, True], ids=["saved-index", "built-in-parent"])
def test_fork_workers_read_or_say_why_not(s3_stores, s3_options, tmp_path, build):
    path = str(tmp_path / "frames.zti")
    SelectionIndex.build(s3_stores, array=ARRAY, storage_options=s3_options).save(path)
    script = (
        f"import sys; sys.path.insert(0, {TESTS!r}); import test_objectstores as t; "
        f"t.fork_case({path!r}, {with_obstore(s3_options)!r}, {build})"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, cwd=TESTS
    )
    out = done.stdout + done.stderr
    if not build:  # the parent never started obstore's runtime: fork works
        assert done.returncode == 0 and "EVERY FRAME ONCE" in done.stdout, out
    else:  # it did: the workers say so at once instead of hanging
        assert done.returncode == 3, out
        assert "ForkedRuntimeError: obstore's runtime was started in process" in out, out
        assert "multiprocessing_context='spawn' or 'forkserver'" in out, out
        assert "testing-secret" not in out


# -- retries, strict reads, errors -------------------------------------------------------


@pytest.mark.parametrize("fault", ["503", "reset"])
def test_every_third_request_failing(s3_stores, s3_options, s3_endpoint, fault):
    with FaultProxy(s3_endpoint) as clean:
        index = ZarrFrameDataset(
            s3_stores, array=ARRAY, storage_options=with_obstore(s3_options, clean.url)
        ).index
    with FaultProxy(s3_endpoint, fault=every_nth(3, fault)) as proxy:
        ds = ZarrFrameDataset(index, storage_options=with_obstore(s3_options, proxy.url), retry=FAST)
        assert_every_frame_once(stacked(every_frame(ds)), reference(STORES, FRAMES), FRAMES)
        assert proxy.faults[fault] > 0
        chunk_gets = sum(n for (m, p), n in proxy.requests.items() if m == "GET" and f"/{ARRAY}/c/" in p)
        assert chunk_gets > STORES * FRAMES, "failed requests were retried"


def test_a_key_that_never_recovers_is_a_read_error_without_credentials(s3_stores, s3_options, s3_endpoint):
    bad = f"{ARRAY}/c/5/0/0/0"
    with FaultProxy(s3_endpoint, fault=failing_keys(lambda p: p.endswith(bad), times=10**6)) as proxy:
        options = with_obstore(s3_options, proxy.url)
        ds = ZarrFrameDataset(
            s3_stores, array=ARRAY, storage_options=options, retry=RetryPolicy(max_attempts=3)
        )
        with pytest.raises(
            ReadError, match=r"cannot read sample 5: .*episode_00000.zarr', index 5: GenericError"
        ) as info:
            ds.__getitems__([0, 5])
        assert sum(n for (_, p), n in proxy.requests.items() if p.endswith(bad)) == 3, "3 tries, one layer"
    err = info.value
    assert is_transient(err.__cause__)
    assert "\n" not in str(err), "obstore's debug dump is a note of the traceback, not the message"
    shown = str(err) + messages(err) + repr(get_store(ds.index.stores[0].uri, options))
    for secret in ("testing-key", "testing-secret"):
        assert secret not in shown


def test_strict_makes_a_missing_chunk_an_error(s3_stores, s3_options):
    s3fs.S3FileSystem(skip_instance_cache=True, **s3_options).rm(
        f"{s3_stores}/episode_00000.zarr/{ARRAY}/c/6/0/0/0"
    )
    lenient = ZarrFrameDataset(s3_stores, array=ARRAY, storage_options=with_obstore(s3_options))
    assert not lenient[6].numpy().any(), "absent: the fill value, as zarr reads it"
    strict = ZarrFrameDataset(lenient.index, storage_options=with_obstore(s3_options), strict=True)
    np.testing.assert_array_equal(strict[5].numpy(), reference(STORES, FRAMES)[5])
    with pytest.raises(
        ReadError,
        match=r"sample 6: .*index 6: MissingChunkError: chunk 'data/camera0_rgb/c/6/0/0/0' is missing",
    ):
        strict[6]


def test_credentials_never_shown(s3_options):
    options = {**OBSTORE, "key": "AKIAIOSFODNN7EXAMPLE", "secret": "hunter2-secret", "token": "hunter2-token"}
    uri = "s3://user:hunter2-url@bucket/ep.zarr"
    store = make_obstore("s3://bucket/ep.zarr", options)
    assert "hunter2" not in repr(store) + str(store) and "AKIA" not in repr(store)
    assert repr(make_obstore(uri, options)) == "ObstoreStore('s3://***@bucket/ep.zarr')"
    with pytest.raises(ValueError) as info:
        make_store("s3://bucket/ep.zarr", {**options, "profile": "hunter2-profile"})
    refused = make_obstore(
        "s3://bucket/ep.zarr", {**options, "client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}
    )
    with pytest.raises(Exception) as unreachable:
        run(refused.get("zarr.json", default_buffer_prototype()))
    for exc in (info.value, unreachable.value):
        text = messages(exc)
        assert "hunter2" not in text and "AKIAIOSFODNN7EXAMPLE" not in text, text
