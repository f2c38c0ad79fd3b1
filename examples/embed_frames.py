"""Embed every frame of many Zarr stores with a torchvision model, aligned with the index.

    python examples/embed_frames.py data/ --out embeddings.zarr [--weights resnet18.pt]

The pipeline of datachain's Zarr docs, with zarr_torch: discover the stores, index
``data/camera0_rgb``, encode every frame through a ``DataLoader``, and write the
embeddings to a Zarr array whose row ``i`` belongs to frame ``i`` of the saved index
(``<out>/index.zti``). Weights are random unless ``--weights`` names a local state dict.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import zarr
from torch.utils.data import DataLoader
from torchvision.models import resnet18
from torchvision.transforms import v2
from tqdm.auto import tqdm

from zarr_torch import SelectionIndex, ZarrFrameDataset, read_zarr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="folder or URL holding the stores")
    parser.add_argument("--out", required=True, help="Zarr store to write the embeddings to")
    parser.add_argument("--array", default="data/camera0_rgb")
    parser.add_argument("--weights", help="a local state dict for resnet18 (nothing is downloaded)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=112, help="frames are resized to this square")
    args = parser.parse_args()

    index = SelectionIndex.build(read_zarr(args.data), array=args.array, media="image")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    index.save(Path(args.out) / "index.zti")
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((args.size, args.size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    ds = ZarrFrameDataset(index, transform=transform)
    model = resnet18(weights=None)
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu"))
    model.fc = torch.nn.Identity()
    model.eval()

    root = zarr.open_group(args.out, mode="a")
    out = root.create_array(
        "embeddings", shape=(len(ds), 512), chunks=(1024, 512), dtype="float32", overwrite=True
    )
    loader = DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers)  # in index order
    row = 0
    with torch.inference_mode():
        for images in tqdm(loader, desc="embedding", unit="batch"):
            out[row : row + len(images)] = model(images).numpy()
            row += len(images)
    print(f"{row} embeddings of {len(index.stores)} stores written to {args.out}/embeddings")


if __name__ == "__main__":
    main()
