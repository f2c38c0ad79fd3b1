"""Window arithmetic against episode ends, as policy-learning code expects it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SIZE

from zarr_torch import ZarrFrameDataset
from zarr_torch.synth import make_frames, write_store, write_stores
from zarr_torch.windows import check_window, episodes, frame_positions, window_starts


def test_episodes_from_ends():
    assert episodes(np.array([5, 12, 20]), 20) == [(0, 5), (5, 12), (12, 20)]
    with pytest.raises(ValueError, match="positive and increasing"):
        episodes(np.array([5, 5, 20]))
    with pytest.raises(ValueError, match="ends at 20, but the array holds 21 frames"):
        episodes(np.array([5, 20]), 21)


def test_window_counts_per_episode():
    spans = episodes(np.array([5, 12, 20]))
    counts = [len(window_starts(a, b, 4)) for a, b in spans]
    assert counts == [2, 4, 5]
    assert window_starts(5, 12, 4).tolist() == [5, 6, 7, 8]
    assert window_starts(5, 12, 4, stride=2).tolist() == [5, 7]
    assert len(window_starts(0, 3, 4)) == 0, "an episode shorter than the window gives none"


@pytest.mark.parametrize(("pad_before", "pad_after"), [(0, 0), (1, 0), (0, 2), (3, 3)])
def test_padded_window_counts(pad_before, pad_after):
    for length in (4, 7, 8):
        starts = window_starts(10, 10 + length, 4, pad_before=pad_before, pad_after=pad_after)
        assert len(starts) == length - 4 + 1 + pad_before + pad_after
        assert starts[0] == 10 - pad_before


def test_frame_positions_repeat_the_edges():
    assert frame_positions(-2, 4, 0, 5).tolist() == [0, 0, 0, 1]
    assert frame_positions(3, 4, 0, 5).tolist() == [3, 4, 4, 4]
    assert frame_positions(6, 3, 5, 12).tolist() == [6, 7, 8]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0,), "window must be at least 1 frame, not 0"),
        ((4, 0), "stride must be at least 1, not 0"),
        ((4, -1), "stride must be at least 1, not -1"),
        ((4, 1, -1), "padding must not be negative"),
        ((2.5,), "window must be an integer number of frames, not 2.5"),
        ((4, 1.5), "stride must be an integer number of frames, not 1.5"),
        ((4, 1, 0, 1.0), "pad_after must be an integer number of frames, not 1.0"),
        ((True,), "window must be an integer number of frames, not True"),
    ],
)
def test_bad_window_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        check_window(*args)


# -- windows and multi-array samples through the index and the dataset ------------------

ARRAY = "data/camera0_rgb"
EPISODES = [5, 7, 8]  # one replay buffer of 20 frames


@pytest.fixture
def buffers(tmp_path) -> str:
    """Two replay-buffer stores, each holding episodes of 5, 7 and 8 frames, chunks of 3."""
    root = str(tmp_path / "rb")
    write_stores(root, stores=2, frames=EPISODES, size=SIZE, chunk=3)
    return root


def test_windows_never_cross_an_episode(buffers):
    ds = ZarrFrameDataset(buffers, array=ARRAY, window=4, episode_ends="meta/episode_ends")
    assert len(ds) == 2 * (2 + 4 + 5)
    frames = make_frames(1, 20, SIZE)
    spans = [(0, 5), (5, 12), (12, 20)]
    starts = [s for a, b in spans for s in range(a, b - 3)]
    for k, s in enumerate(starts):
        np.testing.assert_array_equal(ds[11 + k].numpy(), frames[s : s + 4])
    assert ds[0].shape == (4, SIZE, SIZE, 3)
    assert ds.index[13].index == [5] and ds.index.rows["length"][13] == 4


def test_store_boundaries_end_episodes_without_episode_ends(buffers):
    ds = ZarrFrameDataset(buffers, array=ARRAY, window=6, stride=5)
    assert len(ds) == 2 * 3  # starts 0, 5, 10 in each 20-frame store
    np.testing.assert_array_equal(ds[5].numpy(), make_frames(1, 20, SIZE)[10:16])


def test_padding_repeats_the_edge_frames(buffers):
    ds = ZarrFrameDataset(
        buffers, array=ARRAY, window=4, episode_ends="meta/episode_ends", pad_before=1, pad_after=3
    )
    assert len(ds) == 2 * sum(n - 4 + 1 + 1 + 3 for n in EPISODES)
    frames = make_frames(0, 20, SIZE)
    np.testing.assert_array_equal(ds[0].numpy(), frames[[0, 0, 1, 2]])  # one before frame 0
    last_of_first = 5 - 4 + 1 + 1 + 3 - 1
    np.testing.assert_array_equal(ds[last_of_first].numpy(), frames[[4, 4, 4, 4]])  # 3 after frame 4
    np.testing.assert_array_equal(ds[last_of_first + 1].numpy(), frames[[5, 5, 6, 7]])  # next episode
    assert ds.index[0].index == [0], "a padded window's selection is its first real frame"


def test_padding_is_clamped_to_a_window_less_one_as_diffusion_policy_does(buffers):
    ds = ZarrFrameDataset(buffers, array=ARRAY, window=4, pad_before=100, pad_after=100)
    assert len(ds) == 2 * (20 - 4 + 1 + 3 + 3)
    frames = make_frames(0, 20, SIZE)
    np.testing.assert_array_equal(ds[0].numpy(), frames[[0, 0, 0, 0]])  # 3 padding + 1 real frame
    np.testing.assert_array_equal(ds[len(ds) // 2 - 1].numpy(), frames[[19, 19, 19, 19]])


@pytest.mark.parametrize("strict", [False, True])
def test_a_store_shorter_than_the_window_pads_its_real_frames(tmp_path, strict):
    short = write_store(str(tmp_path / "short.zarr"), 0, [3], size=SIZE, chunk=2)
    long = write_store(str(tmp_path / "long.zarr"), 1, [10], size=SIZE, chunk=2)
    ds = ZarrFrameDataset([short, long], array=ARRAY, window=4, pad_after=1, strict=strict)
    assert len(ds) == 1 + 8
    got = np.stack([t.numpy() for t in ds.__getitems__(list(range(len(ds))))])
    np.testing.assert_array_equal(got[0], make_frames(0, 3, SIZE)[[0, 1, 2, 2]])
    np.testing.assert_array_equal(got[1], make_frames(1, 10, SIZE)[0:4])
    np.testing.assert_array_equal(got[-1], make_frames(1, 10, SIZE)[[7, 8, 9, 9]])


def test_dict_samples_are_aligned(buffers):
    from torch.utils.data import DataLoader

    ds = ZarrFrameDataset(
        buffers,
        arrays={"image": ARRAY, "action": "data/action", "state": "data/robot0_eef_pos"},
        window=3,
        episode_ends="meta/episode_ends",
        pad_after=2,
        transform={"image": lambda f: torch.from_numpy(f).permute(0, 3, 1, 2).float()},
    )
    for batch in DataLoader(ds, batch_size=8, shuffle=True, num_workers=2):
        image, action, state = batch["image"], batch["action"], batch["state"]
        assert image.shape[1:] == (3, 3, SIZE, SIZE) and image.dtype == torch.float32
        # Pixel (0, 0) of a synthetic frame holds (store, t); the action row is (store, t).
        stamp = image[:, :, :2, 0, 0].to(torch.float32)
        torch.testing.assert_close(action, stamp)
        torch.testing.assert_close(state[..., :2], stamp)


def test_arrays_of_different_lengths_are_an_error(tmp_path):
    import zarr

    uri = write_store(str(tmp_path / "ep.zarr"), 0, [6], size=SIZE)
    zarr.open_group(uri, mode="a")["data"].create_array("short", shape=(5, 2), dtype="f4")
    with pytest.raises(
        ValueError,
        match=r"store .*ep.zarr.*: 'data/short' has 5 items on its leading "
        r"axis \[5\] but 'data/camera0_rgb' has 6 \[6\]",
    ):
        ZarrFrameDataset(uri, arrays={"image": ARRAY, "bad": "data/short"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"window": 9, "episode_ends": "meta/episode_ends"},
            "window 9 is longer than every episode \\(the longest has 8 frames\\)",
        ),
        ({"window": 0}, "window must be at least 1 frame, not 0"),
        ({"window": 2.5}, "window must be an integer number of frames, not 2.5"),
        ({"window": 3, "stride": -1}, "stride must be at least 1, not -1"),
        ({"window": 3, "pad_before": -2}, "padding must not be negative"),
        ({"stride": 2}, "stride, episode_ends and padding need a window"),
    ],
)
def test_bad_window_arguments_through_the_dataset(buffers, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ZarrFrameDataset(buffers, array=ARRAY, **kwargs)


def test_windows_survive_save_and_load(buffers, tmp_path):
    from zarr_torch import SelectionIndex

    index = SelectionIndex.build(
        buffers, array=ARRAY, window=4, episode_ends="meta/episode_ends", pad_before=2
    )
    index.save(tmp_path / "w.zti")
    loaded = SelectionIndex.load(tmp_path / "w.zti")
    a, b = ZarrFrameDataset(index), ZarrFrameDataset(loaded)
    assert len(a) == len(b) == 2 * sum(n - 4 + 1 + 2 for n in EPISODES)
    for i in (0, 1, 7, len(a) - 1):
        np.testing.assert_array_equal(a[i].numpy(), b[i].numpy())
