"""ChunkAwareSampler: every index once, few chunks per batch, equal shares, exact resume."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from checks import CollateWithStats, assert_every_frame_once, frame_id, roundtrip_pickle
from conftest import LAYOUTS, SIZE, reference
from torch.utils.data import BatchSampler, DataLoader

from zarr_torch import SelectionIndex, ZarrFrameDataset, ZarrStore
from zarr_torch.index import ROW_DTYPE, ArrayEntry
from zarr_torch.sampling import AheadBatch, ChunkAwareSampler, ReadAheadBatches
from zarr_torch.synth import write_stores
from zarr_torch.testing import FaultProxy

ARRAY = "data/camera0_rgb"


def index_of(lengths: list[int], chunk: int = 16) -> SelectionIndex:
    """An index over arrays of ``lengths`` frames chunked by ``chunk`` (metadata only)."""
    arrays = [
        ArrayEntry(store=i, path="x", shape=(n, 4), chunks=(chunk, 4), dtype="uint8")
        for i, n in enumerate(lengths)
    ]
    rows = np.zeros(sum(lengths), dtype=ROW_DTYPE)
    rows["array"] = np.repeat(np.arange(len(lengths)), lengths)
    rows["start"] = np.concatenate([np.arange(n) for n in lengths])
    return SelectionIndex([ZarrStore(uri=f"s{i}.zarr") for i in range(len(lengths))], arrays, rows)


def chunks_per_batch(index: SelectionIndex, order: np.ndarray, batch: int = 16) -> float:
    key = index.rows["array"].astype(np.int64) * 10**9 + index.rows["start"] // 16
    return float(
        np.mean([len(set(key[order[i : i + batch]])) for i in range(0, len(order) - batch + 1, batch)])
    )


def test_every_index_once_and_a_new_order_each_epoch():
    index = index_of([200, 37, 123])
    sampler = ChunkAwareSampler(index, seed=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(360)) and len(sampler) == 360
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]
    sampler.set_epoch(1)
    assert list(sampler) == orders[1], "an epoch's order depends only on seed and epoch"


def test_batches_touch_few_chunks():
    index = index_of([400] * 10)
    order = np.array(list(ChunkAwareSampler(index, seed=0)))
    plain = np.random.default_rng(0).permutation(len(index))
    assert chunks_per_batch(index, order) <= 4
    assert chunks_per_batch(index, plain) > 12


def test_block_size_and_no_shuffle():
    index = index_of([64, 64])
    assert list(ChunkAwareSampler(index, shuffle=False)) == list(range(128))
    order = np.array(list(ChunkAwareSampler(index, block_size=8, buffer_blocks=1)))
    assert all(len(set(order[i : i + 8] // 8)) == 1 for i in range(0, 128, 8)), "whole blocks of 8"


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_get_equal_shares_that_cover_everything(replicas, drop_last):
    index = index_of([100, 61])
    shares = [
        list(ChunkAwareSampler(index, seed=1, num_replicas=replicas, rank=r, drop_last=drop_last))
        for r in range(replicas)
    ]
    assert len({len(s) for s in shares}) == 1, "every rank runs the same number of samples"
    seen = [i for s in shares for i in s]
    if drop_last:
        assert len(seen) == 161 // replicas * replicas and len(set(seen)) == len(seen)
    else:
        assert set(seen) == set(range(161)) and len(seen) == -(-161 // replicas) * replicas
    for share in shares:
        assert chunks_per_batch(index, np.array(share)) <= 4, "each rank's order stays chunk-aware"


def test_resume_continues_with_exactly_the_remaining_indices():
    index = index_of([300, 50])
    sampler = ChunkAwareSampler(index, seed=5, num_replicas=2, rank=1)
    sampler.set_epoch(4)
    full = list(sampler)
    it = iter(sampler)
    head = [next(it) for _ in range(57)]
    state = sampler.state_dict()
    assert state == {"epoch": 4, "seed": 5, "cursor": 57, "num_replicas": 2, "size": 350}
    fresh = ChunkAwareSampler(index, seed=0, num_replicas=2, rank=1)
    fresh.load_state_dict(state)
    assert head + list(fresh) == full
    assert list(fresh) == full, "after the resumed epoch, the next one starts from the top"


def test_a_checkpoint_at_the_end_of_an_epoch_resumes_into_a_full_next_epoch():
    index = index_of([40, 24])
    sampler = ChunkAwareSampler(index, seed=2, num_replicas=2, rank=0)
    sampler.set_epoch(3)
    epoch3 = list(sampler)
    state = sampler.state_dict()
    assert state["cursor"] == len(epoch3) == 32

    sampler.set_epoch(4)
    epoch4 = list(sampler)

    sampler.set_epoch(5)
    epoch5 = list(sampler)

    resumed = ChunkAwareSampler(index, num_replicas=2, rank=0)
    resumed.load_state_dict(state)  # torchdata.nodes: restore, iterate, then set_epoch(its own count + 1)
    assert list(resumed) == epoch4, "the whole next epoch, not an empty or a repeated one"
    resumed.set_epoch(4)  # nodes' own count still says epoch 3 was the restored one
    assert list(resumed) == epoch5

    told = ChunkAwareSampler(index, num_replicas=2, rank=0)
    told.set_epoch(4)  # Lightning: set_epoch(next), then the loader restores the sampler
    told.load_state_dict(state)
    assert list(told) == epoch4, "the whole next epoch, not an empty or a repeated one"


def test_a_restored_cursor_belongs_to_its_epoch():
    index = index_of([64])
    sampler = ChunkAwareSampler(index, seed=1)
    it = iter(sampler)
    for _ in range(10):
        next(it)
    resumed = ChunkAwareSampler(index, seed=1)
    resumed.load_state_dict(sampler.state_dict())
    resumed.set_epoch(1)
    assert sorted(resumed) == list(range(64)), "another epoch starts from its top"


def test_a_state_from_another_share_or_dataset_is_refused():
    state = ChunkAwareSampler(index_of([30]), num_replicas=2, rank=1).state_dict()
    with pytest.raises(ValueError, match="saved with num_replicas=2, but this sampler has num_replicas=3"):
        ChunkAwareSampler(index_of([30]), num_replicas=3, rank=1).load_state_dict(state)
    with pytest.raises(ValueError, match="saved with size=30, but this sampler has size=31"):
        ChunkAwareSampler(index_of([31]), num_replicas=2, rank=1).load_state_dict(state)


def test_it_is_a_distributed_sampler_that_frameworks_keep():
    from torch.utils.data import DistributedSampler

    sampler = ChunkAwareSampler(index_of([10]))
    assert isinstance(sampler, DistributedSampler), "Lightning wraps any other sampler a second time"
    assert (sampler.num_replicas, sampler.rank, sampler.num_samples, sampler.total_size) == (1, 0, 10, 10)


def test_bad_arguments():
    index = index_of([10])
    with pytest.raises(ValueError, match="rank 2 is out of range for 2 replicas"):
        ChunkAwareSampler(index, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="buffer_blocks must be at least 1"):
        ChunkAwareSampler(index, buffer_blocks=0)
    with pytest.raises(ValueError, match="cursor 11 is out of range for 10 samples"):
        ChunkAwareSampler(index).load_state_dict({"epoch": 0, "seed": 0, "cursor": 11})
    with pytest.raises(ValueError, match="needs at least one sample"):
        ChunkAwareSampler(index_of([0]))
    with pytest.raises(TypeError, match="needs a ZarrFrameDataset or SelectionIndex"):
        ChunkAwareSampler(list(range(10)))


# -- through real loaders -------------------------------------------------------------


def fingerprints(batch) -> list[tuple[int, int]]:
    return [frame_id(f) for f in batch.numpy()]


@pytest.mark.parametrize("stop_after", [1, 4, 7])
def test_stateful_dataloader_resumes_with_the_remaining_batches(local_stores, stop_after):
    from torchdata.stateful_dataloader import StatefulDataLoader

    ds = ZarrFrameDataset(local_stores, array="data/camera0_rgb")

    def loader() -> StatefulDataLoader:
        sampler = ChunkAwareSampler(ds, seed=11)
        sampler.set_epoch(2)
        return StatefulDataLoader(
            ds, batch_size=3, sampler=sampler, num_workers=2, multiprocessing_context="spawn", timeout=120
        )

    full = [fingerprints(b) for b in loader()]
    first = loader()
    head = []
    for batch in first:
        head.append(fingerprints(batch))
        if len(head) == stop_after:
            state = first.state_dict()
            break
    resumed = loader()
    resumed.load_state_dict(state)
    tail = [fingerprints(b) for b in resumed]
    assert head + tail == full
    assert len(full) == 10 and sorted(f for b in full for f in b) == sorted(
        (s, t) for s in range(3) for t in range(10)
    )


def test_torchrun_two_ranks_equal_batches_full_coverage(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    write_stores(str(tmp_path / "d"), stores=3, frames=21, size=8, chunk=4)
    example = Path(__file__).parent.parent / "examples" / "ddp_train.py"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(example),
            str(tmp_path / "d"),
            "--out",
            str(tmp_path / "seen"),
            "--epochs",
            "2",
            "--workers",
            "1",
            "--batch-size",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "seen" / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2 * 8, "equal batch counts: 32 samples a rank, 2 epochs"
    for epoch in range(2):
        seen = [i for rank in ranks for batch in rank[epoch * 8 : (epoch + 1) * 8] for i in batch]
        assert set(seen) == set(range(63)) and len(seen) == 64, "every index, one padded repeat"


# -- read-ahead ---------------------------------------------------------------------------


def test_read_ahead_batches_are_the_batches_and_name_each_workers_next_ones():
    sampler = ChunkAwareSampler(index_of([40, 23]), seed=1)
    plain = [list(b) for b in BatchSampler(sampler, 8, False)]
    batches = ReadAheadBatches(sampler, 8, workers=3, depth=2)
    got = list(batches)
    assert [list(b) for b in got] == plain and len(batches) == len(plain)
    for k, b in enumerate(got):  # the loader hands batch k + 3 to the worker that read batch k
        assert b.ahead == plain[k + 3 : k + 7 : 3]
    copy, _ = roundtrip_pickle(got[0])
    assert copy == got[0] and copy.ahead == got[0].ahead, "what a worker receives"


def test_read_ahead_state_counts_only_the_batches_yielded():
    sampler = ChunkAwareSampler(index_of([64]), seed=2)
    batches = ReadAheadBatches(sampler, 8, workers=2, depth=2)
    it = iter(batches)
    taken = [list(next(it)) for _ in range(3)]
    state = batches.state_dict()
    assert state["cursor"] == 24, "the batches looked at ahead are not spent"
    resumed = ChunkAwareSampler(index_of([64]), seed=2)
    resumed.load_state_dict(state)
    rest = [i for b in BatchSampler(resumed, 8, False) for i in b]
    assert sorted([i for b in taken for i in b] + rest) == list(range(64))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_fetch_their_next_batches_ahead_from_s3(
    s3_bucket, s3_options, s3_endpoint, tmp_path, context
):
    write_stores(f"{s3_bucket}/eps", stores=3, frames=16, size=SIZE, chunk=1, storage_options=s3_options)
    with FaultProxy(s3_endpoint, delay=0.01) as proxy:
        options = {**s3_options, "client_kwargs": {**s3_options["client_kwargs"], "endpoint_url": proxy.url}}
        SelectionIndex.build(f"{s3_bucket}/eps", array=ARRAY, storage_options=options).save(
            tmp_path / "f.zti"
        )
        ds = ZarrFrameDataset(SelectionIndex.load(tmp_path / "f.zti", storage_options=options))
        loader = DataLoader(
            ds,
            batch_sampler=ReadAheadBatches(ChunkAwareSampler(ds, seed=0), 4, workers=2, depth=2),
            num_workers=2,
            multiprocessing_context=context,
            collate_fn=CollateWithStats(ds),
            timeout=120,
        )
        got = list(loader)
    assert_every_frame_once((batch for batch, _ in got), reference(3, 16), 16)
    used = max(stats["fetches_ahead_used"] for _, stats in got)
    assert used > 0 and max(stats["fetches_ahead"] for _, stats in got) >= used, (
        "chunks came from fetches ahead"
    )


def test_planning_the_next_batches_never_holds_up_this_one(s3_bucket, s3_options, s3_endpoint):
    """Planning a batch ahead reads its shard's index; the batch asked for now returns
    while that request is held, and the batch ahead is then read from the fetches begun."""
    layout = LAYOUTS["v3-sharded-chunk1"]
    write_stores(f"{s3_bucket}/eps", stores=2, frames=16, size=SIZE, storage_options=s3_options, **layout)
    held = f"episode_00001.zarr/{ARRAY}/c/1/0/0/0"  # the shard of frames 24-27
    with FaultProxy(s3_endpoint, hold=lambda path: path.endswith(held)) as proxy:
        options = {**s3_options, "client_kwargs": {**s3_options["client_kwargs"], "endpoint_url": proxy.url}}
        ds = ZarrFrameDataset(f"{s3_bucket}/eps", array=ARRAY, storage_options=options)
        with ThreadPoolExecutor(1) as pool:
            now = pool.submit(ds.__getitems__, AheadBatch([0, 1, 2, 3], [[24, 25, 26, 27]]))
            try:
                frames = now.result(timeout=20)
            finally:
                proxy.released.set()
        np.testing.assert_array_equal(torch.stack(frames).numpy(), reference(2, 16)[:4])
        for _ in range(200):  # the planning goes on once released: wait for its fetches
            if ds.stats()["fetches_ahead"]:
                break
            time.sleep(0.05)
        ahead = torch.stack(ds.__getitems__([24, 25, 26, 27])).numpy()
        np.testing.assert_array_equal(ahead, reference(2, 16)[24:28])
        assert ds.stats()["fetches_ahead_used"] > 0
