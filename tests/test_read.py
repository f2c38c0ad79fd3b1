"""The read path: every layout pixel-exact against zarr, each chunk and shard index read
once, decoded straight into the batch where a chunk is a frame, and broken shards named."""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numcodecs
import numpy as np
import pytest
import torch
import zarr
from checks import CollateWithStats
from conftest import LAYOUTS, SIZE, reference
from torch.utils.data import DataLoader

from zarr_torch import (
    ChunkAwareSampler,
    ReadError,
    SelectionIndex,
    ZarrFrameDataset,
    ZarrStore,
    process,
    read,
)
from zarr_torch.cache import ChunkCache
from zarr_torch.read import decode
from zarr_torch.synth import make_frames, write_store, write_stores, zip_store

ARRAY = "data/camera0_rgb"


def delta(ds: ZarrFrameDataset, before: dict, key: str) -> float:
    return ds.stats()[key] - before[key]


def written(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], **kwargs: Any) -> np.ndarray:
    """The uint8 values written to a new array at ``path`` (``kwargs`` go to zarr)."""
    values = (np.arange(math.prod(shape)) % 241).reshape(shape).astype("uint8")
    zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint8", **kwargs)[...] = values
    return values


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("length", [0, 5])
@pytest.mark.parametrize("zarrs", [False, True])
def test_batched_reads_equal_zarr(tmp_path, name, length, zarrs):
    write_stores(str(tmp_path / "s"), stores=2, frames=37, size=SIZE, **LAYOUTS[name])
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
    specs, _ = ds.index.read_specs()
    rng = np.random.default_rng(0)
    ids, starts = rng.integers(0, len(specs), 40), rng.integers(0, 37 - length, 40)
    before = ds.stats()
    got = process.run(read.read_items(specs, ids, starts, length, zarrs=zarrs))
    for a, s, frame in zip(ids, starts, got, strict=True):
        plain = zarr.open_array(specs[a].uri, path=ARRAY, mode="r")
        np.testing.assert_array_equal(frame, plain[s] if length == 0 else plain[s : s + length])
        assert frame.flags.writeable and frame.flags.c_contiguous
    # zarrs takes frames (not windows) of unsharded one-frame chunks; zarr_torch the rest
    by_zarrs = zarrs and length == 0 and LAYOUTS[name]["chunk"] == 1 and "shard" not in LAYOUTS[name]
    assert delta(ds, before, "chunks_read_by_zarrs" if by_zarrs else "chunks_decoded_direct") > 0
    assert delta(ds, before, "chunks_decoded_direct" if by_zarrs else "chunks_read_by_zarrs") == 0
    assert delta(ds, before, "chunks_decoded_by_zarr") == 0
    assert len({f.ctypes.data - k * f.nbytes for k, f in enumerate(got)}) == 1, "views of one batch array"


def test_a_batch_over_many_arrays_reads_every_item_and_fails_only_those_out_of_range(tmp_path):
    write_stores(str(tmp_path / "s"), stores=12, frames=3, size=SIZE, chunk=1)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
    specs, _ = ds.index.read_specs()
    rng = np.random.default_rng(1)
    ids = rng.permutation(np.repeat(np.arange(len(specs)), 4))  # every array's items scattered
    starts = rng.integers(0, 3, len(ids))
    starts[[5, 17]] = [3, -1]  # past the last row, before the first
    got = process.run(read.read_items(specs, ids, starts))
    for k, (a, s, item) in enumerate(zip(ids, starts, got, strict=True)):
        if k in (5, 17):
            assert isinstance(item, IndexError) and "outside the array's 3 rows" in str(item)
        else:
            np.testing.assert_array_equal(item, zarr.open_array(specs[a].uri, path=ARRAY, mode="r")[s])
    assert process.run(read.read_items(specs, ids[:0], starts[:0])) == [], "an empty batch reads nothing"


def test_chunks_of_one_frame_decode_straight_into_the_batch(tmp_path):
    write_stores(str(tmp_path / "s"), stores=2, frames=9, size=SIZE, chunk=1)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
    before = ds.stats()
    batch = ds.__getitems__([3, 12, 3, 17])
    np.testing.assert_array_equal(np.stack(batch), reference(2, 9)[[3, 12, 3, 17]])
    assert delta(ds, before, "chunks_decoded_into_batch") == 3, "frame 3 twice: decoded once, copied"
    assert delta(ds, before, "cache_bytes") == 0, "a one-frame chunk serves one item: never cached"


def test_each_chunk_is_fetched_and_decoded_once(tmp_path):
    write_stores(str(tmp_path / "s"), stores=1, frames=64, size=SIZE, chunk=16)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
    before = ds.stats()
    batch = ds.__getitems__(list(range(16, 28)))
    after = ds.stats()
    assert after["chunks_fetched"] - before["chunks_fetched"] == 1
    frame_bytes = SIZE * SIZE * 3
    assert after["bytes_decoded"] - before["bytes_decoded"] == 16 * frame_bytes
    assert after["bytes_returned"] - before["bytes_returned"] == 12 * frame_bytes
    np.testing.assert_array_equal(np.stack(batch), reference(1, 64)[16:28])
    ds.__getitems__([28, 31])  # chunk-mates in a later batch: from the cache
    again = ds.stats()
    assert again["chunks_fetched"] == after["chunks_fetched"]
    assert again["cache_hits"] == after["cache_hits"] + 1
    assert again["bytes_decoded"] == after["bytes_decoded"], "nothing decoded again"
    assert 0 < again["cache_hit_rate"] < 1


def test_a_chunk_whose_every_item_a_batch_took_is_not_kept(tmp_path):
    """In ChunkAwareSampler's order a batch takes whole chunks: keeping them would only
    cost memory (and page faults for it), as no later batch of the epoch needs them."""
    write_stores(str(tmp_path / "s"), stores=2, frames=64, size=SIZE, chunk=16)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
    order = list(ChunkAwareSampler(ds, seed=0, buffer_blocks=2))
    before = ds.stats()
    got = [ds.__getitems__(order[k : k + 32]) for k in range(0, len(order), 32)]
    np.testing.assert_array_equal(torch.stack([f for b in got for f in b]).numpy(), reference(2, 64)[order])
    assert delta(ds, before, "chunks_fetched") == 8 and delta(ds, before, "cache_bytes") == 0
    assert delta(ds, before, "chunks_decoded_into_batch") == 8, "rows straight into their items"
    assert delta(ds, before, "chunks_read_in_one_pass") == 8 and delta(ds, before, "cache_misses") == 0
    ds.__getitems__([0, 1])  # a chunk only partly taken is kept for its other items
    assert delta(ds, before, "cache_bytes") == 16 * SIZE * SIZE * 3
    assert delta(ds, before, "chunks_read_in_one_pass") == 8 and delta(ds, before, "cache_misses") == 1
    off = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, cache_bytes=0)
    picks = [35, 3, 35, 0, 17]  # a frame twice; chunk 2 up to row 3, chunk 0 to row 3
    before = off.stats()
    np.testing.assert_array_equal(torch.stack(off.__getitems__(picks)).numpy(), reference(2, 64)[picks])
    assert delta(off, before, "chunks_read_in_one_pass") == 3, "nothing kept: every chunk in one pass"


