"""A batch read as one array is handed on as it is: ``default_collate`` does not copy it.

``ZarrFrameDataset.__getitems__`` reads a batch into one array. Its samples are rows of
that array which ``default_collate`` (and ``torch.stack``) turns back into the array
itself, in place of copying them into a new one. In a ``DataLoader`` worker the batch is
read straight into shared memory (:func:`shared`), as ``default_collate`` would have
copied it there to send it to the training process: the batch then crosses as it is,
with no copy at all, as a memmap's batch crosses with one.

    samples = rows(torch.from_numpy(frames))
    default_collate(samples) is samples[0]._batch  # True: no copy
"""

from __future__ import annotations

import ctypes
import itertools
import math
import operator
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data._utils.collate import collate_tensor_fn, default_collate_fn_map


def shared(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A new array in shared memory: the memory of a torch tensor, its ``.base`` (see
    :func:`tensor`), made as ``default_collate`` makes a worker's batch; memory of its own
    when torch has no such dtype.

        frames = shared((64, 224, 224, 3), np.dtype("uint8"))
    """
    try:
        kind = torch.from_numpy(np.empty(0, dtype)).dtype
    except (TypeError, ValueError):  # a dtype torch lacks, or not in native byte order
        return np.empty(shape, dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    _populate(storage.data_ptr(), storage.nbytes())
    return torch.empty(0, dtype=kind).set_(storage).view(shape).numpy()


#: Linux's ``MADV_POPULATE_WRITE`` (kernel 5.14 and later; Python names no constant for it).
_MADV_POPULATE_WRITE = 23
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
if _libc is not None:
    _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _populate(address: int, nbytes: int) -> None:
    """Map the pages of new shared memory into this process in one call, instead of a page
    fault for each 4 KB as the batch is written (a 9.6 MB batch: 3.0 against 4.5 ms). Where
    the kernel cannot, nothing changes: the pages fault in as they are written."""
    if _libc is not None and nbytes:
        _libc.madvise(address, nbytes, _MADV_POPULATE_WRITE)


def tensor(batch: np.ndarray) -> torch.Tensor:
    """``batch`` as a tensor: the one whose memory it is (see :func:`shared`), else a new
    one over its memory."""
    owner = batch.base
    whole = isinstance(owner, torch.Tensor) and owner.shape == batch.shape
    return owner if whole and owner.data_ptr() == batch.ctypes.data else torch.from_numpy(batch)


def rows(batch: torch.Tensor) -> list[torch.Tensor]:
    """The samples of ``batch``: views of its rows that stack back into ``batch``. The
    first is a :class:`_Row`, which names the batch; the others are plain views, as
    ``default_collate`` picks its function by the first sample's type alone (a subclass
    each made this a tenth of a 64-frame batch's time after decoding).

        samples = rows(batch)
    """
    first, *others = batch.unbind(0)
    first = first.as_subclass(_Row)
    first._batch, first._others, first._version_then = batch, tuple(others), batch._version
    return [first, *others]


class _Row(torch.Tensor):
    """The first row of ``_batch``. Every op on it is the plain tensor op with plain
    tensor results, except that stacking all of the batch's rows in order along dim 0
    (with no ``out=``), this one first, gives the batch itself instead of a copy."""

    _batch: torch.Tensor
    #: the other rows, as :func:`rows` made them (not this one: no reference cycle keeps
    #: the batch's memory from being freed), and the batch's version then.
    _others: tuple[torch.Tensor, ...]
    _version_then: int

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
    # The rows made with the batch, in order, none changed in place since: every in-place
    # op on a view (``set_`` and ``transpose_`` as much as ``mul_``) bumps the version
    # counter it shares with its batch. Checking each row's memory, shape and strides
    # took 115 µs a 64-frame batch; this takes 3.
    same = (
        len(tensors) == len(batch)
        and all(map(operator.is_, itertools.islice(tensors, 1, None), first._others))
        and batch._version == first._version_then
    )
    return batch if same else None


def _collate_rows(samples: list[_Row], *, collate_fn_map: dict | None = None) -> torch.Tensor:
    """``default_collate`` of rows: the batch itself when they are all of it, in order
    (``default_collate`` would first make shared memory in a worker, to stack them into);
    else as any tensors."""
    batch = _whole((samples,), {})
    return batch if batch is not None else collate_tensor_fn(samples, collate_fn_map=collate_fn_map)


# torch's documented way to extend default_collate; rows are only ever zarr_torch's own.
default_collate_fn_map[_Row] = _collate_rows
