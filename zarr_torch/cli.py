"""The ``zarr-torch`` command: inspect stores and write synthetic data.

zarr-torch info s3://bucket/episodes/
zarr-torch synth data/ --stores 8 --frames 64 --chunk 16
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from zarr_torch import io
from zarr_torch.models import read_zarr
from zarr_torch.synth import write_stores


def _options(text: str | None) -> dict:
    return json.loads(text) if text else {}


def cmd_info(args: argparse.Namespace) -> int:
    """Print every store under a prefix with its arrays' shapes, chunks and dtypes."""
    stores = read_zarr(args.uri, _options(args.storage_options))
    for store in stores:
        print(io.redact_uri(store.uri))
        for arr in store.get_arrays():
            print(
                f"  {arr.path or '/'}  shape={tuple(arr.shape)} chunks={tuple(arr.chunks)} dtype={arr.dtype}"
            )
    print(f"{len(stores)} store(s)")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Write synthetic Diffusion-Policy-layout stores."""
    uris = write_stores(
        args.out,
        stores=args.stores,
        frames=args.frames,
        nested=args.nested,
        storage_options=_options(args.storage_options),
        progress=True,
        size=args.size,
        chunk=args.chunk,
        shard=args.shard,
        codec=args.codec,
        zarr_format=args.zarr_format,
        overwrite=args.overwrite,
    )
    print(f"wrote {len(uris)} stores of {sum(args.frames)} frames under {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zarr-torch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="list stores and arrays under a prefix")
    info.add_argument("uri")
    info.add_argument("--storage-options", help="fsspec options as JSON")
    info.set_defaults(func=cmd_info)

    synth = sub.add_parser("synth", help="write synthetic stores")
    synth.add_argument("out", help="folder or fsspec URL to write the stores under")
    synth.add_argument("--stores", type=int, default=4)
    synth.add_argument(
        "--frames", type=int, nargs="+", default=[32], help="episode lengths held by every store"
    )
    synth.add_argument("--size", type=int, default=64, help="frame height and width")
    synth.add_argument("--chunk", type=int, default=1, help="frames per chunk")
    synth.add_argument("--shard", type=int, default=None, help="frames per shard (v3 only)")
    synth.add_argument("--codec", choices=["zstd", "blosc", "gzip", "none"], default="zstd")
    synth.add_argument("--zarr-format", type=int, choices=[2, 3], default=3)
    synth.add_argument("--nested", action="store_true", help="spread stores over sub-folders")
    synth.add_argument("--overwrite", action="store_true")
    synth.add_argument("--storage-options", help="fsspec options as JSON")
    synth.set_defaults(func=cmd_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