def test_a_shard_index_is_read_once_and_adjacent_chunks_in_one_range(tmp_path):
    write_stores(str(tmp_path / "s"), stores=1, frames=64, size=SIZE, chunk=1, shard=32)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
    before = ds.stats()
    first = ds.__getitems__([*range(8), 40, 41])
    assert delta(ds, before, "shard_indexes_fetched") == 2
    assert delta(ds, before, "chunks_fetched") == 10
    assert delta(ds, before, "ranges_fetched") == 2, "frames 0-7 in one range, 40-41 in another"
    middle = ds.stats()
    second = ds.__getitems__([9, 33, 63])
    assert delta(ds, middle, "shard_indexes_fetched") == 0, "indexes kept by the process"
    np.testing.assert_array_equal(np.stack(first + second), reference(1, 64)[[*range(8), 40, 41, 9, 33, 63]])


def test_tiles_are_assembled_into_frames_and_windows(tmp_path):
    write_stores(str(tmp_path / "s"), stores=1, frames=20, size=SIZE, chunk=2, tile=5)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, window=3)
    before = ds.stats()
    got = ds.__getitems__([0, 7, 17])
    expected = reference(1, 20)
    for w, start in zip(got, [0, 7, 17], strict=True):
        np.testing.assert_array_equal(w.numpy(), expected[start : start + 3])
    assert delta(ds, before, "chunks_fetched") == 9 * 6, "3 windows over 2 row-chunks each, 9 tiles a frame"


@pytest.mark.parametrize(
    "layout",
    [
        {
            "zarr_format": 2,
            "dtype": ">u2",
            "compressors": numcodecs.Zstd(),
            "filters": [numcodecs.Delta(">u2")],
        },
        {"dtype": "uint16", "serializer": zarr.codecs.BytesCodec(endian="big"), "compressors": None},
        {"dtype": "uint16", "serializer": zarr.codecs.BytesCodec(endian="big"), "shards": (8, 4, 4)},
        {
            "dtype": "float32",
            "compressors": [zarr.codecs.ZstdCodec(checksum=True), zarr.codecs.Crc32cCodec()],
        },
        {"dtype": "int16", "compressors": numcodecs.zarr3.LZ4() if hasattr(numcodecs, "zarr3") else None},
        {"dtype": "uint8", "index_location": "start", "compressors": None},
    ],
    ids=["v2-big-endian-delta", "v3-big-endian", "v3-sharded-big-endian", "crc32c", "lz4", "index-at-start"],
)
def test_codec_chains_decode_exactly_and_natively(tmp_path, layout):
    layout = dict(layout)
    sharding = layout.pop("shards", None)
    if "index_location" in layout:
        layout["serializer"] = zarr.codecs.ShardingCodec(
            chunk_shape=(2, 4, 4), index_location=layout.pop("index_location")
        )
        sharding = None
        layout["chunks"] = (8, 4, 4)
    values = (np.arange(16 * 4 * 4) % 251).reshape(16, 4, 4).astype(layout["dtype"])
    layout.setdefault("chunks", (2, 4, 4))
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=values.shape, shards=sharding, **layout)
    arr[...] = values
    ds = ZarrFrameDataset(str(tmp_path / "a.zarr"))
    before = ds.stats()
    got = torch.stack(ds.__getitems__([15, 0, 7, 8]))
    assert got.dtype == torch.from_numpy(values.astype(values.dtype.newbyteorder("="))).dtype
    np.testing.assert_array_equal(got.numpy(), values[[15, 0, 7, 8]])
    assert delta(ds, before, "chunks_decoded_direct") > 0 and delta(ds, before, "chunks_decoded_by_zarr") == 0


@pytest.mark.parametrize(
    "compressors",
    [None, zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec(), zarr.codecs.GzipCodec()],
    ids=["none", "zstd", "crc32c", "gzip"],
)
@pytest.mark.parametrize(
    "keys",
    [
        {"zarr_format": 3},
        {"zarr_format": 3, "chunk_key_encoding": {"name": "default", "separator": "."}},
        {"zarr_format": 3, "chunk_key_encoding": {"name": "v2", "separator": "."}},
        {"zarr_format": 2, "chunk_key_encoding": {"name": "v2", "separator": "/"}},
    ],
    ids=["default", "default-dot", "v2-dot", "v2-format-slash"],
)
def test_cached_chunks_stay_exact_while_later_reads_reuse_the_read_buffer(tmp_path, compressors, keys):
    """Local chunks are read into a buffer each decode thread reuses; a chunk kept in the
    cache must never be a view of it (an uncompressed or checksum-only chunk would be)."""
    if keys["zarr_format"] == 2:  # the same chains as v2 compressors (a checksum as Fletcher32)
        v2 = {"zstd": numcodecs.Zstd(), "crc32c": numcodecs.Fletcher32(), "gzip": numcodecs.GZip()}
        compressors = v2.get(type(compressors).__name__.removesuffix("Codec").lower())
    values = written(tmp_path / "a.zarr", (32, 4, 4), (8, 4, 4), compressors=compressors, **keys)
    ds = ZarrFrameDataset(str(tmp_path / "a.zarr"), threads=1)
    start = ds.stats()
    first = [1, 6, 3]
    np.testing.assert_array_equal(torch.stack(ds.__getitems__(first)).numpy(), values[first])
    others = list(range(8, 32, 3))
    np.testing.assert_array_equal(torch.stack(ds.__getitems__(others)).numpy(), values[others])
    before = ds.stats()
    np.testing.assert_array_equal(torch.stack(ds.__getitems__([0, 7])).numpy(), values[[0, 7]])
    assert delta(ds, before, "cache_hits") == 1 and delta(ds, before, "chunks_fetched") == 0
    assert delta(ds, start, "chunks_decoded_direct") == 4 and delta(ds, start, "reads_in_place") == 4


