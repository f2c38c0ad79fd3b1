"""ZarrFrameDataset: a map-style dataset of frames across many Zarr stores.

    ds = ZarrFrameDataset("s3://bucket/episodes/", array="data/camera0_rgb", media="image")
    for batch in DataLoader(ds, batch_size=64, num_workers=8, shuffle=True): ...

The dataset pickles to its :class:`SelectionIndex` and options only; each process opens
the arrays it reads lazily, once (see :mod:`zarr_torch.process`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from zarr_torch import batches, process, read, redact, windows
from zarr_torch.cache import CACHE_BYTES
from zarr_torch.errors import ReadError, SkipLog
from zarr_torch.index import SelectionIndex, Source
from zarr_torch.models import Media, ZarrSelection
from zarr_torch.read import compiled
from zarr_torch.storage import RetryPolicy

DatasetSource = SelectionIndex | Source | Sequence[ZarrSelection]
Transform = Callable[[Any], Any]
#: the window arguments of a dataset of single items.
NO_WINDOW = {"window": None, "stride": 1, "episode_ends": None, "pad_before": 0, "pad_after": 0}


class ZarrFrameDataset(Dataset):
    """Frames of Zarr arrays as tensors, one sample per row of a :class:`SelectionIndex`.

    ``source`` is a ``SelectionIndex``, a list of ``ZarrSelection``, a URI or prefix, or a
    list of URIs / ``ZarrStore`` (then ``array`` names the array inside each store).
    ``ds[i]`` is the frame as a tensor of the stored shape and dtype (HWC stays HWC), or
    ``transform(frame)`` of the numpy frame when a transform is given.

    ``window=T`` (with ``stride``, ``episode_ends``, ``pad_before``, ``pad_after``; see
    :meth:`SelectionIndex.build`) makes a sample ``T`` consecutive frames (T, H, W, C)
    inside one episode. ``arrays={"image": "data/camera0_rgb", "action": "data/action"}``
    makes a sample a dict of those arrays aligned on the leading axis; ``transform`` may
    then be a dict of per-key transforms (keys without one become tensors).

    Every store and array is checked when the dataset is made, except for a prebuilt
    ``SelectionIndex``, which is trusted so that training starts at once
    (``index.validate()`` checks it).

    A sample that cannot be read raises :class:`ReadError` naming its store, array and
    index (``on_error="raise"``), or is dropped from its batch (``on_error="skip"``; see
    :meth:`skip_summary`). ``strict=True`` makes a missing chunk such an error instead
    of frames of the fill value. Transient storage failures are retried with ``retry``
    (a :class:`~zarr_torch.storage.RetryPolicy`; by default up to 10 tries in 60 s).

    Each process keeps decoded chunks in an LRU cache of ``cache_bytes`` (see
    :meth:`stats`). Each ``DataLoader`` worker limits its decode and torch threads to
    ``threads`` (default: cores // workers) so workers do not oversubscribe the cores.
    Frames of local arrays are read in one pass (:mod:`zarr_torch.read.inplace`) where a
    chunk holds one frame (whole or as tiles; in a shard once the process keeps its
    index), or, unsharded, several whole frames that the cache would not keep;
    ``zarrs=True`` hands the unsharded one-frame chunks of local folders to zarrs' Rust
    reader first (:mod:`zarr_torch.read.compiled`), slower on the benchmark's two cores.
    """

    def __init__(
        self,
        source: DatasetSource,
        *,
        array: str = "",
        arrays: Mapping[str, str] | None = None,
        media: Media | None = None,
        transform: Transform | Mapping[str, Transform] | None = None,
        storage_options: dict[str, Any] | None = None,
        window: int | None = None,
        stride: int = 1,
        episode_ends: str | None = None,
        pad_before: int = 0,
        pad_after: int = 0,
        on_error: Literal["raise", "skip"] = "raise",
        strict: bool = False,
        retry: RetryPolicy | None = None,
        cache_bytes: int = CACHE_BYTES,
        threads: int | None = None,
        zarrs: bool = False,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        if arrays is not None and (array or not arrays):
            raise ValueError("give one array or a non-empty dict of arrays, not both")
        paths = dict(arrays) if arrays is not None else {None: array}
        windowing = {
            "window": window,
            "stride": stride,
            "episode_ends": episode_ends,
            "pad_before": pad_before,
            "pad_after": pad_after,
        }
        first = _to_index(source, next(iter(paths.values())), media, storage_options, windowing)
        #: one index per sample key (``None`` for single-array samples), all with the same rows.
        self.indexes = {key: _on_path(first, path) if arrays else first for key, path in paths.items()}
        self.index = next(iter(self.indexes.values()))
        if isinstance(transform, Mapping) and (arrays is None or set(transform) - set(arrays)):
            raise ValueError(f"per-key transforms {sorted(transform)} need arrays with those keys")
        #: whether processes open arrays from the index's metadata, with no request: for a
        #: prebuilt index (trusted, as it is not validated either; ``verify()`` checks it),
        #: not for stores indexed here, whose workers read each array's metadata afresh.
        self.trust_index = not _builds_index(source)
        if _builds_index(source):  # a prebuilt index or selection list may mix kinds on purpose
            for key, index in self.indexes.items():
                if transform is None or (isinstance(transform, Mapping) and key not in transform):
                    _check_one_kind(index)
        self.transform = transform
        self.on_error = on_error
        self.strict = strict
        self.retry = retry
        self.skips = SkipLog() if on_error == "skip" else None
        self.cache_bytes = cache_bytes
        self.threads = threads
        self.zarrs = zarrs
        #: names this dataset's own cache in every process (pickled with it to workers).
        self._token = uuid.uuid4().hex

    @classmethod
    def from_datachain(
        cls,
        chain: Any,
        column: str,
        *,
        array: str = "",
        storage_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> ZarrFrameDataset:
        """A dataset of a datachain column of Zarr selections, arrays or stores, in order.

        ds = ZarrFrameDataset.from_datachain(chain, "frame", transform=to_tensor)
        """
        index = SelectionIndex.from_datachain(chain, column, array=array, storage_options=storage_options)
        return cls(index, **kwargs)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        """Sample ``i``; with ``on_error="skip"`` a sample that cannot be read is ``None``
        (what ``DataLoader(ds, batch_size=None)`` then yields, and :func:`skip_collate` drops)."""
        samples = self.__getitems__([i])
        return samples[0] if samples else None

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The samples at ``indices``, in order: the batch path ``DataLoader`` calls.

        Reads are grouped by array and chunk so each chunk is fetched and decoded once
        per batch, a window is one slice per chunk run, and every group of every array
        is read concurrently.
        """
        idx = self._check(indices)
        keys = list(self.indexes)
        ahead = [self._check(b) for b in getattr(indices, "ahead", ())]  # see ReadAheadBatches
        one, worker = len(keys) == 1 and self.transform is None, get_worker_info() is not None
        # a worker's batch that goes out as read is read into shared memory (see batches)
        reads = self._read_all(idx, self._budget(), ahead, batches.shared if one and worker else np.empty)
        if one and (whole := _one_batch(reads[0])) is not None:
            # Every frame read: rows of the batch, which default_collate hands on as the
            # batch itself, uncopied: a worker's crosses to the training process so, from
            # shared memory (else collate copies it there, as any worker's batch).
            frames = batches.tensor(whole)
            crosses = not worker or frames.is_shared()
            if worker and crosses:
                process.process_state().stats.add(batches_in_shared_memory=1)
            return batches.rows(frames) if len(frames) > 1 and crosses else list(frames)
        samples = []
        started = time.perf_counter()
        for k, i in enumerate(idx.tolist()):
            parts = {key: read[k] for key, read in zip(keys, reads, strict=True)}
            failed = [key for key, part in parts.items() if isinstance(part, BaseException)]
            if failed:
                err = self._error(i, failed[0], parts[failed[0]])
                if self.skips is None:
                    raise err from parts[failed[0]]
                self.skips.record(err)
                continue
            samples.append(self._apply_transform(parts))
        process.process_state().stats.add(transform_s=time.perf_counter() - started)
        return samples

    def _read_all(
        self, idx: np.ndarray, budget: dict[str, Any], ahead: list[np.ndarray], allocate: read.Allocate
    ) -> list[list[Any]]:
        """Every index's items (or windows, edge frames repeated) of ``idx``, exceptions in
        place, read in one go (see :func:`read.read_batch`) into batch arrays made by
        ``allocate``; the fetches of the batches ``ahead`` are planned and started once
        these reads have, and go on in the background."""
        asks, places = [], []
        for index in self.indexes.values():
            specs, spec_of = index.read_specs(documents=self.trust_index)
            rows = index.rows[idx]
            at = _window_reads(index, rows)
            requests = _requests(rows, at)
            asks += [(specs, spec_of[ids], starts, length) for _, ids, starts, length in requests]
            places.append((rows, at, [positions for positions, _, _, _ in requests]))
        options = {"strict": self.strict, "retry": self.retry, "zarrs": self.zarrs, **budget}
        planning = self._prefetch(ahead, budget) if ahead else None
        got = iter(read.read_batch(asks, then=planning, allocate=allocate, **options))
        reads = []
        for rows, at, groups in places:
            items: list[Any] = [None] * len(idx)
            for positions in groups:
                for k, item in zip(positions.tolist(), next(got), strict=True):
                    items[k] = item
            reads.append(_windows(rows, at, items))
        return reads

    async def _prefetch(self, ahead: list[np.ndarray], budget: dict[str, Any]) -> None:
        """Start fetching what the batches ``ahead`` will read."""
        for batch in ahead:
            for index in self.indexes.values():
                specs, spec_of = index.read_specs(documents=self.trust_index)
                rows = index.rows[batch]
                for _, ids, starts, length in _requests(rows, _window_reads(index, rows)):
                    await read.prefetch_items(specs, spec_of[ids], starts, length, cache=budget["cache"])

    def _budget(self) -> dict[str, Any]:
        """This dataset's cache and decode threads in this process (other datasets keep theirs).

        In a ``DataLoader`` worker, which exists for this dataset's loader alone, torch's
        threads and zarrs' pool follow the budget too; the training process's are never
        touched.
        """
        state = process.process_state()
        threads, worker = self.threads, get_worker_info()
        if worker is not None:
            threads = threads or max(1, process.available_cores() // worker.num_workers)
            if state.torch_threads != threads:
                torch.set_num_threads(threads)
                state.torch_threads = threads
            compiled.size_pool(threads)
        return {"cache": state.cache_for(self._token, self.cache_bytes), "threads": threads}

    def stats(self) -> dict[str, float]:
        """What this process has read: chunks, byte ranges and shard indexes fetched,
        chunks decoded by zarr_torch (straight into the batch or not) or by zarr, bytes
        fetched and decoded, read amplification (decoded / returned bytes), cache hit rate
        and size, and seconds spent reading (``fetch_s``: planning, fetching, decoding and
        placing) and transforming.

            ds.stats()["read_amplification"]  # 1.0: nothing decoded was thrown away
        """
        cache = self._budget()["cache"]
        return {
            **process.process_state().stats.as_dict(),
            "cache_bytes": cache.nbytes,
            "cache_budget": cache.budget,
        }

    def _error(self, i: int, key: str | None, cause: BaseException) -> ReadError:
        index = self.indexes[key]
        array_id, start = int(index.rows["array"][i]), int(index.rows["start"][i])
        entry = index.arrays[array_id]
        at = start if entry.item_axes == 1 else entry.position(start)
        store = index.stores[entry.store]
        uri, path, options = store.uri, entry.path, store.storage_options
        shown = redact.redact_uri(uri)
        detail = redact.scrub(f"{type(cause).__name__}: {cause}", options)
        return ReadError(
            f"cannot read sample {i}: array {path!r} in store {shown!r}, index {at}: {detail}",
            uri=shown,
            array=path,
            index=i,
        )

    def skip_summary(self, reset: bool = True) -> dict[str, int]:
        """Samples skipped by every process (workers included), per store, logged once.

        Call it at the end of an epoch; ``reset`` starts the next count. Needs
        ``on_error="skip"``.
        """
        if self.skips is None:
            raise ValueError("skip_summary() needs on_error='skip'")
        return self.skips.summary(reset)

    def _check(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.size == 0:
            return idx.astype(np.int64).reshape(0)
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise IndexError(f"dataset indices must be a list of integers, not {indices!r}"[:200])
        bad = (idx < 0) | (idx >= len(self))
        if bad.any():
            raise IndexError(f"index {int(idx[bad][0])} is out of range for a dataset of {len(self)} frames")
        return idx

    def _apply_transform(self, parts: dict[str | None, np.ndarray]) -> Any:
        if None in parts:
            frame = parts[None]
            return self.transform(frame) if self.transform is not None else _tensor(frame)
        if self.transform is not None and not isinstance(self.transform, Mapping):
            return self.transform(parts)
        per_key = self.transform or {}
        return {key: per_key[key](v) if key in per_key else _tensor(v) for key, v in parts.items()}

    def __repr__(self) -> str:
        return f"ZarrFrameDataset({self.index!r}, transform={self.transform!r})"


def _one_batch(frames: list[Any]) -> np.ndarray | None:
    """The batch array whose items ``frames`` are, in order; None if they are not exactly that
    (a failed item, windows with repeated edge frames)."""
    base = frames[0].base if frames and isinstance(frames[0], np.ndarray) else None
    if base is None or len(base) != len(frames) or not base.flags.c_contiguous:
        return None
    return base if all(isinstance(f, np.ndarray) and f.base is base for f in frames) else None


def _tensor(frame: np.ndarray) -> torch.Tensor:
    # np.require copies only what is not already C-contiguous and writeable: a view of the
    # batch becomes a tensor over the batch's memory.
    return torch.from_numpy(np.require(frame, requirements=["C", "W"]))


def _builds_index(source: DatasetSource) -> bool:
    """True when ``source`` names stores (the dataset builds their index), not a prebuilt
    ``SelectionIndex`` or a non-empty list of selections."""
    if isinstance(source, SelectionIndex):
        return False
    selections = isinstance(source, Sequence) and not isinstance(source, str) and bool(source)
    return not (selections and all(isinstance(s, ZarrSelection) for s in source))


class _WindowReads(NamedTuple):
    """Where the windows of some rows are read (see :func:`_window_reads`)."""

    window: int
    #: each row's episode: its first frame and the frame after its last
    first: np.ndarray
    end: np.ndarray
    #: the first frame to read for each row, and how many
    read_at: np.ndarray
    span: np.ndarray


def _window_reads(index: SelectionIndex, rows: np.ndarray) -> _WindowReads | None:
    """For window rows: each one's episode, and where and how many frames to read: T
    frames inside the array that cover every frame the window shows (from its episode's
    first frame when the episode is shorter), or the whole episode when the array itself
    holds fewer than T frames. None for rows of single items."""
    window = int(rows["length"].max()) if len(rows) else 0
    if window == 0:
        return None
    lengths = rows["length"]
    if (lengths != window).any():
        raise ValueError(f"an index mixes windows of {sorted(set(lengths.tolist()))} frames")
    first, end, size = index.bounds()[rows["array"]].T
    span = np.where(size >= window, window, end - first)
    read_at = np.where(
        end - first >= window, np.clip(rows["start"], first, end - window), np.minimum(first, size - span)
    )
    return _WindowReads(window, first, end, read_at, span)


def _requests(
    rows: np.ndarray, at: _WindowReads | None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """What reading ``rows`` (their windows read ``at``) asks the read engine for:
    (positions in ``rows``, array ids, starts, length) groups."""
    if at is None:
        return [(np.arange(len(rows)), rows["array"], rows["start"], 0)]
    groups = [np.flatnonzero(at.span == n) for n in np.unique(at.span)]
    return [(m, rows["array"][m], at.read_at[m], int(at.span[m[0]])) for m in groups]


def _windows(rows: np.ndarray, at: _WindowReads | None, blocks: list[Any]) -> list[Any]:
    """The windows of ``rows`` from the blocks read for them (see :func:`_requests`): a
    block as it is, or its frames at the window's places when the window repeats an
    episode's edge frame. Items of single frames (and exceptions) pass as they are."""
    if at is None:
        return blocks
    window = at.window
    places = zip(rows["start"].tolist(), at.read_at.tolist(), at.first.tolist(), at.end.tolist(), strict=True)
    return [
        b
        if isinstance(b, BaseException) or (f <= s == r and s + window <= e)  # no edge repeated
        else b[windows.frame_positions(s, window, f, e) - r]
        for b, (s, r, f, e) in zip(blocks, places, strict=True)
    ]


def _check_one_kind(index: SelectionIndex) -> None:
    """``ValueError`` naming two stores whose items differ in shape or dtype: without a
    transform to make them alike, their batches would fail later in ``default_collate``."""
    kinds = {}
    for st, m in index.arrays.sources()[0].tolist():
        e = index.arrays.metas[m]
        kinds.setdefault((e.shape[e.item_axes :], e.dtype), replace(e, store=st))
    if len(kinds) > 1:
        a, b = (
            f"array {e.path!r} in store {redact.redact_uri(index.stores[e.store].uri)!r} holds items of "
            f"shape {shape} and dtype {dtype}"
            for (shape, dtype), e in list(kinds.items())[:2]
        )
        raise ValueError(
            f"{a}, but {b}: give a transform that makes them alike, or make one dataset per kind"
        )


def _on_path(index: SelectionIndex, path: str) -> SelectionIndex:
    """``index`` reading ``path``: itself when it already does."""
    return index if all(m.path == path for m in index.arrays.metas) else index.with_path(path)


def skip_collate(batch: list[Any]) -> Any:
    """``default_collate`` of the samples that were read: skipped ones (``None``) are
    dropped, and a batch whose every sample was skipped gives ``None``.

    DataLoader(ZarrFrameDataset(src, on_error="skip"), collate_fn=skip_collate)
    """
    read = [sample for sample in batch if sample is not None]
    return default_collate(read) if read else None


def _to_index(
    source: DatasetSource,
    array: str,
    media: Media | None,
    storage_options: dict[str, Any] | None,
    windowing: dict[str, Any],
) -> SelectionIndex:
    if _builds_index(source):
        return SelectionIndex.build(
            source, array=array, media=media, storage_options=storage_options, **windowing
        )
    if windowing != NO_WINDOW:
        raise ValueError("windows are made when an index is built: pass window= to SelectionIndex.build")
    if isinstance(source, SelectionIndex):
        return source if storage_options is None else source.with_storage_options(storage_options)
    index = SelectionIndex.from_selections(source)
    if storage_options is not None:
        index = index.with_storage_options(storage_options)
    index.validate()
    return index
