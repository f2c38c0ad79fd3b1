"""The ``zarr-torch`` command: inspect stores, precompute indexes, write synthetic data.

zarr-torch info s3://bucket/episodes/            # one line per array path: stores, frames, bytes, codecs
zarr-torch info s3://bucket/episodes/ --arrays   # every array of every store
zarr-torch preview s3://bucket/episodes/ --array data/camera0_rgb -o sheet.png --count 16
zarr-torch preview frames.zti -o sheet.png --seed 0   # random rows of a saved index
zarr-torch preview data/ -o windows.png --window 8 --episode-ends meta/episode_ends  # a window a row
zarr-torch index build s3://bucket/episodes/ --array data/camera0_rgb --media image -o frames.zti
torchrun --nproc_per_node 8 -m zarr_torch.cli index build s3://bucket/episodes/ -o frames.zti  # shared
zarr-torch index merge part0.zti part1.zti -o frames.zti   # the rows of each in turn
zarr-torch index info frames.zti
zarr-torch index verify frames.zti   # exit status 1 when a store changed since the build
zarr-torch synth data/ --stores 8 --frames 64 --chunk 16
zarr-torch info s3://bucket/episodes/ --storage-options @s3.json   # or $ZARR_TORCH_STORAGE_OPTIONS
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from zarr.abc.store import Store
from zarr.core.array import AsyncArray
from zarr.storage import FsspecStore, ZipStore

from zarr_torch import build as distributed
from zarr_torch import indexfile, process, redact
from zarr_torch.index import PROGRESS_MIN_STORES, SelectionIndex
from zarr_torch.models import ZarrStore, read_zarr
from zarr_torch.stores import get_store, is_zip, open_node
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


#: the last component of the store keys that are metadata documents, not chunks.
METADATA_KEYS = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
#: the array ``preview`` reads in each store of a prefix unless ``--array`` names another.
PREVIEW_ARRAY = "data/camera0_rgb"


def _fail(args: argparse.Namespace, exc: BaseException) -> int:
    """Print the library's message (credentials scrubbed) as argparse does; exit status 2."""
    if isinstance(exc, BrokenPipeError):
        raise exc
    message = redact.scrub(str(exc), getattr(args, "storage_options", None))
    command = " ".join(filter(None, [args.command, getattr(args, "index_command", None)]))
    print(f"zarr-torch {command}: error: {message}", file=sys.stderr)
    return 2


@dataclass(frozen=True)
class ArrayFacts:
    """What ``info`` reports of one array of one store."""

    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    dtype: str
    codecs: str
    #: bytes of its chunk (or shard) objects in the store; None when not listed.
    stored: int | None
    #: bytes of its items decoded; None for variable-length dtypes.
    decoded: int | None


def _codec_name(codec: Any) -> str:
    """``zstd``, ``blosc(lz4)``, ``gzip``: a numcodecs id or a zarr v3 codec name."""
    name = getattr(codec, "codec_id", None)  # numcodecs (Zarr v2)
    if name is None:
        try:
            name = codec.to_dict()["name"]
        except Exception:  # a codec without a v3 name: its class tells what it is
            name = type(codec).__name__
    cname = getattr(codec, "cname", None)  # blosc's inner compressor
    if cname is not None:
        name = f"{name}({getattr(cname, 'value', cname)})"
    return str(name)


def _codecs(arr: AsyncArray) -> str:
    """The filters and compressors of ``arr`` (inside its shards) joined by ``+``, or ``none``;
    the serializer too when it is not plain ``bytes``."""
    serializer = arr.serializer
    names = [_codec_name(c) for c in (*arr.filters, *arr.compressors)]
    if serializer is not None and _codec_name(serializer) != "bytes":
        names.insert(0, _codec_name(serializer))
    return "+".join(names) or "none"


def _decoded_bytes(arr: AsyncArray) -> int | None:
    dtype = np.dtype(arr.dtype)
    if dtype.kind in "OT":  # variable-length items: no fixed size
        return None
    return math.prod(arr.shape) * dtype.itemsize


