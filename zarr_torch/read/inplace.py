"""In place: local chunks that each lie within one frame, read, decoded and placed in one pass.

The commonest local layouts need no plan: one frame a chunk (chunk 1, zarr v2 stores), or
a frame cut into tiles, in a folder or a zip, unsharded. A chunk's key follows from its
frame and its tile, and the chunk decodes straight into its frame (a tile into memory of
its own, then copied into its place). Between the calls that release the GIL
(open, read, decode) each chunk runs a few lines of Python: that is what bounds the rate,
so no plan objects are made (``benchmarks/RESULTS.md``: through the dataset this pass
reads chunk 1, tiles and v2 as fast as zarrs or faster).

A chunk that is absent or fails here is not settled here: its frame is left to the read
engine's general path (:mod:`.engine`), which reads it again, tells an absent chunk from
a store that changed, and names the chunk in its error.

    jobs = chunk_jobs(0, layout, positions, starts, frames)
    left = read(jobs)             # (read, position) of every frame to read again otherwise
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from zarr_torch.process import process_state
from zarr_torch.read.layout import Layout
from zarr_torch.read.plan import tiles_of

#: where each tile of a frame goes: its region of the frame, and the part of the decoded
#: tile (a whole chunk) that the frame shows there.
Places = list[tuple[tuple[slice, ...], tuple[Any, ...]]]
#: one frame to read: (read number, layout, its chunks' keys, the batch positions that
#: show it, where it goes in each, its tiles' places). A frame that is one chunk has no
#: places, and goes to its bytes in the batch.
Job = tuple[int, Layout, list[str], list[int], list[np.ndarray], Places | None]


def usable(layout: Layout, span: int) -> bool:
    """Whether chunks of ``layout`` read for items of ``span`` rows go this way: local,
    unsharded, each within one item, decoded by zarr_torch into given memory."""
    return (
        span == 1
        and layout.files is not None
        and layout.shard is None
        and layout.decoder is not None
        and layout.decoder.into
        and math.prod(layout.chunk[: layout.item_axes]) == 1
    )


def chunk_jobs(
    read: int, layout: Layout, positions: np.ndarray, starts: np.ndarray, frames: np.ndarray
) -> list[Job]:
    """The jobs of items ``starts`` of ``layout`` (see :func:`usable`) into
    ``frames[positions]``, for read number ``read``: one a frame, however many items show it."""
    k = layout.item_axes
    at: dict[int, list[int]] = {}  # each frame's positions
    for p, s in zip(positions.tolist(), starts.tolist(), strict=True):
        at.setdefault(s, []).append(p)
    parts = tiles_of(layout)
    tails = [coords for coords, _, _ in parts]
    if k == 1:
        keys = layout.store_keys(list(at), tails)
    else:  # items over several axes: each one's chunk coordinates on them
        leads = zip(*(a.tolist() for a in np.unravel_index(list(at), layout.shape[:k])), strict=True)
        keys = [layout.store_key((*lead, *tail)) for lead in leads for tail in tails]
    n, places = len(tails), _places(layout, parts)
    if places is None:
        frames = frames.reshape(len(frames), -1).view(np.uint8)
    return [
        (read, layout, keys[j * n : (j + 1) * n], ps, [frames[p] for p in ps], places)
        for j, ps in enumerate(at.values())
    ]


def read(jobs: list[Job]) -> list[tuple[int, int]]:
    """Read, decode and place ``jobs`` (on one thread, in turn); return (read, position) of
    each item of a frame with a chunk absent or failing, to read again otherwise."""
    left: list[tuple[int, int]] = []
    fetched = fetched_bytes = decoded = decoded_bytes = into = 0
    for number, layout, keys, positions, dests, places in jobs:
        try:
            got = _frame(layout, keys, dests, places)
        except Exception:  # read again by the general path, whose error names the chunk
            got = None
        if got is None:
            left += [(number, p) for p in positions]
            continue
        fetched, fetched_bytes = fetched + len(keys), fetched_bytes + got
        decoded, decoded_bytes = decoded + len(keys), decoded_bytes + len(keys) * layout.chunk_bytes
        into += places is None
    process_state().stats.add(
        chunks_fetched=fetched,
        bytes_fetched=fetched_bytes,
        reads_in_place=fetched,
        chunks_decoded_direct=decoded,
        chunks_decoded_into_batch=into,
        chunks_read_in_one_pass=decoded,
        bytes_decoded=decoded_bytes,
    )
    return left


def _frame(layout: Layout, keys: list[str], dests: list[np.ndarray], places: Places | None) -> int | None:
    """Read the chunks ``keys`` of one frame into ``dests``; the bytes read, or None when a
    chunk is absent (a chunk in a directory's place, or any that fails, raises)."""
    decoder, files, bound = layout.decoder, layout.files, layout.read_bound
    assert decoder is not None and files is not None
    if places is None:
        raw = files.whole(keys[0], bound, True)
        if raw is None:
            return None
        decoder.decode_into(raw, out=dests[0])
        for dest in dests[1:]:
            dest[...] = dests[0]
        return len(raw)
    got = 0
    for key, (region, within) in zip(keys, places, strict=True):
        raw = files.whole(key, bound, True)
        if raw is None:
            return None
        got += len(raw)
        # a tile decodes into memory of its own (a one-shot decode: faster than streaming
        # a few KB into scratch), and its part is copied to the frames
        part = decoder.decode(raw)[within]
        for dest in dests:
            dest[region] = part
    return got


def _places(layout: Layout, parts: tuple[Any, ...]) -> Places | None:
    """Where each tile of a frame of ``layout`` goes (``parts``: its ``tiles_of``); None
    when a chunk is the whole frame."""
    if layout.chunk[layout.item_axes :] == layout.item_shape:
        return None
    lead = (0,) * layout.item_axes
    return [(region, (*lead, *within)) for _, region, within in parts]
