"""The read path, in one place: plan -> fetch -> decode -> assemble.

- :mod:`.layout`: how an array's items map to stored chunks (made once per array).
- :mod:`.plan`: which chunks a batch needs and where their rows go.
- :mod:`.fetch`: their bytes: whole objects, or byte ranges of shards found in the
  shard index; local files by plain reads, other stores through the retrying wrapper.
- :mod:`.decode`: zarr_torch's own decoders, zarr's pipeline for the rest.
- :mod:`.assemble`: copying decoded rows into one preallocated batch array.
- :mod:`.buffers`: the buffers each decode thread reuses for what it reads and decodes.
- :mod:`.inplace`: the four steps in one pass for local chunks that each lie within one
  frame (one frame a chunk, or its tiles; in a shard once its index is kept) or hold
  whole frames no cache would keep: no plan objects; a frame it cannot read goes the way
  above.
- :mod:`.compiled`: the four steps in zarrs' Rust reader, when asked (``zarrs=True``),
  for frames of local folders whose chunks hold one frame; what it cannot vouch for goes
  the ways above.
- :mod:`.engine`: :func:`read_items`, which runs the four steps for a batch, serving
  decoded chunks from the per-process cache (:mod:`zarr_torch.cache`) when it can, and
  :func:`read_batch`, the same from synchronous code (a ``DataLoader`` batch).

    frames = run(read_items(specs, array_ids, starts))
"""

from zarr_torch.read.engine import Allocate, prefetch_items, read_batch, read_items

__all__ = ["Allocate", "prefetch_items", "read_batch", "read_items"]
