"""Plan: which chunks a batch needs, and where each chunk's rows go in the batch.

Items are runs of ``span`` rows on the leading axis (one frame, or a window), each the
whole extent of the other axes; or single items over several leading axes (a (t, c, z)
plane), numbered in C order. A chunk grid may cut the leading axis (several frames
per chunk) and the other axes too (spatial tiles); every chunk a batch touches becomes
one :class:`Task`, listed once however many items need it.

    tasks = plan(layout, positions=np.arange(3), starts=np.array([5, 6, 40]), span=1)
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import numpy as np

from zarr_torch.read.layout import Layout


class Task(NamedTuple):
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
    """The tasks that fill batch items ``positions`` with rows ``starts[k] : starts[k] + span``.

    Rows number the items over the layout's item axes; a chunk's rows are its items in
    the same order (see ``Layout.as_rows``). Windows (``span > 1``) run on one axis.
    """
    if span == 1:  # each item in one chunk: the chunk holding it, and its row there
        at = np.unravel_index(starts, layout.shape[: layout.item_axes])
        chunk, grid = layout.chunk[: layout.item_axes], layout.grid[: layout.item_axes]
        item = np.arange(len(starts))
        lead = np.ravel_multi_index([a // c for a, c in zip(at, chunk, strict=True)], grid)
        src = np.ravel_multi_index([a % c for a, c in zip(at, chunk, strict=True)], chunk)
        dst, rows = np.zeros_like(src), np.ones_like(src)
    else:
        c0 = layout.chunk[0]
        first, last = starts // c0, (starts + span - 1) // c0
        count = last - first + 1
        item = np.repeat(np.arange(len(starts)), count)
        lead = np.repeat(first, count) + (np.arange(len(item)) - np.repeat(np.cumsum(count) - count, count))
        lo = np.maximum(starts[item], lead * c0)
        hi = np.minimum(starts[item] + span, (lead + 1) * c0)
        src, dst, rows = lo - lead * c0, lo - starts[item], hi - lo
    # Pieces sorted by chunk row, as flat columns; each chunk row is one slice of them.
    order = np.argsort(lead, kind="stable")
    lead, pos, src, dst, rows = lead[order], positions[item[order]], src[order], dst[order], rows[order]
    edges = [0, *(np.flatnonzero(lead[1:] != lead[:-1]) + 1).tolist(), len(lead)]
    tiles, grid = tiles_of(layout), layout.grid[: layout.item_axes]
    tasks = []
    leads = lead[edges[:-1]].tolist()
    rows_of = [leads] if len(grid) == 1 else [x.tolist() for x in np.unravel_index(leads, grid)]
    for c, a, b in zip(zip(*rows_of, strict=True), edges[:-1], edges[1:], strict=True):
        pieces = pos[a:b], src[a:b], dst[a:b], rows[a:b]
        for coords, region, src_region in tiles:
            tasks.append(Task((*c, *coords), *pieces, region, src_region))
    return tasks


def one_frame_chunks(layout: Layout, span: int) -> bool:
    """True when every chunk is exactly one item's frame: it can decode straight into the batch."""
    return span == 1 and layout.rows == 1 and layout.whole_items


@functools.cache
def tiles(shape: tuple[int, ...], chunk: tuple[int, ...]) -> tuple:
    """(grid coordinates, region of ``shape``, region of the chunk) of every chunk of a
    grid of ``chunk`` over ``shape``, the last ones cut short at its edges."""
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
    return tiles(layout.item_shape, layout.chunk[layout.item_axes :])
