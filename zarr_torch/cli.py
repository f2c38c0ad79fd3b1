"""The ``zarr-torch`` command: inspect stores, precompute indexes, write synthetic data.

zarr-torch info s3://bucket/episodes/
zarr-torch index build s3://bucket/episodes/ --array data/camera0_rgb --media image -o frames.zti
zarr-torch index info frames.zti
zarr-torch index verify frames.zti   # exit status 1 when a store changed since the build
zarr-torch synth data/ --stores 8 --frames 64 --chunk 16
zarr-torch info s3://bucket/episodes/ --storage-options @s3.json   # or $ZARR_TORCH_STORAGE_OPTIONS
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zarr_torch import indexfile, redact
from zarr_torch.index import SelectionIndex
from zarr_torch.models import read_zarr
from zarr_torch.synth import write_stores

#: the environment variable read for storage options when ``--storage-options`` is not given.
OPTIONS_ENV = "ZARR_TORCH_STORAGE_OPTIONS"


def storage_options(text: str) -> dict:
    """Storage options from JSON, or from the JSON file ``@path`` (keeps credentials out of
    shell history and the process list). Errors never echo the text, which may hold secrets."""
    source = "the JSON"
    if text.startswith("@"):
        source = repr(text[1:])
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {source}: {exc.strerror}") from None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"{source} is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(options, dict):
        raise argparse.ArgumentTypeError(f"{source} is not a JSON object")
    return options


def _add_options(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument(
        "--storage-options",
        type=storage_options,
        default=os.environ.get(OPTIONS_ENV, "{}"),
        help=f"fsspec options as JSON, or @file.json (default: ${OPTIONS_ENV}){note}",
    )


def cmd_info(args: argparse.Namespace) -> int:
    """Print every store under a prefix with its arrays' shapes, chunks and dtypes."""
    stores = read_zarr(args.uri, args.storage_options)
    for store in stores:
        print(redact.redact_uri(store.uri))
        for arr in store.get_arrays():
            print(
                f"  {arr.path or '/'}  shape={tuple(arr.shape)} chunks={tuple(arr.chunks)} dtype={arr.dtype}"
            )
    print(f"{len(stores)} store(s)")
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    """Index every item of an array in every store under a prefix and save the index."""
    index = SelectionIndex.build(
        args.source,
        array=args.array,
        media=args.media,
        storage_options=args.storage_options,
        progress=True,
    )
    size = index.save(args.output)
    print(
        f"{args.output}: {len(index.stores)} stores, {len(index.arrays)} arrays, "
        f"{len(index)} rows, {size} bytes"
    )
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    """Print what a saved index holds: totals, then rows by array path."""
    index = SelectionIndex.load(args.file)
    size = Path(args.file).stat().st_size
    print(
        f"{args.file}: format {indexfile.FORMAT_VERSION}, {len(index.stores)} stores, "
        f"{len(index.arrays)} arrays, {len(index)} rows, {size} bytes"
    )
    counts = np.bincount(index.rows["array"], minlength=len(index.arrays))
    groups: dict[tuple, list[int]] = {}
    for entry, count in zip(index.arrays, counts, strict=True):
        group = groups.setdefault((entry.path or "/", entry.media, entry.dtype, entry.shape[1:]), [0, 0])
        group[0] += 1
        group[1] += int(count)
    for (path, media, dtype, item), (arrays, rows) in groups.items():
        print(f"  {path}  media={media} dtype={dtype} item={item}  {arrays} arrays, {rows} rows")
    return 0


def cmd_index_verify(args: argparse.Namespace) -> int:
    """Check every store of a saved index against fresh metadata; exit 1 if any changed."""
    index = SelectionIndex.load(args.file, args.storage_options)
    changed = index.verify()
    for uri in changed:
        print(f"changed: {redact.redact_uri(uri)}")
    print(f"{len(changed)} of {len(index.stores)} stores changed since the index was built")
    return 1 if changed else 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Write synthetic Diffusion-Policy-layout stores."""
    uris = write_stores(
        args.out,
        stores=args.stores,
        frames=args.frames,
        nested=args.nested,
        storage_options=args.storage_options,
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


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark suite of a source checkout's ``benchmarks/`` folder."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / f"bench_{args.suite}.py"
    if not script.exists():
        print(f"no {script}: `zarr-torch bench` runs from a source checkout", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *args.options], cwd=script.parent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zarr-torch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="list stores and arrays under a prefix")
    info.add_argument("uri")
    _add_options(info)
    info.set_defaults(func=cmd_info)

    index = sub.add_parser("index", help="build, inspect and verify a saved SelectionIndex")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser("build", help="index the stores under a prefix and save the index")
    build.add_argument("source", help="prefix (folder or fsspec URL) holding the stores")
    build.add_argument("--array", default="", help="path of the array inside each store")
    build.add_argument("--media", choices=["image", "audio", "video"], default=None)
    build.add_argument("-o", "--output", required=True, help="index file to write, e.g. frames.zti")
    _add_options(build, "; never saved")
    build.set_defaults(func=cmd_index_build)
    info_index = index_sub.add_parser("info", help="summarize a saved index")
    info_index.add_argument("file")
    info_index.set_defaults(func=cmd_index_info)
    verify = index_sub.add_parser("verify", help="list stores changed since the index was built")
    verify.add_argument("file")
    _add_options(verify)
    verify.set_defaults(func=cmd_index_verify)

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
    _add_options(synth)
    synth.set_defaults(func=cmd_synth)
    bench = sub.add_parser("bench", help="run a benchmark suite (results in benchmarks/)")
    bench.add_argument("suite", choices=["throughput", "index", "loaders"])
    bench.add_argument("options", nargs=argparse.REMAINDER, help="passed to the suite")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (``zarr-torch info DIR | head``): stop quietly
        # Python flushes stdout again at exit; point it at devnull so that flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
