"""ZarrFrameDataset: a map-style dataset of frames across many Zarr stores.

    ds = ZarrFrameDataset("s3://bucket/episodes/", array="data/camera0_rgb", media="image")
    for batch in DataLoader(ds, batch_size=64, num_workers=8, shuffle=True): ...

The dataset pickles to its :class:`SelectionIndex` and options only; each process opens
the arrays it reads lazily, once (see :mod:`zarr_torch.io`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zarr_torch import io
from zarr_torch.index import SelectionIndex, Source
from zarr_torch.models import Media, ZarrSelection

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
    """

    def __init__(
        self,
        source: DatasetSource,
        *,
        array: str = "",
        media: Media | None = None,
        transform: Callable[[np.ndarray], Any] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.index = _to_index(source, array, media, storage_options)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The samples at ``indices``, in order: the batch path ``DataLoader`` calls.

        Reads are grouped by array and chunk so each chunk is fetched and decoded once
        per batch, and the groups are read concurrently.
        """
        rows = self.index.rows[self._check(indices)]
        frames = io.run(io.read_items(self.index.array_specs(), rows["array"], rows["start"]))
        return [self._sample(f) for f in frames]

    def _check(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"dataset indices must be integers, not {idx.dtype}")
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
