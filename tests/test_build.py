"""Index builds spread over ranks (``zarr_torch.build``): real ``torchrun`` jobs of two
CPU processes (gloo) give exactly the rows of a one-process build, in the same order.

Each job runs ``python -m torch.distributed.run --nproc_per_node 2`` in its own process
group, killed whole after ``TIMEOUT`` seconds, with its output in the failure message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from checks import free_port, run_group

from zarr_torch.build import DistributedBuildError, build_distributed
from zarr_torch.cli import main
from zarr_torch.index import SelectionIndex
from zarr_torch.synth import write_store, write_stores

RGB = "data/camera0_rgb"
STORES = 5  # odd: the two ranks' slices differ in size (2 and 3 stores)
EPISODES = [6, 10]  # two episodes a store
TIMEOUT = 180  # seconds for one torchrun job
RANK_TIMEOUT = 60  # the --timeout the ranks get: a failure must come well before it


def torchrun(args: list[str], cwd: Path, nproc: int = 2) -> tuple[subprocess.CompletedProcess, float]:
    """``args`` run under torchrun on ``nproc`` local processes; the finished process (its
    stdout and stderr merged into ``stdout``) and the seconds it took."""
    argv = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)),
        *("--master_addr", "127.0.0.1", "--master_port", str(free_port())),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    began = time.monotonic()
    code, out = run_group(argv, cwd, env, TIMEOUT)
    if code is None:
        pytest.fail(f"torchrun {' '.join(args)}: no result after {TIMEOUT} s\n{out[-4000:]}")
    return subprocess.CompletedProcess(argv, code, out, None), time.monotonic() - began


def cli_build(source: str, output: Path, *options: str) -> list[str]:
    return ["-m", "zarr_torch.cli", "index", "build", source, "--array", RGB, "-o", str(output), *options]


def assert_same_index(got: SelectionIndex, expected: SelectionIndex, what: str) -> None:
    """The same rows byte for byte, the same store URIs in order, the same arrays table."""
    assert len(got) == len(expected), f"{what}: {len(got)} rows, a one-process build has {len(expected)}"
    assert got.rows.dtype == expected.rows.dtype
    if got.rows.tobytes() != expected.rows.tobytes():
        k = int(np.argmax(got.rows != expected.rows))
        pytest.fail(f"{what}: row {k} is {got.rows[k]}, a one-process build has {expected.rows[k]}")
    assert [s.uri for s in got.stores] == [s.uri for s in expected.stores], f"{what}: store URIs differ"
    assert list(got.arrays) == list(expected.arrays), f"{what}: arrays tables differ"
    assert [e.attrs for e in got.arrays] == [e.attrs for e in expected.arrays], f"{what}: array attrs differ"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("stores") / "d"
    write_stores(str(root), stores=STORES, frames=EPISODES, size=8, chunk=4)
    return str(root)


# -- zarr-torch index build under torchrun -------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [[], ["--window", "4", "--episode-ends", "meta/episode_ends"]],
    ids=["frames", "windows"],
)
def test_torchrun_build_has_the_rows_of_a_one_process_build(data, tmp_path, options):
    out = tmp_path / "frames.zti"
    done, _ = torchrun(cli_build(data, out, *options, "--timeout", str(RANK_TIMEOUT)), tmp_path)
    assert done.returncode == 0, (
        f"torchrun index build failed (exit {done.returncode}):\n{done.stdout[-4000:]}"
    )
    window = {"window": 4, "episode_ends": "meta/episode_ends"} if options else {}
    expected = SelectionIndex.build(data, array=RGB, **window)
    assert_same_index(SelectionIndex.load(out), expected, f"torchrun index build {' '.join(options)}")
    summaries = [line for line in done.stdout.splitlines() if line.startswith(str(out))]
    assert summaries == [
        f"{out}: {STORES} stores, {len(expected.arrays)} arrays, {len(expected)} rows, "
        f"{out.stat().st_size} bytes, built by 2 ranks"
    ], f"rank 0 alone prints the summary:\n{done.stdout}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.zti"], "no parts or temporary files left"
    one = tmp_path / "one.zti"
    assert main(cli_build(data, one, *options)[2:]) == 0
    assert one.read_bytes() == out.read_bytes(), "the file of a one-process `zarr-torch index build`"


def test_torchrun_build_with_a_missing_array_fails_naming_the_store(tmp_path):
    root = tmp_path / "d"
    uris = write_stores(str(root), stores=STORES, frames=EPISODES, size=8, chunk=4)
    shutil.rmtree(Path(uris[3]) / RGB)  # in rank 1's slice (stores 2 to 4)
    out = tmp_path / "frames.zti"
    done, took = torchrun(cli_build(str(root), out, "--timeout", str(RANK_TIMEOUT)), tmp_path)
    assert done.returncode != 0, f"a missing array should fail the job:\n{done.stdout[-4000:]}"
    assert took < RANK_TIMEOUT, f"the job failed after {took:.0f} s: it waited for a timeout"
    errors = [line for line in done.stdout.splitlines() if line.startswith("zarr-torch index build: error:")]
    assert errors, f"no error message:\n{done.stdout[-4000:]}"
    assert all("rank 1: " in e and "episode_00003.zarr" in e and RGB in e for e in errors), errors
    assert "zarr_torch/" not in done.stdout, (
        "a message, no traceback through zarr_torch (torchrun's own is fine)"
    )
    assert not out.exists()


# -- build_distributed from a user's script -------------------------------------------------

SCRIPT = """
import json, os, sys, time
from pathlib import Path
from zarr_torch.build import DistributedBuildError, build_distributed

