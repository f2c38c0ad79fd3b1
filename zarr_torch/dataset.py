"""ZarrFrameDataset: a map-style dataset of frames across many Zarr stores.

    ds = ZarrFrameDataset("s3://bucket/episodes/", array="data/camera0_rgb", media="image")
    for batch in DataLoader(ds, batch_size=64, num_workers=8, shuffle=True): ...

The dataset pickles to its :class:`SelectionIndex` and options only; each process opens
the arrays it reads lazily, once (see :mod:`zarr_torch.io`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from zarr_torch import io
from zarr_torch.errors import ReadError, SkipLog
from zarr_torch.index import SelectionIndex, Source
from zarr_torch.models import Media, ZarrSelection
from zarr_torch.storage import RetryPolicy

DatasetSource = SelectionIndex | Source | Sequence[ZarrSelection]


class ZarrFrameDataset(Dataset):
    """Frames of Zarr arrays as tensors, one sample per row of a :class:`SelectionIndex`.

    ``source`` is a ``SelectionIndex``, a list of ``ZarrSelection``, a URI or prefix, or a
    list of URIs / ``ZarrStore`` (then ``array`` names the array inside each store).
    ``ds[i]`` is the frame as a tensor of the stored shape and dtype (HWC stays HWC), or
    ``transform(frame)`` of the numpy frame when a transform is given.

    Every store and array is checked when the dataset is made, except for a prebuilt
    ``SelectionIndex``, which is trusted so that training starts at once
    (``index.validate()`` checks it).

    A sample that cannot be read raises :class:`ReadError` naming its store, array and
    index (``on_error="raise"``), or is dropped from its batch (``on_error="skip"``; see
    :meth:`skip_summary`). ``strict=True`` makes a missing chunk such an error instead
    of frames of the fill value. Transient storage failures are retried with ``retry``
    (a :class:`~zarr_torch.storage.RetryPolicy`; by default up to 10 tries in 60 s).
    """

    def __init__(
        self,
        source: DatasetSource,
        *,
        array: str = "",
        media: Media | None = None,
        transform: Callable[[np.ndarray], Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        strict: bool = False,
        retry: RetryPolicy | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.index = _to_index(source, array, media, storage_options)
        self.transform = transform
        self.on_error = on_error
        self.strict = strict
        self.retry = retry
        self.skips = SkipLog() if on_error == "skip" else None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The samples at ``indices``, in order: the batch path ``DataLoader`` calls.

        Reads are grouped by array and chunk so each chunk is fetched and decoded once
        per batch, and the groups are read concurrently.
        """
        idx = self._check(indices)
        rows = self.index.rows[idx]
        specs = self.index.array_specs()
        frames = io.run(
            io.read_items(
                specs,
                rows["array"],
                rows["start"],
                strict=self.strict,
                retry=self.retry,
                return_exceptions=True,
            )
        )
        samples = []
        for i, row, frame in zip(idx, rows, frames, strict=True):
            if isinstance(frame, BaseException):
                err = _read_error(int(i), specs[int(row["array"])], int(row["start"]), frame)
                if self.skips is None:
                    raise err from frame
                self.skips.record(err)
                continue
            samples.append(self._sample(frame))
        return samples

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

    def _sample(self, frame: np.ndarray) -> Any:
        if self.transform is not None:
            return self.transform(frame)
        return torch.from_numpy(np.require(frame, requirements=["C", "W"]))

    def __repr__(self) -> str:
        return f"ZarrFrameDataset({self.index!r}, transform={self.transform!r})"


def _read_error(i: int, spec: tuple[str, str, dict], start: int, cause: BaseException) -> ReadError:
    uri, path, options = spec
    shown = io.redact_uri(uri)
    detail = io.scrub(f"{type(cause).__name__}: {cause}", options)
    return ReadError(
        f"cannot read sample {i}: array {path!r} in store {shown!r}, index {start}: {detail}",
        uri=shown,
        array=path,
        index=i,
    )


def skip_collate(batch: list[Any]) -> Any:
    """``default_collate``, but a batch whose every sample was skipped gives ``None``.

    DataLoader(ZarrFrameDataset(src, on_error="skip"), collate_fn=skip_collate)
    """
    return default_collate(batch) if batch else None


def _to_index(
    source: DatasetSource,
    array: str,
    media: Media | None,
    storage_options: dict[str, Any] | None,
) -> SelectionIndex:
    if isinstance(source, SelectionIndex):
        return source if storage_options is None else source.with_storage_options(storage_options)
    items = [source] if isinstance(source, str) else list(source)
    if items and all(isinstance(s, ZarrSelection) for s in items):
        index = SelectionIndex.from_selections(items)
        if storage_options is not None:
            index = index.with_storage_options(storage_options)
        index.validate()
        return index
    return SelectionIndex.build(source, array=array, media=media, storage_options=storage_options)
