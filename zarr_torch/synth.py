"""Synthetic stores in the Diffusion Policy layout, for the demo, tests and benchmarks.

Each store is one replay buffer: ``data/camera0_rgb`` (T, H, W, 3) uint8,
``data/action`` (T, A) float32, ``data/robot0_eef_pos`` (T, 3) float32 and
``meta/episode_ends`` (E,) int64. Frames are recognisable: pixel (0, 0) holds the store
number and the frame number, and :func:`make_frames` recomputes any store's frames.

    uris = write_stores("data/", stores=4, frames=64, size=96, chunk=16)
    expected = make_frames(store=2, frames=64, size=96)
    zip_store(uris[0], "zips/episode_00000.zarr.zip")  # as UMI ships a replay buffer
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numcodecs
import numpy as np
import zarr
import zarr.api.asynchronous as zasync
import zarr.codecs
from tqdm.auto import tqdm

from zarr_torch import process
from zarr_torch.stores import make_store

Codec = Literal["zstd", "blosc", "gzip", "none"]
ACTION_DIM = 2


def make_frames(store: int, frames: int, size: int | tuple[int, int]) -> np.ndarray:
    """The (T, H, W, 3) uint8 frames of store number ``store``.

    A gradient that moves with time plus seeded noise (so codecs see realistic data);
    pixel (0, 0) is (store % 256, t % 256, t // 256).
    """
    h, w = (size, size) if isinstance(size, int) else size
    t = np.arange(frames, dtype=np.int64)[:, None, None]
    y, x = np.mgrid[:h, :w]
    base = (2 * x + y + 3 * t + 17 * store) % 256
    rgb = np.stack([base, (base + 85) % 256, 255 - base], axis=-1)
    noise = np.random.default_rng(store).integers(0, 8, size=rgb.shape)
    out = np.clip(rgb + noise, 0, 255).astype(np.uint8)
    out[:, 0, 0] = np.stack([np.full(frames, store % 256), t[:, 0, 0] % 256, t[:, 0, 0] // 256], -1)
    return out


def make_actions(store: int, frames: int) -> np.ndarray:
    """The (T, 2) float32 actions of store ``store``: (store, t)."""
    t = np.arange(frames, dtype=np.float32)
    return np.stack([np.full(frames, store, dtype=np.float32), t], axis=-1)


def make_state(store: int, frames: int) -> np.ndarray:
    """The (T, 3) float32 end-effector positions of store ``store``: (store, t, -t)."""
    t = np.arange(frames, dtype=np.float32)
    return np.stack([np.full(frames, store, dtype=np.float32), t, -t], axis=-1)


def _compressors(codec: Codec, zarr_format: int) -> Any:
    if codec == "none":
        return None
    if zarr_format == 2:
        return {
            "zstd": numcodecs.Zstd(level=3),
            "gzip": numcodecs.GZip(level=1),
            "blosc": numcodecs.Blosc(cname="zstd", clevel=3),
        }[codec]
    return {
        "zstd": zarr.codecs.ZstdCodec(level=3),
        "gzip": zarr.codecs.GzipCodec(level=1),
        "blosc": zarr.codecs.BloscCodec(cname="zstd", clevel=3),
    }[codec]


def write_store(
    uri: str,
    store: int,
    episode_lengths: Sequence[int],
    *,
    size: int | tuple[int, int] = 64,
    chunk: int = 1,
    shard: int | None = None,
    tile: int | None = None,
    codec: Codec = "zstd",
    zarr_format: Literal[2, 3] = 3,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Write one replay-buffer store of ``sum(episode_lengths)`` frames at ``uri``.

    ``chunk`` frames per chunk (and ``shard`` per shard); ``tile`` cuts each frame's
    height and width into chunks of ``tile`` pixels too (spatial tiles, as OME-Zarr does).
    """
    if shard is not None and zarr_format == 2:
        raise ValueError("sharding needs zarr_format=3")
    frames = int(sum(episode_lengths))
    target = make_store(uri, storage_options, read_only=False)
    root = zarr.open_group(store=target, mode="w" if overwrite else "w-", zarr_format=zarr_format)
    root.attrs["synth_store"] = store
    data = root.require_group("data")
    compressors = _compressors(codec, zarr_format)
    rgb = make_frames(store, frames, size)
    for name, values, chunks in [
        ("camera0_rgb", rgb, (chunk, *rgb.shape[1:]) if tile is None else (chunk, tile, tile, rgb.shape[3])),
        ("action", make_actions(store, frames), (chunk, ACTION_DIM)),
        ("robot0_eef_pos", make_state(store, frames), (chunk, 3)),
    ]:
        shards = None if shard is None else (shard, *chunks[1:])
        arr = data.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=chunks,
            shards=shards,
            compressors=compressors,
        )
        arr[...] = values
    ends = np.cumsum(np.asarray(episode_lengths, dtype=np.int64))
    root.require_group("meta").create_array("episode_ends", data=ends)
    return uri


def write_stores(
    root: str,
    *,
    stores: int = 4,
    frames: int | Sequence[int] = 32,
    nested: bool = False,
    storage_options: dict[str, Any] | None = None,
    progress: bool = False,
    **layout: Any,
) -> list[str]:
    """Write ``stores`` stores under ``root``; return their URIs in store order.

    ``frames`` is the episode length, or a list of episode lengths held by every store.
    ``nested`` spreads the stores over sub-folders. ``layout`` goes to :func:`write_store`.
    """
    episodes = [frames] if isinstance(frames, int) else list(frames)
    uris = []
    for i in tqdm(range(stores), desc="writing stores", unit="store", disable=not progress):
        folder = f"{root.rstrip('/')}/part{i % 2}/" if nested else f"{root.rstrip('/')}/"
        uris.append(
            write_store(
                f"{folder}episode_{i:05d}.zarr", i, episodes, storage_options=storage_options, **layout
            )
        )
    return uris


