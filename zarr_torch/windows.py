"""Windows of consecutive frames that never cross an episode boundary.

A replay buffer stores many episodes back to back along the leading axis, with
``meta/episode_ends`` holding where each one ends (the Diffusion Policy layout). A window
of ``T`` frames starts every ``stride`` frames inside one episode; ``pad_before`` and
``pad_after`` let it start before the episode's first frame or end after its last, the
edge frame standing in for the missing ones, as policy-learning code expects.

    episodes(np.array([5, 12, 20]))           # [(0, 5), (5, 12), (12, 20)]
    window_starts(0, 5, window=4)             # [0, 1]
    clamp_padding(4, 100, 100)                # (3, 3): Diffusion Policy's limit
    frame_positions(-1, 4, 0, 5)              # [0, 0, 1, 2]: frame 0 repeated once
"""

from __future__ import annotations

import numbers

import numpy as np


class WindowTooLongError(ValueError):
    """A window longer than every episode: no windows at all (``longest``: the longest
    episode's frames)."""

    def __init__(self, window: int, longest: int) -> None:
        super().__init__(f"window {window} is longer than every episode (the longest has {longest} frames)")
        self.window, self.longest = window, longest


def check_window(window: int, stride: int = 1, pad_before: int = 0, pad_after: int = 0) -> None:
    """Raise ``ValueError`` for a non-integer argument, a window shorter than 1, a stride
    below 1 or negative padding."""
    given = {"window": window, "stride": stride, "pad_before": pad_before, "pad_after": pad_after}
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an integer number of frames, not {value!r}")
    if window < 1:
        raise ValueError(f"window must be at least 1 frame, not {window}")
    if stride < 1:
        raise ValueError(f"stride must be at least 1, not {stride}")
    if pad_before < 0 or pad_after < 0:
        raise ValueError(f"padding must not be negative, not pad_before={pad_before}, pad_after={pad_after}")


def clamp_padding(window: int, pad_before: int, pad_after: int) -> tuple[int, int]:
    """Padding of at most ``window - 1`` frames on each side, as Diffusion Policy's
    ``SequenceSampler`` clamps it: a window always shows at least one real frame."""
    return min(pad_before, window - 1), min(pad_after, window - 1)


def episodes(ends: np.ndarray, length: int | None = None) -> list[tuple[int, int]]:
    """``(first, end)`` of each episode from cumulative ``ends``; ``length`` checks the last.

    Raises ``ValueError`` if the ends are not increasing or do not cover ``length`` frames.
    """
    ends = np.asarray(ends, dtype=np.int64).reshape(-1)
    starts = np.concatenate([[0], ends[:-1]])
    if ends.size == 0 or (ends <= starts).any():
        raise ValueError(f"episode ends must be positive and increasing, not {ends.tolist()[:10]}")
    if length is not None and ends[-1] != length:
        raise ValueError(f"the last episode ends at {ends[-1]}, but the array holds {length} frames")
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def window_starts(
    first: int, end: int, window: int, stride: int = 1, pad_before: int = 0, pad_after: int = 0
) -> np.ndarray:
    """Start positions of the windows of episode ``[first, end)``.

    An episode of ``L`` frames gives ``L - T + 1 + pad_before + pad_after`` windows at
    stride 1 (none if that is not positive).
    """
    last = end - window + pad_after
    return np.arange(first - pad_before, last + 1, stride, dtype=np.int64)


def frame_positions(start: int, window: int, first: int, end: int) -> np.ndarray:
    """The frame each of the ``window`` slots starting at ``start`` shows, inside ``[first, end)``."""
    return np.clip(np.arange(start, start + window), first, end - 1)
