"""Per-process Zarr handles and batched async reads behind a thin sync facade.

Every process (the main one, each ``DataLoader`` worker, each ``torchrun`` rank) opens
what it touches lazily and once: stores and arrays live in a holder keyed by
``os.getpid()`` that is dropped in a forked child (``os.register_at_fork``), as zarr's
``core/sync.py`` does for its event loop. Coroutines run on zarr's own I/O loop, which
zarr itself resets after a fork, so a handle opened in the parent is never reused in a
child: that is what kills s3fs sessions with "attached to a different loop".

    arr = run(open_array("s3://bucket/ep0.zarr", "data/camera0_rgb", opts))
    frames = run(read_rows(arr, np.array([3, 1, 2])))
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import zarr
import zarr.api.asynchronous as zasync
from zarr.abc.store import Store
from zarr.core.array import AsyncArray
from zarr.core.group import AsyncGroup
from zarr.core.sync import sync
from zarr.errors import NodeNotFoundError
from zarr.storage import FsspecStore, LocalStore

from zarr_torch.chunks import ChunkCache, ReadStats, read_chunks, whole_frame_chunks
from zarr_torch.storage import ReliableStore, RetryPolicy, read_options

T = TypeVar("T")
Options = Mapping[str, Any]

#: storage option keys whose values are credentials: never shown, logged or saved.
SECRET_KEYS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "session_token",
        "client_secret",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "account_key",
        "sas_token",
        "connection_string",
    }
)
REDACTED = "***"
#: connections s3fs may hold open to S3 unless the storage options say otherwise.
S3_CONNECTIONS = 64
#: how many metadata opens run at once when validating or indexing many stores.
OPEN_CONCURRENCY = 64


def redact_options(options: Any) -> Any:
    """Return ``options`` with every credential value replaced by ``***`` (recursively)."""
    if isinstance(options, Mapping):
        return {
            k: REDACTED if str(k).lower() in SECRET_KEYS else redact_options(v) for k, v in options.items()
        }
    if isinstance(options, list | tuple):
        return type(options)(redact_options(v) for v in options)
    return options


def scrub(text: str, options: Any) -> str:
    """``text`` with every credential value found in ``options`` replaced by ``***``."""
    if isinstance(options, Mapping):
        for k, v in options.items():
            if str(k).lower() in SECRET_KEYS and isinstance(v, str) and v:
                text = text.replace(v, REDACTED)
            else:
                text = scrub(text, v)
    return text


def redact_uri(uri: str) -> str:
    """Drop a password (or any user info) embedded in a URI: ``s3://k:s@b/p`` -> ``s3://***@b/p``."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))


def is_local(uri: str) -> bool:
    """True for a plain path or a ``file://`` URL."""
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The file system path of a local ``uri``."""
    return re.sub(r"^file://", "", uri)


def options_key(options: Options | None) -> str:
    """A hashable, order-independent key for storage options."""
    return json.dumps(options or {}, sort_keys=True, default=repr)


@dataclass
class _ProcessState:
    """What one process has opened; never crosses a fork or a pickle."""

    pid: int = field(default_factory=os.getpid)
    cache: ChunkCache = field(default_factory=ChunkCache)
    stats: ReadStats = field(default_factory=ReadStats)
    #: the dataset options (thread budget, cache size) this process has applied.
    configured: tuple = ()
    stores: dict[tuple[str, str], Store] = field(default_factory=dict)
    arrays: dict[tuple[str, str, str], AsyncArray] = field(default_factory=dict)


_state: _ProcessState | None = None


def _reset_after_fork() -> None:
    global _state
    _state = None


os.register_at_fork(after_in_child=_reset_after_fork)


def process_state() -> _ProcessState:
    """The holder of this process's open stores and arrays (new after fork or spawn)."""
    global _state
    if _state is None or _state.pid != os.getpid():
        _state = _ProcessState()
    return _state


def set_decode_threads(threads: int) -> None:
    """Limit the threads zarr decodes with in this process (before its first read)."""
    zarr.config.set({"threading.max_workers": threads})


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine on zarr's per-process I/O loop and return its result."""
    return sync(coro)


def make_store(uri: str, storage_options: Options | None = None, *, read_only: bool = True) -> Store:
    """A zarr store for ``uri``: a local path, ``file://`` or any fsspec URL."""
    if is_local(uri):
        return LocalStore(local_path(uri), read_only=read_only)
    options = dict(storage_options or {})
    if uri.startswith("s3://"):  # botocore's default pool of 10 connections caps a batch's fetches
        config = options.get("config_kwargs", {})
        options["config_kwargs"] = {"max_pool_connections": S3_CONNECTIONS, **config}
    return FsspecStore.from_url(uri, storage_options=options, read_only=read_only)


