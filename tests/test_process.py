"""Per-process handles and threads: opened once, never inherited by a child process."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
from conftest import SIZE

from zarr_torch import process, read
from zarr_torch.stores import open_array
from zarr_torch.synth import make_frames, write_store

ARRAY = "data/camera0_rgb"


def _child_reads(uri: str, queue) -> None:
    inherited = len(process.process_state().arrays)
    frames = process.run(read.read_items([(uri, ARRAY, None)], np.array([0]), np.array([3])))
    queue.put((inherited, process.process_state().pid, frames[0].tolist()))


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_handles_never_cross_a_process(tmp_path, context):
    uri = write_store(str(tmp_path / "ep.zarr"), 1, [8], size=SIZE, chunk=4)
    process.run(read.read_items([(uri, ARRAY, None)], np.array([0]), np.array([1])))  # the parent reads first
    assert process.process_state().arrays and process.process_state()._pool is not None
    ctx = multiprocessing.get_context(context)
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(uri, queue))
    child.start()
    inherited, pid, frame = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert inherited == 0 and pid == child.pid
    np.testing.assert_array_equal(np.array(frame, dtype=np.uint8), make_frames(1, 8, SIZE)[3])


def test_array_opened_once_per_process(tmp_path):
    uri = write_store(str(tmp_path / "ep.zarr"), 0, [4], size=SIZE)
    first = process.run(open_array(uri, ARRAY))
    assert process.run(open_array(uri, ARRAY)) is first
    assert process.run(open_array(uri, ARRAY, refresh=True)) is not first


def test_decode_threads_follow_the_budget():
    state = process.process_state()
    state.set_decode_threads(3)
    assert state.pool()._max_workers == 3
    state.set_decode_threads(1)
    assert state.pool()._max_workers == 1
    state.set_decode_threads(process.available_cores())
