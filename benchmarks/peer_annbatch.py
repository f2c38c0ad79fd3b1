"""annbatch 0.3.1 as a benchmark peer: random frames from many Zarr stores, verified, timed.

Runs in the Python 3.12 peer venv (``benchmarks/.venv-peers``, made by ``peers.peer_python()``),
never in the project's venv. The spec is a JSON file:

    {"stores": ["/data/episode_00000.zarr", ...], "array": "data/camera0_rgb", "frames": 2048,
     "batch_size": 64, "engine": "zarrs", "seed": 0, "check": "/tmp/expected.npz",
     "chunk_size": 1, "preload_nchunks": 256}          # the last two are optional

``check`` is an ``.npz`` whose ``expected`` is every frame of every store, in store order,
concatenated along axis 0. One array per store goes to ``annbatch.Loader.add_datasets``; the loader
shuffles (``shuffle=True``, a seeded ``numpy`` generator) and yields numpy batches with their global
indices (``return_index=True``), so every frame is checked against ``expected`` (a mismatch raises).
``chunk_size=1`` is annbatch's "perfect random sampling" mode (one random frame per request, as a
training loader of frames needs); a larger ``chunk_size`` reads runs of that many consecutive frames.

Timing: one warm-up batch (a full preload) on a throw-away iterator first; then only the time spent
inside the loader's ``next()`` is counted, never the verification. Prints one JSON line.

    .venv-peers/bin/python benchmarks/peer_annbatch.py spec.json
"""

from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import zarr


class _CountingPipeline:
    """Wraps zarrs' Python fallback pipeline to count the reads that did not go through Rust."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads = 0

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        return await self.inner.read(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _open_arrays(
    stores: list[str], array: str, engine: str
) -> tuple[list[zarr.Array], list[_CountingPipeline]]:
    """Open ``array`` in every store read-only; with zarrs, check each got the Rust pipeline."""
    arrays = [
        zarr.open_array(
            store=zarr.storage.ZipStore(s, mode="r") if s.endswith(".zip") else s, path=array, mode="r"
        )
        for s in stores
    ]
    counters: list[_CountingPipeline] = []
    if engine == "zarrs":
        from zarrs.pipeline import ZarrsCodecPipeline

        for s, arr in zip(stores, arrays, strict=True):
            pipe = arr._async_array.codec_pipeline
            if not isinstance(pipe, ZarrsCodecPipeline):
                raise RuntimeError(f"{s}: codec pipeline is {type(pipe).__name__}, not ZarrsCodecPipeline")
            if pipe.impl is None:
                raise RuntimeError(
                    f"{s}: zarrs cannot read this array's metadata (it would fall back to Python)"
                )
            if pipe.python_impl is not None:
                pipe.python_impl = _CountingPipeline(pipe.python_impl)
                counters.append(pipe.python_impl)
    return arrays, counters


def _batches(loader: Any) -> Iterator[dict[str, Any]]:
    """Endless batches, epoch after epoch (each epoch reshuffled by the loader's generator)."""
    while True:
        it = iter(loader)
        try:
            yield from it
        finally:
            it.close()


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Read ``spec["frames"]`` random frames through annbatch, check them all, and time the reads."""
    engine = spec["engine"]
    if engine not in ("zarrs", "python"):
        raise ValueError(f"engine must be 'zarrs' or 'python', not {engine!r}")
    if engine == "zarrs":
        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    import annbatch  # after the codec pipeline is chosen, as annbatch's README does

    expected = np.load(spec["check"])["expected"]
    arrays, counters = _open_arrays(spec["stores"], spec["array"], engine)
    n_obs = sum(a.shape[0] for a in arrays)
    if expected.shape != (n_obs, *arrays[0].shape[1:]):
        raise ValueError(
            f"expected has shape {expected.shape}, the stores hold {(n_obs, *arrays[0].shape[1:])}"
        )

    batch_size = int(spec["batch_size"])
    chunk_size = int(spec.get("chunk_size", 1))
    preload = spec.get("preload_nchunks") or max(1, 4 * batch_size // chunk_size)  # ~4 batches a fetch
    if not spec.get("preload_nchunks"):
        while preload * chunk_size % batch_size:  # annbatch wants whole batches in each preload
            preload += 1
    loader = annbatch.Loader(
        chunk_size=chunk_size,
        preload_nchunks=int(preload),
        batch_size=batch_size,
        shuffle=True,
        rng=np.random.default_rng(int(spec["seed"])),
        return_index=True,
        preload_to_gpu=False,
    ).add_datasets(arrays)

    def check(batch: dict[str, Any]) -> int:
        x, index = np.asarray(batch["X"]), np.asarray(batch["index"])
        if x.dtype != expected.dtype or x.shape != (len(index), *expected.shape[1:]):
            raise AssertionError(f"batch {x.dtype}{x.shape} does not match expected {expected.dtype}")
        if not np.array_equal(x, expected[index]):
            bad = [int(i) for k, i in enumerate(index) if not np.array_equal(x[k], expected[i])]
            raise AssertionError(f"{len(bad)} frames differ from expected, e.g. global frame {bad[0]}")
        return len(index)

    warm = iter(loader)
    try:
        warmup_frames = check(next(warm))
    finally:
        warm.close()

    batches = _batches(loader)
    want, done, seconds, seen = int(spec["frames"]), 0, 0.0, np.zeros(n_obs, dtype=np.int64)
    try:
        while done < want:
            t0 = time.perf_counter()
            batch = next(batches)
            seconds += time.perf_counter() - t0
            done += check(batch)
            seen[np.asarray(batch["index"])] += 1
    finally:
        batches.close()

    return {
        "reader": "annbatch+zarrs" if engine == "zarrs" else "annbatch",
        "frames": done,
        "seconds": round(seconds, 6),
        "frames_per_s": round(done / seconds, 1),
        "distinct_frames": int((seen > 0).sum()),
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "preload_nchunks": int(preload),
        "warmup_frames": warmup_frames,
        "zarrs_fallback_reads": sum(c.reads for c in counters) if engine == "zarrs" else None,
        "versions": {
            "python": platform.python_version(),
            **{p: version(p) for p in ("annbatch", "zarr", "zarrs", "numpy", "anndata")},
        },
    }


def main(argv: list[str]) -> None:
    """Entry point: ``peer_annbatch.py SPEC.json`` prints the result as one JSON line."""
    if len(argv) != 2:
        sys.exit(__doc__)
    spec = json.loads(Path(argv[1]).read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        print(json.dumps(run(spec)))


if __name__ == "__main__":
    main(sys.argv)