@pytest.mark.parametrize(
    "codecs",
    [
        {"filters": [zarr.codecs.TransposeCodec(order=(2, 1, 0))]},
        {"serializer": zarr.codecs.ShardingCodec(chunk_shape=(2, 3, 2))},  # then zstd over whole shards
    ],
    ids=["transpose", "compressed-shards"],
)
def test_chains_zarr_torch_does_not_decode_go_to_zarr_in_one_call(tmp_path, codecs):
    values = np.arange(8 * 3 * 2, dtype="int32").reshape(8, 3, 2)
    arr = zarr.create_array(
        str(tmp_path / "t.zarr"), shape=values.shape, chunks=(4, 3, 2), dtype="int32", **codecs
    )
    arr[...] = values
    ds = ZarrFrameDataset(str(tmp_path / "t.zarr"))
    before = ds.stats()
    np.testing.assert_array_equal(torch.stack(ds.__getitems__([6, 1, 5])).numpy(), values[[6, 1, 5]])
    assert delta(ds, before, "chunks_decoded_by_zarr") == 2


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("damage", ["empty", "truncated", "directory"])
def test_a_broken_shard_is_an_error_never_zeros(tmp_path, damage, strict):
    uri = write_store(str(tmp_path / "ep.zarr"), 0, [32], size=SIZE, chunk=1, shard=16)
    shard = tmp_path / "ep.zarr" / "data" / "camera0_rgb" / "c" / "1" / "0" / "0" / "0"
    if damage == "empty":
        shard.write_bytes(b"")
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: os.path.getsize(shard) // 2])
    else:
        shard.unlink()
        shard.mkdir()
    ds = ZarrFrameDataset(uri, array=ARRAY, strict=strict)
    np.testing.assert_array_equal(ds[3].numpy(), reference(1, 32)[3])
    with pytest.raises(
        ReadError, match=r"sample 20: array 'data/camera0_rgb' in store .*ep\.zarr.*index 20"
    ) as err:
        ds.__getitems__([3, 20])
    assert "shard" in str(err.value) and err.value.__cause__ is not None


@pytest.mark.parametrize("damage", ["truncated", "directory"])
def test_chunks_of_shards_whose_index_is_kept_are_read_in_one_pass(tmp_path, damage):
    """The first batch reads each shard's index the general way; later batches find their
    chunks in the indexes kept and read them in one pass. A shard cut short, or a folder
    in its place, after its index was read is an error naming store, array and index."""
    uris = write_stores(str(tmp_path / "s"), stores=2, frames=32, size=SIZE, chunk=1, shard=16)
    ds = ZarrFrameDataset(uris, array=ARRAY)
    expected = reference(2, 32)
    before = ds.stats()
    np.testing.assert_array_equal(
        torch.stack(ds.__getitems__([0, 16, 32, 48])).numpy(), expected[[0, 16, 32, 48]]
    )
    assert (
        delta(ds, before, "shard_indexes_fetched") == 4 and delta(ds, before, "chunks_read_in_one_pass") == 0
    )
    before = ds.stats()
    picks = [5, 21, 37, 53, 5]
    np.testing.assert_array_equal(torch.stack(ds.__getitems__(picks)).numpy(), expected[picks])
    assert delta(ds, before, "chunks_read_in_one_pass") == 4, "frame 5 twice: read once, copied"
    assert delta(ds, before, "shard_indexes_fetched") == 0 and delta(ds, before, "cache_misses") == 0
    shard = Path(uris[0], ARRAY, "c", "1", "0", "0", "0")  # frames 16-31 of the first store
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        shard.unlink()
        shard.mkdir()
    with pytest.raises(ReadError, match=r"sample 30: array 'data/camera0_rgb' in store .*index 30") as err:
        ds.__getitems__([3, 30])
    assert ("truncated" if damage == "truncated" else "is a directory, not a file") in str(err.value)


def test_an_absent_shard_reads_as_the_fill_value_or_fails_when_strict(tmp_path):
    uri = write_store(str(tmp_path / "ep.zarr"), 0, [32], size=SIZE, chunk=1, shard=16)
    (tmp_path / "ep.zarr" / "data" / "camera0_rgb" / "c" / "1" / "0" / "0" / "0").unlink()
    assert (ZarrFrameDataset(uri, array=ARRAY)[20].numpy() == 0).all(), "as zarr reads it"
    with pytest.raises(ReadError, match="missing"):
        ZarrFrameDataset(uri, array=ARRAY, strict=True)[20]


#: unsharded layouts whose chunks hold one frame, which zarrs reads (zarr_torch.read.compiled).
ONE_FRAME_LAYOUTS = {
    "chunk1": {"chunk": 1},
    "tiles": {"chunk": 1, "tile": 5},
    "v2-blosc": {"chunk": 1, "codec": "blosc", "zarr_format": 2},
}


def test_items_of_one_value_from_an_absent_chunk_read_as_the_fill_value(tmp_path):
    """A 1-d array's items are scalars, copied out of the batch: absent chunks are filled
    before that, not left as whatever the batch's new memory held."""
    path = str(tmp_path / "v.zarr")
    arr = zarr.create_array(path, shape=(8,), chunks=(4,), dtype="int32", fill_value=7)
    arr[4:] = [1, 2, 3, 4]  # chunk 0 never written: absent
    got = ZarrFrameDataset(path).__getitems__([5, 0, 3, 6])
    assert [int(x) for x in got] == [2, 7, 7, 3]


def one_frame_stores(root: Path, name: str, frames: int = 16) -> list[str]:
    """Two stores of ``frames`` frames of ``ONE_FRAME_LAYOUTS[name]``, or for ``"zip"``
    the v2 ones zipped (as UMI ships them)."""
    zipped = name == "zip"
    uris = write_stores(
        str(root), stores=2, frames=frames, size=SIZE, **ONE_FRAME_LAYOUTS["v2-blosc" if zipped else name]
    )
    return [zip_store(u, f"{u}.zip") for u in uris] if zipped else uris


def one_frame_chunk(uri: str, frame: int, zarr_format: int = 3) -> Path:
    """The file of the chunk at the top left of ``frame`` in a store of ``one_frame_stores``."""
    folder = Path(uri, ARRAY)
    return folder / f"{frame}.0.0.0" if zarr_format == 2 else folder.joinpath("c", str(frame), "0", "0", "0")


