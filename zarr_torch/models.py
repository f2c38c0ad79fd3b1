"""The data models: Zarr stores, arrays and selections as plain values.

They follow datachain's Zarr models (``ZarrStore``, ``ZarrInfo``, ``ZarrArray``,
``ZarrSelection``, ``read_zarr``) so records move between the two libraries. Models hold
values only: they pickle and round-trip through JSON; handles live in :mod:`zarr_torch.process`.

    store = read_zarr("s3://bucket/episodes/")[0]
    frame = store.get_array("data/camera0_rgb").select(5, media="image").read()  # (H, W, C)
"""

from __future__ import annotations

import glob
import io as _io
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import fsspec
import numpy as np
from fsspec.implementations.zip import ZipFileSystem
from pydantic import BaseModel, ConfigDict, Field, model_validator
from zarr.abc.store import Store
from zarr.core.array import AsyncArray
from zarr.core.group import AsyncGroup
from zarr.storage import FsspecStore, LocalStore, ZipStore

from zarr_torch import process, redact
from zarr_torch.stores import fsspec_options, is_local, local_path, open_array, open_node, options_key

Media = Literal["image", "audio", "video"]

#: the files that mark a Zarr store root (v3 group or array, v2 group, v2 array).
ROOT_MARKERS = frozenset({"zarr.json", ".zgroup", ".zarray"})


class ZarrInfo(BaseModel):
    """Summary metadata of a store: its format, every array path, its root attributes."""

    zarr_format: int | None = None
    arrays: list[str] = Field(default_factory=list)
    attrs: dict = Field(default_factory=dict)


class StoreFile(BaseModel):
    """Where a store root is, as datachain's ``File`` says it: a ``source`` (a bucket,
    a folder or a URL) and a ``path`` inside it. Other ``File`` fields are ignored."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    source: str = ""
    path: str = ""

    @classmethod
    def from_uri(cls, uri: str) -> StoreFile:
        """``uri`` split at its last segment: ``s3://b/a/ep.zarr`` is ``s3://b/a`` + ``ep.zarr``
        (a bucket root is all source). A local path's source is its absolute folder as a
        ``file://`` URL, as datachain's are; a ``zip::`` URL keeps its prefix on the source."""
        if uri.startswith("zip::"):
            inner = cls.from_uri(uri.removeprefix("zip::"))
            return cls(source=f"zip::{inner.source}", path=inner.path)
        uri = uri.rstrip("/") or uri
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme == "file":
            folder, name = os.path.split(os.path.abspath(local_path(uri)))
            return cls(source=f"file://{folder}", path=name)
        if "/" not in rest:  # a bucket or host alone
            return cls(source=uri)
        head, _, name = uri.rpartition("/")
        return cls(source=head, path=name)

    @property
    def uri(self) -> str:
        """The store root as a path or URL: ``source`` and ``path`` joined (a local path
        for a ``file://`` source, as datachain's ``File.get_fs_path``)."""
        zipped = self.source.startswith("zip::")
        source = self.source.removeprefix("zip::")
        if source.startswith("file://"):
            source = local_path(source) or "/"
        if not self.path:
            joined = source
        elif not source:
            joined = self.path
        else:
            joined = f"{source}{'' if source.endswith('/') else '/'}{self.path}"
        return f"zip::{joined}" if zipped else joined


