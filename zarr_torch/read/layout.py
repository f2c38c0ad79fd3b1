"""Layout: how an array's items map to stored chunks, decided once per array and process.

A chunk is the unit zarr decodes: a whole chunk of an unsharded array, or an inner
chunk of a sharded one, whose bytes sit at a range of its shard named by the shard's
index. ``Layout`` holds what every batch of the array needs to know: shapes, where the
store is (a local folder or zip is read in place, see :mod:`.files`), and how to decode.

    layout = layout_of(key, arr)
    layout.store_key((3, 0, 0, 0))   # 'data/camera0_rgb/c/3/0/0/0'
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from zarr.core.array import AsyncArray

from zarr_torch.process import process_state
from zarr_torch.read.decode import DirectDecoder, direct_decoder
from zarr_torch.read.files import FolderFiles, ZipMembers, local_files


@dataclass(frozen=True)
class Layout:
    """Where the chunks of one array are and how they decode."""

    key: Hashable
    meta: Any
    shape: tuple[int, ...]
    #: the native-order dtype frames are served in.
    dtype: np.dtype
    #: the shape of a decoded chunk (an inner chunk when sharded).
    chunk: tuple[int, ...]
    #: the shape of a shard, or None when unsharded.
    shard: tuple[int, ...] | None
    #: the v3 codec chain of one chunk (inner chain when sharded); None for v2.
    codecs: tuple | None
    decoder: DirectDecoder | None
    fill_value: Any
    store: Any
    #: the array's path inside its store ("" at the root).
    path: str
    #: how to read the store's keys in place (a folder's files, a zip's members); None when
    #: only the store can read them.
    files: FolderFiles | ZipMembers | None
    #: for sharded arrays: the sharding codec, its index size and place.
    sharding: Any = None
    index_size: int = 0
    index_at_start: bool = False
    #: how many leading axes address an item (see ``ArrayEntry.item_axes``).
    item_axes: int = 1

    @functools.cached_property
    def items(self) -> int:
        """How many items the array holds over its item axes."""
        return math.prod(self.shape[: self.item_axes])

    @functools.cached_property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one item: the axes after the item axes."""
        return self.shape[self.item_axes :]

    @functools.cached_property
    def rows(self) -> int:
        """How many items a chunk holds (its rows, see :meth:`as_rows`)."""
        return math.prod(self.chunk[: self.item_axes])

    @functools.cached_property
    def whole_items(self) -> bool:
        """Whether a chunk holds its items whole, rather than a part (a tile) of one."""
        return self.chunk[self.item_axes :] == self.item_shape

    @functools.cached_property
    def grid(self) -> tuple[int, ...]:
        """Chunks per axis."""
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunk, strict=True))

    def as_rows(self, chunk: np.ndarray) -> np.ndarray:
        """A decoded chunk as rows of items: its item axes flattened into one."""
        return chunk if self.item_axes == 1 else chunk.reshape(-1, *self.chunk[self.item_axes :])

    @functools.cached_property
    def name(self) -> Hashable:
        """What this array's cached chunks and shard indexes are kept under: the array and
        the metadata they were decoded with, so a store rewritten with another shape,
        chunking or dtype never gets chunks decoded for the old one."""
        return self.key, self.shape, self.chunk, self.shard, self.dtype.str, self.item_axes

    @functools.cached_property
    def chunk_bytes(self) -> int:
        """The bytes of a decoded chunk."""
        return math.prod(self.chunk) * self.dtype.itemsize

    @functools.cached_property
    def read_bound(self) -> int:
        """Bytes to ask for when reading a whole chunk: more than a compressed chunk holds."""
        return self.chunk_bytes + 2**16

    @property
    def chunks_per_shard(self) -> tuple[int, ...]:
        assert self.shard is not None
        return tuple(s // c for s, c in zip(self.shard, self.chunk, strict=True))

    def store_key(self, coords: tuple[int, ...]) -> str:
        """The store key of the chunk (or, when sharded, the shard) at grid ``coords``."""
        if self._key_join is not None:
            prefix, separator = self._key_join
            return prefix + separator.join(map(str, coords))
        name = self.meta.encode_chunk_key(coords)
        return f"{self.path}/{name}" if self.path else name

    def store_keys(self, rows: list[int], tails: list[tuple[int, ...]]) -> list[str]:
        """:meth:`store_key` of the chunk at grid ``(r, *tail)`` for every row ``r`` and
        every ``tail`` in turn: what a batch of frames of several chunks each reads."""
        if self._key_join is None:
            return [self.store_key((r, *tail)) for r in rows for tail in tails]
        prefix, separator = self._key_join
        ends = [separator.join(["", *map(str, tail)]) for tail in tails]
        return [f"{prefix}{r}{end}" for r in rows for end in ends]

    @functools.cached_property
    def _key_join(self) -> tuple[str, str] | None:
        """(prefix, separator) when this array's chunk keys are its path, a prefix, and the
        grid coordinates joined (zarr's "default" and "v2" encodings): keys made without
        asking zarr's encoder, checked against it once. None otherwise."""
        encoding = getattr(self.meta, "chunk_key_encoding", None)
        separator = getattr(encoding, "separator", None) or getattr(self.meta, "dimension_separator", None)
        name = getattr(encoding, "name", "v2")
        if self.meta.ndim == 0 or separator not in ("/", "."):
            return None
        prefix = (f"{self.path}/" if self.path else "") + (f"c{separator}" if name == "default" else "")
        probe = tuple(range(1, self.meta.ndim + 1))
        made = prefix + separator.join(map(str, probe))
        encoded = self.meta.encode_chunk_key(probe)
        return (prefix, separator) if made == (f"{self.path}/{encoded}" if self.path else encoded) else None

    def cached(self, span: int) -> bool:
        """Whether decoded chunks are worth keeping: a chunk serves several items
        (several frames per chunk, or windows that overlap)."""
        return self.rows > 1 or span > 1


def layout_of(key: Hashable, arr: AsyncArray, item_axes: int = 1) -> Layout:
    """The layout of the open array ``arr`` known to this process as ``key`` (made once),
    its items over the first ``item_axes`` axes."""
    layouts = process_state().layouts
    if key not in layouts:
        layouts[key] = _make(key, arr)
    return layouts[key] if item_axes == 1 else replace(layouts[key], item_axes=item_axes)


def _make(key: Hashable, arr: AsyncArray) -> Layout:
    meta = arr.metadata
    store = arr.store_path.store
    common = {
        "key": key,
        "meta": meta,
        "shape": tuple(arr.shape),
        "dtype": np.dtype(arr.dtype).newbyteorder("="),
        "fill_value": 0 if meta.fill_value is None else meta.fill_value,
        "store": store,
        "path": arr.store_path.path,
        "files": local_files(store),
    }
    chunk = tuple(arr.chunks)
    if meta.zarr_format == 2:
        return Layout(
            **common, chunk=chunk, shard=None, codecs=None, decoder=direct_decoder(meta, None, chunk)
        )
    # Shards whose bytes pass through more codecs cannot be read in ranges: whole chunks then.
    sharded = len(meta.codecs) == 1 and type(meta.codecs[0]).__name__ == "ShardingCodec"
    if not sharded:
        chunk = tuple(meta.chunk_grid.chunk_shape)
        codecs = tuple(meta.codecs)
        return Layout(
            **common, chunk=chunk, shard=None, codecs=codecs, decoder=direct_decoder(meta, codecs, chunk)
        )
    sharding = meta.codecs[0]
    shard = tuple(meta.chunk_grid.chunk_shape)
    chunk = tuple(sharding.chunk_shape)
    codecs = tuple(sharding.codecs)
    per_shard = tuple(s // c for s, c in zip(shard, chunk, strict=True))
    return Layout(
        **common,
        chunk=chunk,
        shard=shard,
        codecs=codecs,
        decoder=direct_decoder(meta, codecs, chunk),
        sharding=sharding,
        index_size=sharding._shard_index_size(per_shard),
        index_at_start=getattr(sharding.index_location, "value", sharding.index_location) == "start",
    )