@pytest.mark.parametrize("name", [*sorted(ONE_FRAME_LAYOUTS), "zip"])
def test_local_chunks_within_one_frame_are_read_in_one_pass(tmp_path, name):
    ds = ZarrFrameDataset(one_frame_stores(tmp_path / "s", name), array=ARRAY)
    picks = [3, 30, 3, 17, 0, 31]
    before = ds.stats()
    np.testing.assert_array_equal(torch.stack(ds.__getitems__(picks)).numpy(), reference(2, 16)[picks])
    tiles = math.ceil(SIZE / 5) ** 2 if name == "tiles" else 1  # edge tiles cut short
    assert delta(ds, before, "chunks_read_in_one_pass") == 5 * tiles, "frame 3 twice: read once, copied"
    # the general path counts every chunk it plans as a cache miss: none was planned
    assert delta(ds, before, "cache_misses") == 0 and delta(ds, before, "chunks_read_by_zarrs") == 0


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("name", ["chunk1", "tiles"])
def test_a_frame_the_one_pass_cannot_read_is_read_again_absent_or_named(tmp_path, name, strict):
    """An absent chunk reads as the fill value (or fails when strict), a truncated one or a
    directory in its place fails, naming store, array and index: the general path reads
    those frames again and tells which."""
    [uri, _] = one_frame_stores(tmp_path / "s", name)
    ds = ZarrFrameDataset(tmp_path / "s", array=ARRAY, strict=strict)
    one_frame_chunk(uri, 2).unlink()
    expected = zarr.open_array(uri, path=ARRAY, mode="r")[[1, 2, 4]]
    assert (expected[1] == 0).any() and (expected[1] != 0).any() == (name == "tiles")
    if strict:
        with pytest.raises(
            ReadError, match=r"sample 2: array 'data/camera0_rgb' in store .*index 2: .*missing"
        ):
            ds.__getitems__([1, 2, 4])
    else:
        before = ds.stats()
        np.testing.assert_array_equal(torch.stack(ds.__getitems__([1, 2, 4])).numpy(), expected)
        assert delta(ds, before, "chunks_absent") == 1
    chunk = one_frame_chunk(uri, 5)
    chunk.write_bytes(chunk.read_bytes()[:-1])
    with pytest.raises(ReadError, match=r"sample 5: array 'data/camera0_rgb' in store .*index 5"):
        ds.__getitems__([4, 5])
    chunk.unlink()
    chunk.mkdir()
    with pytest.raises(
        ReadError, match=r"sample 5: array 'data/camera0_rgb' in store .*index 5: .*directory"
    ):
        ds.__getitems__([5, 6])


@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize("layout", ["tiles", "chunk16"])
def test_workers_read_local_chunks_in_one_pass(tmp_path, context, layout):
    """Tiles in any order, and chunks of 16 frames in ``ChunkAwareSampler``'s (each batch
    takes its chunks whole), go the one pass in every worker."""
    if layout == "tiles":
        ds = ZarrFrameDataset(one_frame_stores(tmp_path / "s", "tiles"), array=ARRAY)
        order, batch_size = list(range(32)), 8
    else:
        write_stores(str(tmp_path / "s"), stores=2, frames=64, size=SIZE, chunk=16)
        ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
        order, batch_size = list(ChunkAwareSampler(ds, seed=0, buffer_blocks=2)), 32
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=order,
        num_workers=2,
        multiprocessing_context=context,
        timeout=120,
        collate_fn=CollateWithStats(ds),
    )
    served = list(loader)
    expected = reference(2, len(ds) // 2)[order]
    np.testing.assert_array_equal(torch.cat([b for b, _ in served]).numpy(), expected)
    assert all(stats["chunks_read_in_one_pass"] > 0 and stats["cache_misses"] == 0 for _, stats in served)


@pytest.mark.parametrize("name", sorted(ONE_FRAME_LAYOUTS))
def test_zarrs_reads_frames_of_one_frame_chunks(tmp_path, name):
    write_stores(str(tmp_path / "s"), stores=2, frames=16, size=SIZE, **ONE_FRAME_LAYOUTS[name])
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, zarrs=True)
    picks = [3, 30, 3, 17, 0, 31]
    before = ds.stats()
    np.testing.assert_array_equal(torch.stack(ds.__getitems__(picks)).numpy(), reference(2, 16)[picks])
    tiles = math.ceil(SIZE / 5) ** 2 if name == "tiles" else 1  # edge tiles cut short
    assert delta(ds, before, "chunks_read_by_zarrs") == len(picks) * tiles
    assert delta(ds, before, "chunks_decoded_direct") == 0


def test_zarrs_absent_chunks_read_as_zarr_reads_them_or_fail_when_strict(tmp_path):
    """zarrs fills an absent chunk silently: zarr_torch reads such frames again itself."""
    path = str(tmp_path / "a.zarr")
    arr = zarr.create_array(
        path, shape=(8, SIZE, SIZE), chunks=(1, SIZE, SIZE), dtype="float32", fill_value=np.nan
    )
    values = np.random.default_rng(0).random((8, SIZE, SIZE), dtype=np.float32)
    arr[:2], arr[3:] = values[:2], values[3:]  # frame 2 never written: its chunk is absent
    ds = ZarrFrameDataset(path, zarrs=True)
    before = ds.stats()
    got = torch.stack(ds.__getitems__([1, 2, 5])).numpy()
    np.testing.assert_array_equal(got[[0, 2]], values[[1, 5]])
    assert np.isnan(got[1]).all(), "the fill value, as zarr reads it"
    assert delta(ds, before, "chunks_read_by_zarrs") == 3 and delta(ds, before, "chunks_absent") == 1
    with pytest.raises(ReadError, match="missing"):
        ZarrFrameDataset(path, strict=True, zarrs=True).__getitems__([1, 2])


def test_zarrs_a_stored_chunk_of_the_fill_value_is_read_again_not_taken_for_absent(tmp_path):
    path = str(tmp_path / "a.zarr")
    config = {"write_empty_chunks": True}
    arr = zarr.create_array(
        path, shape=(4, SIZE, SIZE, 3), chunks=(1, SIZE, SIZE, 3), dtype="uint8", config=config
    )
    values = make_frames(0, 4, SIZE)
    values[1] = 0  # stored, all of it the fill value
    arr[...] = values
    ds = ZarrFrameDataset(path, zarrs=True)
    before = ds.stats()
    np.testing.assert_array_equal(torch.stack(ds.__getitems__([0, 1, 2])).numpy(), values[:3])
    assert delta(ds, before, "chunks_read_by_zarrs") == 3
    assert delta(ds, before, "chunks_decoded_direct") == 1 and delta(ds, before, "chunks_absent") == 0