source, out, record, kwargs = json.loads(sys.argv[1])
rank = int(os.environ["RANK"])
try:
    index = build_distributed(source, out, timeout=60, **kwargs)
    result = {"rows": None if index is None else len(index)}
except DistributedBuildError as exc:
    result = {"error": str(exc), "own": exc.__cause__ is not None}
Path(record, f"rank{rank}.json").write_text(json.dumps(result))
# wait for every rank's record: torchrun stops the others once one rank exits non-zero
for _ in range(300):
    if len(list(Path(record).glob("rank*.json"))) == int(os.environ["WORLD_SIZE"]):
        break
    time.sleep(0.1)
sys.exit(3 if "error" in result else 0)
"""


def run_script(tmp_path: Path, source: str | list[str], out: Path, **kwargs) -> tuple[int, dict[int, dict]]:
    """``build_distributed(source, out, **kwargs)`` on two ranks; the exit status and what
    each rank got (``rows``: the rows returned, None for no index; or its ``error``)."""
    script = tmp_path / "build_run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    record = tmp_path / "records"
    record.mkdir()
    done, _ = torchrun([str(script), json.dumps([source, str(out), str(record), kwargs])], tmp_path)
    records = {int(p.stem[4:]): json.loads(p.read_text()) for p in record.glob("rank*.json")}
    assert sorted(records) == [0, 1], (
        f"ranks recorded {sorted(records)} (exit {done.returncode}):\n{done.stdout}"
    )
    return done.returncode, records


def test_a_rank_without_stores_and_a_list_source(tmp_path):
    """More ranks than stores: rank 0's slice is empty, rank 1 builds the one store."""
    uris = write_stores(str(tmp_path / "d"), stores=1, frames=EPISODES, size=8, chunk=4)
    out = tmp_path / "one.zti"
    status, records = run_script(tmp_path, uris, out, array=RGB)
    assert status == 0, records
    expected = SelectionIndex.build(uris, array=RGB)
    assert records == {0: {"rows": len(expected)}, 1: {"rows": None}}, "rank 0 returns the index, rank 1 None"
    assert_same_index(SelectionIndex.load(out), expected, "one store over two ranks")


def test_a_missing_store_on_one_rank_fails_every_rank_naming_it(tmp_path):
    uris = write_stores(str(tmp_path / "d"), stores=STORES, frames=EPISODES, size=8, chunk=4)
    shutil.rmtree(uris[3])  # a list source: rank 1 is the first to find it gone
    out = tmp_path / "frames.zti"
    status, records = run_script(tmp_path, uris, out, array=RGB)
    assert status != 0
    for rank, got in records.items():
        assert "error" in got, f"rank {rank} did not fail: {got}"
        assert got["error"].startswith("rank 1: ") and "episode_00003.zarr" in got["error"], got
    assert [records[r]["own"] for r in (0, 1)] == [False, True], "rank 1's own error is the cause there"
    assert not out.exists()


def test_windows_longer_than_every_episode_of_one_slice(tmp_path):
    """Rank 0's stores hold only episodes shorter than the window: they give no windows, as
    in a one-process build, rather than an error."""
    root = tmp_path / "d"
    for i, episodes in enumerate([[3, 2], [4], [6, 10], [8], [5, 9]]):
        write_store(str(root / f"episode_{i:05d}.zarr"), i, episodes, size=8, chunk=4)
    out = tmp_path / "windows.zti"
    window = {"array": RGB, "window": 5, "episode_ends": "meta/episode_ends", "stride": 2}
    status, records = run_script(tmp_path, str(root), out, **window)
    assert status == 0, records
    expected = SelectionIndex.build(str(root), **window)
    expected.save(tmp_path / "one.zti")  # saved, as the index is: without the stores no row uses
    assert_same_index(SelectionIndex.load(out), SelectionIndex.load(tmp_path / "one.zti"), "rank 0 short")
    assert len(SelectionIndex.load(out).stores) == 3
    assert records[0] == {"rows": len(expected)}


# -- one process ----------------------------------------------------------------------------


def test_without_torchrun_it_is_a_plain_build(data, tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "frames.zti"
    index = build_distributed(data, out, array=RGB, window=4, episode_ends="meta/episode_ends")
    expected = SelectionIndex.build(data, array=RGB, window=4, episode_ends="meta/episode_ends")
    assert_same_index(index, expected, "build_distributed in one process")
    assert_same_index(SelectionIndex.load(out), expected, "its saved index")
    with pytest.raises(FileNotFoundError, match="nope"):  # the library's own error, as build raises it
        build_distributed(str(tmp_path / "nope"), None, array=RGB)
    assert issubclass(DistributedBuildError, RuntimeError)


@pytest.mark.parametrize(
    "window", [{}, {"window": 4, "episode_ends": "meta/episode_ends"}], ids=["frames", "windows"]
)
def test_index_merge_of_parts_equals_the_whole(data, tmp_path, capsys, window):
    stores = [s.uri for s in SelectionIndex.build(data, array=RGB).stores]
    parts = [tmp_path / "part0.zti", tmp_path / "part1.zti"]
    SelectionIndex.build(stores[:2], array=RGB, **window).save(parts[0])
    SelectionIndex.build(stores[2:], array=RGB, **window).save(parts[1])
    out = tmp_path / "whole.zti"
    assert main(["index", "merge", *map(str, parts), "-o", str(out)]) == 0
    expected = SelectionIndex.build(data, array=RGB, **window)
    assert_same_index(SelectionIndex.load(out), expected, "index merge")
    assert capsys.readouterr().out == (
        f"{out}: {STORES} stores, {len(expected.arrays)} arrays, {len(expected)} rows, "
        f"{out.stat().st_size} bytes, merged from 2 indexes\n"
    )
