"""SelectionIndex: the ordered selections a dataset serves, held as columns.

Three tables, never one Python object per row: ``stores`` (uri, storage options),
``arrays`` (store id, path, shape, chunks, dtype, media) and ``rows``, a numpy
structured array of 16 bytes a row (array id, start on the leading axis, window length,
0 for a single item). ``index[i]`` materializes the ``ZarrSelection`` behind row ``i``.

    index = SelectionIndex.build("s3://bucket/episodes/", array="data/camera0_rgb", media="image")
    index[0].read()  # the first frame, (H, W, C)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from zarr_torch import io
from zarr_torch.models import Media, ZarrArray, ZarrSelection, ZarrStore, read_zarr
from zarr_torch.storage import MissingChunkError

#: one row: which array, where on its leading axis, how many frames (0: one item).
ROW_DTYPE = np.dtype([("array", "<u4"), ("start", "<i8"), ("length", "<u4")])
#: builds over at least this many stores show a progress bar.
PROGRESS_MIN_STORES = 32

Source = str | ZarrStore | Sequence[str | ZarrStore]


@dataclass(frozen=True)
class ArrayEntry:
    """One row of the arrays table."""

    store: int
    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    media: Media | None = None
    attrs: dict = field(default_factory=dict, compare=False)


class SelectionIndex:
    """The ordered list of selections a dataset serves, stored as columns.

    Build it with :meth:`build` or :meth:`from_selections`; ``len``, ``index[i]``,
    slicing and iteration work as on a list of ``ZarrSelection``.
    """

    def __init__(self, stores: Sequence[ZarrStore], arrays: Sequence[ArrayEntry], rows: np.ndarray):
        self.stores = list(stores)
        self.arrays = list(arrays)
        self.rows = np.asarray(rows, dtype=ROW_DTYPE)

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
    ) -> SelectionIndex:
        """One row per item on the leading axis of ``array`` in every store of ``source``.

        ``source`` is a prefix (searched with :func:`read_zarr`), a store URI, or a list of
        URIs or ``ZarrStore``. Metadata is read concurrently; a missing store or array
        raises at once, naming it. ``check_chunks`` lists every array once and raises
        ``MissingChunkError`` naming each chunk its shape implies but its store lacks.
        """
        stores = resolve_stores(source, storage_options)
        entries = _read_entries(stores, array, media, progress)
        if check_chunks:
            _check_chunks(stores, array)
        lengths = np.array([e.shape[0] for e in entries], dtype=np.int64)
        rows = np.empty(int(lengths.sum()), dtype=ROW_DTYPE)
        rows["array"] = np.repeat(np.arange(len(entries), dtype=np.uint32), lengths)
        offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows["start"] = np.arange(len(rows), dtype=np.int64) - offsets
        rows["length"] = 0
        return cls(stores, entries, rows)

    @classmethod
    def from_selections(cls, selections: Iterable[ZarrSelection]) -> SelectionIndex:
        """An index of ``ZarrSelection`` records (one leading-axis int each), in their order."""
        store_ids: dict[tuple[str, str], int] = {}
        array_ids: dict[tuple[int, str, Media | None], int] = {}
        stores: list[ZarrStore] = []
        arrays: list[ArrayEntry] = []
        ids: list[int] = []
        starts: list[int] = []
        for n, sel in enumerate(selections):
            if len(sel.index) != 1:
                raise ValueError(
                    f"selection {n} of array {sel.array.path!r} in store "
                    f"{io.redact_uri(sel.array.store.uri)!r} has index {sel.index}: "
                    "an index holds one int on the leading axis per selection"
                )
            store = sel.array.store
            skey = (store.uri, io.options_key(store.storage_options))
            if skey not in store_ids:
                store_ids[skey] = len(stores)
                stores.append(store)
            akey = (store_ids[skey], sel.array.path, sel.media)
            if akey not in array_ids:
                array_ids[akey] = len(arrays)
                arrays.append(_entry(akey[0], sel.array, sel.media))
            ids.append(array_ids[akey])
            starts.append(sel.index[0])
        rows = np.zeros(len(ids), dtype=ROW_DTYPE)
        rows["array"] = ids
        rows["start"] = starts
        return cls(stores, arrays, rows)

    def with_storage_options(self, storage_options: dict[str, Any]) -> SelectionIndex:
        """The same index reaching every store with ``storage_options``."""
        stores = [replace_options(s, storage_options) for s in self.stores]
        return SelectionIndex(stores, self.arrays, self.rows)

    # -- access -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | slice | np.ndarray | Sequence[int]) -> Any:
        """``index[i]`` is a ``ZarrSelection``; a slice or int array gives a smaller index."""
        if isinstance(key, int | np.integer):
            return self.selection(int(key))
        return SelectionIndex(self.stores, self.arrays, self.rows[key])

    def __iter__(self) -> Iterator[ZarrSelection]:
        return (self.selection(i) for i in range(len(self)))

    def __repr__(self) -> str:
        return f"SelectionIndex(stores={len(self.stores)}, arrays={len(self.arrays)}, rows={len(self.rows)})"

    def selection(self, i: int) -> ZarrSelection:
        """The ``ZarrSelection`` behind row ``i`` (negative counts from the end)."""
        n = len(self.rows)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {n} selections")
        array_id, start = int(self.rows["array"][i]), int(self.rows["start"][i])
        return self.zarr_array(array_id).select(start, media=self.arrays[array_id].media)

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

    def array_specs(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(uri, path, storage_options)`` of every array, by array id, for :mod:`io`."""
        return [(self.stores[e.store].uri, e.path, self.stores[e.store].storage_options) for e in self.arrays]

    def validate(self) -> None:
        """Open every array concurrently; raise naming the first one missing or changed."""
        for entry, spec, arr in zip(
            self.arrays, self.array_specs(), io.open_arrays(self.array_specs(), refresh=True), strict=True
        ):
            if tuple(arr.shape) != entry.shape:
                raise ValueError(
                    f"array {spec[1]!r} in store {io.redact_uri(spec[0])!r} has shape "
                    f"{tuple(arr.shape)}, but the index expects {entry.shape}"
                )


