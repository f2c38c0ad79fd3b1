"""torchdata.nodes in thread mode against DataLoader workers, side by side in one run: frames per second.

One ``ZarrFrameDataset`` over stores written with ``zarr_torch.synth`` (chunks of 16 frames),
batches of 64 in ``ChunkAwareSampler`` order, read by:

- torchdata.nodes: ``SamplerWrapper -> Batcher -> ParallelMapper(ds.__getitems__, 2 threads)
  -> Mapper(default_collate) -> Prefetcher(2) -> Loader``
- ``DataLoader(num_workers=2)`` and ``DataLoader(num_workers=0)`` (the baseline)

for uint8 samples (HWC tensors, no transform) and float32 samples (torchvision v2
``ToImage`` + ``ToDtype(float32, scale=True)``). Each configuration runs warm-up epochs, then
one timed epoch; zarr_torch's chunk cache is emptied before every epoch, and every epoch must
return every frame exactly once (pixel (0, 0) stamps store and frame). Results:
``results/loaders.json`` and ``loaders.png``; ``--write`` also updates RESULTS.md.

    python benchmarks/bench_loaders.py [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchdata
import torchdata.nodes as tn
from bench_throughput import ARRAY, BATCH, RESULTS, write_section
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms import v2
from tqdm.auto import tqdm

from zarr_torch import ChunkAwareSampler, ZarrFrameDataset, process
from zarr_torch.synth import write_stores

TITLE = "Loaders: torchdata.nodes threads vs DataLoader workers (`python benchmarks/bench_loaders.py`)"
CHUNK = 16
WORKERS = 2
NODES = f"torchdata.nodes, {WORKERS} threads"
DATALOADER = f"DataLoader, {WORKERS} workers"
BASELINE = "DataLoader, 0 workers"
#: the epochs of one configuration: epoch number -> an iterable of batches.
Epochs = Callable[[int], Iterable[torch.Tensor]]


def nodes_epochs(ds: ZarrFrameDataset) -> Epochs:
    """torchdata.nodes' map-style pattern, in thread mode; its SamplerWrapper counts epochs itself."""
    node: tn.BaseNode = tn.SamplerWrapper(ChunkAwareSampler(ds, seed=0))
    node = tn.Batcher(node, batch_size=BATCH, drop_last=False)
    node = tn.ParallelMapper(node, map_fn=ds.__getitems__, num_workers=WORKERS, method="thread")
    node = tn.Mapper(node, map_fn=default_collate)
    node = tn.Prefetcher(node, prefetch_factor=2)
    loader = tn.Loader(node)
    return lambda epoch: loader


def dataloader_epochs(ds: ZarrFrameDataset, workers: int) -> Epochs:
    """``DataLoader`` with ``set_epoch`` called as a training loop does (same orders as nodes')."""
    sampler = ChunkAwareSampler(ds, seed=0)
    loader = DataLoader(ds, batch_size=BATCH, sampler=sampler, num_workers=workers)

    def epoch(e: int) -> DataLoader:
        sampler.set_epoch(e)
        return loader

    return epoch


def frame_keys(batch: torch.Tensor, frames: int) -> np.ndarray:
    """store * frames + t of every frame of a batch, from pixel (0, 0) (see ``synth.make_frames``)."""
    if batch.dtype == torch.uint8:  # (B, H, W, 3)
        stamp = batch[:, 0, 0, :].long()
    else:  # (B, 3, H, W) scaled to [0, 1]
        stamp = (batch[:, :, 0, 0] * 255).round().long()
    return (stamp[:, 0] * frames + stamp[:, 1] + 256 * stamp[:, 2]).numpy()


def empty_cache() -> None:
    """Drop this process's decoded chunks, so no epoch is served from an earlier one's."""
    process.process_state().clear_caches()


def run_epoch(loader: Iterable[torch.Tensor], frames: int, total: int) -> tuple[float, float]:
    """(frames/s, seconds in ``iter()``) of one epoch; raises unless every frame came back exactly once.

    The clock starts before ``iter()``: a DataLoader forks its workers there, and a
    torchdata.nodes Loader shuts down the previous epoch's threads there.
    """
    empty_cache()
    counts = np.zeros(total, dtype=np.int64)
    start = time.perf_counter()
    batches = iter(loader)
    started = time.perf_counter() - start
    for batch in batches:
        counts += np.bincount(frame_keys(batch, frames), minlength=total)
    seconds = time.perf_counter() - start
    if not (counts == 1).all():
        missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
        raise AssertionError(f"{missing} frames never came back, {repeated} came back more than once")
    return total / seconds, started


