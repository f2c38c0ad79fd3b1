"""Per-process handles, redaction and the batched read path."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
from conftest import SIZE

from zarr_torch import io
from zarr_torch.synth import make_frames, write_store

ARRAY = "data/camera0_rgb"


def _child_reads(uri: str, queue) -> None:
    inherited = len(io.process_state().arrays)
    arr = io.run(io.open_array(uri, ARRAY))
    frames = io.run(io.read_rows(arr, np.array([3])))
    queue.put((inherited, io.process_state().pid, frames[0].tolist()))


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_handles_never_cross_a_process(tmp_path, context):
    uri = write_store(str(tmp_path / "ep.zarr"), 1, [8], size=SIZE, chunk=4)
    io.run(io.open_array(uri, ARRAY))  # opened in the parent first
    assert io.process_state().arrays
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
    first = io.run(io.open_array(uri, ARRAY))
    assert io.run(io.open_array(uri, ARRAY)) is first
    assert io.run(io.open_array(uri, ARRAY, refresh=True)) is not first


@pytest.mark.parametrize("length", [0, 3])
def test_read_rows_matches_plain_reads(tmp_path, length):
    uri = write_store(str(tmp_path / "ep.zarr"), 2, [40], size=SIZE, chunk=16)
    arr = io.run(io.open_array(uri, ARRAY))
    starts = np.array([33, 0, 15, 16, 15, 2, 36])
    frames = io.run(io.read_rows(arr, starts, length))
    expected = make_frames(2, 40, SIZE)
    for s, frame in zip(starts, frames, strict=True):
        np.testing.assert_array_equal(frame, expected[s] if length == 0 else expected[s : s + length])


def test_read_items_keeps_batch_order(tmp_path):
    specs = [
        (write_store(str(tmp_path / f"{i}.zarr"), i, [6], size=SIZE, chunk=4), ARRAY, None) for i in range(3)
    ]
    ids, starts = np.array([2, 0, 2, 1, 0]), np.array([5, 1, 0, 3, 1])
    frames = io.run(io.read_items(specs, ids, starts))
    for a, s, frame in zip(ids, starts, frames, strict=True):
        np.testing.assert_array_equal(frame, make_frames(int(a), 6, SIZE)[s])


def test_redact_options_is_recursive():
    opts = {
        "key": "K",
        "secret": "S",
        "anon": False,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:1", "aws_session_token": "T"},
    }
    assert io.redact_options(opts) == {
        "key": "***",
        "secret": "***",
        "anon": False,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:1", "aws_session_token": "***"},
    }
    assert opts["key"] == "K"


def test_redact_uri():
    assert io.redact_uri("s3://AK:SECRET@bucket/a.zarr") == "s3://***@bucket/a.zarr"
    assert io.redact_uri("s3://bucket/a.zarr") == "s3://bucket/a.zarr"
    assert io.redact_uri("/data/a.zarr") == "/data/a.zarr"