@pytest.mark.parametrize("dark_corners", [False, True], ids=["two frames sampled", "every frame sampled"])
def test_zarrs_an_absent_tile_is_told_from_tiles_that_start_with_the_fill_value(tmp_path, dark_corners):
    """Of frames in tiles, only the one with an absent tile is read again; tiles that start
    with the fill value (or hold it everywhere but off the sampled grid) are zarrs' reads.
    Only frames with a tile that starts so are sampled: two of them, or all."""
    path = str(tmp_path / "t.zarr")
    arr = zarr.create_array(path, shape=(4, 20, 20), chunks=(1, 10, 10), dtype="uint16", fill_value=0)
    values = np.arange(1, 4 * 400 + 1, dtype=np.uint16).reshape(4, 20, 20)
    if dark_corners:
        values[:, 0, 0] = values[:, 10, 10] = 0  # every frame's first and last tile start with it
    values[1, 10:, :10] = 0
    values[1, 11, 12 - 10] = 5  # off the sampled grid (every 7th element): a stored tile
    arr[...] = values
    Path(path, "c", "2", "0", "1").unlink()  # frame 2's top right tile: absent
    expected = arr[...]
    ds = ZarrFrameDataset(path, zarrs=True)
    before = ds.stats()
    np.testing.assert_array_equal(torch.stack(ds.__getitems__([0, 1, 2, 3])).numpy(), expected)
    assert delta(ds, before, "chunks_read_by_zarrs") == 16
    assert delta(ds, before, "chunks_absent") == 1 and delta(ds, before, "chunks_decoded_direct") == 3


def test_zarrs_failing_leaves_the_batch_to_errors_that_name_the_chunk(tmp_path):
    uri = write_store(str(tmp_path / "ep.zarr"), 0, [8], size=SIZE, chunk=1)
    chunk = tmp_path / "ep.zarr" / "data" / "camera0_rgb" / "c" / "5" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    ds = ZarrFrameDataset(uri, array=ARRAY, zarrs=True)
    with pytest.raises(ReadError, match=r"sample 5: array 'data/camera0_rgb' in store .*ep\.zarr.*index 5"):
        ds.__getitems__([1, 5])
    before = ds.stats()
    np.testing.assert_array_equal(torch.stack(ds.__getitems__([1, 2])).numpy(), reference(1, 8)[[1, 2]])
    assert delta(ds, before, "chunks_read_by_zarrs") == 2


class CollateWithPool(CollateWithStats):
    """Also the size a worker gave zarrs' thread pool."""

    def __call__(self, batch: list[Any]) -> tuple[Any, dict[str, Any]]:
        collated, stats = super().__call__(batch)
        return collated, {**stats, "pool": os.environ.get("RAYON_NUM_THREADS")}


class CollateWithThreads(CollateWithStats):
    """Also the names of the worker's threads."""

    def __call__(self, batch: list[Any]) -> tuple[Any, dict[str, Any]]:
        collated, stats = super().__call__(batch)
        return collated, {**stats, "threads": sorted(t.name for t in threading.enumerate())}


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_worker_opens_local_arrays_without_zarrs_io_loop(tmp_path, context):
    """A worker opens the arrays of local folder stores from their metadata documents,
    read in its own thread: it starts no zarr I/O loop (its start and trips cost a
    worker's first batch about 10 ms) when the one pass reads the batch whole."""
    write_stores(str(tmp_path / "s"), stores=2, frames=8, size=SIZE, chunk=1)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
    loader = DataLoader(
        ds,
        batch_size=16,
        num_workers=1,
        multiprocessing_context=context,
        timeout=120,
        collate_fn=CollateWithThreads(ds),
    )
    [(batch, stats)] = list(loader)
    np.testing.assert_array_equal(batch.numpy(), reference(2, 8))
    assert stats["chunks_read_in_one_pass"] == 16
    assert "zarr_io" not in stats["threads"], stats["threads"]


@pytest.mark.parametrize("codec", ["zstd", "blosc"])
def test_a_worker_of_one_decode_thread_decodes_on_its_own_thread(tmp_path, codec):
    """A worker whose budget is one thread reads a batch of zstd chunks on its own thread,
    starting no decode thread (a hop to one and back cost it 5-7% of its frames/s); blosc,
    which starts threads of its own on a process's main thread, stays on a decode thread."""
    options = {"zarr_format": 2, "codec": "blosc"} if codec == "blosc" else {}
    write_stores(str(tmp_path / "s"), stores=2, frames=8, size=SIZE, chunk=1, **options)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, threads=1)
    loader = DataLoader(ds, batch_size=16, num_workers=1, timeout=120, collate_fn=CollateWithThreads(ds))
    [(batch, stats)] = list(loader)
    np.testing.assert_array_equal(batch.numpy(), reference(2, 8))
    assert stats["chunks_read_in_one_pass"] == 16
    decode_threads = [name for name in stats["threads"] if name.startswith("zarr_torch_decode")]
    assert decode_threads == ([] if codec == "zstd" else ["zarr_torch_decode1_0"]), stats["threads"]


def load_in_workers(root: str, context: str, parent: str) -> tuple[np.ndarray, dict[str, Any]]:
    """In this (fresh) process: ``parent`` reads a frame of ``root`` (``"zarr"``, which
    loads zarrs with its codec pipelines; ``"zarr with zarrs"``, zarr with zarrs as its
    codec pipeline; or ``"zarr_torch"``), then a ``DataLoader`` with two ``context``
    workers reads ``root``: every frame, and the last worker's stats and zarrs' pool."""
    store = f"{root}/episode_00000.zarr"
    zarrs_pipeline = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}
    with zarr.config.set(zarrs_pipeline if parent == "zarr with zarrs" else {}):
        zarr.open_array(store, path=ARRAY, mode="r")[0]
    assert "zarrs._internal" in sys.modules, "zarr loaded zarrs"
    # a worker forked from a process that made zarrs' pool gets the whole pool's budget:
    # only the fork keeps zarrs from it
    made = context == "fork" and parent != "zarr"
    ds = ZarrFrameDataset(root, array=ARRAY, threads=process.available_cores() if made else None, zarrs=True)
    if parent == "zarr_torch":
        ds.__getitems__([0, 1])
    loader = DataLoader(
        ds,
        batch_size=8,
        num_workers=2,
        multiprocessing_context=multiprocessing.get_context(context),
        timeout=120,
        collate_fn=CollateWithPool(ds),
    )
    served = list(loader)
    return torch.cat([b for b, _ in served]).numpy(), served[-1][1]


