"""SelectionIndex: the ordered selections a dataset serves, held as columns.

Three tables, never one Python object per row: ``stores`` (uri, storage options),
``arrays`` (store id, path, shape, chunks, dtype, media) and ``rows``, a numpy
structured array of 16 bytes a row (array id, start on the leading axis, window length,
0 for a single item). ``index[i]`` materializes the ``ZarrSelection`` behind row ``i``.

    index = SelectionIndex.build("s3://bucket/episodes/", array="data/camera0_rgb", media="image")
    index[0].read()  # the first frame, (H, W, C)
    index.save("frames.zti")  # later, in an instant: SelectionIndex.load("frames.zti")

Saved indexes are one file (see :mod:`zarr_torch.indexfile`) holding store roots, the
arrays table, a fingerprint of each store's metadata and the raw rows, never storage
options: those are given again to :meth:`SelectionIndex.load`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import zarr.api.asynchronous as zasync
from tqdm.auto import tqdm
from zarr.abc.store import Store
from zarr.core.array import AsyncArray
from zarr.errors import NodeNotFoundError

from zarr_torch import indexfile, process, redact, windows
from zarr_torch.models import Media, ZarrArray, ZarrSelection, ZarrStore, read_zarr
from zarr_torch.storage import MissingChunkError
from zarr_torch.stores import (
    ArraySpec,
    make_store,
    metadata_document,
    missing_chunks,
    open_array,
    open_arrays,
    options_key,
)
from zarr_torch.tables import ROW_DTYPE, TABLE_DTYPE, ArrayEntry, ArrayTable, Meta, TableBuilder, check_rows

logger = logging.getLogger("zarr_torch")

#: the most rows an index holds (64 GiB of rows): more is corrupt metadata, not data.
MAX_ROWS = 1 << 32
#: builds over at least this many stores show a progress bar.
PROGRESS_MIN_STORES = 32

Source = str | os.PathLike | ZarrStore | Store | Sequence[str | os.PathLike | ZarrStore | Store]


class SelectionIndex:
    """The ordered list of selections a dataset serves, stored as columns.

    Build it with :meth:`build` or :meth:`from_selections`, or :meth:`load` a saved one;
    ``len``, ``index[i]``, slicing, numpy int/bool indexing and iteration work as on a
    list of ``ZarrSelection``.
    """

    def __init__(self, stores: Sequence[ZarrStore], arrays: Iterable[ArrayEntry], rows: np.ndarray):
        """An index of these tables (``arrays`` an :class:`ArrayTable` or entries);
        ``ValueError`` naming the first row that points outside them (an array id past the
        table, a frame outside its array or episode, a length that is not its array's kind
        of row)."""
        self.stores = list(stores)
        self.arrays = ArrayTable.from_entries(arrays)
        self.rows = np.asarray(rows, dtype=ROW_DTYPE)
        check_rows(self.arrays, self.rows)
        #: set when the rows are memory-mapped from a saved file (see ``__getstate__``).
        self._mapped: indexfile.MappedRows | None = None
        #: set when the arrays table is the saved file's, memory-mapped.
        self._mapped_arrays: indexfile.MappedRows | None = None

    # -- building -----------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        source: Source,
        *,
        array: str = "",
        media: Media | None = None,
        storage_options: dict[str, Any] | None = None,
        progress: bool | None = None,
        check_chunks: bool = False,
        window: int | None = None,
        stride: int = 1,
        episode_ends: str | None = None,
        pad_before: int = 0,
        pad_after: int = 0,
        item_axes: int = 1,
    ) -> SelectionIndex:
        """One row per item on the leading axis of ``array`` in every store of ``source``;
        with ``item_axes=k``, one per index over the first ``k`` axes (every (t, c, z)
        plane of a (t, c, z, y, x) image with ``k=3``), in C order.

        With ``window=T`` a row is instead ``T`` consecutive frames, every ``stride``
        frames, never crossing an episode: stores always end one, and ``episode_ends``
        (e.g. ``"meta/episode_ends"``) names each store's array of cumulative episode
        ends. ``pad_before``/``pad_after`` let windows start before an episode's first
        frame or end after its last (the edge frame repeats), so an episode of ``L``
        frames gives ``L - T + 1 + pad_before + pad_after`` windows at stride 1. Padding
        is clamped to ``T - 1`` frames a side (as Diffusion Policy does); every argument
        is an integer (``window=2.5`` is a ``ValueError``).

        ``source`` is a prefix (searched with :func:`read_zarr`), a store URI, or a list of
        URIs or ``ZarrStore``. Metadata is read concurrently; a missing store or array
        raises at once, naming it. ``check_chunks`` lists every array once and raises
        ``MissingChunkError`` naming each chunk its shape implies but its store lacks.
        """
        stores = resolve_stores(source, storage_options)
        entries = _read_entries(stores, array, media, progress)
        if item_axes != 1:
            entries = _with_item_axes(stores, entries, item_axes, window)
        if check_chunks:
            _check_chunks(stores, array)
        if window is not None:
            ends = _episode_ends(stores, episode_ends) if episode_ends else [[e.shape[0]] for e in entries]
            return cls(stores, *_window_rows(stores, entries, ends, window, stride, pad_before, pad_after))
        if (stride, episode_ends, pad_before, pad_after) != (1, None, 0, 0):
            raise ValueError("stride, episode_ends and padding need a window")
        lengths = np.array([e.items for e in entries], dtype=np.int64)
        _check_row_count(stores, entries, int(lengths.sum()))
        rows = np.empty(int(lengths.sum()), dtype=ROW_DTYPE)
        rows["array"] = np.repeat(np.arange(len(entries), dtype=np.uint32), lengths)
        offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows["start"] = np.arange(len(rows), dtype=np.int64) - offsets
        rows["length"] = 0
        return cls(stores, entries, rows)

    @classmethod
    def from_selections(cls, selections: Iterable[ZarrSelection]) -> SelectionIndex:
        """An index of ``ZarrSelection`` records, in their order: ``[t]`` on the leading axis,
        or ``[t, c, z]`` on several (each array's selections all over as many axes).

        A negative index counts from the end of its array; one out of range is a
        ``ValueError`` naming the selection, its store and its array.
        """
        stores, arrays = _Stores(), TableBuilder()
        known: dict[tuple[int, str, Media | None], tuple[int, int]] = {}  # array id, item axes
        ids: list[int] = []
        starts: list[int] = []
        for n, sel in enumerate(selections):
            store_id = stores.store_id(sel.array.store)
            key = (store_id, sel.array.path, sel.media)
            if key not in known:
                entry = replace(_entry(store_id, sel.array, sel.media), item_axes=len(sel.index))
                known[key] = arrays.add(store_id, arrays.meta_id(entry)), len(sel.index)
            array_id, axes = known[key]
            if len(sel.index) != axes or not sel.index:
                where = f"array {sel.array.path!r} in store {redact.redact_uri(sel.array.store.uri)!r}"
                over = f"index {sel.index} is not over its {axes} item axes"
                raise ValueError(f"selection {n} of {where}: {over}")
            try:
                position = sel.array.item_position(sel.index)  # IndexError naming store and array
            except IndexError as exc:
                raise ValueError(f"selection {n}: {exc}") from None
            shape = sel.array.shape[:axes]
            start = position[0] if axes == 1 else int(np.ravel_multi_index(position, shape))
            ids.append(array_id)
            starts.append(start)
        rows = np.zeros(len(ids), dtype=ROW_DTYPE)
        rows["array"] = ids
        rows["start"] = starts
        return cls(stores.stores, arrays.table(), rows)

    @classmethod
    def from_datachain(
        cls, chain: Any, column: str, *, array: str = "", storage_options: dict[str, Any] | None = None
    ) -> SelectionIndex:
        """An index of a datachain column of Zarr selections, arrays or stores, in order.

        index = SelectionIndex.from_datachain(chain, "frame", storage_options={"anon": True})
        """
        from zarr_torch.interop import index_from_datachain

        return index_from_datachain(chain, column, array=array, storage_options=storage_options)

    def to_records(self) -> Iterator[dict[str, Any]]:
        """Every row as a ``ZarrSelection`` record (datachain's shape, no credentials), in order.

        dc_selection = datachain.lib.zarr.ZarrSelection.model_validate(next(index.to_records()))
        """
        from zarr_torch.interop import to_records

        return to_records(self)

    def to_datachain(self, column: str = "frame", **read_values: Any) -> Any:
        """A datachain chain of one ``ZarrSelection`` per row, in order (needs datachain).

        chain = index[::10].to_datachain("frame", in_memory=True)
        """
        from zarr_torch.interop import to_datachain

        return to_datachain(self, column, **read_values)

    @classmethod
    def concat(cls, indexes: Iterable[SelectionIndex]) -> SelectionIndex:
        """The rows of every index in turn, over merged store and array tables.

        Stores (same URI and options) and arrays (same store, path, metadata and media)
        shared by several indexes appear once; stores and arrays no row uses are dropped.

            both = SelectionIndex.concat([SelectionIndex.load("a.zti"), SelectionIndex.load("b.zti")])
        """
        stores, metas = _Stores(), TableBuilder()
        tables, parts = [np.empty((0, 4), dtype=np.int64)], [np.empty(0, dtype=ROW_DTYPE)]
        for index in indexes:
            used = np.flatnonzero(np.bincount(index.rows["array"], minlength=len(index.arrays)))
            t = index.arrays.table[used]
            store_ids = np.zeros(len(index.stores), dtype=np.int64)  # in the order rows use them
            for st in dict.fromkeys(t["store"].tolist()):
                store_ids[st] = stores.store_id(index.stores[st])
            meta_ids = np.zeros(len(index.arrays.metas), dtype=np.int64)
            for m in dict.fromkeys(t["meta"].tolist()):
                meta_ids[m] = metas.meta_id(index.arrays.metas[m])
            columns = [store_ids[t["store"]], meta_ids[t["meta"]], t["first"], t["end"]]
            tables.append(np.stack(columns, axis=1).reshape(-1, 4))
            remap = np.zeros(len(index.arrays), dtype=np.int64)
            remap[used] = sum(len(x) for x in tables[:-1]) + np.arange(len(used))
            rows = np.array(index.rows)
            rows["array"] = remap[rows["array"]]
            parts.append(rows)
        # the same array (store, metadata, episode) from several indexes once, in first-seen order
        every = np.concatenate(tables)
        merged, first, inverse = np.unique(every, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        table = np.empty(len(order), dtype=TABLE_DTYPE)
        for k, name in enumerate(TABLE_DTYPE.names):
            table[name] = merged[order, k]
        rows = np.concatenate(parts)
        rows["array"] = rank[inverse.reshape(-1)][rows["array"]]
        return cls(stores.stores, ArrayTable(metas.metas, table), rows)

    def filter(
        self, stores: str | Iterable[str] | None = None, arrays: str | Iterable[str] | None = None
    ) -> SelectionIndex:
        """The rows in stores with these URIs and arrays at these paths (None: any), in order.

        Unused stores and arrays are dropped; a URI or path the index does not hold is a
        ``ValueError``.

            val = index.filter(stores=["s3://bucket/ep_0007.zarr"], arrays="data/camera0_rgb")
        """
        keep = np.ones(len(self.arrays), dtype=bool)
        store_uris = np.array([s.uri.rstrip("/") for s in self.stores] or [""], dtype=object)
        for wanted, values, what in [
            (stores, store_uris[self.arrays.table["store"]], "store"),
            (arrays, self.arrays.per_array(lambda m: m.path).astype(object), "array"),
        ]:
            if wanted is None:
                continue
            names = {str(w).rstrip("/") for w in ([wanted] if isinstance(wanted, str) else wanted)}
            unknown = sorted(names - set(values))
            if unknown:
                shown = ", ".join(repr(redact.redact_uri(u)) for u in unknown[:5])
                raise ValueError(f"no {what} {shown} in this index")
            keep &= np.isin(values, list(names))
        return SelectionIndex.concat([self[keep[self.rows["array"]]]])

    def with_storage_options(self, storage_options: dict[str, Any]) -> SelectionIndex:
        """The same index reaching every store with ``storage_options``."""
        stores = [replace_options(s, storage_options) for s in self.stores]
        return self._derive(self.rows, self._mapped, stores)

    # -- access -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | slice | np.ndarray | Sequence[int]) -> Any:
        """``index[i]`` is a ``ZarrSelection``; a slice, int or bool array gives a smaller index."""
        if isinstance(key, int | np.integer):
            return self.selection(int(key))
        mapped = self._mapped[key] if self._mapped is not None and isinstance(key, slice) else None
        return self._derive(self.rows[key], mapped)

    def __iter__(self) -> Iterator[ZarrSelection]:
        return (self.selection(i) for i in range(len(self)))

    def __repr__(self) -> str:
        return f"SelectionIndex(stores={len(self.stores)}, arrays={len(self.arrays)}, rows={len(self.rows)})"

    def selection(self, i: int) -> ZarrSelection:
        """The ``ZarrSelection`` behind row ``i`` (negative counts from the end).

        For a window row it is the window's first frame inside its episode; the
        window's length is ``rows["length"][i]``.
        """
        n = len(self.rows)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {n} selections")
        array_id, start = int(self.rows["array"][i]), int(self.rows["start"][i])
        return self.zarr_array(array_id).select(
            self.item_index(array_id, start), media=self.arrays[array_id].media
        )

    def item_index(self, array_id: int, start: int) -> list[int]:
        """The selection index (``[t]``, or ``[t, c, z]`` over several item axes) of a row
        of array ``array_id`` starting at ``start``; a window's first frame in its episode."""
        entry = self.arrays[array_id]
        first, end = entry.bounds()
        return entry.position(min(max(start, first), end - 1))

    def bounds(self) -> np.ndarray:
        """Per array id: (first, end) of the items its rows may show, and its item count."""
        if getattr(self, "_bounds", None) is None:
            self._bounds = self.arrays.bounds()
        return self._bounds

    def with_path(self, path: str) -> SelectionIndex:
        """The same rows, reading array ``path`` of each store instead (read concurrently).

        For samples of several arrays aligned on the leading axis; an array of another
        length than the indexed one is a ``ValueError`` naming both.

            actions = frames_index.with_path("data/action")
        """
        pairs, inverse = self.arrays.sources()
        specs = [ArraySpec(self.stores[st].uri, path, self.stores[st].storage_options) for st, _ in pairs]
        metas = TableBuilder()
        meta_ids = []
        for (st, m), arr in zip(pairs.tolist(), open_arrays(specs, refresh=True), strict=True):
            entry = self.arrays.metas[m]
            k = entry.item_axes
            theirs, ours = tuple(arr.shape[:k]), entry.shape[:k]
            if theirs != ours:
                axes = "axis" if k == 1 else f"{k} axes"
                raise ValueError(
                    f"store {redact.redact_uri(self.stores[st].uri)!r}: {path!r} has {math.prod(theirs)} "
                    f"items on its leading {axes} {list(theirs)} but {entry.path!r} has {math.prod(ours)} "
                    f"{list(ours)}"
                )
            opened = _opened(0, self.stores[st], path, arr, None)
            meta_ids.append(metas.meta_id(replace(opened, item_axes=k)))
        table = self.arrays.table.copy()
        table["meta"] = np.array(meta_ids or [0], dtype=np.int64)[inverse]
        return self._derive(self.rows, self._mapped, arrays=ArrayTable(metas.metas, table))

    def zarr_array(self, array_id: int) -> ZarrArray:
        """The ``ZarrArray`` model of array ``array_id``."""
        e = self.arrays[array_id]
        return ZarrArray(
            store=self.stores[e.store],
            path=e.path,
            shape=list(e.shape),
            chunks=list(e.chunks),
            dtype=e.dtype,
            attrs=e.attrs,
        )

    def read_specs(self, documents: bool = True) -> tuple[list[ArraySpec], np.ndarray]:
        """What the read engine opens: one :class:`ArraySpec` per distinct array (store and
        metadata: a store's episodes share one), and each array id's spec number. With
        ``documents``, each spec carries its array's metadata from the index, so a process
        opens it with no request (trusting the index, as :meth:`verify` checks); without,
        each process reads the metadata from the store once (the documents of the format
        the index names).

            specs, spec_of = index.read_specs()
            frames = run(read_items(specs, spec_of[index.rows["array"][:8]], index.rows["start"][:8]))
        """
        cached = getattr(self, "_read_specs", None)
        if cached is None:  # both forms made once: the dataset asks for one every batch
            pairs, inverse = self.arrays.sources()
            specs = []
            for st, m in pairs.tolist():
                store, meta = self.stores[st], self.arrays.metas[m]
                options = store.storage_options
                found = meta.document or {}
                specs.append(
                    ArraySpec(
                        store.uri, meta.path, options, meta.item_axes, meta.document, found.get("zarr_format")
                    )
                )
            bare = [s._replace(document=None) for s in specs]
            cached = self._read_specs = {True: (specs, inverse), False: (bare, inverse)}
        return cached[documents]

    # -- checking -----------------------------------------------------------------------

    def validate(self) -> None:
        """Open every array concurrently; raise naming the first one missing or whose shape,
        chunks or dtype changed."""
        pairs, _ = self.arrays.sources()
        specs = [ArraySpec(*s[:3]) for s in self.read_specs()[0]]
        for (_, m), spec, arr in zip(pairs.tolist(), specs, open_arrays(specs, refresh=True), strict=True):
            entry = self.arrays.metas[m]
            now = {"shape": tuple(arr.shape), "chunks": tuple(arr.chunks), "dtype": str(arr.dtype)}
            for what, value in now.items():
                if value != getattr(entry, what):
                    raise ValueError(
                        f"array {spec.path!r} in store {redact.redact_uri(spec.uri)!r} has {what} "
                        f"{value}, but the index expects {getattr(entry, what)}"
                    )

    def fingerprints(self) -> list[str]:
        """A digest of the path, shape, chunks and dtype of each store's indexed arrays
        (computed once per distinct set: a thousand stores written alike share one)."""
        keys = [frozenset(metas) for metas in self._metas_by_store()]
        digests: dict[frozenset[Meta], str] = {}
        for key in keys:
            if key not in digests:
                digests[key] = _fingerprint(key)
        return [digests[key] for key in keys]

    def verify(self) -> list[str]:
        """The URIs of stores whose indexed arrays changed since the build; [] if none did.

        Shape, chunks and dtype are read afresh from every store, concurrently, through
        new store handles (never this process's cached ones). A store or array that is
        gone, or is now a group, counts as changed.

            changed = SelectionIndex.load("frames.zti", storage_options=opts).verify()
        """
        paths = [sorted({m[0] for m in metas}) for metas in self._metas_by_store()]
        fresh = process.run(
            process.gather_bounded(_fresh_metas(s, p) for s, p in zip(self.stores, paths, strict=True))
        )
        return [
            store.uri
            for store, expected, metas in zip(self.stores, self.fingerprints(), fresh, strict=True)
            if metas is None or _fingerprint(metas) != expected
        ]

    def _metas_by_store(self) -> list[list[Meta]]:
        metas: list[list[Meta]] = [[] for _ in self.stores]
        for st, m in self.arrays.sources()[0].tolist():
            metas[st].append(self.arrays.metas[m].meta())
        return metas

    # -- persistence --------------------------------------------------------------------

    def save(self, path: indexfile.PathLike) -> int:
        """Write the index to one file at ``path`` (replaced atomically); return its size in bytes.

        The file holds store roots (source and path) and fingerprints, the arrays table and
        the raw rows; never storage options. A URI with credentials in it
        (``s3://key:secret@...``) is refused.

            index.save("frames.zti")
        """
        index = self if self._compact() else SelectionIndex.concat([self])
        refuse_credentials(index.stores)
        header = {
            "stores": [
                {"file": s.file.model_dump(), "fingerprint": fp}
                for s, fp in zip(index.stores, index.fingerprints(), strict=True)
            ],
            "metas": [asdict(m) for m in index.arrays.metas],
        }
        return indexfile.write(path, header, index.rows, index.arrays.table)

    @classmethod
    def load(cls, path: indexfile.PathLike, storage_options: dict[str, Any] | None = None) -> SelectionIndex:
        """The index saved at ``path``, its rows and arrays table memory-mapped: constant
        time and memory whatever the number of rows and episodes.

        ``storage_options`` (credentials, endpoint) reach every store; none are saved.
        Raises ``ValueError`` naming the file when it is not an index, was written by
        another format version, is truncated or its header is corrupt.

        A loaded index (or a slice of it) pickles to the file's path and its row range,
        not its rows: a ``spawn`` DataLoader worker maps the same file again, sharing its
        pages. Replacing the file before the workers start is then a ``ValueError``.

            index = SelectionIndex.load("frames.zti", storage_options={"anon": True})
        """
        header, rows, mapped, table = indexfile.read(path, ROW_DTYPE, TABLE_DTYPE)
        options = dict(storage_options or {})
        try:
            stores = [ZarrStore(file=s["file"], storage_options=options) for s in header["stores"]]
            refuse_credentials(stores)
            index = cls(stores, _arrays_of(header, table), rows)
            intact = index.fingerprints() == [s["fingerprint"] for s in header["stores"]]
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(f"{mapped.path}: corrupt index ({exc})") from exc
        if not intact:
            raise ValueError(f"{mapped.path}: corrupt index header (arrays do not match fingerprints)")
        index._mapped, index._mapped_arrays = mapped, table
        return index

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_bounds", "_read_specs")}
        if self._mapped is not None:
            state["rows"] = None  # mapped again from the file on unpickling
        if self._mapped_arrays is not None:
            state["arrays"] = None  # so is the arrays table, with its metadata
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._mapped is not None:
            self.rows = self._mapped.map()
        if self._mapped_arrays is not None:
            header, _, _, _ = indexfile.read(self._mapped_arrays.path, ROW_DTYPE, TABLE_DTYPE)
            self.arrays = _arrays_of(header, self._mapped_arrays)

    def _derive(
        self,
        rows: np.ndarray,
        mapped: indexfile.MappedRows | None,
        stores: list[ZarrStore] | None = None,
        arrays: ArrayTable | None = None,
    ) -> SelectionIndex:
        index = SelectionIndex(
            self.stores if stores is None else stores, self.arrays if arrays is None else arrays, rows
        )
        index._mapped = mapped
        index._mapped_arrays = self._mapped_arrays if arrays is None else None
        return index

    def _compact(self) -> bool:
        """True when every store and array is used by some row."""
        used = np.bincount(self.rows["array"], minlength=len(self.arrays)) > 0
        stores = np.unique(self.arrays.table["store"])
        return bool(used.all()) and len(stores) == len(self.stores)


def _arrays_of(header: dict[str, Any], table: indexfile.MappedRows) -> ArrayTable:
    """The arrays table of a saved index: its metadata from the header, its columns mapped."""
    metas = [
        ArrayEntry(**{**m, "shape": tuple(m["shape"]), "chunks": tuple(m["chunks"]), "episode": None})
        for m in header["metas"]
    ]
    return ArrayTable(metas, table.map())


class _Stores:
    """Stores being gathered: each store (same URI and options) once."""

    def __init__(self) -> None:
        self.stores: list[ZarrStore] = []
        self._ids: dict[tuple[str, str], int] = {}

    def store_id(self, store: ZarrStore) -> int:
        """The id of ``store``, added if new."""
        key = (store.uri, options_key(store.storage_options))
        if key not in self._ids:
            self._ids[key] = len(self.stores)
            self.stores.append(store)
        return self._ids[key]


def _check_row_count(stores: list[ZarrStore], entries: list[ArrayEntry], rows: int) -> None:
    """``ValueError`` naming the largest array when an index would hold over ``MAX_ROWS`` rows."""
    if rows > MAX_ROWS:
        big = max(entries, key=lambda e: e.items)
        raise ValueError(
            f"an index of {rows} rows is over the limit of {MAX_ROWS}: array {big.path!r} in store "
            f"{redact.redact_uri(stores[big.store].uri)!r} alone has {big.items} items"
        )


def refuse_credentials(stores: Iterable[ZarrStore]) -> None:
    """``ValueError`` for a store URI with credentials in it, which an index never holds."""
    for store in stores:
        if redact.redact_uri(store.uri) != store.uri:
            raise ValueError(
                f"store {redact.redact_uri(store.uri)!r} has credentials in its URI, which an index "
                "never holds: give them as storage_options instead"
            )


def _fingerprint(metas: Iterable[Meta]) -> str:
    text = json.dumps(sorted(set(metas)), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def _fresh_metas(store: ZarrStore, paths: list[str]) -> list[Meta] | None:
    """The metadata of ``paths`` read through a new handle on ``store``; None if any is gone
    or can no longer be read (invalid JSON, an unknown dtype)."""
    target = make_store(store.uri, store.storage_options)
    try:
        nodes = await asyncio.gather(*(zasync.open(store=target, path=p, mode="r") for p in paths))
    except (FileNotFoundError, NodeNotFoundError, ValueError, TypeError, KeyError):
        return None
    if not all(isinstance(n, AsyncArray) for n in nodes):
        return None
    return [
        _entry(0, ZarrArray.from_handle(store, p, n), None).meta() for p, n in zip(paths, nodes, strict=True)
    ]


def resolve_stores(source: Source, storage_options: dict[str, Any] | None = None) -> list[ZarrStore]:
    """The stores named by ``source``: a prefix, glob or store URI (a ``str`` or path), a
    zarr ``Store`` object, or a list of URIs, paths, ``ZarrStore`` or ``Store``;
    ``TypeError`` for anything else."""
    if isinstance(source, ZarrStore | Store):
        source = [source]
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        stores = read_zarr(source, storage_options)
        if not stores:
            raise ValueError(f"no Zarr stores under {redact.redact_uri(source)!r}")
        return stores
    if isinstance(source, bytes) or not isinstance(source, Sequence):
        raise TypeError(
            f"a source is a URI, a path, a ZarrStore, a zarr Store or a list of them, not "
            f"{type(source).__name__}"
        )
    stores = []
    for s in source:
        if isinstance(s, str | os.PathLike):
            stores.append(ZarrStore(uri=os.fspath(s)))
        elif isinstance(s, Store):
            stores.append(ZarrStore.from_store(s))
        elif isinstance(s, ZarrStore):
            stores.append(s)
        else:
            raise TypeError(
                f"a list of stores holds URIs, paths, ZarrStores or zarr Stores, not {type(s).__name__} "
                f"({s!r:.80})"
            )
    if storage_options is not None:
        stores = [replace_options(s, storage_options) for s in stores]
    if not stores:
        raise ValueError("no stores given")
    return stores


def replace_options(store: ZarrStore, storage_options: dict[str, Any]) -> ZarrStore:
    """``store`` reached with ``storage_options``."""
    return store.model_copy(update={"storage_options": dict(storage_options)})


def _entry(store_id: int, arr: ZarrArray, media: Media | None) -> ArrayEntry:
    """The entry of an array model (its metadata as the model has it)."""
    return ArrayEntry(
        store=store_id,
        path=arr.path,
        shape=tuple(arr.shape),
        chunks=tuple(arr.chunks or arr.shape),
        dtype=arr.dtype,
        media=media,
        attrs=dict(arr.attrs),
    )


def _opened(store_id: int, store: ZarrStore, path: str, arr: AsyncArray, media: Media | None) -> ArrayEntry:
    """The entry of an open array, with its metadata document (workers open it from that)."""
    entry = _entry(store_id, ZarrArray.from_handle(store, path, arr), media)
    return replace(entry, document=metadata_document(arr))


def _with_item_axes(
    stores: list[ZarrStore], entries: list[ArrayEntry], item_axes: int, window: int | None
) -> list[ArrayEntry]:
    """``entries`` addressed over their first ``item_axes`` axes; ``ValueError`` for a count
    that is not an integer from 1 to an array's number of axes, or with windows."""
    if isinstance(item_axes, bool) or not isinstance(item_axes, int | np.integer) or item_axes < 1:
        raise ValueError(f"item_axes must be an integer of at least 1, not {item_axes!r}")
    if window is not None:
        raise ValueError("windows run along the leading axis: item_axes must be 1 with window=")
    for e in entries:
        if item_axes > len(e.shape):
            raise ValueError(
                f"item_axes={item_axes}, but array {e.path!r} in store "
                f"{redact.redact_uri(stores[e.store].uri)!r} has {len(e.shape)} axes"
            )
    return [replace(e, item_axes=int(item_axes)) for e in entries]


def _episode_ends(stores: list[ZarrStore], path: str) -> list[np.ndarray]:
    """Every store's cumulative episode ends, read concurrently."""

    async def read(store: ZarrStore) -> np.ndarray:
        arr = await open_array(store.uri, path, store.storage_options, refresh=True)
        return np.asarray(await arr.getitem(...))

    return process.run(process.gather_bounded(map(read, stores)))


def _window_rows(
    stores: list[ZarrStore],
    entries: list[ArrayEntry],
    ends: list[np.ndarray],
    window: int,
    stride: int,
    pad_before: int,
    pad_after: int,
) -> tuple[ArrayTable, np.ndarray]:
    """One array per episode that has windows (its store's metadata, kept once), and one
    row per window."""
    windows.check_window(window, stride, pad_before, pad_after)
    pad_before, pad_after = windows.clamp_padding(window, pad_before, pad_after)
    spans = []
    for store, entry, store_ends in zip(stores, entries, ends, strict=True):
        try:
            spans.append(windows.episodes(store_ends, entry.shape[0]))
        except ValueError as exc:
            raise ValueError(f"store {redact.redact_uri(store.uri)!r}: {exc}") from None
    longest = max(end - first for store_spans in spans for first, end in store_spans)
    if window > longest:
        raise windows.WindowTooLongError(window, longest)
    arrays = TableBuilder()
    starts: list[np.ndarray] = []
    short = 0
    for entry, store_spans in zip(entries, spans, strict=True):
        meta = arrays.meta_id(entry)
        for first, end in store_spans:
            s = windows.window_starts(first, end, window, stride, pad_before, pad_after)
            if len(s) == 0:
                short += 1
                continue
            arrays.add(entry.store, meta, (first, end))
            starts.append(s)
    if short:
        logger.warning("%d episode(s) shorter than the %d-frame window give no samples", short, window)
    counts = np.array([len(s) for s in starts], dtype=np.int64)
    _check_row_count(stores, entries, int(counts.sum()))
    rows = np.empty(int(counts.sum()), dtype=ROW_DTYPE)
    rows["array"] = np.repeat(np.arange(len(starts), dtype=np.uint32), counts)
    rows["start"] = np.concatenate(starts)
    rows["length"] = window
    return arrays.table(), rows


def _check_chunks(stores: list[ZarrStore], path: str) -> None:
    async def missing(store: ZarrStore) -> list[str]:
        arr = await open_array(store.uri, path, store.storage_options)
        return [f"{redact.redact_uri(store.uri)}/{key}" for key in await missing_chunks(arr)]

    found = [key for keys in process.run(process.gather_bounded(map(missing, stores))) for key in keys]
    if found:
        shown = "\n  ".join(found[:20]) + ("\n  ..." if len(found) > 20 else "")
        raise MissingChunkError(f"{len(found)} chunk(s) of {path!r} missing:\n  {shown}")


def _read_entries(
    stores: list[ZarrStore], path: str, media: Media | None, progress: bool | None
) -> list[ArrayEntry]:
    """Open ``path`` in every store concurrently, with a progress bar for large builds.

    The first store tells the Zarr format; the others are opened as that format first,
    which reads one metadata document per store instead of probing for v2 and v3 (a
    store of the other format is then opened again, probing).
    """
    show = len(stores) >= PROGRESS_MIN_STORES if progress is None else progress

    async def read_all() -> list[ArrayEntry]:
        # Made only when shown: even a disabled tqdm starts its monitor thread, which a
        # DataLoader worker forked later would inherit mid-lock.
        bar = tqdm(total=len(stores), desc="reading metadata", unit="store") if show else None

        async def one(i: int, store: ZarrStore, zarr_format: int | None) -> AsyncArray:
            try:
                arr = await open_array(
                    store.uri, path, store.storage_options, refresh=True, zarr_format=zarr_format
                )
            except FileNotFoundError:
                if zarr_format is None:
                    raise
                arr = await open_array(store.uri, path, store.storage_options, refresh=True)
            if bar is not None:
                bar.update()
            if arr.ndim == 0:
                raise ValueError(f"array {path!r} in store {redact.redact_uri(store.uri)!r} is 0-d")
            return arr

        try:
            first = await one(0, stores[0], None)
            zarr_format = first.metadata.zarr_format
            rest = await process.gather_bounded(one(i, s, zarr_format) for i, s in enumerate(stores[1:], 1))
        finally:
            if bar is not None:
                bar.close()
        opened = zip(stores, [first, *rest], strict=True)
        return [_opened(i, store, path, arr, media) for i, (store, arr) in enumerate(opened)]

    return process.run(read_all())


__all__ = ["ROW_DTYPE", "ArrayEntry", "ArrayTable", "SelectionIndex", "resolve_stores"]
