"""The data models: Zarr stores, arrays and selections as plain values.

They follow datachain's Zarr models (``ZarrStore``, ``ZarrInfo``, ``ZarrArray``,
``ZarrSelection``, ``read_zarr``) so records move between the two libraries. Models hold
values only: they pickle and round-trip through JSON; handles live in :mod:`zarr_torch.process`.

    store = read_zarr("s3://bucket/episodes/")[0]
    frame = store.get_array("data/camera0_rgb").select(5, media="image").read()  # (H, W, C)
"""

from __future__ import annotations

import io as _io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import fsspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from zarr.core.array import AsyncArray
from zarr.core.group import AsyncGroup

from zarr_torch import process, redact
from zarr_torch.stores import open_array, open_node, options_key

Media = Literal["image", "audio", "video"]

#: the files that mark a Zarr store root (v3 group or array, v2 group, v2 array).
ROOT_MARKERS = frozenset({"zarr.json", ".zgroup", ".zarray"})


class ZarrInfo(BaseModel):
    """Summary metadata of a store: its format, every array path, its root attributes."""

    zarr_format: int | None = None
    arrays: list[str] = Field(default_factory=list)
    attrs: dict = Field(default_factory=dict)


class ZarrStore(BaseModel):
    """A Zarr store root: a local path or fsspec URL, and the options to reach it.

    ``storage_options`` go to fsspec/s3fs; credentials in them never show in a repr.
    """

    model_config = ConfigDict(frozen=True)

    uri: str
    storage_options: dict[str, Any] = Field(default_factory=dict)

    def __repr_args__(self):
        yield "uri", redact.redact_uri(self.uri)
        yield "storage_options", redact.redact_options(self.storage_options)

    def __hash__(self) -> int:
        return hash((self.uri, options_key(self.storage_options)))

    def _open(self, path: str = "") -> AsyncArray | AsyncGroup:
        return process.run(open_node(self.uri, path, self.storage_options))

    def get_info(self) -> ZarrInfo:
        """Format, array paths and root attributes of the store."""
        node = self._open()
        return ZarrInfo(
            zarr_format=int(node.metadata.zarr_format),
            arrays=[a.path for a in self._arrays(node)],
            attrs=dict(node.attrs),
        )

    def get_arrays(self) -> Iterator[ZarrArray]:
        """Every array in the store, recursively, in sorted path order."""
        yield from self._arrays(self._open())

    def get_array(self, path: str = "") -> ZarrArray:
        """The array at ``path`` ("" for an array-only store); ValueError if it is a group."""
        arr = process.run(open_array(self.uri, path, self.storage_options))
        return ZarrArray.from_handle(self, path, arr)

    def _arrays(self, node: AsyncArray | AsyncGroup) -> list[ZarrArray]:
        if isinstance(node, AsyncArray):
            return [ZarrArray.from_handle(self, "", node)]

        async def members() -> list[tuple[str, AsyncArray]]:
            return [(name, m) async for name, m in node.members(max_depth=None) if isinstance(m, AsyncArray)]

        return [
            ZarrArray.from_handle(self, name, arr)
            for name, arr in sorted(process.run(members()), key=lambda x: x[0])
        ]


class ZarrArray(BaseModel):
    """One array of a :class:`ZarrStore`: its path and metadata."""

    store: ZarrStore
    path: str = ""
    shape: list[int] = Field(default_factory=list)
    chunks: list[int] | None = None
    dtype: str = ""
    attrs: dict = Field(default_factory=dict)

    @classmethod
    def from_handle(cls, store: ZarrStore, path: str, arr: AsyncArray) -> ZarrArray:
        """The model of an open zarr array."""
        return cls(
            store=store,
            path=path,
            shape=list(arr.shape),
            chunks=list(arr.chunks),
            dtype=str(arr.dtype),
            attrs=dict(arr.attrs),
        )

    def read(self, selection: Any = None) -> np.ndarray:
        """The whole array, or a NumPy-style ``selection`` of it."""
        return process.run(self._read(... if selection is None else selection))

    async def _read(self, selection: Any) -> np.ndarray:
        arr = await open_array(self.store.uri, self.path, self.store.storage_options)
        return np.asarray(await arr.getitem(selection))

    def select(self, index: int | list[int], media: Media | None = None) -> ZarrSelection:
        """A lazy :class:`ZarrSelection` of the item at ``index`` on the leading axes.

        A negative index counts from the end, as in numpy; one out of range is an
        ``IndexError`` naming the store, the array and the index.
        """
        idx = [int(index)] if isinstance(index, int | np.integer) else [int(i) for i in index]
        self.item_position(idx)
        return ZarrSelection(array=self, index=idx, media=media)

    def item_position(self, index: list[int]) -> list[int]:
        """``index`` with negative entries counted from the end; ``IndexError`` naming the
        store, the array and the index when it is out of range (or has too many axes)."""
        if not self.shape:  # a record without a shape: zarr checks on read
            return list(index)
        where = f"array {self.path!r} in store {redact.redact_uri(self.store.uri)!r}"
        if len(index) > len(self.shape):
            raise IndexError(f"index {index} has more axes than the {len(self.shape)} of {where}")
        for axis, (i, n) in enumerate(zip(index, self.shape, strict=False)):
            if not -n <= i < n:
                raise IndexError(f"index {index} is out of range for {where}: axis {axis} holds {n} items")
        return [i + n if i < 0 else i for i, n in zip(index, self.shape, strict=False)]