@pytest.mark.parametrize(
    ("context", "parent", "by_zarrs"),
    [
        ("fork", "zarr", True),
        ("fork", "zarr_torch", False),
        ("fork", "zarr with zarrs", False),
        ("spawn", "zarr_torch", True),
    ],
)
def test_zarrs_serves_workers_unless_forked_from_a_process_that_made_its_pool(
    tmp_path, context, parent, by_zarrs
):
    """rayon's pool, made with zarrs' first reader, does not survive a fork
    (zarrs-python#171): a worker forked after the parent made it (reading with zarr_torch,
    or with zarr's zarrs codec pipeline: the probe finds it dead) reads without zarrs, and
    never hangs; a worker forked from a parent that only loaded zarrs, or spawned, reads
    with it."""
    write_stores(str(tmp_path / "s"), stores=2, frames=16, size=SIZE, chunk=1)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        frames, last = fresh.submit(load_in_workers, str(tmp_path / "s"), context, parent).result(timeout=300)
    np.testing.assert_array_equal(frames, reference(2, 16))
    if by_zarrs:
        assert last["chunks_read_by_zarrs"] > 0 and last["chunks_decoded_direct"] == 0
        assert last["pool"] == str(max(1, process.available_cores() // 2)), "the worker's budget"
    else:
        assert last["chunks_read_by_zarrs"] == 0 and last["chunks_decoded_direct"] > 0


def test_zarrs_serves_a_read_only_within_its_thread_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYON_NUM_THREADS", "2")  # the pool zarrs would use
    write_stores(str(tmp_path / "s"), stores=1, frames=8, size=SIZE, chunk=1)
    one = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, threads=1, zarrs=True)
    before = one.stats()
    one.__getitems__([0, 1])
    assert (
        delta(one, before, "chunks_read_by_zarrs") == 0 and delta(one, before, "chunks_decoded_direct") == 2
    )
    two = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, threads=2, zarrs=True)
    before = two.stats()
    two.__getitems__([0, 1])
    assert delta(two, before, "chunks_read_by_zarrs") == 2


def test_sharded_reads_on_s3_use_byte_ranges(s3_bucket, s3_options):
    write_stores(
        f"{s3_bucket}/eps", stores=2, frames=24, size=SIZE, chunk=1, shard=8, storage_options=s3_options
    )
    ds = ZarrFrameDataset(f"{s3_bucket}/eps", array=ARRAY, storage_options=s3_options)
    before = ds.stats()
    order = np.random.default_rng(1).permutation(48)
    got = np.stack([f.numpy() for k in range(0, 48, 16) for f in ds.__getitems__(order[k : k + 16].tolist())])
    np.testing.assert_array_equal(got, reference(2, 24)[order])
    assert delta(ds, before, "shard_indexes_fetched") == 6
    assert 0 < delta(ds, before, "ranges_fetched") <= 48
    assert delta(ds, before, "chunks_decoded_into_batch") == 48


def test_cache_keeps_within_its_budget(tmp_path):
    write_stores(str(tmp_path / "s"), stores=2, frames=40, size=SIZE, chunk=4)
    chunk_bytes = 4 * SIZE * SIZE * 3
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, cache_bytes=3 * chunk_bytes)
    for start in range(0, 80, 8):
        ds.__getitems__(list(range(start, start + 8)))
        assert ds.stats()["cache_bytes"] <= 3 * chunk_bytes
    assert ds.stats()["cache_budget"] == 3 * chunk_bytes


def test_lru_drops_the_least_recently_used():
    cache = ChunkCache(budget=30)
    for k in "abc":
        cache.put(k, np.zeros(10, dtype=np.uint8))
    cache.get("a")
    cache.put("d", np.zeros(10, dtype=np.uint8))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 3
    cache.put("huge", np.zeros(31, dtype=np.uint8))
    assert cache.get("huge") is None, "an item over the whole budget is not kept"


def torch_threads(frame: np.ndarray) -> torch.Tensor:
    """(torch threads, sizes of the decode pools made) in the process that read ``frame``."""
    return torch.tensor([torch.get_num_threads(), *sorted(process.process_state().pools)])


def seen_budgets(ds: ZarrFrameDataset, workers: int) -> set[tuple[int, ...]]:
    return {tuple(t.tolist()) for b in DataLoader(ds, batch_size=2, num_workers=workers) for t in b}


def test_workers_share_the_cores(tmp_path):
    write_stores(str(tmp_path / "s"), stores=1, frames=8, size=SIZE, chunk=4)
    cores = process.available_cores()
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, transform=torch_threads)
    # One worker has every core (DataLoader alone would leave it 1 torch thread); two share them.
    assert seen_budgets(ds, 1) == {(cores, cores)}
    assert seen_budgets(ds, 2) == {(max(1, cores // 2),) * 2}
    pinned = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, transform=torch_threads, threads=3)
    assert seen_budgets(pinned, 2) == {(3, 3)}


def test_budgets_belong_to_the_dataset_that_asked(tmp_path):
    write_stores(str(tmp_path / "s"), stores=2, frames=16, size=SIZE, chunk=4)
    chunk = 4 * SIZE * SIZE * 3
    small = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, cache_bytes=2 * chunk, threads=1)
    large = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, cache_bytes=8 * chunk)
    before = torch.get_num_threads()
    for ds in (small, large, small):
        ds.__getitems__(list(range(0, 32, 3)))
    assert small.stats()["cache_budget"] == 2 * chunk and small.stats()["cache_bytes"] <= 2 * chunk
    assert large.stats()["cache_budget"] == 8 * chunk and large.stats()["cache_bytes"] > 2 * chunk
    assert torch.get_num_threads() == before, "threads= never changes the training process's torch"
    assert {1, process.available_cores()} <= set(process.process_state().pools)


class CountingCodec(numcodecs.abc.Codec):
    """A registered codec (stored bytes as they are) that records how many decodes overlap."""

    codec_id = "zarr_torch_test_counting"
    lock = threading.Lock()
    active = peak = 0
    #: the names of the threads that decoded.
    threads: ClassVar[set[str]] = set()

    def encode(self, buf):
        return bytes(memoryview(buf).cast("B"))

    def decode(self, buf, out=None):
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.peak = max(cls.peak, cls.active)
            cls.threads.add(threading.current_thread().name)
        time.sleep(0.002)  # long enough for decodes on other threads to overlap
        with cls.lock:
            cls.active -= 1
        return numcodecs.compat.ndarray_copy(buf, out) if out is not None else bytes(buf)


