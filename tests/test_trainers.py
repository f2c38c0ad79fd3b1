"""Real trainers, real processes (issue 15): what a user of ChunkAwareSampler relies on.

Lightning DDP and accelerate each run two CPU processes (gloo) from the scripts in
``tests/trainers/``, written the way a user writes them; every rank records every frame
of every batch it trains on. Lightning's loaders keep their workers between epochs
(``persistent_workers``, as Lightning advises), accelerate's start new ones each epoch:
the sampler's epoch reaches both. Over two epochs of 8 stores x 48 frames (chunks of 8):

- each epoch trains on every one of the 384 frames exactly once, shared between ranks;
- epoch 1's order differs from epoch 0's;
- batches stay chunk-aware (a 16-frame batch touches <= 3 chunks on average);
- a run resumed from a mid-epoch checkpoint trains on exactly the rest of that epoch,
  and one resumed from the epoch's last batch on a full next epoch.

torchdata.nodes runs in this process (threads). Each framework run happens once per
module and is checked by several tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from checks import frame_id, free_port, run_group

from zarr_torch import ChunkAwareSampler, ZarrFrameDataset
from zarr_torch.synth import write_stores

SCRIPTS = Path(__file__).parent / "trainers"
STORES, FRAMES, CHUNK, BATCH = 8, 48, 8, 16
EVERY_FRAME = frozenset((s, t) for s in range(STORES) for t in range(FRAMES))
EPOCHS = 2
RANKS = 2
MID = 5  # a mid-epoch checkpoint after this many batches (an epoch has 12 a rank)
TIMEOUT = 240  # seconds for one framework run

Frame = tuple[int, int]
Batch = list[Frame]


# -- running the scripts -------------------------------------------------------------


def group_stacks(pgid: int) -> str:
    """Every thread's Python stack in process group ``pgid`` (py-spy), to tell where a run hangs."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(p) == pgid]
    dumps = []
    for pid in pids:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        dumps.append(f"== pid {pid}\n{out.stdout[-4000:]}{out.stderr[-500:]}")
    return "\n".join(dumps)


def _pgid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


class Run:
    """What each rank of one framework run recorded (``tests/trainers/common.py``)."""

    def __init__(self, name: str, out: Path) -> None:
        self.name = name
        self.events = {
            r: [json.loads(line) for line in (out / f"rank{r}.jsonl").read_text().splitlines()]
            for r in range(RANKS)
            if (out / f"rank{r}.jsonl").exists()
        }

    def info(self, rank: int = 0) -> dict:
        return next((e["info"] for e in self.events.get(rank, []) if "info" in e), {})

    def batches(self, rank: int, epoch: int | None = None) -> list[Batch]:
        """The batches ``rank`` trained on, in order (of one epoch, or of the whole run)."""
        return [
            [tuple(f) for f in e["ids"]]
            for e in self.events.get(rank, [])
            if "ids" in e and (epoch is None or e["epoch"] == epoch)
        ]

    def frames(self, rank: int, epoch: int) -> list[Frame]:
        return [f for b in self.batches(rank, epoch) for f in b]


