"""The tables of a :class:`~zarr_torch.index.SelectionIndex`: its arrays and its rows.

An index of a million episodes must not hold a million copies of one array's metadata.
:class:`ArrayTable` keeps each distinct metadata once (``metas``) and, per array of the
index, four numbers in a numpy table: its store, its metadata, and the episode
``[first, end)`` its windows stay in (-1 for none). ``table[i]`` materializes the
:class:`ArrayEntry` of array ``i``; code over all arrays uses the columns.

    arrays = ArrayTable.from_entries([entry])
    arrays[0].path, arrays.bounds()   # 'data/camera0_rgb', [[0, 64]]
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, overload

import numpy as np

from zarr_torch.models import Media

#: one row: which array, where on its leading axes, how many frames (0: one item).
ROW_DTYPE = np.dtype([("array", "<u4"), ("start", "<i8"), ("length", "<u4")])
#: one array of an index: its store, its metadata (in ``ArrayTable.metas``), its episode.
TABLE_DTYPE = np.dtype([("store", "<u4"), ("meta", "<u4"), ("first", "<i8"), ("end", "<i8")])
#: rows are checked this many at a time (see :func:`check_rows`).
CHECK_ROWS = 1 << 20

#: what a store's fingerprint covers for each indexed array: (path, shape, chunks, dtype).
Meta = tuple[str, tuple[int, ...], tuple[int, ...], str]


@dataclass(frozen=True)
class ArrayEntry:
    """One array of an index: where it is, its metadata, and its episode if windowed."""

    store: int
    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    media: Media | None = None
    attrs: dict = field(default_factory=dict, compare=False)
    #: for window rows: the episode ``[first, end)`` on the leading axis windows stay in.
    episode: tuple[int, int] | None = None
    #: how many leading axes address an item: rows number the items over these axes in
    #: C order (``[t, c, z]`` of a (t, c, z, y, x) image is ``(t * C + c) * Z + z``).
    item_axes: int = 1
    #: the array's zarr metadata document: workers open the array from it, with no request.
    document: dict | None = field(default=None, compare=False, repr=False)

    @property
    def items(self) -> int:
        """How many items the array holds: the product of its item axes."""
        return math.prod(self.shape[: self.item_axes])

    def bounds(self) -> tuple[int, int]:
        """The items rows of this entry may show: its episode, or the whole array."""
        return self.episode or (0, self.items)

    def position(self, item: int) -> list[int]:
        """The index on the item axes of item number ``item``."""
        if self.item_axes == 1:
            return [item]
        return [int(i) for i in np.unravel_index(item, self.shape[: self.item_axes])]

    def meta(self) -> Meta:
        """What the fingerprint of its store covers: path, shape, chunks and dtype."""
        return self.path, self.shape, self.chunks, self.dtype

    def template(self) -> ArrayEntry:
        """This entry without its store and episode: the metadata episodes share."""
        return replace(self, store=0, episode=None)

    def key(self) -> str:
        """Equal for entries of equal metadata (attrs and document included)."""
        return json.dumps([self.meta(), self.media, self.attrs, self.item_axes, self.document], default=str)


class ArrayTable(Sequence[ArrayEntry]):
    """The arrays of an index: distinct metadata once, four numbers per array."""

    def __init__(self, metas: Sequence[ArrayEntry], table: np.ndarray) -> None:
        self.metas = list(metas)
        self.table = np.asarray(table, dtype=TABLE_DTYPE)

    @classmethod
    def from_entries(cls, entries: Iterable[ArrayEntry]) -> ArrayTable:
        """The table of ``entries``, each distinct metadata kept once."""
        if isinstance(entries, ArrayTable):
            return entries
        builder = TableBuilder()
        for e in entries:
            builder.add(e.store, builder.meta_id(e), e.episode)
        return builder.table()

    def __len__(self) -> int:
        return len(self.table)

    @overload
    def __getitem__(self, i: int) -> ArrayEntry: ...
    @overload
    def __getitem__(self, i: slice) -> ArrayTable: ...
    def __getitem__(self, i: int | slice) -> ArrayEntry | ArrayTable:
        if isinstance(i, slice):
            return ArrayTable(self.metas, self.table[i])
        store, meta, first, end = self.table[i].tolist()
        return replace(self.metas[meta], store=store, episode=None if first < 0 else (first, end))

    def __iter__(self) -> Iterator[ArrayEntry]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArrayTable) and list(self) == list(other)

    def per_array(self, value: Any) -> np.ndarray:
        """``value(meta)`` of every array's metadata, as a column (computed once per meta)."""
        return np.array([value(m) for m in self.metas])[self.table["meta"]]

    def windowed(self) -> np.ndarray:
        """Per array: whether its rows are windows of an episode."""
        return self.table["first"] >= 0

    def bounds(self) -> np.ndarray:
        """Per array: (first, end) of the items its rows may show, and its item count."""
        items = self.per_array(lambda m: m.items).astype(np.int64) if self.metas else np.zeros(0, np.int64)
        windowed = self.windowed()
        first = np.where(windowed, self.table["first"], 0)
        end = np.where(windowed, self.table["end"], items)
        return np.stack([first, end, items], axis=1).reshape(-1, 3)

    def sources(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct (store, meta) pairs, as an (n, 2) array, and each array's pair number:
        what the read engine opens (episodes of one array share it)."""
        metas = max(len(self.metas), 1)
        keys = self.table["store"].astype(np.int64) * metas + self.table["meta"]
        unique, inverse = np.unique(keys, return_inverse=True)
        return np.stack([unique // metas, unique % metas], axis=1), inverse.reshape(-1)


class TableBuilder:
    """Arrays added one by one; each distinct metadata kept once."""

    def __init__(self) -> None:
        self.metas: list[ArrayEntry] = []
        self._meta_ids: dict[str, int] = {}
        self._columns: list[tuple[int, int, int, int]] = []

    def meta_id(self, entry: ArrayEntry) -> int:
        """The id of ``entry``'s metadata, added if new."""
        key = entry.key()
        if key not in self._meta_ids:
            self._meta_ids[key] = len(self.metas)
            self.metas.append(entry.template())
        return self._meta_ids[key]

    def add(self, store: int, meta: int, episode: tuple[int, int] | None = None) -> int:
        """Add an array; return its id."""
        self._columns.append((store, meta, *(episode or (-1, -1))))
        return len(self._columns) - 1

    def table(self) -> ArrayTable:
        return ArrayTable(self.metas, np.array(self._columns, dtype=TABLE_DTYPE).reshape(-1))


def check_rows(arrays: ArrayTable, rows: np.ndarray) -> None:
    """``ValueError`` naming the first bad row, checked for all rows at once.

    An item row (of an array without an episode) has length 0 and a start inside its
    array; a window row has the index's one window length ``T`` and shows at least one
    frame of its episode (starts in ``(first - T, end)``).
    """
    bounds, windowed_table = arrays.bounds(), arrays.windowed()
    first_table, end_table = bounds[:, 0], bounds[:, 1]
    # Most indexes are all items or all windows of one length: then one comparison a row.
    all_windows, no_windows = bool(windowed_table.all()), not windowed_table.any()
    window = -1  # the window length, from the first window row
    for offset in range(0, len(rows), CHECK_ROWS):  # in blocks: bounded memory for any index
        block = rows[offset : offset + CHECK_ROWS]
        ids, starts, lengths = block["array"], block["start"], block["length"]
        if int(ids.max()) >= len(arrays):
            k = int(np.argmax(ids >= len(arrays)))
            raise ValueError(
                f"row {offset + k}: array id {int(ids[k])} is not in the index's {len(arrays)} arrays"
            )
        if no_windows or all_windows:
            window = int(lengths[0]) if window < 0 and all_windows else window
            length = window if all_windows else 0
            lowest = first_table - max(length - 1, 0)
            inside = (starts >= lowest[ids]).all() and (starts < end_table[ids]).all()
            if inside and (lengths == length).all():
                continue
        windowed = windowed_table[ids]
        if window < 0 and windowed.any():
            window = int(lengths[np.argmax(windowed)])
        first, end, lengths = first_table[ids], end_table[ids], lengths.astype(np.int64)
        bad = np.where(
            windowed,
            (lengths != window) | (lengths < 1) | (starts <= first - lengths) | (starts >= end),
            (lengths != 0) | (starts < first) | (starts >= end),
        )
        if bad.any():
            k = int(np.argmax(bad))
            e = arrays[int(ids[k])]
            kind = f"a {window}-frame window of episode {e.episode}" if e.episode else "an item"
            raise ValueError(
                f"row {offset + k} (start {int(starts[k])}, length {int(lengths[k])}) is not {kind} "
                f"of array {e.path!r} (array id {int(ids[k])}, {e.items} items)"
            )


__all__ = ["ROW_DTYPE", "TABLE_DTYPE", "ArrayEntry", "ArrayTable", "TableBuilder", "check_rows"]
