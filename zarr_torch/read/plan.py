"""Plan: which chunks a batch needs, and where each chunk's rows go in the batch.

Items are runs of ``span`` rows on the leading axis (one frame, or a window), each the
whole extent of the other axes. A chunk grid may cut the leading axis (several frames
per chunk) and the other axes too (spatial tiles); every chunk a batch touches becomes
one :class:`Task`, listed once however many items need it.

    tasks = plan(layout, positions=np.arange(3), starts=np.array([5, 6, 40]), span=1)
"""

from __future__ import annotations

import functools
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
    if span == 1 or (first == last).all():  # each item inside one chunk row
        item, lead = np.arange(len(starts)), first
    else:
        count = last - first + 1
        item = np.repeat(np.arange(len(starts)), count)
        lead = np.repeat(first, count) + (np.arange(len(item)) - np.repeat(np.cumsum(count) - count, count))
    # Pieces sorted by chunk row, as flat columns; each chunk row is one slice of them.
    order = np.argsort(lead, kind="stable")
    item, lead = item[order], lead[order]
    lo = np.maximum(starts[item], lead * c0)
    hi = np.minimum(starts[item] + span, (lead + 1) * c0)
    pos, src, dst, rows = positions[item], lo - lead * c0, lo - starts[item], hi - lo
    edges = [0, *(np.flatnonzero(lead[1:] != lead[:-1]) + 1).tolist(), len(lead)]
    tiles = tiles_of(layout)
    tasks = []
    for a, b in itertools.pairwise(edges):
        c = int(lead[a])
        for coords, region, src_region in tiles:
            tasks.append(Task((c, *coords), pos[a:b], src[a:b], dst[a:b], rows[a:b], region, src_region))
    return tasks


def one_frame_chunks(layout: Layout, span: int) -> bool:
    """True when every chunk is exactly one item's frame: it can decode straight into the batch."""
    return span == 1 and layout.chunk[0] == 1 and layout.chunk[1:] == layout.shape[1:]


@functools.cache
def _tiles(shape: tuple[int, ...], chunk: tuple[int, ...]) -> tuple:
    axes = []
    for n, c in zip(shape, chunk, strict=True):
        axes.append(
            [(i, slice(i * c, min(n, (i + 1) * c)), slice(0, min(c, n - i * c))) for i in range(-(-n // c))]
        )
    return tuple(
        (tuple(t[0] for t in combo), tuple(t[1] for t in combo), tuple(t[2] for t in combo))
        for combo in itertools.product(*axes)
    )


def tiles_of(layout: Layout) -> tuple:
    """(grid coordinates, batch region, chunk region) of every tile of a frame."""
    return _tiles(layout.shape[1:], layout.chunk[1:])
