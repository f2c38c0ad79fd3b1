"""Whole-chunk reads: exact against zarr, each chunk decoded once, cache within budget."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import zarr
from conftest import LAYOUTS, SIZE, reference
from torch.utils.data import DataLoader

from zarr_torch import ZarrFrameDataset, io
from zarr_torch.chunks import ChunkCache, whole_frame_chunks
from zarr_torch.synth import write_store, write_stores

ARRAY = "data/camera0_rgb"


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("length", [0, 5])
def test_batched_reads_equal_zarr(tmp_path, name, length):
    write_stores(str(tmp_path / "s"), stores=2, frames=37, size=SIZE, **LAYOUTS[name])
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
    specs = ds.index.array_specs()
    rng = np.random.default_rng(0)
    ids, starts = rng.integers(0, 2, 40), rng.integers(0, 37 - length, 40)
    got = io.run(io.read_items(specs, ids, starts, length))
    for a, s, frame in zip(ids, starts, got, strict=True):
        plain = zarr.open_array(specs[a][0], path=ARRAY, mode="r")
        np.testing.assert_array_equal(frame, plain[s] if length == 0 else plain[s : s + length])
        assert frame.flags.writeable and frame.flags.c_contiguous


def test_fast_path_is_taken_where_it_applies(tmp_path):
    plain = write_store(str(tmp_path / "a.zarr"), 0, [8], size=SIZE, chunk=4)
    sharded = write_store(str(tmp_path / "b.zarr"), 0, [8], size=SIZE, chunk=2, shard=4)
    assert whole_frame_chunks(io.run(io.open_array(plain, ARRAY)))
    assert not whole_frame_chunks(io.run(io.open_array(sharded, ARRAY)))


def test_each_chunk_is_fetched_and_decoded_once(tmp_path):
    write_stores(str(tmp_path / "s"), stores=1, frames=64, size=SIZE, chunk=16)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
    before = ds.stats()
    batch = ds.__getitems__(list(range(16, 32)))
    after = ds.stats()
    assert after["chunks_fetched"] - before["chunks_fetched"] == 1
    frame_bytes = SIZE * SIZE * 3
    assert after["bytes_decoded"] - before["bytes_decoded"] == 16 * frame_bytes
    assert after["bytes_returned"] - before["bytes_returned"] == 16 * frame_bytes
    np.testing.assert_array_equal(np.stack(batch), reference(1, 64)[16:32])
    ds.__getitems__([17, 20])  # chunk-mates in a later batch: from the cache
    again = ds.stats()
    assert again["chunks_fetched"] == after["chunks_fetched"]
    assert again["cache_hits"] == after["cache_hits"] + 1
    assert again["bytes_decoded"] == after["bytes_decoded"], "nothing decoded again"
    assert again["bytes_returned"] - after["bytes_returned"] == 2 * frame_bytes
    assert 0 < again["cache_hit_rate"] < 1


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
    return torch.tensor(torch.get_num_threads())


def test_workers_share_the_cores(tmp_path):
    write_stores(str(tmp_path / "s"), stores=1, frames=8, size=SIZE, chunk=4)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, transform=torch_threads)
    seen = {int(t) for batch in DataLoader(ds, batch_size=2, num_workers=2) for t in batch}
    assert seen == {max(1, (os.cpu_count() or 1) // 2)}
    pinned = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, transform=torch_threads, threads=3)
    assert {int(t) for batch in DataLoader(pinned, batch_size=2, num_workers=2) for t in batch} == {3}
