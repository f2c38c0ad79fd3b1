"""Fetch: the stored bytes of a batch's chunks, whole objects or byte ranges of shards.

Unsharded chunks are whole objects. A sharded array's chunks are byte ranges of their
shard, found in the shard's index, which each process reads once per shard and keeps
(within a byte budget); ranges of one shard that are adjacent (or nearly) are fetched
as one. Local stores (folders, and zips of uncompressed members) are read in place with
positioned file reads on the decode threads (:mod:`.files`); other stores through the
retrying store wrapper, all requests of a batch concurrently.

An absent chunk or shard reads as the fill value, as zarr would (or is a
``MissingChunkError`` in strict mode); a shard that exists but is empty, shorter than
its index says, or a directory, is a :class:`ShardError`.

    units, settled = await plan_fetch(layout, tasks, strict=False)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import google_crc32c
import numpy as np
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype

from zarr_torch.process import process_state
from zarr_torch.read.files import IsAFolder
from zarr_torch.read.layout import Layout
from zarr_torch.read.plan import Task
from zarr_torch.storage import MissingChunkError

#: ranges of one shard this close together are fetched as one request.
COALESCE_GAP = 64 * 1024
#: the fill value: what an absent chunk's task settles as.
ABSENT = None
#: a shard index's offset and length for a chunk its shard does not hold (zarr's sentinel).
EMPTY = 2**64 - 1


class ShardError(OSError):
    """A shard that exists but cannot hold what its array says: empty, truncated, a directory."""


@dataclass
class Unit:
    """One fetch: a whole object (``start`` None) or bytes ``start:stop`` of it, holding the
    chunks of ``parts``: (task number, offset in the fetched bytes, length or -1 for all)."""

    key: str
    start: int | None = None
    stop: int | None = None
    parts: list[tuple[int, int, int]] = field(default_factory=list)


async def plan_fetch(
    layout: Layout, tasks: list[Task], todo: list[int], *, strict: bool
) -> tuple[list[Unit], dict[int, BaseException | None]]:
    """The fetches that bring tasks ``todo``, and the tasks settled without one: absent
    chunks (:data:`ABSENT`, or ``MissingChunkError`` when ``strict``) and failed shards."""
    if layout.shard is None:
        return [Unit(layout.store_key(tasks[i].coords), parts=[(i, 0, -1)]) for i in todo], {}
    by_shard: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for i, (shard, inner) in zip(todo, locate(layout, [tasks[i].coords for i in todo]), strict=True):
        by_shard.setdefault(shard, []).append((i, inner))
    settled: dict[int, BaseException | None] = {}
    units: list[Unit] = []
    for shard, members in by_shard.items():
        key = layout.store_key(shard)
        try:
            index = await shard_index(layout, shard, key)
        except Exception as exc:
            settled.update(dict.fromkeys((i for i, _ in members), exc))
            continue
        if index is None:
            settled.update(dict.fromkeys((i for i, _ in members), absent(f"shard {key!r}", strict)))
            continue
        spans = []
        for i, inner in members:
            offset, length = index.item(inner, 0), index.item(inner, 1)
            if offset == EMPTY:
                settled[i] = absent(f"chunk {tasks[i].coords} of shard {key!r}", strict)
            else:
                spans.append((offset, length, i))
        units += _coalesce(key, sorted(spans))
    return units, settled


def locate(layout: Layout, chunks: list[tuple[int, ...]]) -> list[tuple[tuple[int, ...], int]]:
    """The shard of each chunk at grid coordinates ``chunks``, and the chunk's place in
    that shard's index (C order)."""
    # plain ints: a batch's few chunks per shard cost more in numpy calls than in arithmetic
    per_shard = layout.chunks_per_shard
    strides = [math.prod(per_shard[k + 1 :]) for k in range(len(per_shard))]
    return [
        (
            tuple(c // n for c, n in zip(coords, per_shard, strict=True)),
            sum(c % n * s for c, n, s in zip(coords, per_shard, strides, strict=True)),
        )
        for coords in chunks
    ]


def known_ranges(layout: Layout, chunks: list[tuple[int, ...]]) -> list[tuple[str, int, int] | None]:
    """(shard key, offset, length) of each chunk at grid coordinates ``chunks`` whose
    shard's index this process holds; None for any other, and for a chunk its shard does
    not hold (what :func:`plan_fetch` then finds out)."""
    indexes: dict[tuple[int, ...], np.ndarray | None] = {}
    out: list[tuple[str, int, int] | None] = []
    for shard, inner in locate(layout, chunks):
        if shard not in indexes:
            indexes[shard] = process_state().shard_indexes.get((layout.name, shard))
        index = indexes[shard]
        offset = EMPTY if index is None else index.item(inner, 0)
        out.append(None if offset == EMPTY else (layout.store_key(shard), offset, index.item(inner, 1)))
    return out


def absent(what: str, strict: bool) -> BaseException | None:
    """How an absent chunk settles: the fill value (:data:`ABSENT`), or an error if strict."""
    return MissingChunkError(f"{what} is missing") if strict else ABSENT


def _coalesce(key: str, spans: list[tuple[int, int, int]]) -> list[Unit]:
    """Sorted (offset, length, task) ranges of one shard merged into few range requests."""
    units: list[Unit] = []
    for offset, length, i in spans:
        if units and offset - units[-1].stop <= COALESCE_GAP:
            unit = units[-1]
            unit.stop = max(unit.stop, offset + length)
        else:
            unit = Unit(key, offset, offset + length)
            units.append(unit)
        unit.parts.append((i, offset - unit.start, length))
    return units


async def shard_index(layout: Layout, shard: tuple[int, ...], key: str) -> np.ndarray | None:
    """(offset, length) of every chunk of a shard, in C order; None when the shard is absent.

    Read once per process and kept in its shard-index cache.
    """
    state = process_state()
    cache_key = (layout.name, shard)
    index = state.shard_indexes.get(cache_key)
    if index is not None:
        return index
    raw = _local_index(layout, key) if layout.files is not None else await _remote_index(layout, key)
    if raw is None:
        return None
    index = await _decode_index(layout, raw, key)
    state.shard_indexes.put(cache_key, index)
    state.stats.add(shard_indexes_fetched=1)
    return index


def _local_index(layout: Layout, key: str) -> bytes | None:
    assert layout.files is not None
    try:
        size = layout.files.size(key)
    except IsAFolder:
        raise ShardError(f"shard {key!r} is a directory, not a file") from None
    if size is None:
        return None
    _check_size(key, size, layout.index_size)
    where = 0 if layout.index_at_start else size - layout.index_size
    return layout.files.span(key, where, where + layout.index_size)


async def _remote_index(layout: Layout, key: str) -> bytes | None:
    n = layout.index_size
    request = RangeByteRequest(0, n) if layout.index_at_start else SuffixByteRequest(n)
    buf = await layout.store.get(key, default_buffer_prototype(), request)
    if buf is None:
        return None
    raw = buf.to_bytes()
    _check_size(key, len(raw), n)
    return raw


def _check_size(key: str, size: int, index_size: int) -> None:
    if size == 0:
        raise ShardError(f"shard {key!r} is empty (0 bytes)")
    if size < index_size:
        raise ShardError(f"shard {key!r} is truncated: {size} bytes cannot hold its {index_size}-byte index")


async def _decode_index(layout: Layout, raw: bytes, key: str) -> np.ndarray:
    names = [c.to_dict() for c in layout.sharding.index_codecs]
    plain = names[0] == {"name": "bytes", "configuration": {"endian": "little"}}
    if plain and names[1:] in ([], [{"name": "crc32c"}]):
        body = raw
        if len(names) == 2:
            body, (stored,) = raw[:-4], struct.unpack("<I", raw[-4:])
            if google_crc32c.value(body) != stored:
                raise ShardError(f"shard {key!r}: the index checksum does not match: the shard is corrupt")
        return np.frombuffer(body, dtype="<u8").reshape(-1, 2)
    # any other index codec chain: zarr's own decoding
    buffer = default_buffer_prototype().buffer.from_bytes(raw)
    decoded = await layout.sharding._decode_shard_index(buffer, layout.chunks_per_shard)
    return np.asarray(decoded.offsets_and_lengths).reshape(-1, 2)


def read_local(layout: Layout, unit: Unit, reuse: bool = False) -> bytes | memoryview | None:
    """The bytes of ``unit`` read in place (a folder's file, a zip's member); None when its
    object is absent. With ``reuse``, a view of this thread's read buffer (see
    :mod:`.files`), valid until its next read."""
    assert layout.files is not None
    try:
        if unit.start is None:
            return layout.files.whole(unit.key, layout.read_bound, reuse)
        data = layout.files.span(unit.key, unit.start, unit.stop, reuse)
    except IsAFolder as exc:
        raise ShardError(str(exc)) from None
    if data is None:
        raise ShardError(f"shard {unit.key!r} disappeared after its index was read")
    return _checked(unit, data)


async def read_remote(layout: Layout, unit: Unit) -> bytes | None:
    """The bytes of ``unit`` through the store (retrying); None when its object is absent."""
    request = None if unit.start is None else RangeByteRequest(unit.start, unit.stop)
    buf = await layout.store.get(unit.key, default_buffer_prototype(), request)
    if buf is None:
        if unit.start is not None:
            raise ShardError(f"shard {unit.key!r} disappeared after its index was read")
        return None
    return _checked(unit, buf.to_bytes())


def _checked(unit: Unit, data: bytes | memoryview) -> bytes | memoryview:
    if unit.start is not None and len(data) != unit.stop - unit.start:
        raise ShardError(
            f"shard {unit.key!r} is truncated: bytes {unit.start}-{unit.stop} hold only {len(data)}"
        )
    return data