def run(name: str, argv: list[str], work: Path) -> Run:
    """Run ``argv`` (which writes to ``work/<name>-seen``) in ``work``, in its own process
    group, killed whole on timeout."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(work / "hf"),  # no user accelerate config
        "PYTHONWARNINGS": "ignore",
    }
    stacks: list[str] = []  # lightning_logs/ goes in work
    code, log = run_group(argv, work, env, TIMEOUT, on_timeout=lambda pgid: stacks.append(group_stacks(pgid)))
    if code is None:
        seen = {
            p.name: len(p.read_text().splitlines()) for p in sorted((work / f"{name}-seen").glob("*.jsonl"))
        }
        pytest.fail(f"{name}: no result after {TIMEOUT} s; records {seen}\n{log[-3000:]}\n{stacks[0]}")
    (work / f"{name}.log").write_text(log)
    assert code == 0, f"{name} failed (exit {code}):\n{log[-3000:]}"
    return Run(name, work / f"{name}-seen")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("stores")
    write_stores(str(root), stores=STORES, frames=FRAMES, size=8, chunk=CHUNK)
    return str(root)


#: every framework run: (script, arguments after DATA OUT, the run whose checkpoints it needs).
PLANS: dict[str, tuple[str, str, str | None]] = {
    "lightning-hook": ("lightning", "--loader hook", None),
    "lightning-top": ("lightning", "--loader top", None),
    "lightning-stateful": (
        "lightning",
        "--stateful --save-at-step {mid} {ckpt}/mid.ckpt --save-at-epoch-end {ckpt}/end.ckpt",
        None,
    ),
    "lightning-resumed-mid": ("lightning", "--stateful --resume {ckpt}/mid.ckpt", "lightning-stateful"),
    "lightning-resumed-end": ("lightning", "--stateful --resume {ckpt}/end.ckpt", "lightning-stateful"),
    "accelerate-before": ("accelerate", "--sampler before", None),
    "accelerate-after": ("accelerate", "--sampler after", None),
    "accelerate-stateful": (
        "accelerate",
        "--stateful --save-at {mid} {ckpt}/mid --save-at-epoch-end {ckpt}/end",
        None,
    ),
    "accelerate-resumed-mid": ("accelerate", "--stateful --resume {ckpt}/mid", "accelerate-stateful"),
    "accelerate-resumed-end": ("accelerate", "--stateful --resume {ckpt}/end", "accelerate-stateful"),
}


def command(framework: str) -> list[str]:
    """How a user starts two processes: Lightning starts rank 1 itself; accelerate launch."""
    if framework == "lightning":
        return [sys.executable, str(SCRIPTS / "lightning_run.py")]
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port()), str(SCRIPTS / "accelerate_run.py")),
    ]


@pytest.fixture(scope="module")
def runs(data: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Run]:
    """``runs(name)``: the records of framework run ``name``, run the first time it is asked for."""
    work = tmp_path_factory.mktemp("trainers")
    done: dict[str, Run | BaseException] = {}

    def get(name: str) -> Run:
        if name not in done:  # a run that failed fails every test that needs it, without rerunning
            framework, args, needs = PLANS[name]
            argv = [a.format(ckpt=work / "ckpt" / framework, mid=MID) for a in args.split()]
            try:
                if needs:
                    get(needs)
                done[name] = run(name, [*command(framework), data, str(work / f"{name}-seen"), *argv], work)
            except (AssertionError, pytest.fail.Exception) as e:
                done[name] = e
        if isinstance(done[name], BaseException):
            pytest.fail(f"{name}: {done[name]}", pytrace=False)
        return done[name]

    return get


# -- what a user relies on -----------------------------------------------------------


def chunks(batch: Batch) -> int:
    return len({(s, t // CHUNK) for s, t in batch})


def coverage_problems(r: Run) -> list[str]:
    """Per epoch: do the ranks share out every frame exactly once, in equal numbers of batches?"""
    problems = []
    for epoch in range(EPOCHS):
        seen = {rank: r.frames(rank, epoch) for rank in range(RANKS)}
        n_batches = {rank: len(r.batches(rank, epoch)) for rank in range(RANKS)}
        counts = Counter(f for frames in seen.values() for f in frames)
        missing = len(EVERY_FRAME - counts.keys())
        both = len(set(seen[0]) & set(seen[1]))
        repeats = sum(n - 1 for n in counts.values() if n > 1)
        if missing or repeats or len(set(n_batches.values())) > 1:
            per_rank = ", ".join(
                f"rank {k} saw {len(v)} frames in {n_batches[k]} batches" for k, v in seen.items()
            )
            problems.append(
                f"epoch {epoch}: {per_rank}; {len(counts)} of the {len(EVERY_FRAME)} frames were trained on, "
                f"{missing} never, {repeats} more than once ({both} by both ranks)"
            )
    return problems


def same_order_ranks(r: Run) -> list[int]:
    return [rank for rank in range(RANKS) if r.frames(rank, 0) == r.frames(rank, 1)]


def mean_chunks(batches: list[Batch]) -> float:
    return sum(map(chunks, batches)) / len(batches)


WHAT = {
    "lightning-hook": "Lightning DDP, loader from train_dataloader()",
    "lightning-top": "Lightning DDP, loader built before the Trainer",
    "lightning-stateful": "Lightning DDP, StatefulDataLoader from train_dataloader()",
    "accelerate-before": "accelerate, sampler made before Accelerator()",
    "accelerate-after": "accelerate, sampler made after Accelerator()",
    "accelerate-stateful": "accelerate, use_stateful_dataloader=True, sampler after Accelerator()",
}
COVERAGE = list(WHAT)  # the uninterrupted runs


@pytest.mark.parametrize("name", COVERAGE)
def test_each_epoch_trains_on_every_frame_once_across_ranks(runs, name):
    r = runs(name)
    problems = coverage_problems(r)
    assert not problems, (
        f"{WHAT[name]} ({r.info()}): each epoch should train on all {len(EVERY_FRAME)} frames once, "
        "shared between the 2 ranks:\n  " + "\n  ".join(problems)
    )


@pytest.mark.parametrize("name", COVERAGE)
def test_each_epoch_has_a_new_order(runs, name):
    r = runs(name)
    assert all(r.frames(rank, 0) for rank in range(RANKS)), f"{WHAT[name]}: a rank trained on nothing"
    same = same_order_ranks(r)
    assert not same, f"{WHAT[name]}: rank(s) {same} trained on the same frames in the same order twice"


@pytest.mark.parametrize("name", COVERAGE)
def test_batches_touch_few_chunks(runs, name):
    r = runs(name)
    batches = [b for rank in range(RANKS) for b in r.batches(rank)]
    mean = mean_chunks(batches)
    assert mean <= 3, (
        f"{WHAT[name]}: a {BATCH}-frame batch reads {mean:.1f} chunks of {CHUNK} frames on average "
        f"(at most {max(map(chunks, batches))}); ChunkAwareSampler alone gives about 2, so each chunk is "
        f"fetched and decoded ~{mean / 2:.1f}x as often as it should be"
    )


def resume_problems(first: Run, resumed: Run, stopped_after: int, epoch: int) -> list[str]:
    """The first run was checkpointed after ``stopped_after`` batches of ``epoch``; the resumed
    run should train on exactly what the (uninterrupted) first run trained on after that."""
    problems = []
    for rank in range(RANKS):
        done = [b for e in range(epoch) for b in first.batches(rank, e)]
        done += first.batches(rank, epoch)[:stopped_after]
        expected = first.batches(rank)[len(done) :]
        got = resumed.batches(rank)
        if got == expected:
            continue
        n_epoch = len(first.batches(rank, epoch))
        got_epoch = resumed.batches(rank, epoch)
        got_next = resumed.batches(rank, epoch + 1)
        trained = Counter(f for b in done + got_epoch for f in b)
        problem = (
            f"rank {rank}: stopped after {stopped_after} of {n_epoch} batches of epoch {epoch}; "
            f"the resumed run trained on {len(got_epoch)} more batches of epoch {epoch} "
            f"(expected {n_epoch - stopped_after})"
        )
        if got_epoch:
            twice = sum(n - 1 for n in trained.values() if n > 1)
            never = len({f for b in first.batches(rank, epoch) for f in b} - trained.keys())
            problem += f": {twice} frames trained on twice, {never} of this rank's frames never"
        problem += f"; then {len(got_next)} batches of epoch {epoch + 1} (expected {n_epoch})"
        if got_next and got_next != first.batches(rank, epoch + 1):
            if got_next == first.batches(rank, epoch):
                problem += f", a replay of epoch {epoch}'s order"
            else:
                problem += ", not in the order an uninterrupted run has"
        problems.append(problem)
    return problems


@pytest.mark.parametrize("framework", ["lightning", "accelerate"])
def test_resume_mid_epoch_trains_on_exactly_the_remaining_batches(runs, framework):
    first, resumed = runs(f"{framework}-stateful"), runs(f"{framework}-resumed-mid")
    problems = resume_problems(first, resumed, MID, epoch=0)
    assert not problems, (
        f"{framework}, resumed from a checkpoint after batch {MID} of epoch 0 (StatefulDataLoader): "
        "the two runs together should train on what one uninterrupted run does:\n  " + "\n  ".join(problems)
    )


@pytest.mark.parametrize("framework", ["lightning", "accelerate"])
def test_resume_from_the_last_batch_of_an_epoch_trains_a_full_next_epoch(runs, framework):
    first, resumed = runs(f"{framework}-stateful"), runs(f"{framework}-resumed-end")
    stopped_after = len(first.batches(0, 0))
    problems = resume_problems(first, resumed, stopped_after, epoch=0)
    assert not problems, (
        f"{framework}, resumed from a checkpoint at the last batch of epoch 0: the next epoch should be "
        "complete and in a new order:\n  " + "\n  ".join(problems)
    )


# -- torchdata.nodes, in this process -----------------------------------------------


def nodes_loader(ds: ZarrFrameDataset):
    from torchdata.nodes import Batcher, Loader, ParallelMapper, SamplerWrapper

    node = Batcher(SamplerWrapper(ChunkAwareSampler(ds)), batch_size=BATCH)
    return Loader(ParallelMapper(node, ds.__getitems__, num_workers=2, method="thread"))


def ids(batch) -> Batch:
    return [frame_id(frame.numpy()) for frame in batch]


@pytest.fixture(scope="module")
def nodes_epochs(data: str) -> list[list[Batch]]:
    """Three epochs of one uninterrupted torchdata.nodes Loader."""
    loader = nodes_loader(ZarrFrameDataset(data, array="data/camera0_rgb"))
    return [[ids(b) for b in loader] for _ in range(3)]


def test_nodes_every_frame_once_per_epoch_in_a_new_order_and_few_chunks(nodes_epochs):
    for epoch, batches in enumerate(nodes_epochs[:EPOCHS]):
        counts = Counter(f for b in batches for f in b)
        missing = len(EVERY_FRAME - counts.keys())
        repeats = sum(n - 1 for n in counts.values() if n > 1)
        assert not missing and not repeats, (
            f"torchdata.nodes epoch {epoch}: {sum(counts.values())} frames in {len(batches)} batches, "
            f"{missing} of {len(EVERY_FRAME)} never, {repeats} more than once"
        )
    assert nodes_epochs[0] != nodes_epochs[1], "torchdata.nodes: epoch 1 repeats epoch 0's order"
    batches = nodes_epochs[0] + nodes_epochs[1]
    assert mean_chunks(batches) <= 3, f"torchdata.nodes: {mean_chunks(batches):.1f} chunks per batch"


def which(passed: list[Batch], epochs: list[list[Batch]], head: list[Batch]) -> str:
    """What a pass over a resumed Loader gave, in a user's words."""
    for e, batches in enumerate(epochs):
        if passed == batches:
            return f"all of epoch {e} (its order)"
    if not passed:
        return "no batches"
    again = len({f for b in passed for f in b} & {f for b in head for f in b})
    return f"{len(passed)} batches, {again} of their frames trained on before the checkpoint"


