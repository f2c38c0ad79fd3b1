"""The command line as a shell user meets it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from zarr_torch.synth import write_stores


def test_info_into_a_pipe_that_closes_exits_quietly(tmp_path):
    write_stores(str(tmp_path / "d"), stores=40, frames=2, size=4, chunk=1)
    cli = Path(sys.executable).with_name("zarr-torch")
    for listing in ("", " --arrays"):
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", f"'{cli}' info '{tmp_path / 'd'}'{listing} | head -n 1"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.stdout.count("\n") == 1
        assert "Traceback" not in done.stderr and "Error" not in done.stderr, "no BrokenPipeError traceback"
        assert "reading metadata" in done.stderr, "40 stores: a progress bar on stderr"
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
    assert "\n2 store(s), 4 array path(s): " in by_file.stdout
    (tmp_path / "bad.json").write_text('{"secret": "hunter2",}')
    for given in ('{"secret": "hunter2",}', f"@{tmp_path / 'bad.json'}"):
        bad = run_cli("info", str(tmp_path / "d"), "--storage-options", given)
        assert bad.returncode == 2 and "is not valid JSON (line 1, column 22)" in bad.stderr
        assert "hunter2" not in bad.stderr + bad.stdout
    missing = run_cli("info", str(tmp_path / "d"), "--storage-options", "@/nonexistent/opts.json")
    assert missing.returncode == 2 and "cannot read '/nonexistent/opts.json'" in missing.stderr


# -- info: one line per array path -------------------------------------------------------

SIZE = 12
RGB = "data/camera0_rgb"


def chunk_bytes(store: Path, array: str) -> int:
    """Bytes of the chunk files of ``array`` in the local ``store``: metadata excluded."""
    meta = {"zarr.json", ".zarray", ".zattrs"}
    return sum(f.stat().st_size for f in (store / array).rglob("*") if f.is_file() and f.name not in meta)


def array_line(out: str, path: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith(f"  {path}  ")]
    return line


def test_info_summarises_a_prefix_by_array_path(tmp_path, capsys):
    from zarr_torch.cli import human_bytes, main, read_facts
    from zarr_torch.models import read_zarr

    root = tmp_path / "d"
    uris = write_stores(str(root), stores=3, frames=[6, 4], size=SIZE, chunk=4, nested=True)
    assert main(["info", str(root)]) == 0
    shown = capsys.readouterr()
    stores = read_zarr(str(root))
    facts = read_facts(stores)
    assert [[(f.path, f.stored) for f in fs] for fs in facts] == [
        [(f.path, chunk_bytes(Path(s.uri), f.path)) for f in fs] for s, fs in zip(stores, facts, strict=True)
    ], "exact bytes of every array's chunk files"
    stored = sum(chunk_bytes(Path(u), RGB) for u in uris)
    assert array_line(shown.out, RGB) == (
        f"  {RGB}  stores=3 frames=30 item=({SIZE}, {SIZE}, 3) dtype=uint8 chunks=(4, {SIZE}, {SIZE}, 3) "
        f"codecs=zstd stored={human_bytes(stored)} decoded={human_bytes(30 * SIZE * SIZE * 3)}"
    )
    assert "stores=3 frames=30 item=(2,) dtype=float32 chunks=(4, 2) codecs=zstd" in array_line(
        shown.out, "data/action"
    )
    assert "stores=3 frames=6 item=() dtype=int64" in array_line(shown.out, "meta/episode_ends")
    assert shown.out.splitlines()[-1].startswith("3 store(s), 4 array path(s): ")
    assert len(shown.out.splitlines()) == 5
    assert "episode_0000" not in shown.out, "no store is listed"
    assert shown.err == "", "no progress bar for a few stores"


def test_info_sharded_v2_zipped_and_mixed_stores(tmp_path, capsys):
    from zarr_torch.cli import main
    from zarr_torch.synth import write_store, zip_store

    sharded = write_stores(str(tmp_path / "sharded"), stores=2, frames=8, size=6, chunk=2, shard=4)
    assert main(["info", str(tmp_path / "sharded")]) == 0
    line = array_line(capsys.readouterr().out, RGB)
    assert "frames=16 item=(6, 6, 3) dtype=uint8 chunks=(2, 6, 6, 3) shards=(4, 6, 6, 3) codecs=zstd" in line
    assert "stored=" in line and "stored=?" not in line

    v2 = write_store(str(tmp_path / "v2" / "ep.zarr"), 0, [8], size=6, chunk=2, codec="blosc", zarr_format=2)
    zip_store(v2, str(tmp_path / "mixed" / "ep0.zarr.zip"))
    write_store(str(tmp_path / "mixed" / "ep1.zarr"), 1, [5], size=4, chunk=5)
    for source in (str(tmp_path / "v2"), str(tmp_path / "mixed" / "ep0.zarr.zip")):
        assert main(["info", source]) == 0
        out = capsys.readouterr().out
        assert "stores=1 frames=8 item=(6, 6, 3) dtype=uint8 chunks=(2, 6, 6, 3) codecs=blosc(zstd)" in out
        # zipped members are stored uncompressed: the same chunk bytes as the folder
        assert f"stored={chunk_bytes(Path(v2), RGB)} B " in array_line(out, RGB)
    assert main(["info", str(tmp_path / "mixed")]) == 0
    line = array_line(capsys.readouterr().out, RGB)
    assert "stores=2 frames=13 item=varies dtype=uint8 chunks=varies codecs=varies" in line
    assert sharded


def test_info_arrays_keeps_the_listing_of_every_store(tmp_path, capsys):
    from zarr_torch.cli import main

    uris = write_stores(str(tmp_path / "d"), stores=2, frames=7, size=8, chunk=2)
    assert main(["info", str(tmp_path / "d"), "--arrays"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == uris[0] and uris[1] in lines
    assert "  data/camera0_rgb  shape=(7, 8, 8, 3) chunks=(2, 8, 8, 3) dtype=uint8" in lines
    assert lines[-1] == "2 store(s)"


def test_info_on_s3_never_prints_a_secret(s3_bucket, s3_options, tmp_path, capsys):
    import json

    from zarr_torch.cli import main, read_facts
    from zarr_torch.models import read_zarr

    planted = {**s3_options, "secret": "planted/secret+value", "token": "planted-token"}
    write_stores(f"{s3_bucket}/eps", stores=2, frames=8, size=SIZE, chunk=4, storage_options=s3_options)
    local = write_stores(str(tmp_path / "eps"), stores=2, frames=8, size=SIZE, chunk=4)
    options = json.dumps({**s3_options, "token": "planted-token"})
    assert main(["info", f"{s3_bucket}/eps", "--storage-options", options]) == 0
    on_s3 = capsys.readouterr()
    assert main(["info", str(tmp_path / "eps")]) == 0
    assert on_s3.out == capsys.readouterr().out, "S3 listings size the same chunks as the local files"
    facts = read_facts(read_zarr(f"{s3_bucket}/eps", s3_options))
    assert [[f.stored for f in store] for store in facts] == [
        [chunk_bytes(Path(u), f.path) for f in store] for u, store in zip(local, facts, strict=True)
    ], "exact chunk bytes from S3's listing"
    assert main(["info", f"{s3_bucket}/nope", "--storage-options", json.dumps(planted)]) == 2
    failed = capsys.readouterr()
    assert failed.err.startswith("zarr-torch info: error: no directory at ") and "/nope" in failed.err
    for text in (on_s3.out + on_s3.err, failed.out + failed.err):
        for secret in ("testing-secret", "planted/secret+value", "planted-token", s3_options["key"]):
            assert secret not in text


# -- preview: a PNG contact sheet ---------------------------------------------------------


def tiles(png: Path, rows: int, cols: int, h: int, w: int, padding: int = 2) -> np.ndarray:
    """The (rows * cols, h, w, 3) tiles of a sheet laid out as make_grid does: each tile
    starts after ``padding`` pixels, and tiles are ``padding`` apart."""
    from PIL import Image

    sheet = np.asarray(Image.open(png).convert("RGB"))
    assert sheet.shape == (padding + rows * (h + padding), padding + cols * (w + padding), 3)
    return np.stack(
        [
            sheet[padding + r * (h + padding) :][:h, padding + c * (w + padding) :][:, :w]
            for r in range(rows)
            for c in range(cols)
        ]
    )


def test_preview_of_a_prefix_and_of_a_saved_index(tmp_path, capsys):
    from PIL import Image

    from zarr_torch.cli import main
    from zarr_torch.index import SelectionIndex
    from zarr_torch.synth import make_frames

    root = str(tmp_path / "d")
    write_stores(root, stores=2, frames=5, size=SIZE, chunk=2)
    frames = np.concatenate([make_frames(s, 5, SIZE) for s in range(2)])
    png = tmp_path / "sheet.png"
    assert main(["preview", root, "-o", str(png), "--count", "4"]) == 0
    assert capsys.readouterr().out == f"{png}: 2 x 2 grid of 4 frames, 30x30 pixels\n"
    shown = tiles(png, 2, 2, SIZE, SIZE)
    np.testing.assert_array_equal(shown[0], frames[0])  # make_grid puts the first at (2, 2)
    np.testing.assert_array_equal(shown, frames[[0, 3, 6, 9]])  # evenly spread, first to last
    sheet = np.asarray(Image.open(png))
    assert not sheet[:2].any() and not sheet[:, :2].any(), "padding is black"

    index = tmp_path / "frames.zti"
    SelectionIndex.build(root, array=RGB).save(index)
    assert main(["preview", str(index), "-o", str(png), "--count", "3", "--seed", "7", "--nrow", "3"]) == 0
    assert capsys.readouterr().out == f"{png}: 1 x 3 grid of 3 frames, 44x16 pixels\n"
    rows = np.sort(np.random.default_rng(7).choice(10, size=3, replace=False))
    np.testing.assert_array_equal(tiles(png, 1, 3, SIZE, SIZE), frames[rows])

    assert main(["preview", root, "-o", str(png), "--count", "50", "--padding", "0"]) == 0
    assert capsys.readouterr().out == f"{png}: 3 x 4 grid of 10 frames, 48x36 pixels\n"
    shown = tiles(png, 3, 4, SIZE, SIZE, padding=0)
    np.testing.assert_array_equal(shown[:10], frames)  # every frame when asked for more
    assert not shown[10:].any(), "the last row's two empty places are black"


def test_preview_of_windows_shows_one_window_a_row(tmp_path, capsys):
    from zarr_torch.cli import main
    from zarr_torch.index import SelectionIndex
    from zarr_torch.synth import make_frames

    root = str(tmp_path / "d")
    write_stores(root, stores=2, frames=[6, 4], size=SIZE, chunk=4)
    png = tmp_path / "windows.png"
    args = ["--window", "3", "--episode-ends", "meta/episode_ends", "--count", "4"]
    assert main(["preview", root, "-o", str(png), *args]) == 0
    assert capsys.readouterr().out == f"{png}: 4 x 3 grid of 4 windows of 3 frames, 44x58 pixels\n"
    index = SelectionIndex.build(root, array=RGB, window=3, episode_ends="meta/episode_ends")
    picked = np.linspace(0, len(index) - 1, 4).round().astype(int)
    expected = [
        make_frames(index.arrays[a].store, 10, SIZE)[s : s + 3]
        for a, s in zip(index.rows["array"][picked], index.rows["start"][picked], strict=True)
    ]
    np.testing.assert_array_equal(tiles(png, 4, 3, SIZE, SIZE), np.concatenate(expected))

    index.save(tmp_path / "windows.zti")
    assert main(["preview", str(tmp_path / "windows.zti"), "-o", str(png), "--count", "4"]) == 0
    assert "4 x 3 grid of 4 windows of 3 frames" in capsys.readouterr().out
    np.testing.assert_array_equal(tiles(png, 4, 3, SIZE, SIZE), np.concatenate(expected))


def test_preview_scales_frames_that_are_not_uint8_images(tmp_path, capsys):
    import zarr

    from zarr_torch.cli import main

    depth = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5) * 0.5 - 3
    zarr.create_array(str(tmp_path / "d" / "ep.zarr"), shape=depth.shape, dtype="float32", chunks=(1, 4, 5))[
        ...
    ] = depth
    png = tmp_path / "depth.png"
    assert main(["preview", str(tmp_path / "d"), "--array", "", "-o", str(png), "--padding", "0"]) == 0
    assert "1 x 2 grid of 2 frames, 10x4 pixels" in capsys.readouterr().out
    scaled = ((depth - depth.min()) / (depth.max() - depth.min())).astype(np.float32)
    gray = np.clip(scaled * np.float32(255) + np.float32(0.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(tiles(png, 1, 2, 4, 5, padding=0), np.repeat(gray[..., None], 3, -1))


def test_preview_of_a_missing_array_exits_2_naming_it(tmp_path, capsys):
    from zarr_torch.cli import main
    from zarr_torch.index import SelectionIndex

    root = str(tmp_path / "d")
    write_stores(root, stores=2, frames=3, size=4)
    png = tmp_path / "x.png"
    assert main(["preview", root, "--array", "data/none", "-o", str(png)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zarr-torch preview: error: ") and "'data/none'" in err
    SelectionIndex.build(root, array=RGB).save(tmp_path / "f.zti")
    assert main(["preview", str(tmp_path / "f.zti"), "--array", "data/none", "-o", str(png)]) == 2
    assert "'data/none'" in capsys.readouterr().err
    assert main(["preview", root, "--array", "data/action", "-o", str(png)]) == 2
    assert "items of shape (2,) are not images" in capsys.readouterr().err
    assert not png.exists()


def test_index_build_of_windows_and_its_errors_exit_2_naming_them(tmp_path, capsys, monkeypatch):
    from zarr_torch.cli import main
    from zarr_torch.index import SelectionIndex

    for name in ("RANK", "WORLD_SIZE"):  # one process: a plain build
        monkeypatch.delenv(name, raising=False)
    root = str(tmp_path / "d")
    write_stores(root, stores=3, frames=[5, 7], size=4, chunk=2)
    out = tmp_path / "w.zti"
    window = ["--window", "3", "--stride", "2", "--episode-ends", "meta/episode_ends", "--pad-after", "1"]
    assert main(["index", "build", root, "--array", RGB, "-o", str(out), *window]) == 0
    expected = SelectionIndex.build(
        root, array=RGB, window=3, stride=2, episode_ends="meta/episode_ends", pad_after=1
    )
    assert SelectionIndex.load(out).rows.tobytes() == expected.rows.tobytes()
    assert capsys.readouterr().out == (
        f"{out}: 3 stores, 6 arrays, {len(expected)} rows, {out.stat().st_size} bytes\n"
    )
    assert main(["index", "build", root, "--array", "data/none", "-o", str(tmp_path / "x.zti")]) == 2
    err = capsys.readouterr().err
    assert "\nzarr-torch index build: error: " in err and "'data/none'" in err and "episode_00000" in err
    assert main(["index", "build", root, "--array", RGB, "--stride", "2", "-o", str(tmp_path / "x.zti")]) == 2
    assert "need a window" in capsys.readouterr().err
    assert not (tmp_path / "x.zti").exists()


def test_index_merge_joins_saved_indexes_in_order(tmp_path, capsys):
    from zarr_torch.cli import main
    from zarr_torch.index import SelectionIndex

    uris = write_stores(str(tmp_path / "d"), stores=3, frames=4, size=4)
    SelectionIndex.build(uris[2:], array=RGB).save(tmp_path / "b.zti")
    SelectionIndex.build(uris[:2], array=RGB).save(tmp_path / "a.zti")
    out = tmp_path / "ab.zti"
    assert main(["index", "merge", str(tmp_path / "a.zti"), str(tmp_path / "b.zti"), "-o", str(out)]) == 0
    assert capsys.readouterr().out.endswith(
        f"3 stores, 3 arrays, 12 rows, {out.stat().st_size} bytes, merged from 2 indexes\n"
    )
    merged = SelectionIndex.load(out)
    assert [s.uri for s in merged.stores] == uris
    assert merged.rows.tobytes() == SelectionIndex.build(uris, array=RGB).rows.tobytes()
    assert main(["index", "merge", str(tmp_path / "a.zti"), str(tmp_path / "a.zti"), "-o", str(out)]) == 0
    assert len(SelectionIndex.load(out)) == 16, "an index merged with itself: its rows twice"
    capsys.readouterr()
    (tmp_path / "not.zti").write_text("hello")
    assert main(["index", "merge", str(tmp_path / "a.zti"), str(tmp_path / "not.zti"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zarr-torch index merge: error: ") and "not.zti" in err