class ZarrSelection(BaseModel):
    """A lazy item inside a :class:`ZarrArray`, addressed on its leading axes.

    An int per leading axis drops that axis: ``select(5).read()`` of an (N, H, W, C)
    array is (H, W, C).
    """

    array: ZarrArray
    index: list[int] = Field(default_factory=list)
    media: Media | None = None

    def read(self) -> np.ndarray:
        """The selected region as a numpy array (``IndexError`` naming it when out of range)."""
        return self.array.read(tuple(self.array.item_position(self.index)))

    def read_bytes(self, format: str = "PNG") -> bytes:
        """The selected image encoded by Pillow ("png", ".jpg", "JPEG", ...).

        Only images: ValueError for other media. Non-uint8 data is cast to uint8.
        """
        if self.media not in (None, "image"):
            raise ValueError(f"read_bytes() supports image media, not {self.media!r}")
        from PIL import Image

        ext = format if format.startswith(".") else f".{format}"
        pil_format = Image.registered_extensions().get(ext.lower(), format.upper())
        arr = np.asarray(self.read())
        if arr.dtype != np.uint8:
            arr = arr.astype(np.uint8)
        buf = _io.BytesIO()
        Image.fromarray(arr).save(buf, format=pil_format)
        return buf.getvalue()


def read_zarr(uri: str, storage_options: dict[str, Any] | None = None) -> list[ZarrStore]:
    """Every Zarr store root under ``uri`` (a path or fsspec URL), sorted by URI.

    A store root is a directory holding ``zarr.json``, ``.zgroup`` or ``.zarray`` that is
    not inside another store, or a zipped store (a ``.zip`` file, as UMI's replay buffers
    ``*.zarr.zip``); groups inside a store are never returned. Each level of the tree is
    listed concurrently. A ``uri`` that is itself a zipped store (``ep.zarr.zip``, a
    ``zip::`` URL) gives that store. Raises ``FileNotFoundError`` if ``uri`` does not exist.

        stores = read_zarr("s3://bucket/episodes/", {"anon": True})
    """
    options = dict(storage_options or {})
    if uri.startswith("zip::"):
        return [ZarrStore(uri=uri, storage_options=options)]
    fs, root = fsspec.url_to_fs(uri, **options)
    root = root.rstrip("/") or root
    if root.endswith(".zip") and fs.isfile(root):
        return [ZarrStore(uri=uri, storage_options=options)]
    if not fs.isdir(root):
        raise FileNotFoundError(f"no directory at {redact.redact_uri(uri)!r}")

    def unstrip(path: str) -> str:
        return fs.unstrip_protocol(path) if "://" in uri else path

    def listing(path: str) -> list[dict]:
        return fs.ls(path, detail=True, refresh=True) if fs.async_impl else fs.ls(path, detail=True)

    found: list[str] = []
    level = [root]
    with ThreadPoolExecutor(max_workers=16) as pool:
        while level:
            next_level: list[str] = []
            for path, entries in zip(level, pool.map(listing, level), strict=True):
                names = {e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries}
                if names & ROOT_MARKERS:
                    found.append(path)
                    continue
                for e in entries:
                    name = e["name"].rstrip("/")
                    if e["type"] == "directory":
                        next_level.append(name)
                    elif name.endswith(".zip"):
                        found.append(name)
            level = next_level
    return [ZarrStore(uri=unstrip(p), storage_options=options) for p in sorted(found)]


__all__ = ["ZarrArray", "ZarrInfo", "ZarrSelection", "ZarrStore", "read_zarr"]
