"""Index builds spread over the ranks of a ``torchrun`` job.

    torchrun --nproc_per_node 8 -m zarr_torch.cli index build s3://bucket/episodes/ \\
        --array data/camera0_rgb -o frames.zti

or, from Python, on every rank::

    index = build_distributed("s3://bucket/episodes/", "frames.zti", array="data/camera0_rgb")

Rank 0 lists the stores once and sends their URIs (never storage options: every rank
has its own) to the others. Each rank reads the metadata of one contiguous slice of the
stores, in store order, and sends its part of the index to rank 0, which joins the
parts in rank order with :meth:`SelectionIndex.concat` and saves the whole. Episodes
never cross stores, so the joined index holds exactly the rows of a one-process build,
in the same order. An error on any rank (a missing store or array) fails every rank
with its message, at once rather than at a timeout.

Without a process group (no ``torchrun``, or one process) it is a plain
:meth:`SelectionIndex.build`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from zarr_torch import redact
from zarr_torch.index import SelectionIndex, Source, resolve_stores
from zarr_torch.models import ZarrStore
from zarr_torch.windows import WindowTooLongError

#: seconds a rank waits for the others (to start, or to finish their part) before failing.
DEFAULT_TIMEOUT = 1800.0


class DistributedBuildError(RuntimeError):
    """A distributed build failed on some rank; raised on every rank, naming each failure."""


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: its process group's, else ``torchrun``'s
    environment (``RANK``, ``WORLD_SIZE``), else ``(0, 1)``."""
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


@contextmanager
def _process_group(timeout: float) -> Iterator[Any]:
    """The gloo group the build talks over, or ``None`` for a one-process build.

    An initialised group is used as it is when it runs gloo; over another backend (NCCL)
    a gloo group of the same ranks is made for the build and destroyed after. With no
    group but ``torchrun``'s environment, a gloo group is initialised with ``timeout``
    and destroyed after.
    """
    _, size = world()
    if size <= 1:
        yield None
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedBuildError(f"WORLD_SIZE is {size}, but this torch has no torch.distributed")
    wait = timedelta(seconds=timeout)
    if dist.is_initialized():
        if dist.get_backend() == "gloo":
            yield dist.GroupMember.WORLD
            return
        group = dist.new_group(backend="gloo", timeout=wait)
        try:
            yield group
        finally:
            dist.destroy_process_group(group)
        return
    dist.init_process_group("gloo", timeout=wait)
    try:
        yield dist.GroupMember.WORLD
    finally:
        dist.destroy_process_group()


def build_distributed(
    source: Source,
    out_path: str | os.PathLike | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    progress: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **build_kwargs: Any,
) -> SelectionIndex | None:
    """:meth:`SelectionIndex.build` over ``source`` shared out between the ranks of a job;
    the index is saved to ``out_path`` (unless ``None``) by rank 0.

    Call it on every rank with the same arguments (``array=``, ``window=``, ... as for
    ``build``); each rank gives its own ``storage_options``, which never leave it. Rank 0
    returns the whole index (its stores reached with its options), the others ``None``.
    ``timeout`` bounds, in seconds, how long a rank waits for the others when this
    function makes the process group itself; a group made by the caller keeps its own.

    Any rank's error raises :class:`DistributedBuildError` on every rank, naming the rank
    and the error (the store or array at fault); its own rank's error is its cause.
    Without a process group of several ranks this is ``build`` then ``save``.
    """
    with _process_group(timeout) as group:
        if group is None:
            index = SelectionIndex.build(
                source, storage_options=storage_options, progress=progress, **build_kwargs
            )
            if out_path is not None:
                index.save(out_path)
            return index
        return _Ranks(group, storage_options).build(source, out_path, progress, build_kwargs)


@dataclass
class _Part:
    """What a rank reports of its slice: an error, or a window longer than its episodes."""

    error: str | None = None
    #: ``build``'s :class:`WindowTooLongError` message, when the slice had no episode long enough.
    short: str | None = None
    #: the longest episode's frames behind ``short``.
    longest: int = 0