def bench(uris: list[str], frames: int, warmup: int) -> dict[str, dict[str, dict[str, float]]]:
    """Frames/s and seconds in ``iter()`` of every loader's timed epoch, for uint8 and float32 samples."""
    to_float = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    datasets = {
        "uint8": ZarrFrameDataset(uris, array=ARRAY),
        "float32": ZarrFrameDataset(uris, array=ARRAY, transform=to_float),
    }
    loaders: dict[str, Callable[[ZarrFrameDataset], Epochs]] = {
        NODES: nodes_epochs,
        DATALOADER: lambda ds: dataloader_epochs(ds, WORKERS),
        BASELINE: lambda ds: dataloader_epochs(ds, 0),
    }
    out: dict[str, dict[str, dict[str, float]]] = {"frames_per_s": {}, "iter_s": {}}
    bar = tqdm(total=len(datasets) * len(loaders) * (warmup + 1), desc="epochs", unit="epoch")
    for dtype, ds in datasets.items():
        for name, make in loaders.items():
            epochs = make(ds)
            for e in range(warmup + 1):
                bar.set_postfix_str(f"{dtype}, {name}, {'warm-up' if e < warmup else 'timed'}")
                fps, started = run_epoch(epochs(e), frames, len(ds))
                bar.update()
            out["frames_per_s"].setdefault(dtype, {})[name] = fps
            out["iter_s"].setdefault(dtype, {})[name] = started
    bar.close()
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(results["frames_per_s"].items())
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.6 * len(panels) + 0.8), sharex=True)
    for ax, (dtype, values) in zip(np.atleast_1d(axes), panels, strict=True):
        names = list(values)[::-1]
        ax.barh(
            names,
            [values[n] for n in names],
            color=["tab:orange" if n == NODES else "tab:blue" for n in names],
        )
        ax.set_title(f"{dtype} samples", fontsize=9)
        ax.tick_params(labelsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("frames/s (timed epoch, after warm-up)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def markdown(results: dict[str, Any]) -> str:
    """The "Loaders" section of RESULTS.md: setup, then frames/s and the ratios."""
    s, m = results["setup"], results["machine"]
    fps, dtypes = results["frames_per_s"], list(results["frames_per_s"])
    lines = [
        f"Command: `{results['command']}` (commit {results['commit']}).",
        "",
        f"{s['stores']} stores of {s['frames']} frames of {s['size']}x{s['size']} RGB, "
        f"chunks of {s['chunk']} frames, batches of {s['batch']} in `ChunkAwareSampler(seed=0)` order. "
        f"{s['warmup_epochs']} warm-up epoch(s) per configuration, then one timed epoch; "
        "zarr_torch's chunk cache emptied before every epoch; every epoch returned every frame exactly once. "
        f"Load average before / after: {m['loadavg_before']:.2f} / {m['loadavg_after']:.2f} "
        f"on {m['cpus']} cores.",
        "",
        "| loader | " + " | ".join(f"{d} frames/s" for d in dtypes) + " |",
        "|---|" + "---|" * len(dtypes),
    ]
    for name in fps[dtypes[0]]:
        lines.append(f"| {name} | " + " | ".join(f"{fps[d][name]:,.1f}" for d in dtypes) + " |")
    lines.append(
        f"| **{NODES} / {DATALOADER}** | "
        + " | ".join(f"**{results['ratios'][d]:.2f}**" for d in dtypes)
        + " |"
    )
    starts = ", ".join(f"{n} {1000 * results['iter_s'][dtypes[0]][n]:.0f} ms" for n in fps[dtypes[0]])
    lines += [
        "",
        f"Time spent in `iter()` ({dtypes[0]}, counted in the epoch): {starts}. A DataLoader forks its "
        "workers there; a torchdata.nodes Loader shuts down the previous epoch's threads there.",
        "",
        f"Raw: `{results['files']['json']}`, plot: `{results['files']['png']}`.",
    ]
    return "\n".join(lines) + "\n"


def shown_path(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when inside it, else absolute."""
    path, base = path.resolve(), base.resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=4)
    parser.add_argument("--frames", type=int, default=256, help="frames per store")
    parser.add_argument("--size", type=int, default=224, help="frame height and width")
    parser.add_argument("--epochs-warmup", type=int, default=1, help="untimed epochs per configuration")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.frames >= 256**2 or args.stores > 256:
        parser.error("frame stamps hold up to 256 stores of 65,535 frames")
    here = Path(__file__).parent
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here
        ).stdout.strip(),
        "machine": {
            "cpus": os.cpu_count(),
            "available_cores": process.available_cores(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchdata": torchdata.__version__,
            "loadavg_before": os.getloadavg()[0],
        },
        "setup": {
            "stores": args.stores,
            "frames": args.frames,
            "size": args.size,
            "chunk": CHUNK,
            "batch": BATCH,
            "warmup_epochs": args.epochs_warmup,
            "timed_epochs": 1,
            "cache": "zarr_torch's chunk cache emptied before every epoch",
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench_loaders_") as tmp:
        uris = write_stores(tmp, stores=args.stores, frames=args.frames, size=args.size, chunk=CHUNK)
        results.update(bench(uris, args.frames, args.epochs_warmup))
    results["machine"]["loadavg_after"] = os.getloadavg()[0]
    results["ratios"] = {d: v[NODES] / v[DATALOADER] for d, v in results["frames_per_s"].items()}
    args.out.mkdir(parents=True, exist_ok=True)
    files = {"json": args.out / "loaders.json", "png": args.out / "loaders.png"}
    results["files"] = {k: shown_path(p, here) for k, p in files.items()}
    files["json"].write_text(json.dumps(results, indent=2) + "\n")
    plot(results, files["png"])
    section = markdown(results)
    if args.write:
        write_section(here / "RESULTS.md", TITLE, section)
    print(f"## {TITLE}\n\n{section}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
