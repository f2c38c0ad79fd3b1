"""What one process holds: open stores and arrays, caches, decode threads and counters.

Every process (the main one, each ``DataLoader`` worker, each ``torchrun`` rank) opens
what it touches lazily and once. The holder is keyed by ``os.getpid()`` and dropped in
a forked child (``os.register_at_fork``), as zarr's ``core/sync.py`` does for its event
loop; coroutines run on zarr's own I/O loop, which zarr resets after a fork. So a handle
or thread opened in the parent is never used in a child: that is what kills s3fs
sessions with "attached to a different loop".

    state = process_state()
    frames = run(some_coroutine())
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from zarr.core.sync import sync

from zarr_torch.cache import ChunkCache, ReadStats

T = TypeVar("T")

#: how many metadata opens run at once when validating or indexing many stores.
OPEN_CONCURRENCY = 64


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class ProcessState:
    """What one process has opened; never crosses a fork or a pickle."""

    pid: int = field(default_factory=os.getpid)
    cache: ChunkCache = field(default_factory=ChunkCache)
    stats: ReadStats = field(default_factory=ReadStats)
    #: the dataset options (thread budget, cache size) this process has applied.
    configured: tuple = ()
    stores: dict[tuple[str, str], Any] = field(default_factory=dict)
    arrays: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    #: how each open array is laid out (see :mod:`zarr_torch.read.layout`), by array key.
    layouts: dict[Any, Any] = field(default_factory=dict)
    #: decoded shard indexes, by (array key, shard coordinates).
    shard_indexes: ChunkCache = field(default_factory=lambda: ChunkCache(SHARD_INDEX_BYTES))
    decode_threads: int = field(default_factory=available_cores)
    _pool: ThreadPoolExecutor | None = None

    def pool(self) -> ThreadPoolExecutor:
        """This process's decode threads (``decode_threads`` of them), made on first use."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="zarr_torch_decode")
        return self._pool

    def set_decode_threads(self, threads: int) -> None:
        """Decode with ``threads`` threads from now on (the old pool finishes its work)."""
        if threads != self.decode_threads:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool, self.decode_threads = None, threads


#: the byte budget of each process's cache of decoded shard indexes.
SHARD_INDEX_BYTES = 64 * 2**20

_state: ProcessState | None = None


def _reset_after_fork() -> None:
    global _state
    _state = None


os.register_at_fork(after_in_child=_reset_after_fork)


def process_state() -> ProcessState:
    """The holder of this process's open stores and arrays (new after fork or spawn)."""
    global _state
    if _state is None or _state.pid != os.getpid():
        _state = ProcessState()
    return _state


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine on zarr's per-process I/O loop and return its result."""
    return sync(coro)


async def gather_bounded(coros: Iterable[Awaitable[T]], limit: int = OPEN_CONCURRENCY) -> list[T]:
    """``asyncio.gather`` with at most ``limit`` awaitables in flight, results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[T]) -> T:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))