@pytest.mark.parametrize("threadless", [False, True], ids=["on-the-pool", "on-the-calling-threads"])
@pytest.mark.parametrize("threads", [1, 3])
def test_the_thread_budget_holds_when_threads_read_the_dataset(tmp_path, monkeypatch, threads, threadless):
    """However many threads call the dataset, no more decodes than its budget run at once:
    on the budget's pool, or (a decoder that starts no threads of its own) on the threads
    that called, each in one of the budget's slots."""
    from torchdata.nodes import Batcher, Loader, ParallelMapper, SamplerWrapper

    numcodecs.register_codec(CountingCodec)
    if threadless:  # as zstd: read on the calling thread (tiny chunks are one thread's work)
        monkeypatch.setattr(decode, "THREADLESS", (*decode.THREADLESS, CountingCodec))
    values = np.arange(48 * 4 * 4, dtype="uint8").reshape(48, 4, 4)
    arr = zarr.create_array(
        str(tmp_path / "c.zarr"),
        shape=values.shape,
        chunks=(1, 4, 4),
        dtype="uint8",
        zarr_format=2,
        compressors=CountingCodec(),
    )
    arr[...] = values
    ds = ZarrFrameDataset(str(tmp_path / "c.zarr"), threads=threads)
    CountingCodec.peak, CountingCodec.threads = 0, set()
    node = ParallelMapper(
        Batcher(SamplerWrapper(ChunkAwareSampler(ds, shuffle=False)), batch_size=4),
        map_fn=ds.__getitems__,
        num_workers=4,
        method="thread",
    )
    frames = [f for batch in Loader(node) for f in batch]
    np.testing.assert_array_equal(torch.stack(frames).numpy(), values)
    assert CountingCodec.peak == threads, f"{CountingCodec.peak} decodes overlapped; the budget is {threads}"
    on_pool = {name.startswith("zarr_torch_decode") for name in CountingCodec.threads}
    assert on_pool == {not threadless}, CountingCodec.threads


@pytest.mark.parametrize("checksum", [False, True])
def test_a_chunk_nobody_keeps_decodes_only_the_rows_the_batch_needs(tmp_path, checksum):
    """With the cache off, a zstd chunk stops decoding after the last row a batch needs;
    one with a content checksum decodes whole, so a changed byte is still an error."""
    zstd = zarr.codecs.ZstdCodec(level=1, checksum=checksum)
    values = written(tmp_path / "a.zarr", (32, 6, 5), (16, 6, 5), compressors=zstd)
    ds = ZarrFrameDataset(str(tmp_path / "a.zarr"), cache_bytes=0)
    before = ds.stats()
    np.testing.assert_array_equal(torch.stack(ds.__getitems__([20, 2, 0])).numpy(), values[[20, 2, 0]])
    rows = 32 if checksum else 3 + 5  # chunk 0 up to row 2, chunk 1 up to row 4
    assert delta(ds, before, "bytes_decoded") == rows * 6 * 5
    assert delta(ds, before, "chunks_decoded_direct") == 2
    if checksum:
        chunk = tmp_path / "a.zarr" / "c" / "0" / "0" / "0"
        raw = bytearray(chunk.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        chunk.write_bytes(bytes(raw))
        with pytest.raises(ReadError, match=r"sample 2: array '' in store .*a\.zarr.*index 2: .*checksum"):
            ds.__getitems__([2])


def test_a_chunk_file_nobody_keeps_is_read_only_as_far_as_the_rows_needed(tmp_path):
    """With the cache off, a zstd chunk file of whole frames is read a little at a time and
    no further than the last row a batch needs; a file cut short before a row needed, or a
    folder in a chunk's place, is an error naming the sample, store and index."""
    path = tmp_path / "a.zarr"
    frames = np.random.default_rng(0).integers(0, 256, (32, 128, 256), dtype=np.uint8)  # 32 KB each
    zarr.create_array(str(path), shape=frames.shape, chunks=(16, 128, 256), dtype="uint8")[...] = frames
    files = [path / "c" / str(k) / "0" / "0" for k in (0, 1)]
    sizes = [f.stat().st_size for f in files]
    assert min(sizes) > 16 * 32768  # incompressible: the frames lie in the file in order
    ds = ZarrFrameDataset(str(path), cache_bytes=0)
    before = ds.stats()
    np.testing.assert_array_equal(torch.stack(ds.__getitems__([1, 17])).numpy(), frames[[1, 17]])
    assert delta(ds, before, "chunks_decoded_into_batch") == 2
    assert delta(ds, before, "bytes_fetched") < sum(sizes) / 2  # rows 0-1 of each, and a read's margin
    files[1].write_bytes(files[1].read_bytes()[: sizes[1] // 2])  # rows 0 to about 7 left
    np.testing.assert_array_equal(ds[18].numpy(), frames[18])
    with pytest.raises(ReadError, match=r"sample 30: array '' in store .*a\.zarr.*index 30: .*fewer bytes"):
        ds.__getitems__([2, 30])
    files[0].unlink()
    files[0].mkdir()
    with pytest.raises(ReadError, match=r"sample 3: array '' in store .*a\.zarr.*index 3: .*directory"):
        ds.__getitems__([3])


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("codec", ["blosc", "zstd", "gzip"])
def test_a_chunk_cut_short_by_one_byte_is_an_error_never_wrong_pixels(tmp_path, fmt, codec):
    uri = write_store(str(tmp_path / "ep.zarr"), 0, [8], size=SIZE, chunk=2, codec=codec, zarr_format=fmt)
    folder = tmp_path / "ep.zarr" / "data" / "camera0_rgb"
    chunk = folder / "0.0.0.0" if fmt == 2 else folder / "c" / "0" / "0" / "0" / "0"  # frames 0 and 1
    chunk.write_bytes(chunk.read_bytes()[:-1])
    ds = ZarrFrameDataset(uri, array=ARRAY)
    np.testing.assert_array_equal(ds[5].numpy(), reference(1, 8)[5])
    with pytest.raises(ReadError, match=r"sample 1: array 'data/camera0_rgb' in store .*ep\.zarr.*index 1"):
        ds.__getitems__([5, 1])


def test_a_store_deleted_under_a_running_dataset_is_an_error_not_black_frames(tmp_path):
    import shutil

    write_stores(str(tmp_path / "s"), stores=2, frames=8, size=SIZE, chunk=1)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
    np.testing.assert_array_equal(np.stack(ds.__getitems__([1, 9])), reference(2, 8)[[1, 9]])
    shutil.rmtree(tmp_path / "s" / "episode_00001.zarr")
    np.testing.assert_array_equal(ds[2].numpy(), reference(2, 8)[2])
    with pytest.raises(ReadError, match=r"sample 10: .*episode_00001\.zarr.*metadata .* is gone") as err:
        ds.__getitems__([2, 10])
    assert isinstance(err.value.__cause__, FileNotFoundError)


def test_a_store_deleted_between_epochs_of_persistent_workers_is_an_error(tmp_path):
    import shutil

    write_stores(str(tmp_path / "s"), stores=2, frames=8, size=SIZE, chunk=1)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True, timeout=60)
    np.testing.assert_array_equal(torch.cat(list(loader)).numpy(), reference(2, 8))
    shutil.rmtree(tmp_path / "s" / "episode_00001.zarr")  # the workers have it open
    with pytest.raises(ReadError, match=r"sample 8: .*episode_00001\.zarr.*metadata .* is gone"):
        list(loader)


def test_a_store_deleted_from_s3_under_a_running_dataset_is_an_error(s3_bucket, s3_options):
    import s3fs

    uris = write_stores(
        f"{s3_bucket}/eps", stores=2, frames=6, size=SIZE, chunk=2, storage_options=s3_options
    )
    ds = ZarrFrameDataset(uris, array=ARRAY, storage_options=s3_options)
    np.testing.assert_array_equal(ds[7].numpy(), reference(2, 6)[7])
    s3fs.S3FileSystem(skip_instance_cache=True, **s3_options).rm(uris[1], recursive=True)
    with pytest.raises(ReadError, match=r"sample 10: .*episode_00001\.zarr.*metadata .* is gone"):
        ds[10]  # a chunk not read before (frame 7's stays cached: the right pixels)
    np.testing.assert_array_equal(ds[1].numpy(), reference(2, 6)[1])


def test_a_store_rewritten_with_another_chunking_never_gets_old_cached_chunks(tmp_path):
    uri = write_store(str(tmp_path / "ep.zarr"), 0, [16], size=SIZE, chunk=8)
    ds = ZarrFrameDataset(uri, array=ARRAY)
    np.testing.assert_array_equal(ds[3].numpy(), reference(1, 16)[3])  # chunk 0 now cached
    write_store(uri, 1, [16], size=SIZE, chunk=4, overwrite=True)  # other frames, other chunks
    with pytest.raises(
        ValueError, match=r"has chunks \(4, 12, 12, 3\), but the index expects \(8, 12, 12, 3\)"
    ):
        ds.index.validate()  # reads the metadata afresh, and says what changed
    np.testing.assert_array_equal(ds[3].numpy(), make_frames(1, 16, SIZE)[3])


# -- items over several leading axes: an OME-Zarr-like (t, c, z, y, x) image --

OME_SHAPE = (2, 3, 4, 64, 64)


def ome_image(path, chunks: tuple[int, ...]) -> np.ndarray:
    """An OME-Zarr (0.4) image as its writers lay it out: a group whose ``multiscales``
    names the axes, a full-resolution array "0" in spatial chunks and a 2x-down level "1"."""
    values = np.random.default_rng(5).integers(0, 2**16, OME_SHAPE, dtype=np.uint16)
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"
    ]
    levels = [
        {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 2**k, 2**k]}]}
        for k in (0, 1)
    ]
    group = zarr.open_group(str(path), mode="w", zarr_format=2)  # ome-zarr-py writes v2 for 0.4
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": levels}]
    keys = {"name": "v2", "separator": "/"}  # OME-Zarr's nested chunk keys
    group.create_array("0", data=values, chunks=chunks, chunk_key_encoding=keys)
    group.create_array("1", data=values[..., ::2, ::2], chunks=(*chunks[:3], 32, 32), chunk_key_encoding=keys)
    return values


