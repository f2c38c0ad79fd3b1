"""Train a tiny CNN on frames from many Zarr stores: which episode is this frame from?

    python examples/train_classifier.py data/ --epochs 1 --workers 2

Frames go through torchvision ``transforms.v2`` (HWC uint8 numpy in, CHW float tensor
out); the label of a frame is the store it comes from, taken from the dataset's index.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from zarr_torch import ZarrFrameDataset


class EpisodeLabels(Dataset):
    """(frame, store number) pairs, read in batches through ``ZarrFrameDataset``."""

    def __init__(self, frames: ZarrFrameDataset) -> None:
        self.frames = frames
        self.labels = torch.from_numpy(frames.index.rows["array"].astype("int64"))

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]):
        return list(zip(self.frames.__getitems__(indices), self.labels[indices], strict=True))


def tiny_cnn(classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, classes),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="folder or URL holding the stores")
    parser.add_argument("--array", default="data/camera0_rgb")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    frames = ZarrFrameDataset(args.data, array=args.array, media="image", transform=transform)
    data = EpisodeLabels(frames)
    loader = DataLoader(
        data,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        multiprocessing_context="forkserver" if args.workers else None,  # see README: Workers
    )
    model = tiny_cnn(len(frames.index.arrays))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    print(f"{len(frames)} frames from {len(frames.index.stores)} stores")
    for epoch in range(args.epochs):
        seen, total_loss, start = 0, 0.0, time.perf_counter()
        for images, labels in loader:
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(labels)
            total_loss += loss.item() * len(labels)
        elapsed = time.perf_counter() - start
        print(
            f"epoch {epoch}: loss {total_loss / seen:.4f}, {seen} frames in {elapsed:.1f}s "
            f"({seen / elapsed:.0f} frames/s)"
        )


if __name__ == "__main__":
    main()
