"""Benchmark peers that need another Python: annbatch (Python >= 3.12) in its own venv.

Nothing here imports annbatch: the peer runs ``peer_annbatch.py`` in ``benchmarks/.venv-peers``
(git-ignored, made on first use from a Python 3.12 found on the machine) and returns its JSON.

    if peer_python() is not None:
        result = run_annbatch(uris, "data/camera0_rgb", 2048, 64, "zarrs", expected)
        print(result["reader"], result["frames_per_s"])
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

HERE = Path(__file__).resolve().parent
PEER_VENV = HERE / ".venv-peers"
PEER_SCRIPT = HERE / "peer_annbatch.py"
ANNBATCH = "annbatch[zarrs]==0.3.1"
Engine = Literal["zarrs", "python"]


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _find_python312() -> str | None:
    """A working Python >= 3.12: pyenv's 3.12/3.13 builds first, then ``python3.12``/``python3.13`` on PATH.

    Each candidate is run once, since a pyenv shim on PATH exists even when its version is not active.
    """
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [
        *sorted(glob.glob(f"{pyenv_root}/versions/3.12.*/bin/python")),
        *sorted(glob.glob(f"{pyenv_root}/versions/3.13.*/bin/python")),
        *filter(None, (shutil.which(name) for name in ("python3.12", "python3.13"))),
    ]
    probe = "import sys, venv; sys.exit(sys.version_info < (3, 12))"
    for candidate in candidates:
        try:
            if subprocess.run([candidate, "-c", probe], capture_output=True, timeout=60).returncode == 0:
                return candidate
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def _peer_ready(python: Path) -> bool:
    if not python.exists():
        return False
    probe = [str(python), "-c", "import annbatch, zarrs"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def peer_python(venv: Path = PEER_VENV) -> Path | None:
    """The peer venv's Python with annbatch and zarrs (the venv is made if missing), or None with a reason.

    python = peer_python()   # e.g. benchmarks/.venv-peers/bin/python
    """
    python = _venv_python(venv)
    if _peer_ready(python):
        return python
    base = _find_python312()
    if base is None:
        print("annbatch peer skipped: annbatch needs Python >= 3.12 and no python3.12 was found")
        return None
    steps = [
        ([base, "-m", "venv", "--clear", str(venv)], 300),
        ([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", ANNBATCH], 1200),
    ]
    for cmd, timeout in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"annbatch peer skipped: {' '.join(cmd[:4])} timed out after {timeout} s")
            return None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            print(f"annbatch peer skipped: {' '.join(cmd[:4])} failed: {' | '.join(tail)}")
            return None
    (venv / ".gitignore").write_text("*\n")  # as Python 3.13's venv does: never commit the peer venv
    if not _peer_ready(python):
        print(f"annbatch peer skipped: {venv} was made but cannot import annbatch and zarrs")
        return None
    return python


def run_annbatch(
    stores: Sequence[str | os.PathLike[str]],
    array: str,
    frames: int,
    batch_size: int,
    engine: Engine,
    expected: np.ndarray,
    seed: int = 0,
    *,
    chunk_size: int = 1,
    preload_nchunks: int | None = None,
    timeout: float = 900,
) -> dict:
    """Read ``frames`` random frames through annbatch in the peer venv; every frame is checked.

    ``expected`` holds every frame of every store, in store order, concatenated on axis 0.
    Raises RuntimeError if the peer venv is unavailable or the peer fails (a wrong frame included).

    result = run_annbatch(uris, "data/camera0_rgb", 2048, 64, "zarrs", expected)  # {"frames_per_s": ...}
    """
    python = peer_python()
    if python is None:
        raise RuntimeError("the annbatch peer venv is unavailable (see the reason printed above)")
    with tempfile.TemporaryDirectory(prefix="peer_annbatch_") as tmp:
        check = Path(tmp) / "expected.npz"
        np.savez(check, expected=np.ascontiguousarray(expected))
        spec = {
            "stores": [os.fspath(s) for s in stores],
            "array": array,
            "frames": int(frames),
            "batch_size": int(batch_size),
            "engine": engine,
            "seed": int(seed),
            "check": str(check),
            "chunk_size": int(chunk_size),
            "preload_nchunks": preload_nchunks,
        }
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        try:
            done = subprocess.run(
                [str(python), str(PEER_SCRIPT), str(spec_path)],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"annbatch peer ({engine}) timed out after {timeout} s") from e
    if done.returncode != 0:
        raise RuntimeError(f"annbatch peer ({engine}) failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


__all__ = ["peer_python", "run_annbatch"]
