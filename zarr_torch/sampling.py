"""ChunkAwareSampler: shuffled epochs whose batches touch few chunks, on every rank.

A plain shuffle sends the 16 frames of a batch to ~12 different chunks of 16, so each
chunk is fetched and decoded many times per epoch. This sampler shuffles at two
levels: the order of blocks (runs of rows in the same chunk of the same array), then
the rows within a buffer of ``buffer_blocks`` consecutive blocks. Every index is still
visited exactly once per epoch, in a different order each epoch.

Across ranks (``torch.distributed``) the epoch's order is cut into one contiguous,
equal share per rank, padded by repeating its first indices (or trimmed with
``drop_last``), so each rank's order stays chunk-aware and every rank runs the same
number of batches. The share is decided when the sampler is iterated, by whichever
framework is in charge then, so a sampler made before the process group exists is
right too:

- ``torch.distributed`` (``torchrun``, Lightning's DDP): one share per rank. The sampler
  is a ``DistributedSampler``, which Lightning keeps as it is instead of wrapping it.
- accelerate: a prepared ``DataLoader`` hands whole batches to its processes in turn
  (``BatchSamplerShard``), so under an ``Accelerator`` the sampler gives the whole
  epoch's order and lets accelerate share it out.

The state is the epoch, the seed and a cursor: a resumed sampler rebuilds the order
from the seed and starts at the cursor, never replaying samples.

    sampler = ChunkAwareSampler(ds, seed=0)
    loader = DataLoader(ds, batch_size=64, sampler=sampler, num_workers=8)
    for epoch in range(10):
        sampler.set_epoch(epoch)
        for batch in loader: ...
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import BatchSampler, DistributedSampler, Sampler

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
        chunk = index.arrays.per_array(lambda m: m.chunks[0]).astype(np.int64)
        within = rows["start"] // chunk[array]
    else:
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, not {block_size}")
        within = np.arange(len(rows)) // block_size
    change = (np.diff(array) != 0) | (np.diff(within) != 0)
    return np.concatenate([[0], np.cumsum(change)])


def accelerate_shards_batches() -> bool:
    """True under an accelerate ``Accelerator`` of several processes: its prepared
    ``DataLoader`` gives each process every n-th batch of the sampler's order."""
    state = sys.modules.get("accelerate.state")
    if state is None or not state.is_initialized():
        return False
    return state.AcceleratorState().num_processes > 1


