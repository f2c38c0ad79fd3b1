"""Whole-chunk reads: each chunk fetched once, decoded once, kept in a per-process cache.

The fast path of :func:`zarr_torch.io.read_rows` for arrays chunked along the leading
axis only (one chunk holds whole frames). Every chunk a call needs is fetched and
decoded in one go: for common codecs (v3 ``bytes`` + zstd/blosc/gzip, v2 compressor
only) with numcodecs on this process's decode threads (decoders release the GIL), a
local store's chunk files read by those same threads; otherwise the bytes come
concurrently through the (retrying) store and zarr's codec pipeline decodes them.
Decoded chunks stay in an LRU cache with a byte budget, so chunk-mates spread over
consecutive batches are decoded once. Sharded arrays and chunk grids that split a frame
take zarr's own path.

    blocks = await read_chunks(arr, name, np.array([0, 3]), cache, stats)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.core.array import AsyncArray
from zarr.core.array_spec import ArrayConfig
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from zarr_torch.storage import MissingChunkError, strict_reads

#: the default byte budget of each process's decoded-chunk cache.
CACHE_BYTES = 256 * 2**20


@dataclass
class ReadStats:
    """What this process has read: ``ds.stats()`` reports it.

    ``amplification`` is bytes decoded per byte returned; 1.0 means nothing decoded was
    thrown away.
    """

    chunks_fetched: int = 0
    bytes_fetched: int = 0
    bytes_decoded: int = 0
    bytes_returned: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    fetch_s: float = 0.0
    decode_s: float = 0.0
    transform_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """The counters, plus read amplification and cache hit rate."""
        out: dict[str, float] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["read_amplification"] = self.bytes_decoded / self.bytes_returned if self.bytes_returned else 0.0
        looked_up = self.cache_hits + self.cache_misses
        out["cache_hit_rate"] = self.cache_hits / looked_up if looked_up else 0.0
        return out


class ChunkCache:
    """Decoded chunks by key, least recently used dropped first beyond ``budget`` bytes."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget = budget
        self.nbytes = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> np.ndarray | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        if key in self._items or value.nbytes > self.budget:
            return
        self._items[key] = value
        self.nbytes += value.nbytes
        while self.nbytes > self.budget:
            self.nbytes -= self._items.popitem(last=False)[1].nbytes


def direct_decoder(arr: AsyncArray) -> Callable[[Any], np.ndarray] | None:
    """A plain function decoding one chunk's bytes of ``arr`` with numcodecs, or None.

    Covers the common layouts (v3 ``bytes`` + zstd/blosc/gzip, v2 with a compressor and
    no filters, C order), skipping zarr's per-chunk pipeline machinery; anything else
    (transposes, big-endian data, filters, checksums) is left to zarr's pipeline.
    """
    meta, dtype, shape = arr.metadata, np.dtype(arr.dtype), tuple(arr.chunks)
    if meta.zarr_format == 2:
        if meta.filters or meta.order != "C":
            return None
        codec = meta.compressor
    else:
        names = [type(c).__name__ for c in meta.codecs]
        if not names or names[0] != "BytesCodec" or len(names) > 2:
            return None
        if meta.codecs[0].endian is not None and meta.codecs[0].endian.value != sys.byteorder:
            return None
        codec = None
        if len(names) == 2:
            config = meta.codecs[1].to_dict().get("configuration", {})
            if names[1] == "ZstdCodec" and not config.get("checksum"):
                codec = numcodecs.Zstd()
            elif names[1] == "BloscCodec":
                codec = numcodecs.Blosc()
            elif names[1] == "GzipCodec":
                codec = numcodecs.GZip()
            else:
                return None

    def decode(raw: Any) -> np.ndarray:
        data = raw if codec is None else codec.decode(raw)
        return np.frombuffer(data, dtype=dtype).reshape(shape)

    return decode


def _decode_many(raws: list[Any], decode: Callable[[Any], np.ndarray]) -> list[np.ndarray]:
    return [decode(r) for r in raws]


