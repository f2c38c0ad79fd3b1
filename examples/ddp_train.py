"""Data-parallel training over two processes with torchrun and the gloo backend.

    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py data/ --out seen/

ChunkAwareSampler takes the rank and world size from torch.distributed, gives every rank
the same number of batches, and keeps each rank's order chunk-aware. Each rank writes
the sample indices it trained on to ``--out`` so a run can be checked for coverage.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from zarr_torch import ChunkAwareSampler, ZarrFrameDataset


class Indexed(torch.utils.data.Dataset):
    """(image, index) pairs, so each rank can record what it saw."""

    def __init__(self, frames: ZarrFrameDataset) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        return list(zip(self.frames.__getitems__(indices), indices, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--out", default=None, help="folder for each rank's seen indices")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    frames = ZarrFrameDataset(args.data, array="data/camera0_rgb", transform=transform)
    sampler = ChunkAwareSampler(frames, seed=0)  # rank and world size from torch.distributed
    loader = DataLoader(
        Indexed(frames), batch_size=args.batch_size, sampler=sampler, num_workers=args.workers
    )
    model = DistributedDataParallel(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seen: list[list[int]] = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        batches = 0
        for images, indices in loader:
            loss = model(images).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()  # all-reduce: every rank must run the same number of steps
            optimizer.step()
            seen.append(indices.tolist())
            batches += 1
        print(f"rank {rank}/{world} epoch {epoch}: {batches} batches, loss {loss.item():.4f}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
