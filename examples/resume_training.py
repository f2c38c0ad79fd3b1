"""Stop mid-epoch, save the loader's state, resume in a new loader: the same batches.

    python examples/resume_training.py data/ --stop-after 5

torchdata's StatefulDataLoader saves ChunkAwareSampler's state (epoch, seed and how far
the epoch got); a new loader rebuilds the epoch's order from the seed and continues
exactly where the first one stopped, without reading the skipped samples again.
"""

from __future__ import annotations

import argparse

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from zarr_torch import ChunkAwareSampler, ZarrFrameDataset


def loader(ds: ZarrFrameDataset, workers: int) -> StatefulDataLoader:
    sampler = ChunkAwareSampler(ds, seed=7)
    sampler.set_epoch(3)
    return StatefulDataLoader(ds, batch_size=8, sampler=sampler, num_workers=workers)


def fingerprint(batch: torch.Tensor) -> list[tuple[int, ...]]:
    """Pixel (0, 0) of each synthetic frame: which store and frame it is."""
    return [tuple(f[0, 0].tolist()) for f in batch]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--stop-after", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    ds = ZarrFrameDataset(args.data, array="data/camera0_rgb")
    full = [fingerprint(b) for b in loader(ds, args.workers)]

    first = loader(ds, args.workers)
    head = []
    for batch in first:
        head.append(fingerprint(batch))
        if len(head) == args.stop_after:
            state = first.state_dict()  # save this with the model checkpoint
            break
    resumed = loader(ds, args.workers)
    resumed.load_state_dict(state)
    tail = [fingerprint(b) for b in resumed]
    same = head + tail == full
    print(
        f"{len(head)} batches, stopped, resumed for {len(tail)} more: "
        f"{'same batches as an uninterrupted run' if same else 'DIFFERENT batches'}"
    )
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
