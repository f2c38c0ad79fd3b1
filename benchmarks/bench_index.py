"""Benchmark the SelectionIndex: bytes per row, a 10-million-row build and load, S3 builds.

Three measurements, written to ``benchmarks/results/index.json`` and ``index.png``:

1. ``--rows`` rows (10 million) over ``--stores`` local metadata-only stores: build from
   the prefix, save, and load in a fresh process (time and resident-memory growth read
   from /proc/self/statm, against the file size); bytes per row in memory and on disk.
2. ``--s3-stores`` stores (1,000) on moto's S3 server over HTTP on 127.0.0.1, run in its
   own process: ``SelectionIndex.build`` against opening the stores one after another
   (``ZarrStore(uri, opts).get_array(path)`` in a loop), side by side, through each of
   ``--backends`` (s3fs, obstore), each run starting without open stores.
3. The same with every request held ``--latency-ms`` (5, 10, 20 ms) inside moto's process
   (``servers.py``: a sleeping server thread, no proxy hop on the client's cores):
   loopback has no network latency, object storage does.
4. ``--episodes`` (200) episodes in each of the ``--stores`` (1,000) local stores, indexed
   as 16-frame windows: load time and pickled size of the loaded index in a fresh
   process; and on moto behind a FaultProxy counting requests, the metadata requests a
   spawned DataLoader worker makes for its first batch from a saved index.

    .venv/bin/python benchmarks/bench_index.py
    .venv/bin/python benchmarks/bench_index.py --rows 1000000 --stores 100 --s3-stores 100  # quick
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import s3fs
from servers import s3_options, serve_moto, start
from tqdm.auto import tqdm

from zarr_torch import SelectionIndex, ZarrStore
from zarr_torch.process import process_state
from zarr_torch.synth import write_metadata_stores

ARRAY = "data/camera0_rgb"
RESULTS = Path(__file__).parent / "results"


def memory() -> np.ndarray:
    """Resident and anonymous (resident less file-backed) memory in bytes, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        resident, shared = (int(v) for v in f.read().split()[1:3])
    return np.array([resident, resident - shared]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# -- 1. ten million rows, local --------------------------------------------------------------


def probe_load(path: str) -> None:
    """Run in a fresh process: load ``path``, print load time and RSS growth as JSON."""
    before = memory()
    index, load_s = timed(lambda: SelectionIndex.load(path))
    after_load = memory() - before
    picks = np.random.default_rng(0).integers(0, len(index), 1000)
    _, access_s = timed(lambda: [index[int(i)] for i in picks])
    after_picks = memory() - before
    print(
        json.dumps(
            {
                "load_s": load_s,
                "rss_growth_after_load_bytes": int(after_load[0]),
                "anon_growth_after_load_bytes": int(after_load[1]),
                # random rows fault in their pages (and the kernel's fault-around neighbours):
                # file-backed, shared with every process mapping the file, reclaimable.
                "rss_growth_after_1000_selections_bytes": int(after_picks[0]),
                "anon_growth_after_1000_selections_bytes": int(after_picks[1]),
                "selection_us": access_s / len(picks) * 1e6,
                "rows": len(index),
            }
        )
    )


def bench_local(work: Path, stores: int, rows: int) -> dict[str, Any]:
    frames = rows // stores
    root = str(work / "local")
    write_metadata_stores(root, stores=stores, frames=frames, progress=True)
    index, build_s = timed(lambda: SelectionIndex.build(root, array=ARRAY, media="image", progress=True))
    path = work / "frames.zti"
    size, save_s = timed(lambda: index.save(path))
    probe = subprocess.run(
        [sys.executable, __file__, "--probe-load", str(path)], capture_output=True, text=True, check=True
    )
    loaded = json.loads(probe.stdout)
    assert loaded["rows"] == len(index)
    return {
        "stores": stores,
        "rows": len(index),
        "build_from_prefix_s": build_s,
        "rows_per_s": len(index) / build_s,
        "save_s": save_s,
        "file_bytes": size,
        "bytes_per_row_memory": index.rows.nbytes / len(index),
        "bytes_per_row_disk": size / len(index),
        **loaded,
        "rss_growth_over_file_size": loaded["rss_growth_after_load_bytes"] / size,
    }


# -- 4. many episodes: the arrays table, pickles, and workers that open arrays from the index ------

WINDOW = 16
METADATA_KEYS = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


def probe_episodes(path: str) -> None:
    """Run in a fresh process: load a window index, print load time and pickle size as JSON."""
    import pickle

    index, load_s = timed(lambda: SelectionIndex.load(path))
    blob, pickle_s = timed(lambda: pickle.dumps(index))
    print(json.dumps({"load_s": load_s, "pickle_bytes": len(blob), "pickle_s": pickle_s, "rows": len(index)}))


def bench_episodes(work: Path, stores: int, episodes: int) -> dict[str, Any]:
    frames = episodes * 50
    root = str(work / "episodes")
    write_metadata_stores(root, stores=stores, frames=frames, size=16, episodes=episodes, progress=True)
    index, build_s = timed(
        lambda: SelectionIndex.build(
            root, array=ARRAY, window=WINDOW, stride=5, episode_ends="meta/episode_ends", progress=True
        )
    )
    path = work / "windows.zti"
    size = index.save(path)
    probe = subprocess.run(
        [sys.executable, __file__, "--probe-episodes", str(path)], capture_output=True, text=True, check=True
    )
    return {
        "stores": stores,
        "episodes_per_store": episodes,
        "arrays": len(index.arrays),
        "distinct_metadata": len(index.arrays.metas),
        "rows": len(index),
        "build_s": build_s,
        "file_bytes": size,
        **json.loads(probe.stdout),
    }


def bench_first_batch(stores: int = 8) -> dict[str, Any]:
    """Metadata requests of a spawned worker's first batch, from a saved index, on moto."""
    import torch.utils.data

    from zarr_torch import ZarrFrameDataset
    from zarr_torch.synth import write_stores
    from zarr_torch.testing import FaultProxy

    moto, ports = start(serve_moto, [0])
    try:
        with FaultProxy(f"http://127.0.0.1:{ports[0]}") as proxy, tempfile.TemporaryDirectory() as tmp:
            options = s3_options(int(proxy.url.rsplit(":", 1)[1]))
            s3fs.S3FileSystem(skip_instance_cache=True, **options).mkdir("first")
            write_stores(
                "s3://first/eps", stores=stores, frames=[20, 20], size=16, chunk=4, storage_options=options
            )
            index = SelectionIndex.build(
                "s3://first/eps",
                array=ARRAY,
                window=WINDOW,
                episode_ends="meta/episode_ends",
                storage_options=options,
            )
            index.save(f"{tmp}/first.zti")
            loaded = SelectionIndex.load(f"{tmp}/first.zti", storage_options=options)
            proxy.requests.clear()
            loader = torch.utils.data.DataLoader(
                ZarrFrameDataset(loaded),
                batch_size=8,
                num_workers=1,
                multiprocessing_context="spawn",
                timeout=120,
            )
            batch = next(iter(loader))
            seen = dict(proxy.requests)
    finally:
        moto.kill()
    metadata = sum(n for (_, p), n in seen.items() if p.rsplit("/", 1)[-1].split("?")[0] in METADATA_KEYS)
    return {
        "batch_shape": list(batch.shape),
        "requests": sum(seen.values()),
        "metadata_requests": metadata,
        "chunk_requests": sum(seen.values()) - metadata,
    }


# -- 2 and 3. a thousand stores on moto's S3 server --------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid``, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cold() -> None:
    """Forget this process's open stores, arrays and clients: each timed run starts as a
    fresh process would."""
    state = process_state()
    for opened in (state.stores, state.arrays, state.layouts, state.clients):
        opened.clear()


def bench_s3_pair(uris: list[str], prefix: str, options: dict, server: int, label: str) -> dict[str, Any]:
    """Sequential opens, then ``build`` over the same stores, then ``build`` from the prefix.

    ``server`` is the pid of the moto process: its CPU time shows what bounds each run.
    """

    def sequential() -> None:
        for uri in tqdm(uris, desc=f"{label}: one after another", unit="store"):
            ZarrStore(uri=uri, storage_options=options).get_array(ARRAY)

    def run(fn: Callable[[], Any]) -> tuple[Any, float, float]:
        cold()
        cpu = cpu_seconds(server)
        out, seconds = timed(fn)
        return out, seconds, cpu_seconds(server) - cpu

    _, seq_s, seq_cpu = run(sequential)
    stores = [ZarrStore(uri=u, storage_options=options) for u in uris]
    index, build_s, build_cpu = run(lambda: SelectionIndex.build(stores, array=ARRAY, progress=True))
    from_prefix, prefix_s, _ = run(lambda: SelectionIndex.build(prefix, array=ARRAY, storage_options=options))
    assert [s.uri for s in from_prefix.stores] == uris and len(index) == len(from_prefix)
    return {
        "sequential_s": seq_s,
        "build_s": build_s,
        "build_from_prefix_s": prefix_s,
        "speedup": seq_s / build_s,
        "speedup_with_discovery": seq_s / prefix_s,
        "server_cpu_sequential_s": seq_cpu,
        "server_cpu_build_s": build_cpu,
    }


def bench_s3(stores: int, latencies_ms: list[float], backends: list[str]) -> dict[str, Any]:
    """Write ``stores`` metadata-only stores to moto, then compare at each added latency,
    through each backend (``"fsspec"``: s3fs; ``"obstore"``)."""
    moto, ports = start(serve_moto, sorted({0, *(ms / 1000 for ms in latencies_ms)}))
    try:
        s3fs.S3FileSystem(skip_instance_cache=True, **s3_options(ports[0])).mkdir("bench")
        uris = write_metadata_stores(
            "s3://bench/eps", stores=stores, frames=100, storage_options=s3_options(ports[0]), progress=True
        )
        runs = []
        for backend in backends:
            for latency in latencies_ms:
                label = f"{backend}, " + (f"+{latency:g} ms" if latency else "loopback")
                options = {**s3_options(ports[latency / 1000]), "backend": backend}
                pair = bench_s3_pair(uris, "s3://bench/eps", options, moto.pid, label)
                runs.append({"backend": backend, "latency_ms": latency, **pair})
        return {"stores": stores, "runs": runs}
    finally:
        moto.kill()


# -- report ---------------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    local, s3 = results["local"], results["s3"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))

    ax = axes[0]
    backends = list(dict.fromkeys(r["backend"] for r in s3["runs"]))
    latencies = list(dict.fromkeys(r["latency_ms"] for r in s3["runs"]))
    x, width = np.arange(len(latencies)), 0.8 / len(backends)
    for i, backend in enumerate(backends):
        runs = [r for r in s3["runs"] if r["backend"] == backend]
        speedups = [r["speedup"] for r in runs]
        at = x + (i - (len(backends) - 1) / 2) * width
        ax.bar(at, speedups, width, label=backend)
        for xi, v in zip(at, speedups, strict=True):
            ax.annotate(f"{v:.1f}x", (xi, v), ha="center", va="bottom")
    ax.axhline(15, color="k", linestyle="--", linewidth=0.8, label="target at +20 ms")
    ax.set_xticks(x, [f"+{ms:g} ms" if ms else "loopback" for ms in latencies])
    ax.set_xlabel("latency added to every request (inside moto)")
    ax.set_ylabel("SelectionIndex.build / one store after another")
    ax.set_title(f"{s3['stores']} stores on moto S3: build speed-up")
    ax.legend()

    ax = axes[1]
    names = ["build", "save", "load"]
    values = [local["build_from_prefix_s"], local["save_s"], local["load_s"]]
    ax.bar(names, values, color=["C0", "C1", "C2"])
    for i, v in enumerate(values):
        ax.annotate(f"{v:.3g} s", (i, v), ha="center", va="bottom")
    ax.set_ylabel("seconds")
    ax.set_title(f"{local['rows'] / 1e6:g} M rows over {local['stores']} local stores")

    ax = axes[2]
    mib = 2**20
    names = ["file", "RSS growth\nafter load", "RSS after 1000\nrandom rows", "of which\nanonymous"]
    values = [
        local["file_bytes"] / mib,
        local["rss_growth_after_load_bytes"] / mib,
        local["rss_growth_after_1000_selections_bytes"] / mib,
        local["anon_growth_after_1000_selections_bytes"] / mib,
    ]
    ax.bar(names, values, color=["C7", "C2", "C2", "C3"])
    for i, v in enumerate(values):
        ax.annotate(f"{v:.3g} MiB", (i, v), ha="center", va="bottom")
    ax.set_ylabel("MiB")
    ax.set_title(f"load maps the rows ({local['bytes_per_row_disk']:.2f} bytes/row on disk)")

    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--stores", type=int, default=1000, help="local stores holding --rows")
    parser.add_argument("--s3-stores", type=int, default=1000)
    parser.add_argument(
        "--latency-ms", type=float, nargs="+", default=[0, 5, 10, 20], help="0: straight to moto"
    )
    parser.add_argument("--backends", nargs="+", default=["fsspec", "obstore"], help="S3 backends")
    parser.add_argument("--episodes", type=int, default=200, help="episodes in each of --stores stores")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--probe-load", help=argparse.SUPPRESS)
    parser.add_argument("--probe-episodes", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_load:
        probe_load(args.probe_load)
        return 0
    if args.probe_episodes:
        probe_episodes(args.probe_episodes)
        return 0

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp:
        local = bench_local(Path(tmp), args.stores, args.rows)
        episodes = {
            **bench_episodes(Path(tmp), args.stores, args.episodes),
            "first_batch": bench_first_batch(),
        }
    s3 = bench_s3(args.s3_stores, args.latency_ms, args.backends)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip(),
        "local": local,
        "episodes": episodes,
        "s3": s3,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "index.png")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