def write_metadata_stores(
    root: str,
    *,
    stores: int,
    frames: int,
    size: int = 96,
    chunk: int = 1,
    episodes: int = 1,
    storage_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> list[str]:
    """Write ``stores`` stores whose ``data/camera0_rgb`` has metadata but no chunks.

    Each holds a (frames, size, size, 3) uint8 array and ``meta/episode_ends`` cutting it
    into ``episodes`` equal episodes, and nothing else, so index-scale tests and
    benchmarks get millions of rows in seconds. Stores are written concurrently; their
    URIs come back in store order.

        uris = write_metadata_stores("big/", stores=1000, frames=10_000)
    """
    uris = [f"{root.rstrip('/')}/episode_{i:05d}.zarr" for i in range(stores)]
    bar = tqdm(total=stores, desc="writing metadata", unit="store", disable=not progress)

    async def one(uri: str) -> str:
        target = make_store(uri, storage_options, read_only=False)
        group = await zasync.open_group(store=target, mode="w-")
        data = await group.create_group("data")
        await data.create_array(
            "camera0_rgb", shape=(frames, size, size, 3), dtype="uint8", chunks=(chunk, size, size, 3)
        )
        meta = await group.create_group("meta")
        ends = np.linspace(0, frames, episodes + 1).astype(np.int64)[1:]
        episode_ends = await meta.create_array("episode_ends", shape=ends.shape, dtype="int64")
        await episode_ends.setitem(..., ends)
        bar.update()
        return uri

    try:
        return process.run(process.gather_bounded(one(u) for u in uris))
    finally:
        bar.close()


def zip_store(uri: str, path: str) -> str:
    """Zip the local store at ``uri`` into ``path`` as UMI ships its replay buffers
    (``dataset.zarr.zip``: members stored uncompressed, keys relative to the store root);
    return ``path``.

        zip_store("data/episode_00000.zarr", "zips/episode_00000.zarr.zip")
    """
    root = Path(uri)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for member in sorted(p for p in root.rglob("*") if p.is_file()):
            archive.write(member, member.relative_to(root).as_posix())
    return path


def write_umi_zip(
    path: str | Path, episodes: Sequence[int] = (5, 3, 7), *, size: int | tuple[int, int] = 32, seed: int = 0
) -> str:
    """Write UMI's ``dataset.zarr.zip`` at ``path``: a zarr v2 replay buffer built in memory
    and copied into zarr's ``ZipStore``, as UMI's ``07_generate_replay_buffer.py`` saves it;
    return ``path``.

    ``data/camera0_rgb`` (T, H, W, 3) uint8 holds smooth camera-like frames (a lit blob
    moving over a gradient), one per chunk, compressed with the codec UMI uses, imagecodecs'
    ``Jpegxl(level=99, numthreads=1)`` (lossless by default in recent imagecodecs, not in
    every version: compare frames with zarr's own read).
    ``data/robot0_eef_pos`` (T, 3) and ``data/action`` (T, 7) float32 are seeded random
    walks; ``meta/episode_ends`` holds the cumulative ``episodes``. Registers imagecodecs'
    numcodecs codecs in this process; every process that reads the zip needs them too.

        write_umi_zip("umi/dataset.zarr.zip", episodes=(30, 45), size=96)
    """
    from imagecodecs import numcodecs as imagecodecs_numcodecs  # only UMI's stores need it

    imagecodecs_numcodecs.register_codecs()
    h, w = (size, size) if isinstance(size, int) else size
    frames = int(sum(episodes))
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None] / 4 + rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[:h, :w] / max(h, w)
    blob = np.exp(-((x - 0.5 - 0.3 * np.cos(t)) ** 2 + (y - 0.5 - 0.3 * np.sin(t)) ** 2) / 0.02)
    tint = rng.uniform(0.2, 1.0, size=3)
    rgb = [60 + 80 * x + 40 * y + 120 * c * blob for c in tint]
    camera = np.clip(np.stack(rgb, axis=-1), 0, 255).astype(np.uint8)
    lowdim = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)  # UMI's default
    memory: dict[str, Any] = {}
    root = zarr.open_group(zarr.storage.MemoryStore(memory), mode="w", zarr_format=2)
    data = root.require_group("data")
    jpegxl = imagecodecs_numcodecs.Jpegxl(level=99, numthreads=1)
    data.create_array("camera0_rgb", data=camera, chunks=(1, h, w, 3), compressors=jpegxl)
    for name, dim in [("robot0_eef_pos", 3), ("action", 7)]:
        walk = np.cumsum(rng.normal(0, 0.01, size=(frames, dim)), axis=0).astype(np.float32)
        data.create_array(name, data=walk, chunks=walk.shape, compressors=lowdim)
    ends = np.cumsum(np.asarray(episodes, dtype=np.int64))
    root.require_group("meta").create_array("episode_ends", data=ends, compressors=None)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    archive = zarr.storage.ZipStore(path, mode="w")  # members stored uncompressed, as UMI's
    try:
        process.run(process.gather_bounded(archive.set(k, v) for k, v in sorted(memory.items())))
    finally:
        archive.close()
    return str(path)


__all__ = [
    "make_actions",
    "make_frames",
    "make_state",
    "write_metadata_stores",
    "write_store",
    "write_stores",
    "write_umi_zip",
    "zip_store",
]
