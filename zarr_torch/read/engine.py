"""The batch read: plan -> fetch -> decode -> assemble, for every array of a batch at once.

``read_items`` takes a batch of (array, start) items, groups them by array, and for each
array plans the chunks the batch needs (:mod:`.plan`), serves what the decoded-chunk
cache holds, fetches the rest (:mod:`.fetch`), decodes it (:mod:`.decode`) and copies it
into one preallocated batch array (:mod:`.assemble`). Local stores are read, decoded and
assembled on the process's decode threads in one pass; other stores are fetched
concurrently on the event loop and decoded on those threads as their bytes arrive.
Chunks whose codecs zarr_torch does not decode go to zarr's pipeline in one call.

    frames = run(read_items(specs, array_ids=np.array([0, 0, 1]), starts=np.array([4, 9, 0])))
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from zarr_torch.process import process_state
from zarr_torch.read.assemble import fill, scatter
from zarr_torch.read.decode import decode_with_zarr
from zarr_torch.read.fetch import ABSENT, Unit, plan_fetch, read_local, read_remote
from zarr_torch.read.layout import Layout, layout_of
from zarr_torch.read.plan import Task, one_frame_chunks, plan
from zarr_torch.storage import MissingChunkError, read_options
from zarr_torch.stores import Options, open_array, options_key


async def read_items(
    specs: Sequence[tuple[str, str, Options | None]],
    array_ids: np.ndarray,
    starts: np.ndarray,
    length: int = 0,
    *,
    strict: bool = False,
    retry: Any = None,
) -> list[np.ndarray | BaseException]:
    """Item ``starts[k]`` (or the window of ``length`` rows there) of array
    ``specs[array_ids[k]]`` for every ``k``, in order; a failed item's place holds its
    exception. Items of one frame shape and dtype are views of one batch array."""
    array_ids, starts = np.asarray(array_ids), np.asarray(starts, dtype=np.int64)
    span = max(length, 1)
    ids = np.unique(array_ids)
    members = [np.flatnonzero(array_ids == a) for a in ids]
    out: list[np.ndarray | BaseException] = [None] * len(starts)  # type: ignore[list-item]
    with read_options(strict=strict, retry=retry):
        opened = await asyncio.gather(*(open_array(*specs[int(a)]) for a in ids), return_exceptions=True)
        layouts: list[Layout | None] = []
        for a, arr, m in zip(ids, opened, members, strict=True):
            if isinstance(arr, BaseException):
                layouts.append(None)
                for k in m:
                    out[k] = arr
                continue
            uri, path, options = specs[int(a)]
            layouts.append(layout_of((uri, path, options_key(options)), arr))
        batches = _allocate(layouts, members, len(starts), length)
        errors = await asyncio.gather(
            *(
                _read_array(layout, m, starts[m], span, batch if length else batch[:, None], strict)
                for layout, m, batch in zip(layouts, members, batches, strict=True)
                if layout is not None
            )
        )
    for layout, m, batch in zip(layouts, members, batches, strict=True):
        if layout is None:
            continue
        for k in m:
            out[k] = batch[k]
    for failed in errors:
        for k, exc in failed.items():
            out[k] = exc
    stats = process_state().stats
    stats.add(bytes_returned=sum(o.nbytes for o in out if isinstance(o, np.ndarray)))
    return out


def _allocate(
    layouts: list[Layout | None], members: list[np.ndarray], n: int, length: int
) -> list[np.ndarray | None]:
    """One batch array for all arrays of one item shape and dtype (a batch each otherwise)."""
    shapes: dict[tuple, np.ndarray] = {}
    batches: list[np.ndarray | None] = []
    for layout in layouts:
        if layout is None:
            batches.append(None)
            continue
        item = ((length,) if length else ()) + layout.shape[1:]
        key = (item, layout.dtype.str)
        if key not in shapes:
            shapes[key] = np.empty((n, *item), dtype=layout.dtype)
        batches.append(shapes[key])
    return batches


async def _read_array(
    layout: Layout, positions: np.ndarray, starts: np.ndarray, span: int, batch: np.ndarray, strict: bool
) -> dict[int, BaseException]:
    """Fill ``batch[positions]`` (items, then a row axis of ``span`` rows); return the
    exception of every position that failed."""
    bad = (starts < 0) | (starts + span > layout.shape[0])
    failed = {
        int(p): IndexError(f"rows {s}-{s + span - 1} are outside the array's {layout.shape[0]} rows")
        for p, s in zip(positions[bad], starts[bad], strict=True)
    }
    positions, starts = positions[~bad], starts[~bad]
    if len(positions) == 0:
        return failed
    state = process_state()
    tasks = plan(layout, positions, starts, span)
    keep = layout.cached(span)
    todo = []
    for i, task in enumerate(tasks):
        hit = state.cache.get((layout.key, task.coords)) if keep else None
        if hit is None:
            todo.append(i)
        else:
            scatter(batch, task, hit, span)
    state.stats.add(cache_hits=len(tasks) - len(todo), cache_misses=len(todo))
    units, settled = await plan_fetch(layout, tasks, todo, strict=strict)
    job = _Decode(layout, tasks, batch, span, keep, strict)
    started = time.perf_counter()
    if layout.root is not None and layout.decoder is not None:
        settled.update(await job.local(units))
    else:
        settled.update(await job.remote(units))
    state.stats.add(fetch_s=time.perf_counter() - started)
    for i, outcome in settled.items():
        if outcome is ABSENT:
            fill(batch, tasks[i], layout.fill_value, span)
            state.stats.add(chunks_absent=1)
        else:
            for p in tasks[i].positions.tolist():
                failed.setdefault(int(p), outcome)
    return failed


class _Decode:
    """Decode fetched chunks of one array and copy them into the batch."""

    def __init__(
        self, layout: Layout, tasks: list[Task], batch: np.ndarray, span: int, keep: bool, strict: bool
    ) -> None:
        self.layout, self.tasks, self.batch, self.span, self.keep = layout, tasks, batch, span, keep
        self.strict = strict
        self.into = layout.decoder is not None and layout.decoder.into and one_frame_chunks(layout, span)

    def part(self, i: int, data: Any) -> None:
        """Decode chunk ``data`` of task ``i`` into the batch (and the cache)."""
        layout, task, stats = self.layout, self.tasks[i], process_state().stats
        assert layout.decoder is not None
        if self.into:  # straight into the first item that shows it, then copied to any other
            first = int(task.positions[0])
            layout.decoder.decode(data, out=self.batch[first])
            for p in task.positions[1:].tolist():
                self.batch[p] = self.batch[first]
            stats.add(
                chunks_decoded_direct=1, chunks_decoded_into_batch=1, bytes_decoded=self.batch[0].nbytes
            )
            return
        chunk = layout.decoder.decode(data)
        self.place(i, chunk)
        stats.add(chunks_decoded_direct=1)

    def place(self, i: int, chunk: np.ndarray) -> None:
        """Copy a decoded chunk of task ``i`` into the batch; keep it if worth it."""
        scatter(self.batch, self.tasks[i], chunk, self.span)
        process_state().stats.add(bytes_decoded=chunk.nbytes)
        if self.keep:
            process_state().cache.put((self.layout.key, self.tasks[i].coords), np.asarray(chunk))

    def unit(self, unit: Unit, raw: bytes | None) -> dict[int, BaseException | None]:
        """Decode every chunk of a fetched unit; return the tasks that did not decode."""
        if raw is None:
            return self.absent(unit)
        out: dict[int, BaseException | None] = {}
        process_state().stats.add(chunks_fetched=len(unit.parts), bytes_fetched=len(raw))
        for i, offset, length in unit.parts:
            try:
                self.part(i, memoryview(raw)[offset : None if length < 0 else offset + length])
            except Exception as exc:
                out[i] = exc
        return out

    def absent(self, unit: Unit) -> dict[int, BaseException | None]:
        """The tasks of a unit whose object is absent: the fill value, or an error if strict."""
        if self.strict:
            return {i: MissingChunkError(f"chunk {unit.key!r} is missing") for i, _, _ in unit.parts}
        return dict.fromkeys((i for i, _, _ in unit.parts), ABSENT)

    def local_units(self, units: list[Unit]) -> dict[int, BaseException | None]:
        """Read, decode and assemble ``units`` of a local store (on a decode thread)."""
        out: dict[int, BaseException | None] = {}
        for unit in units:
            try:
                raw = read_local(self.layout, unit)
            except Exception as exc:
                out.update(dict.fromkeys((i for i, _, _ in unit.parts), exc))
                continue
            out.update(self.unit(unit, raw))
        return out

    async def local(self, units: list[Unit]) -> dict[int, BaseException | None]:
        """Every unit on the decode threads, split evenly, in one pass each."""
        state = process_state()
        threads = min(state.decode_threads, len(units))
        loop = asyncio.get_running_loop()
        parts = await asyncio.gather(
            *(loop.run_in_executor(state.pool(), self.local_units, units[k::threads]) for k in range(threads))
        )
        state.stats.add(ranges_fetched=sum(u.start is not None for u in units))
        return {i: v for part in parts for i, v in part.items()}

    async def remote(self, units: list[Unit]) -> dict[int, BaseException | None]:
        """Fetch every unit concurrently; decode each on the decode threads as it arrives
        (or all at once through zarr's pipeline when zarr_torch cannot decode them)."""
        state = process_state()
        loop = asyncio.get_running_loop()
        read = (
            (lambda u: loop.run_in_executor(state.pool(), read_local, self.layout, u))
            if (self.layout.root is not None)
            else (lambda u: read_remote(self.layout, u))
        )
        state.stats.add(ranges_fetched=sum(u.start is not None for u in units))
        if self.layout.decoder is None:
            raws = await asyncio.gather(*map(read, units), return_exceptions=True)
            return await self._by_zarr(units, raws)

        async def one(unit: Unit) -> dict[int, BaseException | None]:
            try:
                raw = await read(unit)
            except Exception as exc:
                return dict.fromkeys((i for i, _, _ in unit.parts), exc)
            return await loop.run_in_executor(state.pool(), self.unit, unit, raw)

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
            self.place(i, chunk)
        process_state().stats.add(chunks_decoded_by_zarr=len(parts))
        return out