def get_store(uri: str, storage_options: Options | None = None) -> Store:
    """This process's read-only store for ``uri``, created on first use.

    Its reads retry transient failures (see :mod:`zarr_torch.storage`).
    """
    state = process_state()
    key = (uri, options_key(storage_options))
    if key not in state.stores:
        state.stores[key] = ReliableStore(make_store(uri, storage_options))
    return state.stores[key]


async def open_node(
    uri: str, path: str = "", storage_options: Options | None = None, *, zarr_format: int | None = None
) -> AsyncArray | AsyncGroup:
    """Open the array or group at ``path`` in the store at ``uri``.

    ``zarr_format`` (2 or 3), when known, reads only that format's metadata documents
    instead of probing for both. Raises ``FileNotFoundError`` naming the store (and the
    path when the store exists).
    """
    store = get_store(uri, storage_options)
    try:
        return await zasync.open(store=store, path=path, mode="r", zarr_format=zarr_format)
    except (FileNotFoundError, NodeNotFoundError) as exc:
        shown = redact_uri(uri)
        if path and await _store_exists(store):
            raise FileNotFoundError(f"no Zarr array or group {path!r} in store {shown!r}") from exc
        raise FileNotFoundError(
            f"no Zarr store at {shown!r} (no zarr.json, .zgroup or .zarray found)"
        ) from exc


async def _store_exists(store: Store) -> bool:
    try:
        await zasync.open(store=store, mode="r")
    except (FileNotFoundError, NodeNotFoundError):
        return False
    return True


async def open_array(
    uri: str,
    path: str = "",
    storage_options: Options | None = None,
    *,
    refresh: bool = False,
    zarr_format: int | None = None,
) -> AsyncArray:
    """This process's handle on the array at ``path`` in ``uri``, opened once.

    ``refresh=True`` reads the metadata again and replaces the cached handle;
    ``zarr_format`` is passed to :func:`open_node`.
    Raises ``FileNotFoundError`` when it does not exist, ``ValueError`` when it is a group.
    """
    state = process_state()
    key = (uri, path, options_key(storage_options))
    arr = None if refresh else state.arrays.get(key)
    if arr is None:
        node = await open_node(uri, path, storage_options, zarr_format=zarr_format)
        if not isinstance(node, AsyncArray):
            raise ValueError(f"{path or '/'!r} is a group, not an array, in store {redact_uri(uri)!r}")
        arr = state.arrays[key] = node
    return arr


