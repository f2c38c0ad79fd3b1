"""ChunkAwareSampler: shuffled epochs whose batches touch few chunks, on every rank.

A plain shuffle sends the 16 frames of a batch to ~12 different chunks of 16, so each
chunk is fetched and decoded many times per epoch. This sampler shuffles at two
levels: the order of blocks (runs of rows in the same chunk of the same array), then
the rows within a buffer of ``buffer_blocks`` consecutive blocks. Every index is still
visited exactly once per epoch, in a different order each epoch.

Across ranks (``torch.distributed``) the epoch's order is cut into one contiguous,
equal share per rank, padded by repeating its first indices (or trimmed with
``drop_last``), so each rank's order stays chunk-aware and every rank runs the same
number of batches. The state is the epoch, the seed and a cursor: a resumed sampler
rebuilds the order from the seed and starts at the cursor, never replaying samples.

    sampler = ChunkAwareSampler(ds, seed=0)
    loader = DataLoader(ds, batch_size=64, sampler=sampler, num_workers=8)
    for epoch in range(10):
        sampler.set_epoch(epoch)
        for batch in loader: ...
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from zarr_torch.index import SelectionIndex


def _index_of(source: Any) -> SelectionIndex:
    if isinstance(source, SelectionIndex):
        return source
    index = getattr(source, "index", None)
    if not isinstance(index, SelectionIndex):
        raise TypeError(f"ChunkAwareSampler needs a ZarrFrameDataset or SelectionIndex, not {type(source)!r}")
    return index


def block_ids(index: SelectionIndex, block_size: int | None = None) -> np.ndarray:
    """The block of every row: rows of one array in one chunk (or ``block_size`` rows)."""
    rows = index.rows
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    array = rows["array"].astype(np.int64)
    if block_size is None:
        chunk = np.array([e.chunks[0] for e in index.arrays], dtype=np.int64)
        within = rows["start"] // chunk[array]
    else:
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, not {block_size}")
        within = np.arange(len(rows)) // block_size
    change = (np.diff(array) != 0) | (np.diff(within) != 0)
    return np.concatenate([[0], np.cumsum(change)])


class ChunkAwareSampler(Sampler[int]):
    """Chunk-aware, distributed, resumable order of a ``ZarrFrameDataset``'s indices.

    ``num_replicas`` and ``rank`` default to ``torch.distributed``'s when it is
    initialized, else 1 and 0. ``state_dict()``/``load_state_dict()`` follow torchdata's
    ``Stateful`` protocol, so ``StatefulDataLoader`` resumes mid-epoch exactly.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        shuffle: bool = True,
        seed: int = 0,
        block_size: int | None = None,
        buffer_blocks: int = 2,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if buffer_blocks < 1:
            raise ValueError(f"buffer_blocks must be at least 1, not {buffer_blocks}")
        distributed = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas or (dist.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is out of range for {self.num_replicas} replicas")
        self.blocks = block_ids(_index_of(dataset), block_size)
        self.shuffle, self.seed, self.buffer_blocks, self.drop_last = shuffle, seed, buffer_blocks, drop_last
        self.epoch = 0
        self.cursor = 0  # indices the current iterator has yielded
        self._resume_at = 0
        total = len(self.blocks)
        if total < self.num_replicas and (drop_last or total == 0):
            raise ValueError(f"{total} samples cannot be shared by {self.num_replicas} replicas")
        self.num_samples = total // self.num_replicas if drop_last else -(-total // self.num_replicas)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (each epoch's order differs; all ranks agree)."""
        self.epoch = epoch

    def epoch_order(self) -> np.ndarray:
        """Every index once, in this epoch's order (the same on every rank)."""
        n = len(self.blocks)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch])
        n_blocks = int(self.blocks[-1]) + 1 if n else 0
        place = np.empty(n_blocks, dtype=np.int64)
        place[rng.permutation(n_blocks)] = np.arange(n_blocks)
        buffer = place[self.blocks] // self.buffer_blocks
        return np.lexsort((rng.random(n), buffer))

    def rank_order(self) -> np.ndarray:
        """This rank's share of the epoch: a contiguous, equal slice of :meth:`epoch_order`."""
        order = self.epoch_order()
        total = self.num_samples * self.num_replicas
        if total > len(order):
            order = np.concatenate([order, np.resize(order, total - len(order))])
        return order[self.rank * self.num_samples : (self.rank + 1) * self.num_samples]

    def __iter__(self) -> Iterator[int]:
        start, self._resume_at = self._resume_at, 0
        self.cursor = start
        for i in self.rank_order()[start:].tolist():
            self.cursor += 1
            yield i

    def state_dict(self) -> dict[str, int]:
        """Epoch, seed and how many indices the running epoch has yielded."""
        return {"epoch": self.epoch, "seed": self.seed, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iterator rebuilds that epoch's order and starts at the cursor."""
        if not 0 <= state["cursor"] <= self.num_samples:
            raise ValueError(f"cursor {state['cursor']} is out of range for {self.num_samples} samples")
        self.epoch, self.seed = state["epoch"], state["seed"]
        self.cursor = self._resume_at = state["cursor"]
