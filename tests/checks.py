"""Checks shared by the test modules: pickling, every-frame-exactly-once, a worker loader,
and running a multi-process job (torchrun, a trainer) with a bound on its time."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    on_timeout: Callable[[int], object] | None = None,
) -> tuple[int | None, str]:
    """Run ``argv`` in a process group of its own, stdout and stderr merged: its exit code
    and output. Past ``timeout`` seconds ``on_timeout(pgid)`` runs (to take the stacks,
    say), then the whole group is killed and the code is None.
    """
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        if on_timeout:
            on_timeout(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        return None, proc.communicate()[0]
