"""Train a small policy on windows of (image, action) from replay-buffer stores.

    python examples/train_policy_windows.py data/ --window 4 --workers 2

Each sample is a dict of aligned windows that never cross an episode boundary:
``image`` (T, 3, H, W) float and ``action`` (T, A); the policy sees the first frame of
the window and predicts the T actions, as diffusion-policy style training does.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from zarr_torch import ChunkAwareSampler, ZarrFrameDataset


class Policy(nn.Module):
    """A tiny CNN encoder of the first frame and a head that predicts ``window`` actions."""

    def __init__(self, window: int, action_dim: int) -> None:
        super().__init__()
        self.window, self.action_dim = window, action_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(32, window * action_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(image)).view(-1, self.window, self.action_dim)


TO_FLOAT = v2.ToDtype(torch.float32, scale=True)


def frames_to_float(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, C) uint8 window -> (T, C, H, W) float in [0, 1] (v2 treats T as a batch)."""
    return TO_FLOAT(tv_tensors.Video(torch.from_numpy(frames).permute(0, 3, 1, 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="folder or URL holding the stores")
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    ds = ZarrFrameDataset(
        args.data,
        arrays={"image": "data/camera0_rgb", "action": "data/action"},
        window=args.window,
        episode_ends="meta/episode_ends",
        pad_before=1,
        pad_after=args.window - 1,
        transform={"image": frames_to_float},
    )
    sampler = ChunkAwareSampler(ds, seed=0)
    loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers)
    action_dim = ds[0]["action"].shape[-1]
    policy = Policy(args.window, action_dim)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    print(f"{len(ds)} windows of {args.window} frames from {len(ds.index.stores)} stores")
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        seen, total, start = 0, 0.0, time.perf_counter()
        for batch in loader:
            target = batch["action"] / 100.0
            loss = nn.functional.mse_loss(policy(batch["image"][:, 0]), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(target)
            total += loss.item() * len(target)
        elapsed = time.perf_counter() - start
        print(
            f"epoch {epoch}: loss {total / seen:.4f}, {seen} windows in {elapsed:.1f}s "
            f"({seen * args.window / elapsed:.0f} frames/s)"
        )


if __name__ == "__main__":
    main()
