"""Assemble: copy a decoded chunk's rows into the batch items that need them.

scatter(batch, task, chunk)        # batch[positions, rows, region] = chunk[...]
fill(batch, task, fill_value)      # an absent chunk: the array's fill value
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zarr_torch.read.plan import Task

#: from how many items of one chunk one fancy-indexed copy beats a plain copy per item.
FANCY_FROM = 4


def scatter(batch: np.ndarray, task: Task, chunk: np.ndarray, span: int) -> None:
    """Copy ``chunk``'s pieces into ``batch`` (items of ``span`` rows, 1 for single frames)."""
    if span == 1 and len(task.positions) > FANCY_FROM:  # one fancy-indexed copy for all items
        batch[(task.positions, 0, *task.region)] = chunk[(task.src, *task.src_region)]
        return
    if span == 1:
        for p, s in zip(task.positions.tolist(), task.src.tolist(), strict=True):
            batch[(p, 0, *task.region)] = chunk[(s, *task.src_region)]
        return
    for p, s, d, n in zip(task.positions, task.src, task.dst, task.rows, strict=True):
        batch[(p, slice(d, d + n), *task.region)] = chunk[(slice(s, s + n), *task.src_region)]


def fill(batch: np.ndarray, task: Task, value: Any, span: int) -> None:
    """Set ``task``'s pieces of ``batch`` to ``value``."""
    if span == 1:
        batch[(task.positions, 0, *task.region)] = value
        return
    for p, d, n in zip(task.positions, task.dst, task.rows, strict=True):
        batch[(p, slice(d, d + n), *task.region)] = value
