"""Window arithmetic against episode ends, as policy-learning code expects it."""

from __future__ import annotations

import numpy as np
import pytest

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
    ],
)
def test_bad_window_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        check_window(*args)