def _is_chunk_key(key: str) -> bool:
    return key.rstrip("/").rsplit("/", 1)[-1] not in METADATA_KEYS


async def _stored_bytes(store: Store, paths: list[str]) -> list[int]:
    """Bytes of the chunk objects of each array in ``paths``; each prefix is listed once.

    A listing that gives sizes (fsspec's ``find``: one LIST request per 1000 keys on S3)
    is used as is; a local zipped store's sizes come from its central directory; other
    stores are listed with zarr's ``list_prefix`` and each key sized with ``getsize``.
    """
    inner = getattr(store, "_store", store)  # ReliableStore wraps zarr's own store
    prefixes = [f"{path}/" if path else "" for path in paths]
    if isinstance(inner, ZipStore):

        def members() -> dict[str, int]:
            with zipfile.ZipFile(inner.path) as archive:
                return {i.filename: i.compress_size for i in archive.infolist() if not i.is_dir()}

        sizes = await asyncio.to_thread(members)
        return [
            sum(n for key, n in sizes.items() if key.startswith(prefix) and _is_chunk_key(key))
            for prefix in prefixes
        ]

    async def listed(prefix: str) -> int:
        if isinstance(inner, FsspecStore):
            root = inner.path.rstrip("/")
            where = "/".join(part for part in (root, prefix.rstrip("/")) if part)
            found = await inner.fs._find(where, detail=True, withdirs=False)
            sizes = [info.get("size") for key, info in found.items() if _is_chunk_key(key)]
            if all(isinstance(n, int) for n in sizes):
                return sum(sizes)
        keys = [key async for key in inner.list_prefix(prefix) if _is_chunk_key(key)]
        return sum(await process.gather_bounded(inner.getsize(key) for key in keys))

    return await asyncio.gather(*map(listed, prefixes))


async def _store_facts(store: ZarrStore, sizes: bool) -> list[ArrayFacts]:
    """Every array of ``store`` in path order; with ``sizes``, the bytes each one stores."""
    node = await open_node(store.uri, "", store.storage_options)
    if isinstance(node, AsyncArray):
        arrays = [("", node)]
    else:
        found = [(name, m) async for name, m in node.members(max_depth=None) if isinstance(m, AsyncArray)]
        arrays = sorted(found, key=lambda x: x[0])
    paths = [path for path, _ in arrays]
    stored: list[int | None] = [None] * len(arrays)
    if sizes and arrays:
        stored = list(await _stored_bytes(get_store(store.uri, store.storage_options), paths))
    return [
        ArrayFacts(
            path=path,
            shape=tuple(arr.shape),
            chunks=tuple(arr.chunks),
            shards=None if arr.shards is None else tuple(arr.shards),
            dtype=str(arr.dtype),
            codecs=_codecs(arr),
            stored=n,
            decoded=_decoded_bytes(arr),
        )
        for (path, arr), n in zip(arrays, stored, strict=True)
    ]


def read_facts(stores: list[ZarrStore], sizes: bool = True) -> list[list[ArrayFacts]]:
    """The arrays of every store, read concurrently; a progress bar from 32 stores on."""
    show = len(stores) >= PROGRESS_MIN_STORES

    async def read_all() -> list[list[ArrayFacts]]:
        bar = tqdm(total=len(stores), desc="reading metadata", unit="store") if show else None

        async def one(store: ZarrStore) -> list[ArrayFacts]:
            facts = await _store_facts(store, sizes)
            if bar is not None:
                bar.update()
            return facts

        try:
            return await process.gather_bounded(map(one, stores))
        finally:
            if bar is not None:
                bar.close()

    return process.run(read_all())


