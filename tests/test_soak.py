"""Long runs: worker memory stays flat over epochs; a dying worker is an error, not a hang."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from zarr_torch import ZarrFrameDataset
from zarr_torch.synth import write_stores

ARRAY = "data/camera0_rgb"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident memory of this process in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class RssProbe(Dataset):
    """Each sample carries the resident memory and pid of the worker that read it, and how
    many chunks that worker has fetched from the stores so far."""

    def __init__(self, frames: ZarrFrameDataset) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int, int, int]]:
        frames = self.frames.__getitems__(indices)
        here = (rss(), os.getpid(), int(self.frames.stats()["chunks_fetched"]))
        return [(f, *here) for f in frames]


CHUNKS, CACHED = 6 * 500 // 8, 40  # chunks in the data; chunks of 24 KiB the 1 MiB cache holds


def test_worker_memory_is_flat_over_ten_epochs(tmp_path):
    write_stores(str(tmp_path / "s"), stores=6, frames=500, size=32, chunk=8)
    # A cache far smaller than the data (9 MiB), so every epoch reads the stores again.
    probe = RssProbe(ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, cache_bytes=2**20))
    loader = DataLoader(
        probe, batch_size=32, shuffle=True, num_workers=2, persistent_workers=True, timeout=120
    )
    peaks: list[dict[int, int]] = []
    fetched: dict[int, int] = {}
    for _ in range(10):
        epoch: dict[int, int] = {}
        frames = 0
        before = sum(fetched.values())
        for batch, mem, pid, chunks in loader:
            frames += len(batch)
            for m, p, c in zip(mem.tolist(), pid.tolist(), chunks.tolist(), strict=True):
                epoch[p] = max(epoch.get(p, 0), m)
                fetched[p] = max(fetched.get(p, 0), c)
        assert frames == 3000
        assert sum(fetched.values()) - before >= CHUNKS - 2 * CACHED, "the epoch read the stores again"
        peaks.append(epoch)
    assert len(peaks[-1]) == 2 and set(peaks[1]) == set(peaks[-1]), "the same two workers"
    for pid in peaks[-1]:
        per_epoch = [p[pid] / 2**20 for p in peaks]
        growth = per_epoch[-1] - per_epoch[1]
        assert growth < 8 + 0.02 * per_epoch[1], f"worker {pid} RSS by epoch (MiB): {per_epoch}"


class DieOn:
    """A transform that kills its worker when it sees frame ``t`` of store 0."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self, frame: np.ndarray) -> torch.Tensor:
        if frame[0, 0, 0] == 0 and frame[0, 0, 1] == self.t:
            os._exit(3)
        return torch.from_numpy(frame)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_crash_is_an_error_not_a_hang(tmp_path, context):
    import multiprocessing

    write_stores(str(tmp_path / "s"), stores=1, frames=40, size=8, chunk=4)
    # Frame 5 is in the first batch of worker 1, which dies before it has sent anything
    # (a worker that dies while the parent fetches a tensor it shared gives an EOFError).
    ds = ZarrFrameDataset(str(tmp_path / "s"), array=ARRAY, transform=DieOn(5))
    loader = DataLoader(
        ds,
        batch_size=4,
        num_workers=2,
        timeout=60,
        multiprocessing_context=multiprocessing.get_context(context),
    )
    with pytest.raises(RuntimeError, match=r"DataLoader worker .* exited unexpectedly"):
        list(loader)
