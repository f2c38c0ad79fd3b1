"""The command line as a shell user meets it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from zarr_torch.synth import write_stores


def test_info_into_a_pipe_that_closes_exits_quietly(tmp_path):
    write_stores(str(tmp_path / "d"), stores=40, frames=2, size=4, chunk=1)
    cli = Path(sys.executable).with_name("zarr-torch")
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"'{cli}' info '{tmp_path / 'd'}' | head -n 1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.count("\n") == 1
    assert done.stderr == "", "no BrokenPipeError traceback"
    assert done.returncode == 0
