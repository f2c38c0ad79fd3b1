"""The examples run as a user runs them, on small synthetic data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from zarr_torch.synth import write_stores

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_train_classifier(tmp_path):
    write_stores(str(tmp_path / "d"), stores=3, frames=16, size=16, chunk=4)
    out = run_example("train_classifier.py", str(tmp_path / "d"), "--workers", "2")
    assert "48 frames from 3 stores" in out
    assert "epoch 0: loss" in out and "frames/s" in out


def test_train_policy_windows(tmp_path):
    write_stores(str(tmp_path / "d"), stores=2, frames=[9, 12], size=16, chunk=4)
    out = run_example("train_policy_windows.py", str(tmp_path / "d"), "--window", "4", "--workers", "2")
    windows = 2 * ((9 - 4 + 1 + 1 + 3) + (12 - 4 + 1 + 1 + 3))
    assert f"{windows} windows of 4 frames from 2 stores" in out
    assert "epoch 0: loss" in out


def test_resume_training(tmp_path):
    write_stores(str(tmp_path / "d"), stores=2, frames=20, size=8, chunk=4)
    out = run_example("resume_training.py", str(tmp_path / "d"), "--stop-after", "2")
    assert "2 batches, stopped, resumed for 3 more: same batches as an uninterrupted run" in out
