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
    assert process.process_state().arrays and process.process_state().pools
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


def test_each_budget_has_its_own_decode_pool():
    state = process.process_state()
    assert state.pool(3)._max_workers == 3 and state.pool(1)._max_workers == 1
    assert state.pool(3) is state.pool(3), "a pool is made once per size"
    assert state.pool()._max_workers == process.available_cores()


@pytest.mark.parametrize(
    ("cpu_max", "cap"), [("50000 100000", 1), ("250000 100000", 3), ("max 100000", None)]
)
def test_available_cores_honours_a_container_cpu_quota(tmp_path, monkeypatch, cpu_max, cap):
    import os

    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    monkeypatch.setattr(process, "CGROUP_CPU_MAX", str(tmp_path / "cpu.max"))
    assert process.available_cores() == (affinity if cap is None else min(affinity, cap))
