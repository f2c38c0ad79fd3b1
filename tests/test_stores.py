"""Stores built the way their projects build them, read pixel-exactly against zarr's own read.

UMI (universal_manipulation_interface) ships ``dataset.zarr.zip``: a zarr v2 replay buffer
in one zip file, frames compressed with imagecodecs' JPEG-XL one per chunk, episodes
cut by ``meta/episode_ends`` (see ``synth.write_umi_zip``).
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from zarr_torch import SelectionIndex, ZarrFrameDataset, read_zarr
from zarr_torch.synth import write_umi_zip

CAMERA, ACTION, ENDS = "data/camera0_rgb", "data/action", "meta/episode_ends"
#: an episode shorter than the window (3), one as long (4) and longer ones.
EPISODES = (6, 3, 4, 9)
FRAMES = sum(EPISODES)
SIZE = (24, 32)  # not square, so height and width cannot be swapped unseen
#: a Diffusion Policy window: one frame of history, three more of the future.
WINDOW = {"window": 4, "pad_before": 1, "pad_after": 3}


def register_codecs(worker_id: int) -> None:
    """``worker_init_fn`` registering imagecodecs' codecs: spawn workers start without
    the parent's registrations (as the README says)."""
    from imagecodecs import numcodecs as imagecodecs_numcodecs

    imagecodecs_numcodecs.register_codecs()


@pytest.fixture(scope="module")
def umi(tmp_path_factory: pytest.TempPathFactory) -> str:
    """UMI's ``dataset.zarr.zip`` (codecs registered in this process); its path."""
    return write_umi_zip(str(tmp_path_factory.mktemp("umi") / "dataset.zarr.zip"), EPISODES, size=SIZE)


@pytest.fixture(scope="module")
def zarr_read(umi: str) -> dict[str, np.ndarray]:
    """Every array of the zip as zarr itself reads it through its ``ZipStore``."""
    store = zarr.storage.ZipStore(umi, mode="r")
    try:
        root = zarr.open_group(store, mode="r")
        return {name: root[name][...] for name in (CAMERA, ACTION, "data/robot0_eef_pos", ENDS)}
    finally:
        store.close()


def loader(ds: ZarrFrameDataset, context: str, **kwargs) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=5,
        num_workers=2,
        multiprocessing_context=multiprocessing.get_context(context),
        timeout=120,
        **kwargs,
    )


def assert_every_frame_once_by_content(batches: Iterable[torch.Tensor], expected: np.ndarray) -> None:
    """Every frame of ``expected`` came back once, pixel-exact, in any order.

    UMI's frames carry no (store, t) stamp for ``checks.assert_every_frame_once`` to read,
    so frames are told apart by their bytes (they all differ).
    """
    where = {frame.tobytes(): i for i, frame in enumerate(expected)}
    assert len(where) == len(expected), "the test frames must differ to be told apart"
    seen: Counter[int] = Counter()
    for batch in batches:
        for frame in batch.numpy():
            assert frame.shape == expected.shape[1:] and frame.dtype == expected.dtype
            i = where.get(frame.tobytes())
            assert i is not None, f"a frame unlike any zarr reads (max diff {_nearest(frame, expected)})"
            seen[i] += 1
    assert len(seen) == len(expected), (
        f"frames {sorted(set(range(len(expected))) - set(seen))} never came back"
    )
    assert set(seen.values()) == {1}, (
        f"frames came back more than once: {[i for i, n in seen.items() if n > 1]}"
    )


def _nearest(frame: np.ndarray, expected: np.ndarray) -> int:
    return int(np.abs(expected.astype(np.int16) - frame.astype(np.int16)).max(axis=(1, 2, 3)).min())


def test_the_zip_is_built_as_umi_builds_it(umi, zarr_read):
    import zipfile

    with zipfile.ZipFile(umi) as archive:
        members = {m.filename: m for m in archive.infolist()}
    assert {m.compress_type for m in members.values()} == {zipfile.ZIP_STORED}
    assert ".zgroup" in members and f"{CAMERA}/.zarray" in members and f"{CAMERA}/0.0.0.0" in members
    arr = zarr.open_array(zarr.storage.ZipStore(umi, mode="r"), path=CAMERA, mode="r")
    assert arr.metadata.zarr_format == 2
    assert arr.metadata.compressor.codec_id == "imagecodecs_jpegxl"
    assert arr.chunks == (1, *SIZE, 3) and arr.dtype == np.uint8
    camera = zarr_read[CAMERA]
    assert camera.shape == (FRAMES, *SIZE, 3)
    assert members[f"{CAMERA}/0.0.0.0"].file_size < camera[0].nbytes / 4, "smooth frames compress"
    assert zarr_read[ENDS].tolist() == np.cumsum(EPISODES).tolist() and zarr_read[ENDS].dtype == np.int64
    assert zarr_read[ACTION].shape == (FRAMES, 7) and zarr_read[ACTION].dtype == np.float32


