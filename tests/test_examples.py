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


def test_embed_frames(tmp_path):
    import numpy as np
    import zarr

    from zarr_torch import SelectionIndex

    root = tmp_path / "d"
    write_stores(str(root), stores=2, frames=6, size=16, chunk=3)
    # Make frame 4 of store 1 a copy of frame 1 of store 0: their embeddings must agree.
    same = zarr.open_array(str(root / "episode_00000.zarr"), path="data/camera0_rgb")[1]
    zarr.open_array(str(root / "episode_00001.zarr"), path="data/camera0_rgb", mode="r+")[4] = same
    out = run_example(
        "embed_frames.py", str(root), "--out", str(tmp_path / "emb.zarr"), "--size", "32", "--batch-size", "4"
    )
    assert "12 embeddings of 2 stores written" in out
    emb = zarr.open_array(str(tmp_path / "emb.zarr"), path="embeddings")[...]
    index = SelectionIndex.load(tmp_path / "emb.zarr" / "index.zti")
    assert emb.shape == (len(index), 512) == (12, 512)
    np.testing.assert_allclose(emb[1], emb[6 + 4], rtol=1e-5, atol=1e-5)
    assert not np.allclose(emb[1], emb[2])
