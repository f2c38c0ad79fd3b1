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


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zarr_torch.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_storage_options_from_a_file_or_the_environment_and_never_echoed(tmp_path):
    import os

    write_stores(str(tmp_path / "d"), stores=2, frames=4, size=4)
    (tmp_path / "opts.json").write_text('{"auto_mkdir": true}')
    by_file = run_cli("info", str(tmp_path / "d"), "--storage-options", f"@{tmp_path / 'opts.json'}")
    by_env = run_cli("info", str(tmp_path / "d"), env={**os.environ, "ZARR_TORCH_STORAGE_OPTIONS": "{}"})
    assert by_file.returncode == by_env.returncode == 0 and by_file.stdout == by_env.stdout
    assert by_file.stdout.endswith("2 store(s)\n")
    (tmp_path / "bad.json").write_text('{"secret": "hunter2",}')
    for given in ('{"secret": "hunter2",}', f"@{tmp_path / 'bad.json'}"):
        bad = run_cli("info", str(tmp_path / "d"), "--storage-options", given)
        assert bad.returncode == 2 and "is not valid JSON (line 1, column 22)" in bad.stderr
        assert "hunter2" not in bad.stderr + bad.stdout
    missing = run_cli("info", str(tmp_path / "d"), "--storage-options", "@/nonexistent/opts.json")
    assert missing.returncode == 2 and "cannot read '/nonexistent/opts.json'" in missing.stderr
