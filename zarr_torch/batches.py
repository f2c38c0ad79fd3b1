"""A batch read as one array is handed on as it is: ``default_collate`` does not copy it.

``ZarrFrameDataset.__getitems__`` reads a batch into one array. Its samples are rows of
that array which ``torch.stack`` (what ``default_collate`` does with a list of tensors)
turns back into the array itself, in place of copying them into a new one. In a
``DataLoader`` worker this is not used: collate's copy into shared memory is what sends a
batch to the training process, and a batch read there crosses with it.

    samples = rows(torch.from_numpy(frames))
    default_collate(samples) is samples[0]._batch  # True: no copy
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def rows(batch: torch.Tensor) -> list[torch.Tensor]:
    """The samples of ``batch``: tensors over its rows that stack back into ``batch``."""
    samples = []
    for row in batch.unbind(0):
        sample = row.as_subclass(_Row)
        sample._batch = batch
        samples.append(sample)
    return samples


class _Row(torch.Tensor):
    """A row of ``_batch``. Every op on it is the plain tensor op with plain tensor
    results, except that stacking all of a batch's rows in order along dim 0 (with no
    ``out=``) gives the batch itself instead of a copy."""

    _batch: torch.Tensor

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: Sequence = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            if func is torch.stack and (batch := _whole(args, kwargs)) is not None:
                return batch
            return func(*args, **kwargs)


def _whole(args: Sequence, kwargs: dict) -> torch.Tensor | None:
    """The batch that ``torch.stack(*args, **kwargs)`` would copy whole, in order, into new
    memory; else None."""
    tensors, dim = args[0], args[1] if len(args) > 1 else kwargs.get("dim", 0)
    first = tensors[0] if len(tensors) else None
    if dim != 0 or kwargs.get("out") is not None or not isinstance(first, _Row):
        return None
    batch = first._batch
    if len(tensors) != len(batch):
        return None
    row_bytes, at = batch.stride(0) * batch.element_size(), batch.data_ptr()
    in_place = all(
        isinstance(t, _Row) and t._batch is batch and t.data_ptr() == at + i * row_bytes
        for i, t in enumerate(tensors)
    )  # every row, in order (its memory is row i's), none moved (``set_``) since
    return batch if in_place else None
