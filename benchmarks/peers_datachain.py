"""datachain's own read paths as benchmark peers, over the same stores (when installed).

No ``from __future__ import annotations`` here: datachain resolves the generator's
type hints at run time.

    peers = datachain_peers("/data/stores", "data/camera0_rgb", order)   # {} without datachain
"""

import os
import tempfile
from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import DataLoader


def datachain_peers(root: str, array: str, order: np.ndarray) -> dict[str, Callable[[], int]]:
    """``ZarrSelection.read()`` per frame, and ``chain.to_pytorch()`` through a DataLoader."""
    try:
        import datachain as dc
        from datachain.lib.zarr import ZarrSelection, ZarrStore
    except ImportError:
        return {}
    os.environ.setdefault("DATACHAIN_ROOT_DIR", tempfile.mkdtemp(prefix="bench_datachain_"))

    def frames(zarr: ZarrStore) -> Iterator[ZarrSelection]:
        arr = zarr.get_array(array)
        for t in range(arr.shape[0]):
            yield arr.select(t, media="image")

    chain = (
        dc.read_zarr(root, in_memory=True).order_by("zarr.file.path").gen(frame=frames, output=ZarrSelection)
    )
    selections = chain.to_values("frame")

    def per_item() -> int:
        for i in order:
            selections[i].read()
        return len(order)

    def to_pytorch() -> int:
        loader = DataLoader(chain.select("frame").to_pytorch(), batch_size=64)  # items: [CHW image]
        return sum(len(batch[0]) for batch in loader)

    return {"datachain ZarrSelection.read()": per_item, "datachain to_pytorch()": to_pytorch}