def resolve_stores(source: Source, storage_options: dict[str, Any] | None = None) -> list[ZarrStore]:
    """The stores named by ``source``: a prefix or store URI, or a list of URIs/stores."""
    if isinstance(source, ZarrStore):
        source = [source]
    if isinstance(source, str):
        stores = read_zarr(source, storage_options)
        if not stores:
            raise ValueError(f"no Zarr stores under {io.redact_uri(source)!r}")
        return stores
    stores = [s if isinstance(s, ZarrStore) else ZarrStore(uri=str(s)) for s in source]
    if storage_options is not None:
        stores = [replace_options(s, storage_options) for s in stores]
    if not stores:
        raise ValueError("no stores given")
    return stores


def replace_options(store: ZarrStore, storage_options: dict[str, Any]) -> ZarrStore:
    """``store`` reached with ``storage_options``."""
    return store.model_copy(update={"storage_options": dict(storage_options)})


def _entry(store_id: int, arr: ZarrArray, media: Media | None) -> ArrayEntry:
    return ArrayEntry(
        store=store_id,
        path=arr.path,
        shape=tuple(arr.shape),
        chunks=tuple(arr.chunks or arr.shape),
        dtype=arr.dtype,
        media=media,
        attrs=dict(arr.attrs),
    )


def _check_chunks(stores: list[ZarrStore], path: str) -> None:
    async def missing(store: ZarrStore) -> list[str]:
        arr = await io.open_array(store.uri, path, store.storage_options)
        return [f"{io.redact_uri(store.uri)}/{key}" for key in await io.missing_chunks(arr)]

    found = [key for keys in io.run(io.gather_bounded(map(missing, stores))) for key in keys]
    if found:
        shown = "\n  ".join(found[:20]) + ("\n  ..." if len(found) > 20 else "")
        raise MissingChunkError(f"{len(found)} chunk(s) of {path!r} missing:\n  {shown}")


def _read_entries(
    stores: list[ZarrStore], path: str, media: Media | None, progress: bool | None
) -> list[ArrayEntry]:
    """Open ``path`` in every store concurrently, with a progress bar for large builds."""
    show = len(stores) >= PROGRESS_MIN_STORES if progress is None else progress

    async def read_all() -> list[ArrayEntry]:
        semaphore = asyncio.Semaphore(io.OPEN_CONCURRENCY)
        bar = tqdm(total=len(stores), desc="reading metadata", unit="store", disable=not show)

        async def one(i: int, store: ZarrStore) -> ArrayEntry:
            async with semaphore:
                arr = await io.open_array(store.uri, path, store.storage_options, refresh=True)
            bar.update()
            if arr.ndim == 0:
                raise ValueError(f"array {path!r} in store {io.redact_uri(store.uri)!r} is 0-d")
            return _entry(i, ZarrArray.from_handle(store, path, arr), media)

        try:
            return await asyncio.gather(*(one(i, s) for i, s in enumerate(stores)))
        finally:
            bar.close()

    return io.run(read_all())


__all__ = ["ROW_DTYPE", "ArrayEntry", "SelectionIndex", "resolve_stores"]
