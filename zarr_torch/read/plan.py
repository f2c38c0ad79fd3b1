"""Plan: which chunks a batch needs, and where each chunk's rows go in the batch.

Items are runs of ``span`` rows on the leading axis (one frame, or a window), each the
whole extent of the other axes. A chunk grid may cut the leading axis (several frames
per chunk) and the other axes too (spatial tiles); every chunk a batch touches becomes
one :class:`Task`, listed once however many items need it.

    tasks = plan(layout, positions=np.arange(3), starts=np.array([5, 6, 40]), span=1)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from zarr_torch.read.layout import Layout


@dataclass(frozen=True)
class Task:
    """One chunk to fetch and decode, and the pieces of the batch it fills.

    Piece ``k`` copies chunk rows ``src[k] : src[k] + rows[k]`` (then ``src_region`` of the
    other axes) to rows ``dst[k] : dst[k] + rows[k]`` of batch item ``positions[k]`` (then
    ``region``).
    """

    coords: tuple[int, ...]
    positions: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    rows: np.ndarray
    region: tuple[slice, ...]
    src_region: tuple[slice, ...]


def plan(layout: Layout, positions: np.ndarray, starts: np.ndarray, span: int) -> list[Task]:
    """The tasks that fill batch items ``positions`` with rows ``starts[k] : starts[k] + span``."""
    c0 = layout.chunk[0]
    first, last = starts // c0, (starts + span - 1) // c0
    count = last - first + 1
    item = np.repeat(np.arange(len(starts)), count)
    lead = np.repeat(first, count) + (np.arange(len(item)) - np.repeat(np.cumsum(count) - count, count))
    lo = np.maximum(starts[item], lead * c0)
    hi = np.minimum(starts[item] + span, (lead + 1) * c0)
    order = np.argsort(lead, kind="stable")
    leads, bounds = np.unique(lead[order], return_index=True)
    tiles = list(_tiles(layout))
    tasks = []
    for c, group in zip(leads.tolist(), np.split(order, bounds[1:]), strict=True):
        k = item[group]
        piece = {
            "positions": positions[k],
            "src": lo[group] - c * c0,
            "dst": lo[group] - starts[k],
            "rows": hi[group] - lo[group],
        }
        for coords, region, src_region in tiles:
            tasks.append(Task((c, *coords), region=region, src_region=src_region, **piece))
    return tasks


def one_frame_chunks(layout: Layout, span: int) -> bool:
    """True when every chunk is exactly one item's frame: it can decode straight into the batch."""
    return span == 1 and layout.chunk[0] == 1 and layout.chunk[1:] == layout.shape[1:]


def _tiles(layout: Layout):
    """(grid coordinates, batch region, chunk region) of every tile of a frame."""
    axes = []
    for n, c in zip(layout.shape[1:], layout.chunk[1:], strict=True):
        axes.append(
            [(i, slice(i * c, min(n, (i + 1) * c)), slice(0, min(c, n - i * c))) for i in range(-(-n // c))]
        )
    for combo in itertools.product(*axes):
        yield tuple(t[0] for t in combo), tuple(t[1] for t in combo), tuple(t[2] for t in combo)
