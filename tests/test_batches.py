"""Samples that are rows of one batch: default_collate hands the batch on without a copy,
and every other use of them is a plain tensor's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from checks import roundtrip_pickle
from torch.utils.data import DataLoader, default_collate

from zarr_torch import ZarrFrameDataset, process
from zarr_torch.batches import rows, shared
from zarr_torch.synth import write_stores

ARRAY = "data/camera0_rgb"


@pytest.fixture
def ds(tmp_path):
    write_stores(str(tmp_path / "s"), stores=2, frames=12, size=16, chunk=4)
    return ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)


def test_default_collate_of_a_read_batch_is_that_batch_uncopied(ds):
    samples = ds.__getitems__([13, 2, 2, 23])
    batch = default_collate(samples)
    assert batch.data_ptr() == samples[0].data_ptr()  # the batch read, not a stacked copy
    assert type(batch) is torch.Tensor
    np.testing.assert_array_equal(batch.numpy(), np.stack([ds[i].numpy() for i in [13, 2, 2, 23]]))


def test_rows_stacked_other_than_whole_and_in_order_are_copied():
    batch = torch.arange(24, dtype=torch.int16).reshape(4, 6)
    samples = rows(batch)
    for picked in (samples[:3], samples[::-1], [samples[0], samples[0], samples[2], samples[3]]):
        stacked = torch.stack(picked)
        assert stacked.data_ptr() != batch.data_ptr()
        torch.testing.assert_close(stacked, torch.stack([s.as_subclass(torch.Tensor) for s in picked]))
    moved = rows(batch)
    moved[1].set_(torch.full((6,), 7, dtype=torch.int16))  # a row made to show other values
    stacked = torch.stack(moved)
    assert stacked.data_ptr() != batch.data_ptr() and stacked[1].tolist() == [7] * 6
    out = torch.empty(4, 6, dtype=torch.int16)
    assert torch.stack(rows(batch), out=out) is out and out.data_ptr() != batch.data_ptr()
    torch.testing.assert_close(out, batch)


@pytest.mark.parametrize("row", [0, 2])
@pytest.mark.parametrize(
    "change",
    [lambda t: t.transpose_(0, 1), lambda t: t.as_strided_((2, 3), (1, 2)), lambda t: t.unsqueeze_(0)],
)
def test_rows_changed_in_place_stack_as_they_are_now(row, change):
    """A row whose view of the batch changed in place (the first, which names the batch,
    or another) stacks as it is now, not as the batch."""
    batch = torch.arange(24, dtype=torch.int16).reshape(4, 2, 3)
    samples = rows(batch)
    change(samples[row])
    plain = [s.as_subclass(torch.Tensor) for s in samples]
    if plain[row].shape != plain[row - 1].shape:
        with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
            default_collate(samples)
        return
    stacked = default_collate(samples)
    assert stacked.data_ptr() != batch.data_ptr()
    torch.testing.assert_close(stacked, torch.stack(plain))


def resident_bytes(address: int) -> int:
    """How many bytes of the mapping that starts at ``address`` this process has mapped in."""
    with open("/proc/self/smaps") as smaps:
        lines = iter(smaps.read().splitlines())
    for line in lines:
        if line.split("-", 1)[0] == f"{address:x}":
            return next(int(x.split()[1]) for x in lines if x.startswith("Rss:")) * 1024
    raise AssertionError(f"no mapping starts at {address:#x}")


def test_shared_batch_memory_is_mapped_in_before_it_is_written():
    """Its pages are mapped in one call, not faulted in one by one as the batch is read."""
    frames = shared((8, 64, 64, 3), np.dtype("uint8"))
    assert frames.base.is_shared() and frames.flags.writeable
    assert resident_bytes(frames.ctypes.data) == frames.nbytes


def test_a_row_is_a_plain_tensor_to_everything_else():
    batch = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    row = rows(batch)[1]
    assert isinstance(row, torch.Tensor)
    for result in (row + 1, row.clone(), torch.nn.functional.relu(row), row.to(torch.float64)):
        assert type(result) is torch.Tensor
    assert (row * 2).tolist() == [8.0, 10.0, 12.0, 14.0]
    copy, _ = roundtrip_pickle(row)
    assert copy.tolist() == row.tolist()


def test_a_one_sample_read_is_a_plain_tensor(ds):
    (sample,) = ds.__getitems__([5])
    assert type(sample) is torch.Tensor and type(ds[5]) is torch.Tensor


def served_by_workers(ds: ZarrFrameDataset, context: str, collate: Callable) -> list[Any]:
    """Every batch of 5 of ``ds`` in order, from two workers started by ``context``."""
    loader = DataLoader(
        ds, batch_size=5, num_workers=2, timeout=120, multiprocessing_context=context, collate_fn=collate
    )
    return list(loader)


def uncopied_collate(samples: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """default_collate in a worker, which must hand on the batch read in shared memory."""
    batch = default_collate(samples)
    assert batch.data_ptr() == samples[0].data_ptr() and batch.is_shared(), "collate copied the batch"
    return batch, process.process_state().stats.batches_in_shared_memory


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_batches_cross_from_shared_memory_uncopied_and_exact(ds, context):
    """A worker reads its batch into shared memory, which collate hands on as it is (no
    copy into new shared memory, the way batches cross), and the batches arrive exact."""
    served = served_by_workers(ds, context, uncopied_collate)
    got = torch.cat([batch for batch, _ in served])
    assert type(got) is torch.Tensor
    np.testing.assert_array_equal(got.numpy(), np.stack([ds[i].numpy() for i in range(len(ds))]))
    # each worker counts its own batches: 1, 2, 3 in turn
    assert sorted(count for _, count in served) == [1, 1, 2, 2, 3]


def plain_collate(samples: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    assert all(type(s) is torch.Tensor for s in samples), [type(s) for s in samples]
    return default_collate(samples), process.process_state().stats.batches_in_shared_memory


def flipped(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frame[::-1]))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_samples_a_transform_made_are_plain_and_collated_exact(tmp_path, context):
    """Samples a transform made are its own tensors: collate copies them into shared
    memory as any worker's, and no batch is read into shared memory for nothing."""
    write_stores(str(tmp_path / "s"), stores=2, frames=12, size=16, chunk=4)
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, transform=flipped)
    served = served_by_workers(ds, context, plain_collate)
    plain = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY)
    expected = np.stack([plain[i].numpy()[::-1] for i in range(len(ds))])
    np.testing.assert_array_equal(torch.cat([batch for batch, _ in served]).numpy(), expected)
    assert all(count == 0 for _, count in served)
