"""Checks shared by the test modules: pickling, every-frame-exactly-once, a worker loader."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate


def roundtrip_pickle(obj: Any) -> tuple[Any, int]:
    """Pickle and unpickle ``obj``; return the copy and the pickle's size in bytes."""
    blob = pickle.dumps(obj)
    return pickle.loads(blob), len(blob)


def frame_id(frame: np.ndarray) -> tuple[int, int]:
    """(store, t) stamped in pixel (0, 0) of a synthetic frame (see ``synth.make_frames``)."""
    s, lo, hi = (int(v) for v in frame[0, 0])
    return s, lo + 256 * hi


def assert_every_frame_once(batches: Iterable[torch.Tensor], reference: np.ndarray, frames: int) -> None:
    """Every frame of ``reference`` (stores of ``frames`` frames) came back once, pixel-exact."""
    seen: dict[tuple[int, int], int] = {}
    for batch in batches:
        for frame in batch.numpy():
            s, t = frame_id(frame)
            k = s * frames + t
            np.testing.assert_array_equal(frame, reference[k], err_msg=f"store {s} frame {t}")
            seen[(s, t)] = seen.get((s, t), 0) + 1
    assert len(seen) == len(reference), f"{len(reference) - len(seen)} frames never came back"
    assert set(seen.values()) == {1}, "some frames came back more than once"


class CollateWithStats:
    """A ``collate_fn`` that also returns the worker's ``ds.stats()``: what served the batch.

    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=CollateWithStats(ds))
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __call__(self, batch: list[Any]) -> tuple[Any, dict[str, float]]:
        return default_collate(batch), self.dataset.stats()


def shuffled_loader(ds: Dataset, context: str = "spawn") -> DataLoader:
    """A shuffling loader of batches of 8 from two workers started by ``context``, each
    wait for a batch bounded."""
    return DataLoader(
        ds, batch_size=8, shuffle=True, num_workers=2, timeout=120, multiprocessing_context=context
    )