@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize("source", ["path", "zip::file://", "zip::", "saved index"])
def test_every_frame_once_as_zarr_reads_it(umi, zarr_read, tmp_path, source, context):
    if source == "saved index":
        SelectionIndex.build(umi, array=CAMERA).save(tmp_path / "umi.zti")
        index = SelectionIndex.load(tmp_path / "umi.zti")
        assert [s.uri for s in index.stores] == [umi]
        ds = ZarrFrameDataset(index)
    else:
        ds = ZarrFrameDataset(umi if source == "path" else source + umi, array=CAMERA, media="image")
    assert len(ds) == FRAMES
    got = loader(ds, context, shuffle=True, worker_init_fn=register_codecs)
    assert_every_frame_once_by_content(got, zarr_read[CAMERA])


def test_frames_in_order_in_this_process(umi, zarr_read):
    ds = ZarrFrameDataset(f"zip::file://{umi}", array=CAMERA)
    got = np.stack([t.numpy() for t in ds.__getitems__(list(range(len(ds))))])
    np.testing.assert_array_equal(got, zarr_read[CAMERA])
    np.testing.assert_array_equal(ds[FRAMES - 1].numpy(), zarr_read[CAMERA][-1])


def diffusion_policy_windows(ends: np.ndarray, window: int, pad_before: int, pad_after: int) -> np.ndarray:
    """The frame each slot of each window shows, as Diffusion Policy's ``SequenceSampler``
    makes them: starts from ``-pad_before`` to ``length - window + pad_after`` in each
    episode, frames clamped to the episode (its edge frames repeated)."""
    windows, first = [], 0
    for end in ends.tolist():
        length = end - first
        for start in range(-pad_before, length - window + pad_after + 1):
            windows.append([first + min(max(start + k, 0), length - 1) for k in range(window)])
        first = end
    return np.array(windows)


@pytest.mark.parametrize("array", [ACTION, CAMERA])
def test_windows_over_episode_ends_as_diffusion_policy_makes_them(umi, zarr_read, array):
    frames = diffusion_policy_windows(zarr_read[ENDS], **WINDOW)
    assert len(frames) == sum(n - 4 + 1 + 1 + 3 for n in EPISODES)
    expected = zarr_read[array][frames]
    ds = ZarrFrameDataset(umi, array=array, episode_ends=ENDS, **WINDOW)
    assert len(ds) == len(frames)
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i].numpy(), expected[i], err_msg=f"window {i}: {frames[i]}")
    got = torch.cat(list(loader(ds, "fork", worker_init_fn=register_codecs))).numpy()
    np.testing.assert_array_equal(got, expected)


def test_read_zarr_finds_the_zip_in_its_folder(umi, zarr_read):
    folder = str(Path(umi).parent)
    stores = read_zarr(folder)
    assert [s.uri for s in stores] == [umi]
    assert stores[0].get_array(CAMERA).shape == [FRAMES, *SIZE, 3]
    assert len(ZarrFrameDataset(stores, array=ACTION)) == FRAMES
    assert len(ZarrFrameDataset(folder, array=CAMERA)) == FRAMES


def test_without_registration_the_error_names_the_codec(umi):
    """A fresh interpreter that never registered imagecodecs' codecs."""
    code = (
        "import sys\n"
        "from zarr_torch import ZarrFrameDataset\n"
        "try:\n"
        f"    ZarrFrameDataset({umi!r}, array={CAMERA!r})\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    sys.exit('no error')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    message = run.stdout
    assert f"array {CAMERA!r} in store {umi!r} uses codec 'imagecodecs_jpegxl'" in message
    assert "not registered in this process" in message
    assert "imagecodecs.numcodecs.register_codecs()" in message and "worker_init_fn" in message


def test_a_spawn_worker_without_registration_names_the_codec(umi):
    ds = ZarrFrameDataset(umi, array=CAMERA)  # the parent has registered the codecs
    no_init = DataLoader(
        ds,
        batch_size=5,
        num_workers=1,
        multiprocessing_context=multiprocessing.get_context("spawn"),
        timeout=120,
    )
    with pytest.raises(
        Exception, match=r"uses codec 'imagecodecs_jpegxl', which is not registered"
    ) as caught:
        next(iter(no_init))
    assert "register_codecs()" in str(caught.value)