@pytest.mark.parametrize("chunks", [(1, 1, 1, 32, 32), (1, 2, 2, 64, 64)], ids=["tiles", "planes"])
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_planes_of_a_5d_image_are_items_over_three_axes(tmp_path, chunks, context):
    values = ome_image(tmp_path / "image.ome.zarr", chunks)
    index = SelectionIndex.build(str(tmp_path / "image.ome.zarr"), array="0", item_axes=3)
    assert len(index) == 2 * 3 * 4 and index[5].index == [0, 1, 1] and index[-1].index == [1, 2, 3]
    index.save(tmp_path / "planes.zti")
    for source in (index, SelectionIndex.load(tmp_path / "planes.zti")):
        ds = ZarrFrameDataset(source)
        before = ds.stats()
        loader = DataLoader(ds, batch_size=5, num_workers=2, multiprocessing_context=context, timeout=120)
        got = torch.cat(list(loader)).numpy()
        np.testing.assert_array_equal(got, values.reshape(-1, 64, 64))
        np.testing.assert_array_equal(ds[17].numpy(), values[1, 1, 1])
        assert (
            delta(ds, before, "chunks_decoded_direct") > 0
            and delta(ds, before, "chunks_decoded_by_zarr") == 0
        )


def test_selections_over_several_axes_round_trip_through_an_index(tmp_path):
    values = ome_image(tmp_path / "image.ome.zarr", (1, 1, 2, 32, 32))
    arr = ZarrStore(uri=str(tmp_path / "image.ome.zarr")).get_array("0")
    picks = [[1, 2, 3], [0, 0, 0], [1, 0, 2], [-1, -1, -1]]
    index = SelectionIndex.from_selections(arr.select(p) for p in picks)
    assert [s.index for s in index] == [[1, 2, 3], [0, 0, 0], [1, 0, 2], [1, 2, 3]]
    np.testing.assert_array_equal(
        np.stack(ZarrFrameDataset(index).__getitems__([0, 1, 2])), values[[1, 0, 1], [2, 0, 0], [3, 0, 2]]
    )
    volumes = SelectionIndex.build(str(tmp_path / "image.ome.zarr"), array="0", item_axes=2)
    np.testing.assert_array_equal(ZarrFrameDataset(volumes)[4].numpy(), values[1, 1])
    with pytest.raises(ValueError, match=r"item_axes=6, but array '0' in store .* has 5 axes"):
        SelectionIndex.build(str(tmp_path / "image.ome.zarr"), array="0", item_axes=6)
    with pytest.raises(ValueError, match="windows run along the leading axis"):
        SelectionIndex.build(str(tmp_path / "image.ome.zarr"), array="0", item_axes=2, window=2)
    with pytest.raises(ValueError, match=r"selection 1 of array '0' .* is not over its 3 item axes"):
        SelectionIndex.from_selections([arr.select([0, 0, 0]), arr.select([0, 0])])