class ZarrStore(BaseModel):
    """A Zarr store root and the options to reach it, as datachain's record: ``file``
    (``source`` + ``path``). ``ZarrStore(uri=...)`` takes a local path or fsspec URL.

    ``storage_options`` go to fsspec/s3fs. They are left out of ``model_dump()`` (records
    never carry credentials, as datachain's keep them in its catalog) and of the repr.

        store = ZarrStore(uri="s3://bucket/ep0.zarr", storage_options={"anon": True})
        store.source, store.path  # ('s3://bucket', 'ep0.zarr')
    """

    model_config = ConfigDict(frozen=True)

    file: StoreFile
    storage_options: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _from_uri(cls, data: Any) -> Any:
        if isinstance(data, dict) and "uri" in data:
            data = dict(data)
            data.setdefault("file", StoreFile.from_uri(str(data.pop("uri"))))
        return data

    @classmethod
    def from_store(cls, store: Store) -> ZarrStore:
        """The spec of an open zarr ``Store`` that can be opened again in any process: a
        ``LocalStore``, a ``ZipStore`` (read-only) or an ``FsspecStore`` (its file
        system's options kept). ``TypeError`` for other stores, which live in one process.

            ZarrStore.from_store(zarr.storage.ZipStore("dataset.zarr.zip", mode="r"))
        """
        if isinstance(store, LocalStore):
            return cls(uri=str(store.root))
        if isinstance(store, ZipStore):
            return cls(uri=os.fspath(store.path))
        if isinstance(store, FsspecStore):
            fs = getattr(store.fs, "sync_fs", store.fs)  # zarr wraps sync file systems
            if isinstance(fs, ZipFileSystem):  # the zip's own URL, and the options to reach it
                uri = f"zip::{fs.of.fs.unstrip_protocol(fs.of.path)}"
                options = fs.storage_options.get("target_options", {})
            else:
                uri, options = fs.unstrip_protocol(store.path), fs.storage_options
            return cls(uri=uri, storage_options={k: v for k, v in options.items() if k != "asynchronous"})
        raise TypeError(
            f"a {type(store).__name__} cannot be reopened in DataLoader workers: give a LocalStore, "
            "ZipStore or FsspecStore, or the store's path or URL"
        )

    @property
    def uri(self) -> str:
        """The store root as a path or fsspec URL (``source`` and ``path`` joined)."""
        return self.file.uri

    @property
    def source(self) -> str:
        return self.file.source

    @property
    def path(self) -> str:
        return self.file.path

    def __repr_args__(self):
        yield "uri", redact.redact_uri(self.uri)
        yield "storage_options", redact.redact_options(self.storage_options)

    def __hash__(self) -> int:
        return hash((self.uri, options_key(self.storage_options)))

    def __eq__(self, other: object) -> bool:
        """Stores are equal when they reach the same root with the same options, however
        their ``file`` splits it."""
        if not isinstance(other, ZarrStore):
            return NotImplemented
        mine, theirs = self.storage_options, other.storage_options
        return (self.uri, options_key(mine)) == (other.uri, options_key(theirs))

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


def read_zarr(
    uri: str | os.PathLike | Sequence[str | os.PathLike], storage_options: dict[str, Any] | None = None
) -> list[ZarrStore]:
    """Every Zarr store root under ``uri`` (a path or fsspec URL, a glob, or a list of
    them), sorted by URI, each once.

    A store root is a directory holding ``zarr.json``, ``.zgroup`` or ``.zarray`` that is
    not inside another store, or a zipped store (a ``.zip`` file, as UMI's replay buffers
    ``*.zarr.zip``); groups inside a store are never returned. Each level of the tree is
    listed concurrently. As in datachain, a store's ``source`` is the prefix it was found
    under and its ``path`` is relative to it; a ``uri`` that is itself a store (a store
    root, ``ep.zarr.zip``, a ``zip::`` URL) is split at its last segment. Raises
    ``FileNotFoundError`` if a ``uri`` does not exist or a glob matches nothing.

        stores = read_zarr("s3://bucket/episodes/", {"anon": True})
        stores = read_zarr(["data/run1/", "data/run2/*/ep_00*.zarr"])
    """
    options = dict(storage_options or {})
    uris = [uri] if isinstance(uri, str | os.PathLike) else list(uri)
    found: dict[str, StoreFile] = {}
    for one in map(os.fspath, uris):
        for root in _expand(one, options):
            for file in _discover(root, options):
                found.setdefault(file.uri, file)
    return [ZarrStore(file=found[u], storage_options=options) for u in sorted(found)]


def _expand(uri: str, options: dict[str, Any]) -> list[str]:
    """``uri``, or what its glob pattern matches (in the form given: path or URL)."""
    if uri.startswith("zip::") or not glob.has_magic(uri):
        return [uri]
    fs, pattern = fsspec.url_to_fs(uri, **fsspec_options(options))
    matches = sorted(fs.glob(pattern.rstrip("/")))
    if not matches:
        raise FileNotFoundError(f"no path matches {redact.redact_uri(uri)!r}")
    return [fs.unstrip_protocol(m) if "://" in uri else m for m in matches]


def _discover(uri: str, options: dict[str, Any]) -> list[StoreFile]:
    """The store roots under one ``uri``, relative to it (or ``uri`` itself, if a store)."""
    if uri.startswith("zip::"):
        return [StoreFile.from_uri(uri)]
    fs, root = fsspec.url_to_fs(uri, **fsspec_options(options))
    root = root.rstrip("/") or root
    if root.endswith(".zip") and fs.isfile(root):
        return [StoreFile.from_uri(uri)]
    if not fs.isdir(root):
        raise FileNotFoundError(f"no directory at {redact.redact_uri(uri)!r}")

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
    if found == [root]:
        return [StoreFile.from_uri(uri)]
    source = uri.rstrip("/") or uri
    if is_local(source):
        source = f"file://{os.path.abspath(local_path(source))}"
    return [StoreFile(source=source, path=p[len(root) :].lstrip("/")) for p in found]


__all__ = ["StoreFile", "ZarrArray", "ZarrInfo", "ZarrSelection", "ZarrStore", "read_zarr"]
