"""Synthetic stores and the command line that writes and lists them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SIZE

from zarr_torch import read_zarr
from zarr_torch.cli import main
from zarr_torch.synth import make_frames, write_store


def test_frames_are_stamped_with_store_and_time():
    frames = make_frames(7, 300, SIZE)
    assert frames.shape == (300, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert frames[299, 0, 0].tolist() == [7, 299 % 256, 1]
    assert not np.array_equal(frames[0], make_frames(8, 1, SIZE)[0])


@pytest.mark.parametrize(
    ("layout", "chunks", "shards"),
    [
        ({"chunk": 4, "shard": 8}, (4, SIZE, SIZE, 3), (8, SIZE, SIZE, 3)),
        ({"chunk": 2, "zarr_format": 2, "codec": "blosc"}, (2, SIZE, SIZE, 3), None),
        ({"chunk": 1, "codec": "gzip"}, (1, SIZE, SIZE, 3), None),
    ],
)
def test_layouts(tmp_path, layout, chunks, shards):
    import zarr

    uri = write_store(str(tmp_path / "ep.zarr"), 1, [3, 5], size=SIZE, **layout)
    arr = zarr.open_array(uri, path="data/camera0_rgb", mode="r")
    assert arr.chunks == chunks and arr.shards == shards
    np.testing.assert_array_equal(arr[...], make_frames(1, 8, SIZE))
    ends = zarr.open_array(uri, path="meta/episode_ends", mode="r")[...]
    assert ends.tolist() == [3, 8]


def test_sharding_needs_v3(tmp_path):
    with pytest.raises(ValueError, match="sharding needs zarr_format=3"):
        write_store(str(tmp_path / "ep.zarr"), 0, [4], shard=4, zarr_format=2)


def test_cli_synth_and_info(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert (
        main(["synth", out, "--stores", "2", "--frames", "3", "4", "--size", "8", "--chunk", "2", "--nested"])
        == 0
    )
    stores = read_zarr(out)
    assert len(stores) == 2
    assert stores[1].get_array("data/camera0_rgb").shape == [7, 8, 8, 3]
    capsys.readouterr()
    assert main(["info", out, "--arrays"]) == 0
    shown = capsys.readouterr().out
    assert "data/camera0_rgb  shape=(7, 8, 8, 3) chunks=(2, 8, 8, 3) dtype=uint8" in shown
    assert shown.rstrip().endswith("2 store(s)")
