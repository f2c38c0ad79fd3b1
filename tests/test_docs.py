"""The documentation's code runs as written, and the documentation site builds.

Every ```` ```python ```` block of README.md and of docs/**/*.md runs, except a block
whose first line is a comment ``# not run: <why>``. The blocks of one page run in order
in one namespace (a block may use what an earlier block of its page made), in a fresh
working directory holding the data the snippets name:

- ``data/``: local stores in the layout ``zarr-torch synth`` writes (episodes of 16 and
  24 frames, so 16-frame windows fit);
- ``s3://bucket/episodes/``: such stores on the moto S3 server (``conftest.s3_endpoint``),
  which the snippets reach as a user's code reaches S3: through the environment
  (``AWS_ENDPOINT_URL`` and credentials), its objects public-read so that
  ``storage_options={"anon": True}`` works too.

A failing block's traceback names the Markdown file and the line of the statement.
"""

from __future__ import annotations

import multiprocessing.forkserver
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import s3fs

import zarr_torch
from zarr_torch.synth import write_stores

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python\s*$")
#: the first line of a block that is shown but not run, and why.
NOT_RUN = re.compile(r"^# not run: (?P<why>\S.*)$")
BUCKET = "bucket"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the block's first line of code
    code: str

    @property
    def why_not_run(self) -> str | None:
        first = self.code.split("\n", 1)[0]
        match = NOT_RUN.match(first)
        return match["why"] if match else None


def python_blocks(page: Path) -> list[Block]:
    """The ```python blocks of ``page``, in order."""
    lines = page.read_text().splitlines()
    blocks, start = [], None
    for n, line in enumerate(lines):
        if start is None and FENCE.match(line):
            start = n + 1
        elif start is not None and line.strip() == "```":
            blocks.append(Block(page, start + 1, "\n".join(lines[start:n]) + "\n"))
            start = None
    assert start is None, f"{page}: a ```python block opened at line {start} is never closed"
    return blocks


def run_page(page: Path) -> int:
    """Run the runnable blocks of ``page`` in order in one namespace; return how many ran."""
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for block in python_blocks(page):
        if block.why_not_run is not None:
            continue
        # Pad with newlines so that tracebacks show the Markdown file's own line numbers.
        code = compile("\n" * (block.line - 1) + block.code, str(page), "exec")
        exec(code, namespace)
        ran += 1
    return ran


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


RUNNABLE = [p for p in PAGES if any(b.why_not_run is None for b in python_blocks(p))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def template(tmp_path_factory, s3_options) -> Path:
    """Local stores under ``<template>/data``, and stores under s3://bucket/episodes/."""
    root = tmp_path_factory.mktemp("docs-data")
    write_stores(str(root / "data"), stores=3, frames=[16, 24], size=16, chunk=8)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_options)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
        public = {**s3_options, "s3_additional_kwargs": {"ACL": "public-read"}}
        write_stores(
            f"s3://{BUCKET}/episodes/", stores=2, frames=[16, 8], size=16, chunk=8, storage_options=public
        )
    return root


@pytest.fixture
def workdir(template, tmp_path, monkeypatch, s3_endpoint) -> Path:
    """A fresh working directory with ``data/``, and the environment a user's job has."""
    shutil.copytree(template / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing-key",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
        # what torchrun sets, for the snippets that start a process group (of one process)
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        # datachain's database, accelerate's config: under this directory
        "DATACHAIN_ROOT_DIR": str(tmp_path / ".datachain"),
        "DATACHAIN_SYSTEM_CONFIG_DIR": str(tmp_path / ".datachain-system"),
        "HF_HOME": str(tmp_path / "hf"),
    }.items():
        monkeypatch.setenv(name, value)
    # forkserver workers get the environment and working directory the forkserver started
    # with: start a new one for this page, as a user's fresh process would.
    multiprocessing.forkserver._forkserver._stop()
    yield tmp_path
    multiprocessing.forkserver._forkserver._stop()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if "accelerate.state" in sys.modules:
        sys.modules["accelerate.state"].AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("page", RUNNABLE, ids=rel)
def test_page_code_runs(page, workdir):
    assert run_page(page) > 0


def test_the_pages_have_code_to_run():
    """The parser finds the blocks (a broken one would make every page pass vacuously)."""
    blocks = [b for p in PAGES for b in python_blocks(p)]
    runnable = [b for b in blocks if b.why_not_run is None]
    assert len(runnable) >= 30, f"only {len(runnable)} runnable blocks found"
    assert {rel(p) for p in RUNNABLE} >= {"README.md", "docs/index.md", "docs/guides/failures.md"}


def test_every_block_not_run_says_why():
    for page in PAGES:
        for block in python_blocks(page):
            first = block.code.split("\n", 1)[0]
            if first.lstrip("# ").lower().startswith("not run"):
                assert block.why_not_run, f"{rel(page)}:{block.line}: '# not run: <why>' needs a reason"


def test_the_api_reference_lists_every_export():
    api = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in zarr_torch.__all__ if f"::: zarr_torch.{name}\n" not in api]
    assert not missing, f"docs/api.md does not document {missing}"


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "WARNING" not in done.stderr, done.stderr[-5000:]
    site = tmp_path / "site"
    api = (site / "api" / "index.html").read_text()
    for name in ("ZarrFrameDataset", "SelectionIndex", "ChunkAwareSampler", "ZarrSelection", "read_zarr"):
        assert f'id="zarr_torch.{name}"' in api, name
    assert (site / "assets" / "benchmarks" / "throughput.png").stat().st_size > 0
    assert "throughput.png" in (site / "benchmarks" / "index.html").read_text()