@pytest.mark.parametrize("stop_after", [MID, 24], ids=["mid-epoch", "last-batch"])
def test_nodes_resume_from_state_dict(data, nodes_epochs, stop_after):
    """SamplerWrapper -> Batcher -> ParallelMapper(threads) -> Loader, ``state_dict()`` after
    ``stop_after`` batches; a new Loader that loads it gives the rest of that epoch, then
    the next epoch (after the last batch: the next epoch at once, then the one after)."""
    ds = ZarrFrameDataset(data, array="data/camera0_rgb")
    first = nodes_loader(ds)
    it = iter(first)
    head = [ids(next(it)) for _ in range(stop_after)]
    state = first.state_dict()
    assert head == nodes_epochs[0][:stop_after], "the same seed gives the same order"

    resumed = nodes_loader(ds)
    resumed.load_state_dict(state)
    passes = [[ids(b) for b in resumed] for _ in range(2)]
    at_end = stop_after == len(nodes_epochs[0])
    expected = nodes_epochs[1:3] if at_end else [nodes_epochs[0][stop_after:], nodes_epochs[1]]
    wanted = ["all of epoch 1", "all of epoch 2"] if at_end else ["the rest of epoch 0", "all of epoch 1"]
    where = f"torchdata.nodes, state_dict() after {stop_after} of {len(nodes_epochs[0])} batches of epoch 0"
    for k, (got, exp, want) in enumerate(zip(passes, expected, wanted, strict=True)):
        if got != exp:
            pytest.fail(
                f"{where}: pass {k + 1} over the resumed Loader gave {which(got, nodes_epochs, head)}; "
                f"expected {want}"
            )