def human_bytes(n: int | None) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 GiB``; ``?`` when unknown."""
    if n is None:
        return "?"
    if n < 1024:
        return f"{n} B"
    exponent = min((n.bit_length() - 1) // 10, 6)
    return f"{n / 1024**exponent:.1f} {'BKMGTPE'[exponent]}iB"


def _one(values: Iterable[Any]) -> str:
    """The value all of ``values`` share, or ``varies``."""
    distinct = set(values)
    return str(distinct.pop()) if len(distinct) == 1 else "varies"


def _total(values: Iterable[int | None]) -> int | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


def summary_lines(facts: list[list[ArrayFacts]]) -> list[str]:
    """One line per array path across all stores, then the totals."""
    groups: dict[str, list[ArrayFacts]] = {}
    for store_facts in facts:
        for f in store_facts:
            groups.setdefault(f.path, []).append(f)
    lines = []
    for path in sorted(groups):
        group = groups[path]
        shards = _one(f.shards for f in group)
        lines.append(
            f"  {path or '/'}  stores={len(group)} frames={sum(f.shape[0] for f in group if f.shape)}"
            f" item={_one(f.shape[1:] for f in group)} dtype={_one(f.dtype for f in group)}"
            f" chunks={_one(f.chunks for f in group)}"
            + ("" if shards == "None" else f" shards={shards}")
            + f" codecs={_one(f.codecs for f in group)}"
            f" stored={human_bytes(_total(f.stored for f in group))}"
            f" decoded={human_bytes(_total(f.decoded for f in group))}"
        )
    every = [f for store_facts in facts for f in store_facts]
    lines.append(
        f"{len(facts)} store(s), {len(groups)} array path(s): "
        f"{human_bytes(_total(f.stored for f in every))} stored, "
        f"{human_bytes(_total(f.decoded for f in every))} decoded"
    )
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    """Summarise the stores under a prefix by array path (``--arrays``: every array of every
    store, as shape, chunks and dtype)."""
    try:
        stores = read_zarr(args.uri, args.storage_options)
        facts = read_facts(stores, sizes=not args.arrays)
    except (OSError, ValueError) as exc:
        return _fail(args, exc)
    if not args.arrays:
        print("\n".join(summary_lines(facts)))
        return 0
    for store, store_facts in zip(stores, facts, strict=True):
        print(redact.redact_uri(store.uri))
        for f in store_facts:
            print(f"  {f.path or '/'}  shape={f.shape} chunks={f.chunks} dtype={f.dtype}")
    print(f"{len(stores)} store(s)")
    return 0


def _is_index_file(source: str) -> bool:
    """A saved index: a ``.zti`` name, or a local file that is not a zipped store."""
    return source.endswith(".zti") or ("://" not in source and os.path.isfile(source) and not is_zip(source))


def _preview_index(args: argparse.Namespace) -> SelectionIndex:
    """The index ``preview`` picks rows of: a saved one, or one built over a prefix."""
    if _is_index_file(args.source):
        if args.window is not None or args.episode_ends is not None:
            raise ValueError(
                f"{args.source} is a saved index: its windows were made when it was built "
                "(drop --window and --episode-ends)"
            )
        index = SelectionIndex.load(args.source, args.storage_options)
        return index if args.array is None else index.with_path(args.array)
    return SelectionIndex.build(
        args.source,
        array=PREVIEW_ARRAY if args.array is None else args.array,
        storage_options=args.storage_options,
        window=args.window,
        episode_ends=args.episode_ends,
    )


def pick_rows(total: int, count: int, seed: int | None = None) -> np.ndarray:
    """``count`` rows of ``total`` in order: evenly spread from the first to the last, or,
    with a ``seed``, drawn at random without repeats."""
    count = min(count, total)
    if seed is None:
        return np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def _to_chw(frame: Any) -> Any:
    """A frame as (C, H, W): a 2-D frame is one channel, a 3-D one is HWC (or CHW when only
    its first axis has 1, 3 or 4 channels)."""
    if frame.ndim == 2:
        return frame.unsqueeze(0)
    if frame.ndim == 3 and frame.shape[-1] in (1, 3, 4):
        return frame.permute(2, 0, 1)
    if frame.ndim == 3 and frame.shape[0] in (1, 3, 4):
        return frame
    raise ValueError(
        f"items of shape {tuple(frame.shape)} are not images: preview shows 2-D frames, or 3-D "
        "frames of 1, 3 or 4 channels (HWC or CHW)"
    )


def sheet_tensor(frames: list[Any]) -> Any:
    """The frames as one (N, C, H, W) float tensor in [0, 1]: uint8 divided by 255, any
    other dtype scaled min-max over all the frames (NaN and infinities shown as the minimum)."""
    import torch

    tiles = [_to_chw(f) for f in frames]
    shapes = sorted({tuple(t.shape) for t in tiles})
    if len(shapes) > 1:
        raise ValueError(f"the frames differ in shape ({shapes[0]} and {shapes[1]} as CHW): preview one kind")
    batch = torch.stack(tiles)
    if batch.dtype == torch.uint8:
        return batch.float() / 255
    batch = batch.double()
    finite = torch.isfinite(batch)
    if not finite.any():
        return torch.zeros_like(batch, dtype=torch.float32)
    lo, hi = batch[finite].min(), batch[finite].max()
    batch = torch.where(finite, batch, lo)
    scaled = (batch - lo) / (hi - lo) if hi > lo else torch.zeros_like(batch)
    return scaled.float()


def cmd_preview(args: argparse.Namespace) -> int:
    """Write a PNG contact sheet of frames (or windows, one a row) of a prefix or saved index."""
    from torchvision.utils import make_grid, save_image

    from zarr_torch.dataset import ZarrFrameDataset

    try:
        index = _preview_index(args)
        if len(index) == 0:
            raise ValueError(f"{redact.redact_uri(args.source)} has no rows to preview")
        rows = pick_rows(len(index), args.count, args.seed)
        samples = ZarrFrameDataset(index).__getitems__(rows.tolist())
        window = int(index.rows["length"][rows].max())
        frames = [f for s in samples for f in s.unbind(0)] if window else samples
        nrow = args.nrow or window or math.ceil(math.sqrt(len(frames)))
        grid = make_grid(sheet_tensor(frames), nrow=nrow, padding=args.padding)
        save_image(grid, args.output)
    except (OSError, ValueError, IndexError) as exc:
        return _fail(args, exc)
    cols = min(nrow, len(frames))
    shown = f"{len(samples)} windows of {window} frames" if window else f"{len(samples)} frames"
    print(
        f"{args.output}: {math.ceil(len(frames) / cols)} x {cols} grid of {shown}, "
        f"{grid.shape[2]}x{grid.shape[1]} pixels"
    )
    return 0


def positive(text: str) -> int:
    """An integer of at least 1 (an argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def non_negative(text: str) -> int:
    """An integer of at least 0 (an argparse type)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _index_summary(path: str, index: SelectionIndex, size: int, note: str = "") -> str:
    tables = f"{len(index.stores)} stores, {len(index.arrays)} arrays, {len(index)} rows"
    return f"{path}: {tables}, {size} bytes{note}"


def cmd_index_build(args: argparse.Namespace) -> int:
    """Index every item (or window) of an array in every store under a prefix and save the
    index. Under ``torchrun`` the ranks share the stores out and rank 0 saves the whole;
    only rank 0 prints."""
    rank, size = distributed.world()
    try:
        index = distributed.build_distributed(
            args.source,
            args.output,
            array=args.array,
            media=args.media,
            storage_options=args.storage_options,
            progress=True,
            timeout=args.timeout,
            window=args.window,
            stride=args.stride,
            episode_ends=args.episode_ends,
            pad_before=args.pad_before,
            pad_after=args.pad_after,
        )
    except distributed.DistributedBuildError as exc:
        # Every rank holds the same message: rank 0 prints it, and so does the rank that
        # failed (torchrun may stop rank 0 before it prints once that rank has exited).
        return _fail(args, exc) if rank == 0 or exc.__cause__ is not None else 2
    except (OSError, ValueError, TypeError) as exc:
        return _fail(args, exc)
    if index is not None:
        note = f", built by {size} ranks" if size > 1 else ""
        print(_index_summary(args.output, index, Path(args.output).stat().st_size, note))
    return 0


def cmd_index_merge(args: argparse.Namespace) -> int:
    """Join saved indexes (parts of one build, in order) into one: the rows of each in turn,
    stores and arrays they share held once."""
    try:
        index = SelectionIndex.concat(SelectionIndex.load(part) for part in args.parts)
        size = index.save(args.output)
    except (OSError, ValueError) as exc:
        return _fail(args, exc)
    print(_index_summary(args.output, index, size, f", merged from {len(args.parts)} indexes"))
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

    info = sub.add_parser(
        "info", help="summarise the stores under a prefix: frames, bytes, chunks, codecs by array path"
    )
    info.add_argument("uri", help="prefix (folder or fsspec URL) holding the stores, or one store")
    info.add_argument(
        "--arrays", action="store_true", help="list every array of every store instead (shape, chunks, dtype)"
    )
    _add_options(info)
    info.set_defaults(func=cmd_info)

    preview = sub.add_parser(
        "preview", help="write a PNG contact sheet of frames or windows of a prefix or saved index"
    )
    preview.add_argument("source", help="prefix (folder or fsspec URL) holding the stores, or a .zti index")
    preview.add_argument("-o", "--output", required=True, help="PNG file to write, e.g. sheet.png")
    preview.add_argument(
        "--array",
        default=None,
        help=f"path of the array inside each store (default: {PREVIEW_ARRAY}, or a saved index's own)",
    )
    preview.add_argument("--count", type=positive, default=16, help="frames or windows to show (default: 16)")
    preview.add_argument(
        "--seed", type=int, default=None, help="pick rows at random (default: evenly spread)"
    )
    preview.add_argument(
        "--window", type=positive, default=None, help="show windows of this many frames, a row each"
    )
    preview.add_argument(
        "--episode-ends", default=None, help="array of cumulative episode ends, e.g. meta/episode_ends"
    )
    preview.add_argument(
        "--nrow", type=positive, default=None, help="tiles a row (default: the window, else a square sheet)"
    )
    preview.add_argument(
        "--padding", type=non_negative, default=2, help="pixels between tiles (make_grid's, default: 2)"
    )
    _add_options(preview)
    preview.set_defaults(func=cmd_preview)

    index = sub.add_parser("index", help="build, merge, inspect and verify a saved SelectionIndex")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser("build", help="index the stores under a prefix and save the index")
    build.add_argument("source", help="prefix (folder or fsspec URL) holding the stores")
    build.add_argument("--array", default="", help="path of the array inside each store")
    build.add_argument("--media", choices=["image", "audio", "video"], default=None)
    build.add_argument("-o", "--output", required=True, help="index file to write, e.g. frames.zti")
    build.add_argument("--window", type=positive, default=None, help="index windows of this many frames")
    build.add_argument("--stride", type=positive, default=1, help="frames between window starts (default: 1)")
    build.add_argument(
        "--episode-ends", default=None, help="array of cumulative episode ends, e.g. meta/episode_ends"
    )
    build.add_argument(
        "--pad-before", type=non_negative, default=0, help="frames a window may start before its episode"
    )
    build.add_argument(
        "--pad-after", type=non_negative, default=0, help="frames a window may end after its episode"
    )
    build.add_argument(
        "--timeout",
        type=float,
        default=distributed.DEFAULT_TIMEOUT,
        help="under torchrun: seconds a rank waits for the others (default: %(default)s)",
    )
    _add_options(build, "; never saved")
    build.set_defaults(func=cmd_index_build)
    merge = index_sub.add_parser("merge", help="join saved indexes into one, their rows in the order given")
    merge.add_argument("parts", nargs="+", metavar="PART", help="saved indexes, e.g. part0.zti part1.zti")
    merge.add_argument("-o", "--output", required=True, help="index file to write, e.g. frames.zti")
    merge.set_defaults(func=cmd_index_merge)
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
