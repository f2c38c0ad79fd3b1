"""The batch read: plan -> fetch -> decode -> assemble, for every array of a batch at once.

``read_items`` takes a batch of (array, start) items, groups them by array, and for each
array plans the chunks the batch needs (:mod:`.plan`), serves what the decoded-chunk
cache holds, fetches the rest (:mod:`.fetch`), decodes it (:mod:`.decode`) and copies it
into one preallocated batch array (:mod:`.assemble`). Local stores are read, decoded and
assembled on the process's decode threads in one pass; other stores are fetched
concurrently on the event loop and decoded on those threads as their bytes arrive.
Chunks whose codecs zarr_torch does not decode go to zarr's pipeline in one call. Local
chunks that each lie within one frame (in a shard whose index the process keeps, or
unsharded), and unsharded chunks of whole frames that no cache would keep, skip the plan:
:mod:`.inplace` reads them first, on the decode threads with no trip to the event loop,
and only frames it could not read take the steps above. Asked to (``zarrs=True``), zarrs' Rust reader
(:mod:`.compiled`) reads before either.

    frames = run(read_items(specs, array_ids=np.array([0, 0, 1]), starts=np.array([4, 9, 0])))
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.ma  # np.unique imports it at first use (12 ms): here, not in every forked worker
import zarr.api.asynchronous as zasync
from zarr.errors import NodeNotFoundError

from zarr_torch.cache import ChunkCache
from zarr_torch.process import process_state, run
from zarr_torch.read import compiled, inplace
from zarr_torch.read.assemble import fill, scatter
from zarr_torch.read.buffers import scratch
from zarr_torch.read.decode import decode_with_zarr
from zarr_torch.read.fetch import ABSENT, Unit, absent, plan_fetch, read_local, read_remote
from zarr_torch.read.layout import Layout, layout_of
from zarr_torch.read.plan import Task, one_frame_chunks, plan
from zarr_torch.storage import RetryPolicy, read_options
from zarr_torch.stores import ArraySpec, Options, open_array, opened_array

T = TypeVar("T")

#: chunks smaller than this (decoded) are read and decoded on one thread per batch.
PARALLEL_CHUNK_BYTES = 64 * 2**10
#: makes a batch array of a shape and dtype, as ``np.empty`` does.
Allocate = Callable[[tuple[int, ...], np.dtype], np.ndarray]


async def read_items(
    specs: Sequence[ArraySpec | tuple[str, str, Options | None]],
    array_ids: np.ndarray,
    starts: np.ndarray,
    length: int = 0,
    *,
    strict: bool = False,
    retry: RetryPolicy | None = None,
    cache: ChunkCache | None = None,
    threads: int | None = None,
    zarrs: bool = False,
) -> list[np.ndarray | BaseException]:
    """Item ``starts[k]`` (or the window of ``length`` rows there) of array
    ``specs[array_ids[k]]`` for every ``k``, in order; a failed item's place holds its
    exception. Items of one frame shape and dtype are views of one batch array. An
    :class:`ArraySpec` with a metadata document opens its array with no request.

    ``cache`` and ``threads`` are the caller's budget (a dataset's own); by default the
    process's shared cache and one decode thread per core. Local chunks within one frame
    are read in one pass (see :mod:`.inplace`); with ``zarrs``, zarrs reads the arrays it
    can first (see :mod:`.compiled`), off the loop's thread.
    """
    budget = _Budget.of(cache, threads)
    batch = _Batch(specs, array_ids, starts, length, strict, budget)
    with read_options(strict=strict, retry=retry):
        await batch.open()
        started = time.perf_counter()
        await asyncio.to_thread(_read_off_loop, batch.reads, budget, zarrs)
        await batch.read()
    process_state().stats.add(fetch_s=time.perf_counter() - started)
    return batch.out()


def read_batch(
    asks: Sequence[tuple[Sequence[ArraySpec | tuple[str, str, Options | None]], np.ndarray, np.ndarray, int]],
    *,
    strict: bool = False,
    retry: RetryPolicy | None = None,
    cache: ChunkCache | None = None,
    threads: int | None = None,
    zarrs: bool = False,
    then: Coroutine[Any, Any, None] | None = None,
    allocate: Allocate = np.empty,
) -> list[list[np.ndarray | BaseException]]:
    """:func:`read_items` of each (specs, array_ids, starts, length) of ``asks``, from
    synchronous code (a ``DataLoader`` batch): zarrs reads what it can in the calling
    thread, and zarr's I/O loop is asked, once for all asks, only to open arrays this
    process has not opened and to read what zarrs left. A batch zarrs reads whole makes
    no trip to the loop (each costs a few hundred microseconds). ``then`` (the planning
    of fetches ahead, see :func:`prefetch_items`) starts on the loop once this batch's
    reads have, and goes on in the background. ``allocate(shape, dtype)`` makes the
    batch arrays (a ``DataLoader`` worker's are in shared memory, see
    :func:`zarr_torch.batches.shared`).

        [frames] = read_batch([(specs, np.array([0, 0, 1]), np.array([4, 9, 0]), 0)])
    """
    budget = _Budget.of(cache, threads)
    batches = [_Batch(*ask, strict, budget, allocate) for ask in asks]
    opening = [b.open() for b in batches if not b.opened()]
    if opening:
        run(_with_options(strict, retry, opening))
    started = time.perf_counter()
    _read_off_loop([r for b in batches for r in b.reads], budget, zarrs)
    if then is not None or any(b.left for b in batches):
        run(_with_options(strict, retry, [b.read() for b in batches], then))
    process_state().stats.add(fetch_s=time.perf_counter() - started)
    return [b.out() for b in batches]


async def _with_options(
    strict: bool,
    retry: RetryPolicy | None,
    steps: list[Awaitable[None]],
    then: Coroutine[Any, Any, None] | None = None,
) -> None:
    """Run ``steps`` with these read options; start ``then`` in the background after them."""
    with read_options(strict=strict, retry=retry):
        steps_done = asyncio.gather(*steps)
        if then is not None:
            process_state().ahead.plan(then)
        await steps_done


async def prefetch_items(
    specs: Sequence[ArraySpec | tuple[str, str, Options | None]],
    array_ids: np.ndarray,
    starts: np.ndarray,
    length: int = 0,
    *,
    cache: ChunkCache | None = None,
) -> int:
    """Start fetching what reading these items (as :func:`read_items` takes them) will
    need from remote stores, and return how many fetches started: a later
    :func:`read_items` of them awaits those instead of asking again. Chunks the cache
    holds, local stores and arrays that fail to open are left to that read.
    """
    state = process_state()
    cache = state.cache if cache is None else cache
    array_ids, starts = np.asarray(array_ids), np.asarray(starts, dtype=np.int64)
    span, started = max(length, 1), 0
    for a in np.unique(array_ids):
        try:
            layout = await _layout(ArraySpec(*specs[int(a)]))
        except Exception:
            continue
        if layout.files is not None:  # read in place: no latency to hide
            continue
        mine = starts[array_ids == a]
        mine = mine[(mine >= 0) & (mine + span <= layout.items)]
        tasks = plan(layout, np.arange(len(mine)), mine, span)
        keep = layout.cached(span)
        todo = [i for i, t in enumerate(tasks) if not keep or cache.get((layout.name, t.coords)) is None]
        try:
            units, _ = await plan_fetch(layout, tasks, todo, strict=False)
        except Exception:
            continue
        for unit in units:
            size = unit.stop - unit.start if unit.start is not None else layout.read_bound
            started += state.ahead.start(_ahead_key(layout, unit), size, read_remote(layout, unit))
    state.stats.add(fetches_ahead=started)
    return started


async def _layout(spec: ArraySpec) -> Layout:
    """How the array of ``spec`` is laid out, opened once in this process (from its
    metadata document when the spec has one, else from its format's documents)."""
    arr = await open_array(
        spec.uri, spec.path, spec.options, zarr_format=spec.zarr_format, document=spec.document
    )
    return layout_of(spec.key, arr, spec.item_axes)


def _opened(spec: ArraySpec) -> Layout | None:
    """The layout of the array of ``spec`` if this process has it open, or opens it with no
    trip to zarr's I/O loop (see :func:`opened_array`); else None."""
    uri, path, options = spec.uri, spec.path, spec.options
    arr = opened_array(uri, path, options, zarr_format=spec.zarr_format, document=spec.document)
    return None if arr is None else layout_of(spec.key, arr, spec.item_axes)


def _spec(spec: ArraySpec | tuple[str, str, Options | None]) -> ArraySpec:
    """``spec`` as an :class:`ArraySpec` (an index's already are: not made again)."""
    return spec if type(spec) is ArraySpec else ArraySpec(*spec)


def _ahead_key(layout: Layout, unit: Unit) -> tuple:
    return layout.name, unit.key, unit.start, unit.stop


async def _fetch(layout: Layout, unit: Unit) -> bytes | None:
    """The bytes of ``unit``: from a fetch started ahead for it, or fetched now."""
    state = process_state()
    pending = state.ahead.take(_ahead_key(layout, unit))
    if pending is None:
        return await read_remote(layout, unit)
    state.stats.add(fetches_ahead_used=1)
    return await pending


def _allocate(
    layouts: list[Layout | None], n: int, length: int, allocate: Allocate
) -> list[np.ndarray | None]:
    """One batch array for all arrays of one item shape and dtype (a batch each otherwise)."""
    shapes: dict[tuple, np.ndarray] = {}
    batches: list[np.ndarray | None] = []
    for layout in layouts:
        if layout is None:
            batches.append(None)
            continue
        item = ((length,) if length else ()) + layout.item_shape
        key = (item, layout.dtype.str)
        if key not in shapes:
            shapes[key] = allocate((n, *item), layout.dtype)
        batches.append(shapes[key])
    return batches


@dataclass(frozen=True)
class _Budget:
    """What one read may use: its decoded-chunk cache and its number of decode threads."""

    cache: ChunkCache
    threads: int

    @classmethod
    def of(cls, cache: ChunkCache | None, threads: int | None) -> _Budget:
        """The caller's budget; by default the process's cache and decode threads."""
        state = process_state()
        return cls(state.cache if cache is None else cache, threads or state.decode_threads)

    @property
    def pool(self) -> ThreadPoolExecutor:
        return process_state().pool(self.threads)

    def submit(self, fn: Callable[..., T], *args: Any, here: bool = False) -> Future[T]:
        """``fn(*args)`` in one of this budget's decode slots: on its pool, or with ``here``
        on the calling thread (done when returned). Every decode goes this way, so the pool
        and the threads that call together never decode more at once than the budget."""
        if not here:
            return self.pool.submit(self._in_slot, fn, *args)
        done: Future[T] = Future()
        done.set_result(self._in_slot(fn, *args))
        return done

    def _in_slot(self, fn: Callable[..., T], *args: Any) -> T:
        with process_state().decode_slots(self.threads):
            return fn(*args)


class _Batch:
    """The items of one :func:`read_items` call, grouped by array: each array's read (see
    :class:`_ArrayRead`), once its array is open, into one batch array per item shape."""

    def __init__(
        self,
        specs: Sequence[ArraySpec | tuple[str, str, Options | None]],
        array_ids: np.ndarray,
        starts: np.ndarray,
        length: int,
        strict: bool,
        budget: _Budget,
        allocate: Allocate = np.empty,
    ) -> None:
        array_ids, self.starts = np.asarray(array_ids), np.asarray(starts, dtype=np.int64)
        self.length, self.strict, self.budget, self.allocate = length, strict, budget, allocate
        # each array's positions, found in one sort (not one pass over the batch per array;
        # np.unique and np.split took 4 times as long)
        order = np.argsort(array_ids, kind="stable")
        ranked = array_ids[order]
        starts_at = (np.flatnonzero(ranked[1:] != ranked[:-1]) + 1).tolist()
        bounds = [0, *starts_at, len(order)] if len(order) else [0]
        self.members = [order[a:b] for a, b in itertools.pairwise(bounds)]
        # the specs of this batch's arrays
        self.specs = [_spec(specs[a]) for a in ranked[bounds[:-1]].tolist()]
        self.layouts: list[Layout | BaseException] = []
        self.reads: list[_ArrayRead] = []

    def opened(self) -> bool:
        """Set up the reads if this process has opened every array; whether it has."""
        layouts = [_opened(spec) for spec in self.specs]
        if None in layouts:
            return False
        self._set_up(layouts)
        return True

    async def open(self) -> None:
        """Open the arrays (an array that fails to open fails its items) and set up the reads."""
        self._set_up(await asyncio.gather(*map(_layout, self.specs), return_exceptions=True))

    def _set_up(self, layouts: list[Any]) -> None:
        self.layouts = layouts
        self.batches = _allocate(
            [None if isinstance(x, BaseException) else x for x in layouts],
            len(self.starts),
            self.length,
            self.allocate,
        )
        span = max(self.length, 1)
        self.reads = [
            _ArrayRead(
                layout,
                m,
                self.starts[m],
                span,
                batch if self.length else batch[:, None],
                self.strict,
                self.budget,
            )
            for layout, m, batch in zip(layouts, self.members, self.batches, strict=True)
            if batch is not None
        ]

    @property
    def left(self) -> bool:
        """Whether any item is left to read (zarrs, when it ran, read the others)."""
        return any(len(r.positions) for r in self.reads)

    async def read(self) -> None:
        """Plan, fetch, decode and assemble what is left to read."""
        await asyncio.gather(*(r.prepare() for r in self.reads))
        await asyncio.gather(
            _run_local([r for r in self.reads if r.local], self.budget),
            *(r.run_remote() for r in self.reads if not r.local),
        )
        await asyncio.gather(*(r.check_absent() for r in self.reads))

    def out(self) -> list[np.ndarray | BaseException]:
        """Every item in order, absent chunks filled; a failed item's exception in its place."""
        failed = [r.finish() for r in self.reads]  # first: an item of one value is a copy
        first = self.batches[0] if self.batches else None
        if first is not None and not any(failed) and all(b is first for b in self.batches):
            # every item read, into one batch: its rows in order (made by numpy in one call)
            process_state().stats.add(bytes_returned=first.nbytes)
            return list(first)
        out: list[np.ndarray | BaseException] = [None] * len(self.starts)  # type: ignore[list-item]
        for layout, m, batch in zip(self.layouts, self.members, self.batches, strict=True):
            for k in m.tolist():
                out[k] = layout if batch is None else batch[k]
        for errors in failed:
            for k, exc in errors.items():
                out[k] = exc
        process_state().stats.add(bytes_returned=sum(o.nbytes for o in out if isinstance(o, np.ndarray)))
        return out


class _ArrayRead:
    """The part of a batch that reads one array: planned, fetched and settled in turn."""

    def __init__(
        self,
        layout: Layout,
        positions: np.ndarray,
        starts: np.ndarray,
        span: int,
        batch: np.ndarray,
        strict: bool,
        budget: _Budget,
    ) -> None:
        #: the exception of every batch position that failed.
        self.failed: dict[int, BaseException] = {}
        if len(starts) and (starts.min() < 0 or starts.max() + span > layout.items):
            bad = (starts < 0) | (starts + span > layout.items)
            self.failed = {
                int(p): IndexError(f"rows {s}-{s + span - 1} are outside the array's {layout.items} rows")
                for p, s in zip(positions[bad], starts[bad], strict=True)
            }
            positions, starts = positions[~bad], starts[~bad]
        self.layout, self.positions, self.starts = layout, positions, starts
        self.span, self.batch, self.strict, self.budget = span, batch, strict, budget
        self.local = layout.files is not None and layout.decoder is not None
        self.tasks: list[Task] = []
        self.units: list[Unit] = []
        self.settled: dict[int, BaseException | None] = {}

    async def prepare(self) -> None:
        """Plan the chunks, serve what the cache holds, and plan the fetches of the rest."""
        if len(self.positions) == 0:
            return
        state, layout = process_state(), self.layout
        self.tasks = plan(layout, self.positions, self.starts, self.span)
        keep = layout.cached(self.span) and self.budget.cache.budget > 0
        todo = []
        for i, task in enumerate(self.tasks):
            hit = self.budget.cache.get((layout.name, task.coords)) if keep else None
            if hit is None:
                todo.append(i)
            else:
                scatter(self.batch, task, hit, self.span)
        state.stats.add(cache_hits=len(self.tasks) - len(todo), cache_misses=len(todo))
        self.units, self.settled = await plan_fetch(layout, self.tasks, todo, strict=self.strict)
        self.job = _Decode(layout, self.tasks, self.batch, self.span, keep, self.strict, self.budget)

    async def run_remote(self) -> None:
        if self.units:
            self.settled.update(await self.job.remote(self.units))

    async def check_absent(self) -> None:
        """Absent chunks read as the fill value only while the array is there as this
        process knows it: a store deleted, moved or rewritten (shrunk, rechunked) under a
        running dataset is an error, not black frames. Its metadata is read afresh."""
        absent = [i for i, outcome in self.settled.items() if outcome is ABSENT]
        if not absent:
            return
        layout = self.layout
        try:
            now = await zasync.open(
                store=layout.store, path=layout.path, mode="r", zarr_format=layout.meta.zarr_format
            )
        except (FileNotFoundError, NodeNotFoundError):
            where = f"the metadata of array {layout.path or '/'!r}"
            gone = FileNotFoundError(f"{where} is gone: its store was deleted or moved")
            self.settled.update(dict.fromkeys(absent, gone))
            return
        if _layout_of_meta(now.metadata) != _layout_of_meta(layout.meta):
            changed = ValueError(
                f"the array {layout.path or '/'!r} changed since it was opened (or indexed): its metadata "
                "differs now; build the index again"
            )
            self.settled.update(dict.fromkeys(absent, changed))

    def finish(self) -> dict[int, BaseException]:
        """Fill absent chunks with the fill value; return the failed positions."""
        for i, outcome in self.settled.items():
            if outcome is ABSENT:
                fill(self.batch, self.tasks[i], self.layout.fill_value, self.span)
                process_state().stats.add(chunks_absent=1)
            else:
                for p in self.tasks[i].positions.tolist():
                    self.failed.setdefault(int(p), outcome)
        return self.failed


def _layout_of_meta(meta: Any) -> str:
    """An array's metadata without its attributes: what decides where its chunks are."""
    doc = {k: v for k, v in meta.to_dict().items() if k != "attributes"}
    return json.dumps(doc, sort_keys=True, default=str)


def _read_compiled(reads: list[_ArrayRead], budget: _Budget) -> None:
    """Read what zarrs can of these arrays (see :mod:`.compiled`), in this thread, which
    waits for zarrs' own; each read is left with the items zarrs did not read for sure."""
    reads = [r for r in reads if compiled.usable(r.layout, r.span, budget.threads)]
    if not reads:
        return
    lefts = compiled.read([(r.layout, r.positions, r.starts, r.batch[:, 0]) for r in reads])
    for r, left in zip(reads, lefts, strict=True):
        r.positions, r.starts = r.positions[left], r.starts[left]


def _read_off_loop(reads: list[_ArrayRead], budget: _Budget, zarrs: bool) -> None:
    """What is read without zarr's I/O loop: with ``zarrs``, what zarrs can read (in this
    thread), then the one pass (see :func:`_start_in_place`); leaves each read only what
    is left to the general path."""
    if zarrs:
        _read_compiled(reads, budget)
    taken, left, futures = _start_in_place(reads, budget)
    _leave(taken, [left, *[f.result() for f in futures]])


def _start_in_place(
    reads: list[_ArrayRead], budget: _Budget
) -> tuple[list[_ArrayRead], list[tuple[int, int]], list[Future]]:
    """Start reading in place (see :mod:`.inplace`) the items left of the reads that go
    that way, shared by the decode threads; return those reads, the items the pass left
    to the general path, and each thread's outcome to come (see :func:`_leave`). On the
    decode threads, or on the calling thread when the work is one thread's and its
    decoders start no threads of their own (numcodecs' blosc, called from a process's main
    thread, decodes on threads of its own, past the budget): in a ``DataLoader`` worker
    of one decode thread, a hop to the pool and back cost 5-7% of the frames/s. Either way
    in one of the budget's slots. A chunk of several frames goes that way only when no
    decoded chunk would be kept for it (see :mod:`.inplace`)."""
    taken = [r for r in reads if len(r.positions) and inplace.usable(r.layout, r.span)]
    keep = budget.cache.budget > 0
    jobs, left = [], []
    for n, r in enumerate(taken):
        more, rest = inplace.chunk_jobs(n, r.layout, r.positions, r.starts, r.batch[:, 0], keep)
        jobs += more
        left += rest
    shares = _share(jobs, [job[2].chunk_bytes for job in jobs], budget)
    here = len(shares) == 1 and all(r.layout.decoder.threadless for r in taken)  # type: ignore[union-attr]
    return taken, left, [budget.submit(inplace.read, share, here=here) for share in shares]


def _leave(taken: list[_ArrayRead], lefts: list[list[tuple[int, int]]]) -> None:
    """Leave each read of ``taken`` only its items in ``lefts`` (each thread's (read
    number, batch position) pairs): those whose chunks were absent or failed, for the
    general path."""
    again: list[list[int]] = [[] for _ in taken]
    for left in lefts:
        for n, p in left:
            again[n].append(p)
    for r, positions in zip(taken, again, strict=True):
        keep = np.isin(r.positions, positions) if positions else slice(0)
        r.positions, r.starts = r.positions[keep], r.starts[keep]


def _share(work: list[Any], chunk_bytes: list[int], budget: _Budget) -> list[Iterator[Any]]:
    """``work`` (of decoded chunks of ``chunk_bytes`` each) for the decode threads: one
    iterator a thread, all the same one, so that each thread takes the next item once done
    with its last (a list iterator hands each out once, under the GIL). Halves fixed in
    advance left one thread idle while the other, slowed by the GIL or the scheduler,
    finished its half. None when empty, one thread when most chunks are small."""
    if not work:
        return []
    # Chunks of a few KB decode in microseconds: two threads then spend more on handing the
    # GIL back and forth than they gain (37 KB tiles: 7.0k frames/s on one, 4.4k on two).
    small = sum(n < PARALLEL_CHUNK_BYTES for n in chunk_bytes) > len(work) // 2
    threads = 1 if small else min(budget.threads, len(work))
    return [iter(work)] * threads


async def _run_local(reads: list[_ArrayRead], budget: _Budget) -> None:
    """Every unit of local arrays on the decode threads, each taking the next in turn."""
    work = [(r, u) for r in reads for u in r.units]
    if not work:
        return
    state = process_state()
    parts = await asyncio.gather(
        *(
            asyncio.wrap_future(budget.submit(_local_units, share))
            for share in _share(work, [r.layout.chunk_bytes for r, _ in work], budget)
        )
    )
    for part in parts:
        for r, i, outcome in part:
            r.settled[i] = outcome
    state.stats.add(ranges_fetched=sum(u.start is not None for _, u in work), reads_in_place=len(work))


def _local_units(
    work: Iterator[tuple[_ArrayRead, Unit]],
) -> list[tuple[_ArrayRead, int, BaseException | None]]:
    """Read, decode and assemble units of local stores (on a decode thread). A chunk that
    decodes to new memory is read into the thread's reusable buffer."""
    out, counts = [], dict.fromkeys(_COUNTS, 0)
    for r, unit in work:
        try:
            raw = read_local(r.layout, unit, reuse=r.job.reuse)
        except Exception as exc:
            out += [(r, i, exc) for i, _, _ in unit.parts]
            continue
        out += [(r, i, v) for i, v in r.job.unit(unit, raw, counts).items()]
    process_state().stats.add(**counts)
    return out


#: what decoding units counts, for ``ds.stats()``.
_COUNTS = (
    "chunks_fetched",
    "bytes_fetched",
    "chunks_decoded_direct",
    "chunks_decoded_into_batch",
    "bytes_decoded",
)


class _Decode:
    """Decode fetched chunks of one array and copy them into the batch."""

    def __init__(
        self,
        layout: Layout,
        tasks: list[Task],
        batch: np.ndarray,
        span: int,
        keep: bool,
        strict: bool,
        budget: _Budget,
    ) -> None:
        self.layout, self.tasks, self.batch, self.span, self.keep = layout, tasks, batch, span, keep
        self.strict, self.budget = strict, budget
        #: whether the decoder writes a chunk as stored into given bytes (see ``DirectDecoder``)
        direct = layout.decoder is not None and layout.decoder.into
        self.into = direct and one_frame_chunks(layout, span)
        #: whether a read may land in a buffer reused for the next: nothing decoded keeps it
        self.reuse = self.into or (layout.decoder is not None and layout.decoder.fresh)
        #: items a chunk holds (its rows, see ``Layout.as_rows``)
        self.rows = layout.rows
        #: each item's bytes, where chunks of whole frames (one or many) decode to
        whole = span == 1 and layout.whole_items
        self.items = batch.reshape(len(batch), -1).view(np.uint8) if whole else None
        #: whether chunks of several rows may decode row by row (see :meth:`part`)
        self.by_rows = direct and self.rows > 1 and layout.item_axes == 1

    def frame(self, i: int, data: Any) -> None:
        """Decode one-frame chunk ``data`` of task ``i`` straight into the first batch
        item that shows it, then copy it to any other."""
        positions = self.tasks[i].positions
        first = positions[0]
        self.layout.decoder.decode_into(data, out=self.items[first])
        if len(positions) > 1:
            self.batch[positions[1:]] = self.batch[first]

    def part(self, i: int, data: Any, keep: bool) -> tuple[int, bool]:
        """Decode chunk ``data`` of task ``i``, not one frame (see :meth:`frame`), into the
        batch (and the cache, if ``keep``: see :meth:`kept`); return the bytes decoded and
        whether they went straight into the batch.

        A chunk of whole frames that is not kept decodes row by row into the items that
        show them. A chunk of tiles not kept and needed only in part decodes into this
        thread's scratch buffer. Either stops after the last row the batch needs when the
        codec can (zstd). Any other chunk decodes whole, into memory of its own (kept if
        worth it).
        """
        layout, task = self.layout, self.tasks[i]
        decoder = layout.decoder
        assert decoder is not None
        if self.by_rows and not keep:
            rows = int((task.src + task.rows).max())
            if self.items is not None:
                return self._rows_into_items(task, rows, data), True
            if rows < self.rows:  # tiles up to the last row needed, via scratch
                row_shape = layout.chunk[1:]
                nbytes = rows * math.prod(row_shape) * layout.dtype.itemsize
                buf = np.frombuffer(scratch(nbytes, "rows"), np.uint8)
                decoded = decoder.decode_rows(data, list(buf.reshape(rows, -1)))
                scatter(self.batch, task, buf.view(layout.dtype).reshape(rows, *row_shape), self.span)
                return decoded, False
        self.place(i, decoder.decode(data), keep)
        return self.layout.chunk_bytes, False

    def _rows_into_items(self, task: Task, rows: int, data: Any) -> int:
        """Decode a chunk of whole frames row by row into the batch items that show them."""
        assert self.items is not None and self.layout.decoder is not None
        dests: list[Any] = [None] * rows
        repeats = []
        for p, r in zip(task.positions.tolist(), task.src.tolist(), strict=True):
            if dests[r] is None:
                dests[r] = self.items[p]
            else:
                repeats.append((p, dests[r]))
        decoded = self.layout.decoder.decode_rows(data, dests)
        for p, first in repeats:
            self.items[p] = first
        return decoded

    def kept(self, i: int) -> bool:
        """Whether to keep task ``i``'s chunk: not when this batch took every item it holds
        (as a sampler that visits each item once an epoch, like ``ChunkAwareSampler``,
        does), as no later batch of the epoch needs it. Local chunks of whole frames not
        kept go the one pass instead (see :mod:`.inplace`)."""
        return self.keep and not (self.span == 1 and len(np.unique(self.tasks[i].src)) == self.rows)

    def place(self, i: int, chunk: np.ndarray, keep: bool) -> None:
        """Copy a decoded chunk of task ``i`` into the batch; ``keep`` it in the cache
        (see :meth:`kept`)."""
        task = self.tasks[i]
        chunk = self.layout.as_rows(chunk)
        scatter(self.batch, task, chunk, self.span)
        if keep:
            self.budget.cache.put((self.layout.name, task.coords), np.asarray(chunk))

    def unit(self, unit: Unit, raw: Any, counts: dict[str, int]) -> dict[int, BaseException | None]:
        """Decode every chunk of a fetched unit, adding to ``counts`` (see :data:`_COUNTS`);
        return the tasks that did not decode."""
        if raw is None:
            return self.absent(unit)
        out: dict[int, BaseException | None] = {}
        decoded_bytes = into = 0
        view = raw if type(raw) is memoryview else memoryview(raw)
        for i, offset, length in unit.parts:
            data = (
                view if length < 0 and not offset else view[offset : None if length < 0 else offset + length]
            )
            try:
                if self.into:
                    self.frame(i, data)
                    decoded_bytes += self.layout.chunk_bytes
                    into += 1
                    continue
                nbytes, direct = self.part(i, data, keep=self.kept(i))
            except Exception as exc:
                out[i] = exc
                continue
            decoded_bytes += nbytes
            into += direct
        decoded = len(unit.parts) - len(out)
        counts["chunks_fetched"] += len(unit.parts)
        counts["bytes_fetched"] += len(view)
        counts["chunks_decoded_direct"] += decoded
        counts["chunks_decoded_into_batch"] += into
        counts["bytes_decoded"] += decoded_bytes
        return out

    def absent(self, unit: Unit) -> dict[int, BaseException | None]:
        """The tasks of a unit whose object is absent: the fill value, or an error if strict."""
        return {i: absent(f"chunk {unit.key!r}", self.strict) for i, _, _ in unit.parts}

    async def remote(self, units: list[Unit]) -> dict[int, BaseException | None]:
        """Fetch every unit concurrently; decode each on the decode threads as it arrives
        (or all at once through zarr's pipeline when zarr_torch cannot decode them)."""
        state = process_state()
        loop = asyncio.get_running_loop()
        read = (  # a local read is I/O: on the pool, but in no decode slot
            (lambda u: loop.run_in_executor(self.budget.pool, read_local, self.layout, u))
            if (self.layout.files is not None)
            else (lambda u: _fetch(self.layout, u))
        )
        state.stats.add(
            ranges_fetched=sum(u.start is not None for u in units),
            reads_in_place=len(units) if self.layout.files is not None else 0,
        )
        if self.layout.decoder is None:
            raws = await asyncio.gather(*map(read, units), return_exceptions=True)
            return await self._by_zarr(units, raws)

        async def one(unit: Unit) -> dict[int, BaseException | None]:
            try:
                raw = await read(unit)
            except Exception as exc:
                return dict.fromkeys((i for i, _, _ in unit.parts), exc)
            counts = dict.fromkeys(_COUNTS, 0)
            settled = await asyncio.wrap_future(self.budget.submit(self.unit, unit, raw, counts))
            state.stats.add(**counts)
            return settled

        results = await asyncio.gather(*map(one, units))
        return {i: v for r in results for i, v in r.items()}

    async def _by_zarr(self, units: list[Unit], raws: list[Any]) -> dict[int, BaseException | None]:
        out: dict[int, BaseException | None] = {}
        parts, datas = [], []
        for unit, raw in zip(units, raws, strict=True):
            if isinstance(raw, BaseException):
                out.update(dict.fromkeys((i for i, _, _ in unit.parts), raw))
                continue
            if raw is None:
                out.update(self.absent(unit))
                continue
            process_state().stats.add(chunks_fetched=len(unit.parts), bytes_fetched=len(raw))
            for i, offset, length in unit.parts:
                parts.append(i)
                datas.append(memoryview(raw)[offset : None if length < 0 else offset + length])
        if not parts:
            return out
        layout = self.layout
        try:
            chunks = await decode_with_zarr(layout.meta, layout.codecs, layout.chunk, datas)
        except Exception as exc:
            return {**out, **dict.fromkeys(parts, exc)}
        for i, chunk in zip(parts, chunks, strict=True):
            self.place(i, chunk, self.kept(i))
        process_state().stats.add(
            chunks_decoded_by_zarr=len(parts), bytes_decoded=len(parts) * self.layout.chunk_bytes
        )
        return out
