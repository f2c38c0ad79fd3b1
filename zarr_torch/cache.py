"""Decoded chunks kept per process under a byte budget, fetches started ahead, and what
the reads cost.

cache = ChunkCache(budget=256 * 2**20)
cache.put(("ep0.zarr", (3, 0, 0, 0)), chunk); cache.get(("ep0.zarr", (3, 0, 0, 0)))
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Coroutine, Hashable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

#: the default byte budget of each process's decoded-chunk cache.
CACHE_BYTES = 256 * 2**20
#: the default byte budget of the fetches a process starts for batches it reads next.
AHEAD_BYTES = 256 * 2**20


@dataclass
class ReadStats:
    """What this process has read: ``ds.stats()`` reports it.

    ``read_amplification`` is bytes decoded per byte returned; 1.0 means nothing decoded
    was thrown away. ``chunks_decoded_direct`` counts chunks decoded by zarr_torch's own
    decoders (of those, ``chunks_decoded_into_batch`` straight into the batch, and
    ``chunks_read_in_one_pass`` by the one pass that reads local chunks without a plan),
    ``chunks_read_by_zarrs`` those read and decoded by zarrs' Rust reader, and
    ``chunks_decoded_by_zarr`` those left to zarr's codec pipeline.
    """

    chunks_fetched: int = 0
    bytes_fetched: int = 0
    ranges_fetched: int = 0
    #: files, zip members and shard ranges read in place, without going through the store
    reads_in_place: int = 0
    shard_indexes_fetched: int = 0
    chunks_absent: int = 0
    chunks_decoded_direct: int = 0
    chunks_decoded_into_batch: int = 0
    chunks_read_in_one_pass: int = 0
    chunks_read_by_zarrs: int = 0
    chunks_decoded_by_zarr: int = 0
    bytes_decoded: int = 0
    bytes_returned: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    #: fetches started while an earlier batch was read, and of those, the ones a batch used
    fetches_ahead: int = 0
    fetches_ahead_used: int = 0
    #: batches a DataLoader worker read straight into shared memory, to cross uncopied
    batches_in_shared_memory: int = 0
    #: seconds in the read engine once a batch's arrays are open: planning, fetching,
    #: decoding and placing (told apart only by a profile: they run interleaved)
    fetch_s: float = 0.0
    transform_s: float = 0.0
    #: the counters' own lock, made with them: a forked child, which gets new stats, never
    #: inherits a lock some thread of its parent held at the fork.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        """Add to several counters at once (safe from the decode threads)."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, float]:
        """The counters, plus read amplification and cache hit rate."""
        out: dict[str, float] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}
        out["read_amplification"] = self.bytes_decoded / self.bytes_returned if self.bytes_returned else 0.0
        looked_up = self.cache_hits + self.cache_misses
        out["cache_hit_rate"] = self.cache_hits / looked_up if looked_up else 0.0
        return out


class ChunkCache:
    """Arrays by key, least recently used dropped first beyond ``budget`` bytes; thread-safe."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget = budget
        self.nbytes = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        with self._lock:
            if key in self._items or value.nbytes > self.budget:
                return
            self._items[key] = value
            self.nbytes += value.nbytes
            while self.nbytes > self.budget:
                self.nbytes -= self._items.popitem(last=False)[1].nbytes


class AheadFetches:
    """Fetches started for the batches a worker reads next, by what they fetch; the oldest
    cancelled beyond ``budget`` bytes (estimated). Used on one event loop.

        ahead.start(key, size, read_remote(layout, unit))
        pending = ahead.take(key)  # a started fetch to await, or None
    """

    def __init__(self, budget: int = AHEAD_BYTES) -> None:
        self.budget = budget
        self.nbytes = 0
        self._tasks: OrderedDict[Hashable, tuple[asyncio.Task, int]] = OrderedDict()
        self._planning: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, key: Hashable, size: int, fetch: Coroutine[Any, Any, Any]) -> bool:
        """Start ``fetch`` under ``key`` unless it is started or over the budget (then it is
        closed unstarted); True when started."""
        if key in self._tasks or size > self.budget:
            fetch.close()
            return False
        while self.nbytes + size > self.budget:
            old, old_size = self._tasks.popitem(last=False)[1]
            old.cancel()
            self.nbytes -= old_size
        task = asyncio.ensure_future(fetch)
        task.add_done_callback(_retrieve)  # a fetch never taken must not warn when it failed
        self._tasks[key] = task, size
        self.nbytes += size
        return True

    def plan(self, planning: Coroutine[Any, Any, Any]) -> None:
        """Run ``planning`` (which starts fetches, and may itself fetch shard indexes) in
        the background, kept until it is done: the batch being read never waits for it."""
        task = asyncio.ensure_future(planning)
        self._planning.add(task)
        task.add_done_callback(self._planning.discard)
        task.add_done_callback(_retrieve)

    def take(self, key: Hashable) -> asyncio.Task | None:
        """The fetch started under ``key`` (removed), or None."""
        entry = self._tasks.pop(key, None)
        if entry is None:
            return None
        self.nbytes -= entry[1]
        return entry[0]


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