async def gather_bounded(coros: Iterable[Awaitable[T]], limit: int = OPEN_CONCURRENCY) -> list[T]:
    """``asyncio.gather`` with at most ``limit`` awaitables in flight, results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[T]) -> T:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def read_rows(
    arr: AsyncArray, starts: np.ndarray, length: int = 0, *, return_exceptions: bool = False
) -> list[Any]:
    """Read items ``arr[s]`` (or windows ``arr[s:s+length]``) for every ``s`` in ``starts``.

    Items are grouped by the chunk (or shard) that holds them, so each chunk is fetched
    and decoded once per call, and the groups are read concurrently: whole chunks
    through :mod:`zarr_torch.chunks` (and its cache) where each chunk holds whole items,
    else one zarr slice per contiguous run of the frames needed.
    Results come back in the order of ``starts``. A failed group fails only its own
    items: with ``return_exceptions`` their places hold the exception, otherwise the
    first one in order is raised.
    """
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size == 0:
        return []
    span = max(length, 1)
    chunk = arr.chunks[0]
    # Group by what one fetch serves: a chunk, or a shard (its index read once).
    first_chunk = starts // (getattr(arr, "shards", None) or arr.chunks)[0]
    order = np.argsort(first_chunk, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(first_chunk[order])) + 1)

    state = process_state()
    fast = whole_frame_chunks(arr)
    name = (str(arr.store_path), arr.shape, arr.chunks, str(arr.dtype))

    async def read_group(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The frames the group's items need (sorted) and their data, in that order."""
        if not fast:  # one zarr slice per contiguous run of the frames needed, concurrently
            needed = np.unique((starts[members, None] + np.arange(span)).ravel())
            runs = np.split(needed, np.flatnonzero(np.diff(needed) != 1) + 1)
            parts = await asyncio.gather(*(arr.getitem((slice(int(r[0]), int(r[-1]) + 1),)) for r in runs))
            block = np.concatenate([np.asarray(p) for p in parts])
            state.stats.bytes_decoded += len(np.unique(needed // chunk)) * chunk * block[0].nbytes
            return needed, block
        lo, hi = int(starts[members].min()), int(starts[members].max()) + span
        ids = np.arange(lo // chunk, (hi - 1) // chunk + 1)
        got = batch if batch is not None else await read_chunks(arr, name, ids, state.cache, state.stats)
        block = got[int(ids[0])] if len(ids) == 1 else np.concatenate([got[int(c)] for c in ids])
        return np.arange(lo, hi), block[lo - int(ids[0]) * chunk : hi - int(ids[0]) * chunk]

    batch = None
    if fast:  # every chunk of the call in one fetch-and-decode; on error, group by group
        needed = np.unique(
            np.concatenate([np.arange(s // chunk, (s + span - 1) // chunk + 1) for s in starts])
        )
        with contextlib.suppress(Exception):
            batch = await read_chunks(arr, name, needed, state.cache, state.stats)
    out: list[Any] = [None] * len(starts)
    blocks = await asyncio.gather(*map(read_group, groups), return_exceptions=True)
    for members, block in zip(groups, blocks, strict=True):
        for m in members:
            if isinstance(block, BaseException):
                out[m] = block
                continue
            frames, data = block
            k = int(np.searchsorted(frames, starts[m]))
            # A copy: blocks may live in the chunk cache, and callers own what they get.
            out[m] = (data[k] if length == 0 else data[k : k + length]).copy()
            state.stats.bytes_returned += out[m].nbytes
    return out if return_exceptions else _raise_first(out)


def _raise_first(results: list[Any]) -> list[Any]:
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def open_arrays(
    specs: Iterable[tuple[str, str, Options | None]], *, refresh: bool = False
) -> list[AsyncArray]:
    """Open every ``(uri, path, storage_options)`` concurrently; the first error is raised.

    ``refresh=True`` reads fresh metadata even for arrays this process has open.

    arrays = open_arrays([("ep0.zarr", "data/camera0_rgb", None)])
    """
    return run(gather_bounded(open_array(u, p, o, refresh=refresh) for u, p, o in specs))


async def read_items(
    specs: Sequence[tuple[str, str, Options | None]],
    array_ids: np.ndarray,
    starts: np.ndarray,
    length: int = 0,
    *,
    strict: bool = False,
    retry: RetryPolicy | None = None,
    return_exceptions: bool = False,
) -> list[Any]:
    """Read item ``starts[k]`` of array ``specs[array_ids[k]]`` for every ``k``, in order.

    Items are grouped by array (then by chunk, see :func:`read_rows`) and every group is
    read concurrently. ``strict`` makes a missing chunk an error instead of fill values;
    ``retry`` replaces the stores' retry policy.
    With ``return_exceptions`` a failed item's place holds its exception.
    """
    array_ids = np.asarray(array_ids)
    out: list[Any] = [None] * len(array_ids)
    groups = [np.flatnonzero(array_ids == a) for a in np.unique(array_ids)]

    async def read_group(members: np.ndarray) -> list[Any]:
        try:
            arr = await open_array(*specs[int(array_ids[members[0]])])
        except Exception as exc:
            return [exc] * len(members)
        return await read_rows(arr, starts[members], length, return_exceptions=True)

    with read_options(strict=strict, retry=retry):
        results = await asyncio.gather(*map(read_group, groups))
    for members, frames in zip(groups, results, strict=True):
        for m, frame in zip(members, frames, strict=True):
            out[m] = frame
    return out if return_exceptions else _raise_first(out)


async def missing_chunks(arr: AsyncArray) -> list[str]:
    """Store keys of the chunks (shards, if sharded) that ``arr``'s shape implies but the
    store lacks. Lists the array's prefix once.

        missing = run(missing_chunks(run(open_array("ep0.zarr", "data/camera0_rgb"))))
    """
    grid = arr.shards or arr.chunks
    counts = [-(-size // step) for size, step in zip(arr.shape, grid, strict=True)]
    prefix = f"{arr.store_path.path}/" if arr.store_path.path else ""
    present = {key async for key in arr.store_path.store.list_prefix(prefix)}
    expected = (prefix + arr.metadata.encode_chunk_key(c) for c in itertools.product(*map(range, counts)))
    return [key for key in expected if key not in present]
