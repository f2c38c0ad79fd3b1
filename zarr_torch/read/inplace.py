"""In place: local chunks of whole frames, or within one frame, read, decoded and placed in one pass.

The commonest local layouts need no plan: one frame a chunk (chunk 1, zarr v2 stores,
sharded v3), a frame cut into tiles, or a chunk of several whole frames (chunk 16), in a
folder or a zip. A chunk's key follows from its frame and its tile (in a shard, its
range from the shard's index, once the read engine has read that), and the chunk decodes
straight into its frames (a tile into memory of its own, then copied into its place).
Between the calls that release the GIL (open, read, decode) each chunk runs a few lines
of Python: that is what bounds the rate, so no plan objects are made
(``benchmarks/RESULTS.md``: through the dataset this pass reads chunk 1, tiles and v2 as
fast as zarrs or faster).

A chunk of several frames comes this way only when no decoded chunk is kept for it: the
batch takes every frame it holds (as in ``ChunkAwareSampler``'s order), or the cache is
off. Its rows stream into the frames that show them, and a zstd chunk file is read no
further than the last row needed. Any other is left to the read engine (which keeps it).

A chunk that is absent or fails here is not settled here: its frames are left to the read
engine's general path (:mod:`.engine`), which reads them again, tells an absent chunk from
a store that changed, and names the chunk in its error.

    jobs, left = chunk_jobs(0, layout, positions, starts, frames, keep=False)
    left += read(jobs)          # (read, position) of every item to read otherwise
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from zarr_torch.process import process_state
from zarr_torch.read.fetch import known_ranges
from zarr_torch.read.files import FolderFiles, ZipMembers
from zarr_torch.read.layout import Layout
from zarr_torch.read.plan import tiles_of

#: where each tile of a frame goes: its region of the frame, and the part of the decoded
#: tile (a whole chunk) that the frame shows there.
Places = list[tuple[tuple[slice, ...], tuple[Any, ...]]]
#: where a chunk's bytes are: a file (a zip's member), or (shard, offset, length) of a shard.
Key = str | tuple[str, int, int]
#: one frame, or one chunk of whole frames, to read: (read number, how it is read (see
#: :func:`_frame_chunk`), layout, its chunks' keys, the batch positions it serves, the
#: frames each of its rows goes to, its tiles' places). A frame cut into tiles is one row;
#: chunks of whole frames have no places, and go to the frames' bytes in the batch.
Job = tuple[int, "Reader", Layout, Sequence[Key], list[int], list[list[np.ndarray]], "Places | None"]
#: reads the chunks of one job into its frames: the bytes read and decoded, or None when a
#: chunk is absent.
Reader = Callable[[Layout, Sequence[Key], list[list[np.ndarray]], "Places | None"], "tuple[int, int] | None"]


def usable(layout: Layout, span: int) -> bool:
    """Whether chunks of ``layout`` read for items of ``span`` rows go this way: local,
    decoded by zarr_torch into given memory, and each within one item (in a shard or
    not) or, unsharded, of whole items along one axis."""
    return (
        span == 1
        and layout.files is not None
        and layout.decoder is not None
        and layout.decoder.into
        and (layout.rows == 1 or (_by_rows(layout) and layout.shard is None))
    )


def chunk_jobs(
    read: int, layout: Layout, positions: np.ndarray, starts: np.ndarray, frames: np.ndarray, keep: bool
) -> tuple[list[Job], list[tuple[int, int]]]:
    """The jobs of items ``starts`` of ``layout`` (see :func:`usable`) into
    ``frames[positions]``, for read number ``read``: one a frame or a chunk of frames,
    however many items show it; and (read, position) of the items left to the read engine:
    chunks of several frames that would be kept (when ``keep``: see the module's notes),
    and chunks of shards whose index this process has not read, or that lack them."""
    at: dict[int, list[int]] = {}  # each frame's positions
    for p, s in zip(positions.tolist(), starts.tolist(), strict=True):
        at.setdefault(s, []).append(p)
    if _by_rows(layout):
        return _row_jobs(read, layout, at, frames, keep)
    k = layout.item_axes
    parts = tiles_of(layout)
    tails = [coords for coords, _, _ in parts]
    keys: Sequence[Key | None]
    if k == 1 and layout.shard is None:
        keys = layout.store_keys(list(at), tails)
    else:  # each item's chunk coordinates (on several axes, or to find in its shard)
        leads = zip(*(a.tolist() for a in np.unravel_index(list(at), layout.shape[:k])), strict=True)
        chunks = [(*lead, *tail) for lead in leads for tail in tails]
        keys = known_ranges(layout, chunks) if layout.shard else [layout.store_key(c) for c in chunks]
    places = _places(layout, parts)
    how = _frame_chunk if places is None else _tiles
    if places is None:
        frames = frames.reshape(len(frames), -1).view(np.uint8)
    frame = frames.__getitem__
    jobs: list[Job] = []
    left: list[tuple[int, int]] = []
    each = zip(*[iter(keys)] * len(tails), strict=False)  # each frame's keys, len(tails) of them
    for ps, mine in zip(at.values(), each, strict=True):
        if None in mine:  # a shard index not read yet, or a chunk its shard lacks
            left += [(read, p) for p in ps]
        else:
            jobs.append((read, how, layout, mine, ps, [list(map(frame, ps))], places))
    return jobs, left


def _row_jobs(
    read: int, layout: Layout, at: dict[int, list[int]], frames: np.ndarray, keep: bool
) -> tuple[list[Job], list[tuple[int, int]]]:
    """:func:`chunk_jobs` of chunks of several whole frames, ``at``: each frame's positions."""
    rows, frames = layout.rows, frames.reshape(len(frames), -1).view(np.uint8)
    chunks: dict[int, dict[int, list[int]]] = {}  # each chunk's rows' positions
    for s, ps in at.items():
        chunks.setdefault(s // rows, {})[s % rows] = ps
    (tail,) = [coords for coords, _, _ in tiles_of(layout)]
    jobs: list[Job] = []
    left: list[tuple[int, int]] = []
    for c, held in chunks.items():
        if keep and len(held) < min(rows, layout.items - c * rows):  # kept for later batches
            left += [(read, p) for ps in held.values() for p in ps]
            continue
        dests = [[frames[p] for p in held.get(r, ())] for r in range(max(held) + 1)]
        key = layout.store_key((c, *tail))
        jobs.append((read, _chunk_rows, layout, [key], [p for ps in held.values() for p in ps], dests, None))
    return jobs, left


def read(jobs: Iterable[Job]) -> list[tuple[int, int]]:
    """Read, decode and place ``jobs`` (on one thread, in turn; other threads may take
    jobs of the same iterator); return (read, position) of each item of a frame with a
    chunk absent or failing, to read again otherwise."""
    left: list[tuple[int, int]] = []
    fetched = fetched_bytes = decoded = decoded_bytes = into = 0
    for number, how, layout, keys, positions, dests, places in jobs:
        try:
            got = how(layout, keys, dests, places)
        except Exception:  # read again by the general path, whose error names the chunk
            got = None
        if got is None:
            left += [(number, p) for p in positions]
            continue
        fetched, fetched_bytes = fetched + len(keys), fetched_bytes + got[0]
        decoded, decoded_bytes = decoded + len(keys), decoded_bytes + got[1]
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


def _frame_chunk(
    layout: Layout, keys: Sequence[Key], dests: list[list[np.ndarray]], places: None
) -> tuple[int, int] | None:
    """Read chunk ``keys[0]``, one whole frame, straight into the first of ``dests[0]``, then
    copy it to the others. Every chunk of chunk 1, v2 and sharded stores takes these few
    lines between its reads and its decode: no more layers (each showed in the rate)."""
    raw = _stored(layout.files, keys[0], layout.read_bound)  # type: ignore[arg-type]
    if raw is None:
        return None
    frames = dests[0]
    layout.decoder.decode_into(raw, out=frames[0])  # type: ignore[union-attr]
    for frame in frames[1:]:
        frame[...] = frames[0]
    return len(raw), layout.chunk_bytes


def _chunk_rows(
    layout: Layout, keys: Sequence[Key], dests: list[list[np.ndarray]], places: None
) -> tuple[int, int] | None:
    """Decode the rows of chunk ``keys[0]`` that ``dests`` holds frames for, each into the
    first of them, then copy it to the others; a zstd chunk file of a folder streams,
    read no further than the last row."""
    decoder, files, key = layout.decoder, layout.files, keys[0]
    assert decoder is not None and files is not None and isinstance(key, str)
    got = _rows_into(decoder, files, key, [row[0] if row else None for row in dests], layout.read_bound)
    if got is not None:
        for row in dests:
            for dest in row[1:]:
                dest[...] = row[0]
    return got


def _rows_into(
    decoder: Any, files: FolderFiles | ZipMembers, key: str, firsts: list[np.ndarray | None], bound: int
) -> tuple[int, int] | None:
    """The rows of chunk ``key`` decoded into ``firsts`` (see :func:`_chunk_rows`)."""
    if decoder.streams and isinstance(files, FolderFiles):
        file = files.open(key)
        if file is None:
            return None
        with file:
            decoded = decoder.decode_rows(file, firsts)
            return file.tell(), decoded
    raw = files.whole(key, bound, True)
    if raw is None:
        return None
    return len(raw), decoder.decode_rows(raw, firsts)


def _tiles(
    layout: Layout, keys: Sequence[Key], dests: list[list[np.ndarray]], places: Places | None
) -> tuple[int, int] | None:
    """Read the tiles ``keys`` of one frame into their places in the frames ``dests[0]``."""
    decoder, files, bound = layout.decoder, layout.files, layout.read_bound
    assert decoder is not None and files is not None and places is not None
    got = 0
    for key, (region, within) in zip(keys, places, strict=True):
        raw = _stored(files, key, bound)
        if raw is None:
            return None
        got += len(raw)
        # a tile decodes into memory of its own (a one-shot decode: faster than streaming
        # a few KB into scratch), and its part is copied to the frames
        part = decoder.decode(raw)[within]
        for dest in dests[0]:
            dest[region] = part
    return got, len(keys) * layout.chunk_bytes


def _stored(files: FolderFiles | ZipMembers, key: Key, bound: int) -> bytes | memoryview | None:
    """The stored bytes of chunk ``key``, in this thread's read buffer; None when absent,
    or a shard's range comes short (the read engine then tells which)."""
    if type(key) is str:
        return files.whole(key, bound, True)
    shard, offset, length = key
    data = files.span(shard, offset, offset + length, True)
    return data if data is not None and len(data) == length else None


def _by_rows(layout: Layout) -> bool:
    """Whether a chunk of ``layout`` holds several whole frames, along one axis."""
    return layout.rows > 1 and layout.item_axes == 1 and layout.whole_items


def _places(layout: Layout, parts: tuple[Any, ...]) -> Places | None:
    """Where each tile of a frame of ``layout`` goes (``parts``: its ``tiles_of``); None
    when a chunk is the whole frame."""
    if layout.whole_items:
        return None
    lead = (0,) * layout.item_axes
    return [(region, (*lead, *within)) for _, region, within in parts]
