"""What one process holds: open stores and arrays, caches, decode threads, request slots and counters.

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
import math
import os
import threading
import weakref
from collections.abc import Awaitable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from zarr.core.sync import sync

from zarr_torch.cache import AheadFetches, ChunkCache, ReadStats

T = TypeVar("T")

#: how many metadata opens run at once when validating or indexing many stores.
OPEN_CONCURRENCY = 64
#: the cgroup v2 file holding this container's CPU quota and period.
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota
    (``/sys/fs/cgroup/cpu.max``, as containers set it); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        with open(CGROUP_CPU_MAX) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


@dataclass
class ProcessState:
    """What one process has opened; never crosses a fork or a pickle."""

    pid: int = field(default_factory=os.getpid)
    #: the decoded-chunk cache of reads that name none (see :meth:`cache_for`).
    cache: ChunkCache = field(default_factory=ChunkCache)
    #: each dataset's own decoded-chunk cache, by the dataset's token.
    caches: dict[Hashable, ChunkCache] = field(default_factory=dict)
    stats: ReadStats = field(default_factory=ReadStats)
    #: the torch thread count a DataLoader worker set for its dataset (None: untouched).
    torch_threads: int | None = None
    stores: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: object-store clients (obstore's), one per bucket or host and options, which the
    #: stores under them share with their connection pools.
    clients: dict[tuple[str, str], Any] = field(default_factory=dict)
    arrays: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    #: parsed array metadata, by the bytes of its documents (see ``stores.open_node``).
    metadata: dict[bytes, Any] = field(default_factory=dict)
    #: how each open array is laid out (see :mod:`zarr_torch.read.layout`), by array key.
    layouts: dict[Any, Any] = field(default_factory=dict)
    #: zarrs' readers of local arrays (see :mod:`zarr_torch.read.compiled`), by array and
    #: by metadata document: arrays of one metadata share one.
    compiled: dict[Hashable, Any] = field(default_factory=dict)
    #: decoded shard indexes, by (array key, shard coordinates).
    shard_indexes: ChunkCache = field(default_factory=lambda: ChunkCache(SHARD_INDEX_BYTES))
    #: fetches started for the batches this process reads next (see ``ReadAheadBatches``).
    ahead: AheadFetches = field(default_factory=AheadFetches)
    #: decode threads of reads that name no budget.
    decode_threads: int = field(default_factory=available_cores)
    pools: dict[int, ThreadPoolExecutor] = field(default_factory=dict)
    #: how many decodes of each budget may run at once, on its pool or on the threads
    #: that asked (see :meth:`decode_slots`), by its number of threads.
    decode_slots_of: dict[int, threading.BoundedSemaphore] = field(default_factory=dict)
    #: semaphores bounding the requests in flight to one host (see :meth:`request_slots`),
    #: by event loop, then by (host, limit).
    host_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, asyncio.Semaphore]] = (
        field(default_factory=weakref.WeakKeyDictionary)
    )
    _slots_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pool(self, threads: int | None = None) -> ThreadPoolExecutor:
        """A pool of ``threads`` decode threads (default ``decode_threads``), made on first use.

        Each budget has its own pool, so a dataset's budget holds whatever other datasets
        in the process ask for.
        """
        threads = threads or self.decode_threads
        if threads not in self.pools:
            self.pools[threads] = ThreadPoolExecutor(
                threads, thread_name_prefix=f"zarr_torch_decode{threads}"
            )
        return self.pools[threads]

    def decode_slots(self, threads: int | None = None) -> threading.BoundedSemaphore:
        """The ``threads`` slots (default ``decode_threads``) that every decode of that budget
        takes, whichever thread runs it: a read on the calling thread and the pool's
        threads together never decode more at once than the budget.
        """
        threads = threads or self.decode_threads
        slots = self.decode_slots_of.get(threads)
        if slots is None:
            with self._slots_lock:  # one semaphore, however many threads ask first
                slots = self.decode_slots_of.setdefault(threads, threading.BoundedSemaphore(threads))
        return slots

    def request_slots(self, host: Hashable, limit: int) -> asyncio.Semaphore:
        """The semaphore admitting ``limit`` requests to ``host`` at once in the running event
        loop (an asyncio semaphore serves one loop: each loop, and each process, has its own)."""
        loop = asyncio.get_running_loop()
        with self._slots_lock:  # loops of several threads may ask at once
            slots = self.host_slots.setdefault(loop, {})
            if (host, limit) not in slots:
                slots[host, limit] = asyncio.Semaphore(limit)
            return slots[host, limit]

    def cache_for(self, owner: Hashable, budget: int) -> ChunkCache:
        """The decoded-chunk cache of ``owner`` (a dataset's token), of ``budget`` bytes."""
        cache = self.caches.get(owner)
        if cache is None:
            cache = self.caches[owner] = ChunkCache(budget)
        cache.budget = budget
        return cache

    def clear_caches(self) -> None:
        """Drop every decoded chunk this process holds (benchmarks start cold with it)."""
        self.cache = ChunkCache(self.cache.budget)
        self.caches.clear()


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
