"""Compiled: a batch's one-frame chunks of local folder arrays read by zarrs' Rust reader.

zarrs (the Rust Zarr library behind zarr's ``zarrs`` codec pipeline) reads, decodes and
places a list of chunks into one array on its own threads, the GIL released. Asked to
(``ZarrFrameDataset(..., zarrs=True)``), zarr_torch hands it the chunks it can take:
frames (not windows, not planes over several leading axes) of unsharded arrays in local
folders whose chunks hold one frame, whole or as tiles, with a codec chain zarr_torch
decodes too. It is not the default: zarr_torch's one pass over such chunks
(:mod:`.inplace`) reads chunk 1, tiles and v2 as fast or faster on the benchmark's two
cores (``benchmarks/RESULTS.md``), with none of the work around zarrs below.
Sharded arrays stay with zarr_torch's own decoders, which keep each shard's index for the
process: they read the benchmark's shards a few percent faster than zarrs does.

Three things zarrs does not do, zarr_torch keeps doing around it:

- zarrs fills an absent chunk with the fill value, silently. So a frame that holds a
  chunk all fill value after zarrs read it is read again by zarr_torch's own decoders,
  which tell an absent chunk from a stored one (the fill value once the array's metadata
  is checked again, or ``MissingChunkError`` when strict). A chunk is looked at whole
  only when its first element, and a sample of it, are the fill value.
- zarrs' error names neither the chunk nor the frame: an array whose read fails is read
  again by zarr_torch's own decoders, whose errors do.
- rayon's thread pool, made with zarrs' first reader, does not survive a fork
  (zarrs-python#171): a child's reads never run. Loading zarrs does not make the pool
  (zarr loads it with its codec pipelines), so a process forked from one that had loaded
  zarrs never uses it if zarr_torch made the pool there, and otherwise asks once whether
  the pool runs (zarr's ``zarrs`` codec pipeline may have made it): it reads two absent
  chunks on it, waiting at most :data:`PROBE_SECONDS`, and uses zarrs only if they were
  read. So a ``DataLoader`` worker forked from a training process that read nothing with
  zarrs uses it. zarrs' pool serves the whole process, so a read uses it only when its
  thread budget covers the pool; a worker sizes it to the worker's budget before making
  it (see :func:`size_pool`).

    if usable(layout, span, threads):
        [left] = read([(layout, positions, starts, frames)])   # the items still to read
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import threading
from typing import Any, NamedTuple

import numpy as np
from zarr.storage import LocalStore

from zarr_torch.process import available_cores, process_state
from zarr_torch.read.files import FolderFiles
from zarr_torch.read.layout import Layout
from zarr_torch.read.plan import tiles_of

#: the extension module of zarrs, loaded at first use.
MODULE = "zarrs._internal"
#: the environment variable rayon sizes its pool by, when the pool is made.
POOL_VARIABLE = "RAYON_NUM_THREADS"

#: the step, along each axis, of the sample of a chunk that starts with the fill value,
#: looked at before the whole chunk (frames with a dark corner start so; 1,024 elements of
#: a 224x224 frame).
SAMPLE_STEP = 7
#: the longest a forked process waits to learn whether zarrs' pool runs (a pool that runs
#: reads the probe in milliseconds).
PROBE_SECONDS = 5.0
#: what the probe reads: an array of two one-byte chunks, from an empty folder.
_PROBE = json.dumps(
    {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [2],
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [{"name": "bytes"}],
        "attributes": {},
    }
)

#: whether zarrs' pool runs in this process (None: forked from a process that had loaded
#: zarrs, not asked yet)
_pool_runs: bool | None = True
#: the threads of zarrs' pool, once this process or one it was forked from made it (the
#: probe makes it too); None before
_pool_size: int | None = None


def _after_fork() -> None:
    global _pool_runs
    # a pool this process (or one before it) made is dead; another's is asked about
    _pool_runs = False if _pool_size is not None else None if MODULE in sys.modules else True


os.register_at_fork(after_in_child=_after_fork)


def pool_threads() -> int:
    """The threads of zarrs' pool in this process: as many as it was made with; before
    that, ``RAYON_NUM_THREADS``, else one a core."""
    if _pool_size is not None:
        return _pool_size
    try:
        return int(os.environ.get(POOL_VARIABLE, "")) or available_cores()  # rayon: 0 is the default
    except ValueError:
        return available_cores()


def size_pool(threads: int) -> None:
    """Make zarrs' pool ``threads`` threads, when this process has not made it yet and the
    environment does not size it already (a ``DataLoader`` worker, at its first batch, as
    it sets torch's threads)."""
    if _pool_size is None and POOL_VARIABLE not in os.environ:
        os.environ[POOL_VARIABLE] = str(threads)


def usable(layout: Layout, span: int, threads: int) -> bool:
    """Whether zarrs reads this array's chunks for a read of items of ``span`` rows on
    ``threads`` decode threads."""
    return (
        span == 1
        and layout.item_axes == 1
        and layout.chunk[0] == 1
        and layout.shard is None
        and isinstance(layout.files, FolderFiles)
        and layout.decoder is not None
        and threads >= pool_threads()
        and pool_runs()
        and _reader(layout) is not None
    )


def pool_runs() -> bool:
    """Whether zarrs' pool runs work in this process. A fork loses the pool's threads: in a
    process forked from one where zarr_torch made the pool, never; forked from one that
    only had zarrs loaded (zarr's ``zarrs`` codec pipeline may have made it), the probe
    reads on the pool, once (a dead pool keeps the probe's thread blocked for good; it
    holds nothing)."""
    global _pool_runs
    if _pool_runs is None:
        _made_pool()
        done, ran = threading.Event(), []
        with tempfile.TemporaryDirectory(prefix="zarr_torch_probe_") as empty:
            threading.Thread(target=_probe, args=(empty, done, ran), daemon=True, name="zarrs probe").start()
            done.wait(PROBE_SECONDS)
        _pool_runs = bool(ran)
    return _pool_runs


def _probe(folder: str, done: threading.Event, ran: list[bool]) -> None:
    """Read the probe's two absent chunks from ``folder`` on zarrs' pool; note it in ``ran``."""
    try:
        zarrs = importlib.import_module(MODULE)
        reader = zarrs.CodecPipelineImpl(_PROBE, LocalStore(folder, read_only=True))
        items = [zarrs.ChunkItem(f"c/{k}", [slice(0, 1)], [1], [slice(k, k + 1)], [2]) for k in (0, 1)]
        reader.retrieve_chunks_and_apply_index(items, np.empty(2, np.uint8))
        ran.append(True)
    except Exception:  # zarrs cannot read here: not used
        pass
    finally:
        done.set()


def _made_pool() -> None:
    global _pool_size
    if _pool_size is None:
        _pool_size = pool_threads()


def _reader(layout: Layout) -> _Reader | None:
    """zarrs' reader of ``layout``'s array, made once per process and shared by every array
    of the same metadata (it reads any folder's keys, from the file system's root); None
    when zarrs is not installed or cannot read the array (its metadata, codecs or data
    type)."""
    readers = process_state().compiled
    if layout.name not in readers:
        try:
            document = json.dumps(layout.meta.to_dict())
        except (TypeError, ValueError):
            document = None
        if document not in readers:
            readers[document] = _make(document, layout)
        readers[layout.name] = readers[document]
    return readers[layout.name]


def _make(document: str | None, layout: Layout) -> _Reader | None:
    _made_pool()
    try:
        zarrs = importlib.import_module(MODULE)
        reader = zarrs.CodecPipelineImpl(document, LocalStore("/", read_only=True), validate_checksums=True)
        zarrs.ChunkItem("c/0", [slice(0, 1)], [1], [slice(0, 1)], [1])  # the API this module speaks
    except Exception:  # not installed, another API, or an array zarrs does not read
        return None
    return _Reader(zarrs.ChunkItem, reader, _parts(layout))


class _Reader(NamedTuple):
    item: Any
    reader: Any
    #: each chunk of a frame: its grid coordinates past the first axis, its part that the
    #: frame shows, and its place in the frame
    parts: list[tuple[tuple[int, ...], list[slice], list[slice]]]


def _parts(layout: Layout) -> list[tuple[tuple[int, ...], list[slice], list[slice]]]:
    return [(coords, list(src_region), list(region)) for coords, region, src_region in tiles_of(layout)]


def read(arrays: list[tuple[Layout, np.ndarray, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Read, for each (layout, positions, starts, frames) of ``arrays``, frames ``starts``
    into batch items ``positions`` of ``frames`` with zarrs; return which items of each are
    left to read otherwise (a mask over its ``positions``): every one when zarrs failed,
    else those with a chunk all fill value, which may be absent.

    Arrays of one metadata into one batch array are read in one call. Every chunk list is
    made before zarrs starts and every check done after it is through: its threads keep
    the cores busy a while after each call.
    """
    calls: dict[tuple[int, int], list[int]] = {}
    for k, (layout, _, _, frames) in enumerate(arrays):
        calls.setdefault((id(_reader(layout)), frames.ctypes.data), []).append(k)
    lists = [_items(layout, positions, starts, frames.shape) for layout, positions, starts, frames in arrays]
    done = []
    for members in calls.values():
        layout, _, _, frames = arrays[members[0]]
        items = [item for k in members for item in lists[k]]
        try:
            _reader(layout).reader.retrieve_chunks_and_apply_index(items, frames)
        except Exception:
            continue
        done.append(members)
        process_state().stats.add(
            chunks_fetched=len(items),
            chunks_read_by_zarrs=len(items),
            bytes_decoded=len(items) * layout.chunk_bytes,
        )
    lefts = [np.ones(len(positions), dtype=bool) for _, positions, _, _ in arrays]
    for members in done:
        layout, _, _, frames = arrays[members[0]]
        left = _maybe_absent(layout, np.concatenate([arrays[k][1] for k in members]), frames)
        for k, part in zip(
            members, np.split(left, np.cumsum([len(arrays[k][1]) for k in members])[:-1]), strict=True
        ):
            lefts[k] = part
    return lefts


def _items(layout: Layout, positions: np.ndarray, starts: np.ndarray, shape: tuple[int, ...]) -> list[Any]:
    """zarrs' description of every chunk of frames ``starts`` and where it goes: the chunk
    by its path from the file system's root, its part that the frame shows, and that
    part's place in the batch."""
    zarrs = _reader(layout)
    assert zarrs is not None and isinstance(layout.files, FolderFiles)
    root = os.path.abspath(layout.files.root).lstrip("/") + "/"
    keys = iter(layout.store_keys(starts.tolist(), [coords for coords, _, _ in zarrs.parts]))
    chunk = list(layout.chunk)
    tiles = [([slice(0, 1), *within], region) for _, within, region in zarrs.parts]
    return [
        zarrs.item(root + next(keys), within, chunk, [slice(p, p + 1), *region], shape)
        for p in positions.tolist()
        for within, region in tiles
    ]


def _maybe_absent(layout: Layout, positions: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Which items have a chunk whose every element is the fill value (or NaN): zarrs fills
    an absent chunk so, silently. Only chunks that start so, and whose sample (every
    :data:`SAMPLE_STEP`-th element of the frame along each axis) is so too, are looked at
    whole; only the frames that have such a chunk are sampled."""
    fill, parts = layout.fill_value, _reader(layout).parts
    corners = [np.array([region[d].start for _, _, region in parts]) for d in range(frames.ndim - 1)]
    first = _filled(frames[(positions[:, None], *(c[None, :] for c in corners))], fill)  # items x chunks
    rows = np.flatnonzero(first.any(axis=1))
    if not len(rows):
        return np.zeros(len(positions), dtype=bool)
    step = (slice(None, None, SAMPLE_STEP),) * (frames.ndim - 1)
    sampled = _filled(frames[(slice(None), *step)][positions[rows]], fill)
    for t, (_, _, region) in enumerate(parts):
        inside = tuple(slice(-(-r.start // SAMPLE_STEP), -(-r.stop // SAMPLE_STEP)) for r in region)
        first[rows, t] &= sampled[(slice(None), *inside)].reshape(len(rows), -1).all(axis=1)
    left = np.zeros(len(positions), dtype=bool)
    for k, t in zip(*np.nonzero(first), strict=True):
        left[k] |= bool(_filled(frames[(positions[k], *parts[t][2])], fill).all())
    return left


def _filled(values: np.ndarray, fill: Any) -> np.ndarray:
    """Where ``values`` may be what zarrs fills an absent chunk with: the fill value, or
    any NaN (a NaN fill value equals nothing, itself included)."""
    return (values == fill) | (values != values)