class ChunkAwareSampler(DistributedSampler):
    """Chunk-aware, distributed, resumable order of a ``ZarrFrameDataset``'s indices.

    ``num_replicas`` and ``rank``, when not given, are found each time the sampler is
    iterated: 1 and 0 under accelerate (which shares batches out itself), else
    ``torch.distributed``'s when it is initialized, else 1 and 0.
    ``state_dict()``/``load_state_dict()`` follow torchdata's ``Stateful`` protocol, so
    ``StatefulDataLoader`` resumes mid-epoch exactly.
    """

    # DistributedSampler.__init__ needs a process group; the share is resolved lazily.
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
        if num_replicas is not None and num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, not {num_replicas}")
        self.blocks = block_ids(_index_of(dataset), block_size)
        if len(self.blocks) == 0:
            raise ValueError("a ChunkAwareSampler needs at least one sample")
        self._replicas, self._rank = num_replicas, rank
        self.shuffle, self.seed, self.buffer_blocks, self.drop_last = shuffle, seed, buffer_blocks, drop_last
        self.epoch = 0
        self.cursor = 0  # indices the current iterator has yielded
        self._resume_at = 0
        self._exhausted = False  # the last iterator ran to its end
        #: after a restore that moved on to the next epoch: how far the loop's epoch count lags.
        self._lag: int | None = None
        self._share()  # a bad rank or too few samples fail here when the share is known

    def _share(self) -> tuple[int, int]:
        """(replicas, rank) of this iteration, from the arguments or the framework in charge."""
        distributed = dist.is_available() and dist.is_initialized()
        if self._replicas is not None:
            replicas = self._replicas
        elif accelerate_shards_batches():
            replicas = 1
        else:
            replicas = dist.get_world_size() if distributed else 1
        if self._rank is not None:
            rank = self._rank
        else:
            rank = dist.get_rank() if distributed and replicas > 1 else 0
        if not 0 <= rank < replicas:
            raise ValueError(f"rank {rank} is out of range for {replicas} replicas")
        if len(self.blocks) < replicas and self.drop_last:
            raise ValueError(f"{len(self.blocks)} samples cannot be shared by {replicas} replicas")
        return replicas, rank

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        """How many shares the epoch is cut into now."""
        return self._share()[0]

    @property
    def rank(self) -> int:  # type: ignore[override]
        """Which share this sampler yields now."""
        return self._share()[1]

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """Indices per share and epoch."""
        replicas, total = self.num_replicas, len(self.blocks)
        return total // replicas if self.drop_last else -(-total // replicas)

    @property
    def total_size(self) -> int:  # type: ignore[override]
        """Indices per epoch over all shares (with padding, or after ``drop_last``)."""
        return self.num_samples * self.num_replicas

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (each epoch's order differs; all ranks agree).

        A restored cursor belongs to the restored epoch: moving to another epoch drops it.
        """
        if self._lag is not None and epoch + self._lag == self.epoch and self._exhausted:
            # A restore moved on to the next epoch by itself, and the loop now asks again
            # for the epoch just finished (torchdata.nodes counts epochs on its own): its
            # epoch e is this sampler's e + 1 from now on.
            self._lag += 1
        epoch += self._lag or 0
        if epoch != self.epoch:
            self._resume_at = 0
        self.epoch = epoch

    def epoch_order(self) -> np.ndarray:
        """Every index once, in this epoch's order (the same on every rank)."""
        n = len(self.blocks)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch])
        n_blocks = int(self.blocks[-1]) + 1
        place = np.empty(n_blocks, dtype=np.int64)
        place[rng.permutation(n_blocks)] = np.arange(n_blocks)
        buffer = place[self.blocks] // self.buffer_blocks
        return np.lexsort((rng.random(n), buffer))

    def rank_order(self) -> np.ndarray:
        """This rank's share of the epoch: a contiguous, equal slice of :meth:`epoch_order`."""
        (replicas, rank), order = self._share(), self.epoch_order()
        per_rank = self.num_samples
        total = per_rank * replicas
        if total > len(order):
            order = np.concatenate([order, np.resize(order, total - len(order))])
        return order[rank * per_rank : (rank + 1) * per_rank]

    def __iter__(self) -> Iterator[int]:
        start, self._resume_at = self._resume_at, 0
        self.cursor, self._exhausted = start, False
        for i in self.rank_order()[start:].tolist():
            self.cursor += 1
            yield i
        self._exhausted = True

    def state_dict(self) -> dict[str, int]:
        """Epoch, seed and how many indices the running epoch has yielded, with the share
        count and dataset size the cursor is valid for."""
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "cursor": self.cursor,
            "num_replicas": self.num_replicas,
            "size": len(self.blocks),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iterator rebuilds that epoch's order and starts at the cursor.

        A state saved at the end of its epoch resumes with the whole next epoch.

        A state saved with another number of replicas or another dataset size is a
        ``ValueError``: its cursor would point into a different order.
        """
        for key, now in (("num_replicas", self.num_replicas), ("size", len(self.blocks))):
            if key in state and state[key] != now:
                raise ValueError(
                    f"cannot resume: the sampler state was saved with {key}={state[key]}, "
                    f"but this sampler has {key}={now}"
                )
        if not 0 <= state["cursor"] <= self.num_samples:
            raise ValueError(f"cursor {state['cursor']} is out of range for {self.num_samples} samples")
        self.seed, self._lag = state["seed"], None
        if state["cursor"] == self.num_samples:
            # Saved at its epoch's last batch: the next epoch is due, whole. Lightning makes
            # the loader's iterator before it calls set_epoch, so move on here.
            self.epoch, self.cursor, self._resume_at, self._lag = state["epoch"] + 1, 0, 0, 0
            return
        self.epoch = state["epoch"]
        self.cursor = self._resume_at = state["cursor"]


class AheadBatch(list):
    """A batch of indices that also carries the batches its worker reads next (``ahead``):
    ``ZarrFrameDataset.__getitems__`` starts fetching their chunks while it reads this one."""

    def __init__(self, indices: Iterable[int], ahead: Sequence[Sequence[int]] = ()) -> None:
        super().__init__(indices)
        self.ahead = [list(b) for b in ahead]

    def __reduce__(self) -> tuple[Any, ...]:
        return AheadBatch, (list(self), self.ahead)


class ReadAheadBatches(Sampler[list[int]]):
    """``BatchSampler(sampler, batch_size, drop_last)`` whose batches name the next ``depth``
    batches the same ``DataLoader`` worker reads (a loader hands batches to its
    ``workers`` in turn), so each worker fetches their chunks from object storage while
    it decodes the current one. Fetches started ahead stay within a byte budget per process.
    ``set_epoch`` and ``state_dict`` go to ``sampler`` (its cursor counting only the
    batches yielded, not those looked at ahead).

        batches = ReadAheadBatches(ChunkAwareSampler(ds), batch_size=64, workers=8)
        loader = DataLoader(ds, batch_sampler=batches, num_workers=8)
    """

    def __init__(
        self,
        sampler: Iterable[int],
        batch_size: int,
        drop_last: bool = False,
        *,
        workers: int = 0,
        depth: int = 1,
    ) -> None:
        if depth < 0 or workers < 0:
            raise ValueError(f"depth and workers must be at least 0, not {depth} and {workers}")
        self.sampler = sampler
        self.batches = BatchSampler(sampler, batch_size, drop_last)
        self.stride, self.depth = max(workers, 1), depth
        #: indices taken from ``sampler`` but not yet yielded.
        self._held = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[AheadBatch]:
        reach = self.stride * self.depth
        window: deque[list[int]] = deque()
        batches = iter(self.batches)
        while True:
            for batch in batches:  # keep the window full: this batch and ``reach`` more
                window.append(batch)
                if len(window) > reach:
                    break
            if not window:
                break
            ahead = [window[k] for k in range(self.stride, reach + 1, self.stride) if k < len(window)]
            self._held = sum(map(len, window)) - len(window[0])
            yield AheadBatch(window.popleft(), ahead)
        self._held = 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        state = dict(self.sampler.state_dict())  # type: ignore[attr-defined]
        if "cursor" in state:
            state["cursor"] -= self._held
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)  # type: ignore[attr-defined]