def decode_pool() -> tuple[ThreadPoolExecutor, int]:
    """This process's decode threads (``threading.max_workers`` of zarr's config, or all
    cores), created on first use and never inherited across a fork."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        threads = zarr.config.get("threading.max_workers") or os.cpu_count() or 1
        _pool = (os.getpid(), ThreadPoolExecutor(threads, thread_name_prefix="zarr_torch_decode"), threads)
    return _pool[1], _pool[2]


_pool: tuple[int, ThreadPoolExecutor, int] | None = None


def whole_frame_chunks(arr: AsyncArray) -> bool:
    """True when ``arr`` is unsharded and each chunk holds whole items of the leading axis."""
    return (
        arr.ndim >= 1
        and getattr(arr, "shards", None) is None
        and tuple(arr.chunks[1:]) == tuple(arr.shape[1:])
        and arr.dtype.kind not in "OUSV"
    )


async def read_chunks(
    arr: AsyncArray, name: Hashable, chunk_ids: np.ndarray, cache: ChunkCache, stats: ReadStats
) -> dict[int, np.ndarray]:
    """The decoded chunks ``chunk_ids`` of ``arr`` (trimmed to the array's end), by id.

    ``name`` identifies the array in ``cache``. Chunks not cached are fetched and
    decoded together (see the module docstring); an absent chunk reads as the fill
    value, uncached (or raises under ``read_options(strict=True)``).
    """
    out: dict[int, np.ndarray] = {}
    wanted: list[int] = []
    for c in np.unique(chunk_ids).tolist():
        hit = cache.get((name, c))
        if hit is None:
            wanted.append(c)
        else:
            out[c] = hit
    stats.cache_hits += len(out)
    stats.cache_misses += len(wanted)
    if not wanted:
        return out
    meta, prototype = arr.metadata, default_buffer_prototype()
    coords = [(c,) + (0,) * (arr.ndim - 1) for c in wanted]
    keys = [f"{arr.store_path.path}/{meta.encode_chunk_key(cc)}".lstrip("/") for cc in coords]
    decode, root = direct_decoder(arr), _local_root(arr)
    started = time.perf_counter()
    if decode is not None and root is not None:  # read and decode in the same thread
        results = await _in_threads(_read_and_decode, [(root / k, k) for k in keys], decode, strict_reads())
        sizes = [n for n, _ in results]
        decoded = [a for _, a in results]
        stats.fetch_s += time.perf_counter() - started  # reading and decoding, not told apart
    else:
        raw = await asyncio.gather(
            *((arr.store_path / meta.encode_chunk_key(cc)).get(prototype) for cc in coords)
        )
        fetched = time.perf_counter()
        config = ArrayConfig.from_dict({"order": meta.order} if meta.zarr_format == 2 else {})
        decoded = await _decode(arr, decode, raw, coords, config, prototype)
        sizes = [0 if r is None else len(r) for r in raw]
        stats.fetch_s += fetched - started
        stats.decode_s += time.perf_counter() - fetched
    chunk_len = arr.chunks[0]
    for c, size, nd in zip(wanted, sizes, decoded, strict=True):
        rows = min(chunk_len, arr.shape[0] - c * chunk_len)
        stats.chunks_fetched += 1
        if nd is None:  # absent: the fill value, never cached (it may be written later)
            fill = 0 if meta.fill_value is None else meta.fill_value
            out[c] = np.full((rows, *arr.shape[1:]), fill, dtype=arr.dtype)
            continue
        value = out[c] = np.asarray(nd)[:rows]
        stats.bytes_fetched += size
        stats.bytes_decoded += value.nbytes
        cache.put((name, c), value)
    return out


async def _decode(
    arr: AsyncArray,
    decode: Callable[[Any], np.ndarray] | None,
    raw: list[Any],
    coords: list[tuple[int, ...]],
    config: ArrayConfig,
    prototype: Any,
) -> list[np.ndarray | None]:
    """Decode fetched chunks (None stays None): with ``decode`` split over the decode
    threads, else (None) through zarr's codec pipeline."""
    present = [i for i, r in enumerate(raw) if r is not None]
    out: list[np.ndarray | None] = [None] * len(raw)
    if decode is None:
        specs = [arr.metadata.get_chunk_spec(coords[i], config, prototype) for i in present]
        buffers = await arr.codec_pipeline.decode(
            [(raw[i], spec) for i, spec in zip(present, specs, strict=True)]
        )
        for i, nd in zip(present, buffers, strict=True):
            out[i] = None if nd is None else nd.as_ndarray_like()
        return out
    arrays = await _in_threads(_decode_many, [raw[i].as_numpy_array() for i in present], decode)
    for i, a in zip(present, arrays, strict=True):
        out[i] = a
    return out


async def _in_threads(fn: Callable[..., list[Any]], items: list[Any], *args: Any) -> list[Any]:
    """``fn(part, *args)`` over ``items`` split evenly across the decode threads, in order."""
    pool, threads = decode_pool()
    loop = asyncio.get_running_loop()
    parts = [list(range(k, len(items), threads)) for k in range(min(threads, len(items)))]
    results = await asyncio.gather(
        *(loop.run_in_executor(pool, fn, [items[i] for i in part], *args) for part in parts)
    )
    out: list[Any] = [None] * len(items)
    for part, values in zip(parts, results, strict=True):
        for i, v in zip(part, values, strict=True):
            out[i] = v
    return out


def _local_root(arr: AsyncArray) -> Path | None:
    """The folder of a local store (under zarr_torch's retrying wrapper), else None."""
    store = arr.store_path.store
    inner = getattr(store, "_store", store)
    return Path(inner.root) if isinstance(inner, LocalStore) else None


def _read_and_decode(
    files: list[tuple[Path, str]], decode: Callable[[Any], np.ndarray], strict: bool
) -> list[tuple[int, np.ndarray | None]]:
    out: list[tuple[int, np.ndarray | None]] = []
    for path, key in files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if strict:
                raise MissingChunkError(f"chunk {key!r} is missing") from None
            out.append((0, None))
            continue
        out.append((len(data), decode(data)))
    return out