class _Ranks:
    """One rank's side of a distributed build over ``group``."""

    def __init__(self, group: Any, storage_options: dict[str, Any] | None) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.group = group
        self.rank = dist.get_rank()
        self.size = dist.get_world_size(group)
        self.options = storage_options

    def _message(self, exc: BaseException) -> str:
        return redact.scrub(str(exc) or type(exc).__name__, self.options)

    def _attempt(self, step: Callable[[], Any]) -> tuple[Any, BaseException | None]:
        try:
            return step(), None
        except Exception as exc:  # every rank is told, then every rank raises
            return None, exc

    def _raise(self, errors: list[tuple[int, str]], own: BaseException | None) -> None:
        if errors:
            text = "; ".join(f"rank {r}: {m}" for r, m in errors)
            raise DistributedBuildError(text) from own

    def build(
        self, source: Source, out_path: Any, progress: bool | None, kwargs: dict[str, Any]
    ) -> SelectionIndex | None:
        dist, group = self.dist, self.group
        # 1. The stores, in the order a one-process build has them: a prefix is listed
        #    once, by rank 0; a list of stores is resolved by every rank.
        listed = isinstance(source, str | os.PathLike)
        if listed:
            found: list[Any] = [None, None]
            stores: list[ZarrStore] | None = None
            if self.rank == 0:
                stores, own = self._attempt(lambda: resolve_stores(source, self.options))
                if own is None:
                    found[0] = [s.file.model_dump() for s in stores]  # no options
                else:
                    found[1] = self._message(own)
            else:
                own = None
            dist.broadcast_object_list(found, src=0, group=group)
            self._raise([] if found[1] is None else [(0, found[1])], own)
            if stores is None:
                options = dict(self.options or {})
                stores = [ZarrStore(file=f, storage_options=options) for f in found[0]]
        else:
            stores, own = self._attempt(lambda: resolve_stores(source, self.options))
            self._agree(_Part(None if own is None else self._message(own)), own)

        # 2. This rank's contiguous slice, built as a one-process build would build it.
        lo, hi = len(stores) * self.rank // self.size, len(stores) * (self.rank + 1) // self.size
        part, own, report = None, None, _Part()
        if hi > lo:
            show = progress if self.rank == 0 else False
            part, own = self._attempt(lambda: SelectionIndex.build(stores[lo:hi], progress=show, **kwargs))
            if isinstance(own, WindowTooLongError):  # other slices may still have windows
                report = _Part(short=str(own), longest=own.longest)
                own = None
            elif own is not None:
                report = _Part(error=self._message(own))
        reports = self._agree(report, own)
        shorts = [r for r in reports if r.short]
        if shorts and len(shorts) == sum(
            1 for r in range(self.size) if _has_stores(len(stores), r, self.size)
        ):
            raise DistributedBuildError(max(shorts, key=lambda r: r.longest).short)

        # 3. Rank 0 joins the parts in rank order and saves the whole.
        if part is not None:
            part = part.with_storage_options({})  # options never leave their rank
        parts: list[Any] | None = [None] * self.size if self.rank == 0 else None
        dist.gather_object(part, parts, dst=0, group=group)  # the group holds every rank
        index, own = None, None
        if self.rank == 0:
            index, own = self._attempt(lambda: _join(parts, stores, out_path))
        self._agree(_Part(None if own is None else self._message(own)), own)
        return index

    def _agree(self, report: _Part, own: BaseException | None) -> list[_Part]:
        """Every rank's report; ``DistributedBuildError`` on every rank if any failed."""
        reports: list[Any] = [None] * self.size
        self.dist.all_gather_object(reports, report, group=self.group)
        self._raise([(r, p.error) for r, p in enumerate(reports) if p.error], own)
        return reports


def _has_stores(stores: int, rank: int, size: int) -> bool:
    return stores * (rank + 1) // size > stores * rank // size


def _join(parts: list[SelectionIndex | None], stores: list[ZarrStore], out_path: Any) -> SelectionIndex:
    """The parts in rank order, their stores reached with this rank's options; saved."""
    joined = SelectionIndex.concat(p for p in parts if p is not None)
    own = {s.uri: s for s in stores}
    index = SelectionIndex([own.get(s.uri, s) for s in joined.stores], joined.arrays, joined.rows)
    if out_path is not None:
        index.save(out_path)
    return index


__all__ = ["DEFAULT_TIMEOUT", "DistributedBuildError", "build_distributed", "world"]
