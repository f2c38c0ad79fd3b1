"""Local files: a store key's bytes read in place, from a folder or from inside a zip.

A folder store's keys are files under its root; a zipped store's (UMI's ``*.zarr.zip``)
are members of one zip file. Members stored uncompressed (``ZIP_STORED``, as zarr's
``ZipStore`` and UMI write them) lie in the zip as they are, so they are read with one
positioned read of the zip file, which each process opens once. Both read on the decode
threads, without the store's event loop; a thread that decodes what it read at once can
read into its own reusable buffer (``reuse=True``, see :mod:`.buffers`) instead of a new
bytes object each time.

    files = local_files(store)            # FolderFiles, ZipMembers, or None
    files.whole("data/camera0_rgb/c/3/0/0/0", bound=2**20)
    files.open("data/camera0_rgb/c/3/0/0/0")  # a folder's file, to stream from (FolderFiles)
"""

from __future__ import annotations

import functools
import io
import os
import stat
import struct
import zipfile
from typing import Any

from zarr.storage import LocalStore, ZipStore

from zarr_torch.read.buffers import scratch

#: a zip member's local header: signature, then fixed fields ending in the lengths of its
#: name and extra field (which may differ from the central directory's).
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"


class IsAFolder(OSError):
    """A key that names a folder where a file should be."""


def _pread(fd: int, size: int, offset: int, reuse: bool) -> bytes | memoryview:
    """``size`` bytes at ``offset`` (fewer at the end of the file); with ``reuse``, a view
    of this thread's read buffer, valid until its next such read."""
    if not reuse:
        return os.pread(fd, size, offset)
    buf = scratch(size, "read")
    return buf[: os.preadv(fd, [buf], offset)]


class FolderFiles:
    """The keys of a folder store: files under ``root`` (which ends in "/")."""

    def __init__(self, root: str) -> None:
        self.root = root

    def whole(self, key: str, bound: int, reuse: bool = False) -> bytes | memoryview | None:
        """The file's bytes (``bound`` more than it is likely to hold); None when absent."""
        try:
            fd = os.open(self.root + key, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            # a bound on the size saves asking the file system for it
            data = _pread(fd, bound, 0, reuse)
            if len(data) < bound:
                return data
            parts = [bytes(data)]
            while block := os.pread(fd, 2**22, bound):
                parts.append(block)
                bound += len(block)
            return b"".join(parts)
        except IsADirectoryError:  # a folder opens; reading it fails
            raise IsAFolder(f"{key!r} is a directory, not a file") from None
        finally:
            os.close(fd)

    def open(self, key: str) -> io.FileIO | None:
        """The file, open to be read a little at a time (an unbuffered ``io.FileIO``, which
        the caller closes); None when absent."""
        try:
            return open(self.root + key, "rb", buffering=0)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise IsAFolder(f"{key!r} is a directory, not a file") from None

    def span(self, key: str, start: int, stop: int, reuse: bool = False) -> bytes | memoryview | None:
        """Bytes ``start`` to ``stop`` of the file (fewer if it is shorter); None when absent."""
        try:
            fd = os.open(self.root + key, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return _pread(fd, stop - start, start, reuse)
        except IsADirectoryError:
            raise IsAFolder(f"{key!r} is a directory, not a file") from None
        finally:
            os.close(fd)

    def size(self, key: str) -> int | None:
        """The file's size; None when absent; :class:`IsAFolder` for a folder."""
        try:
            info = os.stat(self.root + key)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(info.st_mode):
            raise IsAFolder(f"{key!r} is a directory, not a file")
        return info.st_size


class ZipMembers:
    """The keys of a zipped store whose members are all stored uncompressed."""

    def __init__(self, path: str, infos: list[zipfile.ZipInfo]) -> None:
        self.path = path
        #: name -> (offset of its local header, size)
        self.members = {i.filename: (i.header_offset, i.file_size) for i in infos if not i.is_dir()}
        self.folders = {i.filename.rstrip("/") for i in infos if i.is_dir()}

    @functools.cached_property
    def fd(self) -> int:
        """The zip file, opened once (per process: a layout never crosses a fork)."""
        return os.open(self.path, os.O_RDONLY)

    @functools.cache  # noqa: B019 - one entry per member, for the life of the layout
    def _data_at(self, key: str) -> int:
        header_offset, _ = self.members[key]
        header = os.pread(self.fd, _LOCAL_HEADER.size, header_offset)
        fields = _LOCAL_HEADER.unpack(header)
        if fields[0] != _LOCAL_SIGNATURE:
            raise OSError(f"{self.path}: member {key!r} has no local header at {header_offset}: corrupt zip")
        name_length, extra_length = fields[-2:]
        return header_offset + _LOCAL_HEADER.size + name_length + extra_length

    def whole(self, key: str, bound: int, reuse: bool = False) -> bytes | memoryview | None:
        if key not in self.members:
            if key in self.folders:
                raise IsAFolder(f"{key!r} is a directory in {self.path}, not a file")
            return None
        return _pread(self.fd, self.members[key][1], self._data_at(key), reuse)

    def span(self, key: str, start: int, stop: int, reuse: bool = False) -> bytes | memoryview | None:
        if key not in self.members:
            return None
        size = self.members[key][1]
        return _pread(self.fd, max(0, min(stop, size) - start), self._data_at(key) + start, reuse)

    def size(self, key: str) -> int | None:
        if key in self.folders:
            raise IsAFolder(f"{key!r} is a directory in {self.path}, not a file")
        member = self.members.get(key)
        return None if member is None else member[1]


def local_files(store: Any) -> FolderFiles | ZipMembers | None:
    """How to read ``store``'s keys in place (through a retrying wrapper too); None when
    they can only be read through the store (remote, or a zip with compressed members)."""
    inner = getattr(store, "_store", store)
    if isinstance(inner, LocalStore):
        return FolderFiles(f"{inner.root}/")
    if isinstance(inner, ZipStore) and getattr(inner, "path", None) is not None:
        with zipfile.ZipFile(inner.path) as archive:
            infos = archive.infolist()
        if all(i.compress_type == zipfile.ZIP_STORED for i in infos):
            return ZipMembers(os.fspath(inner.path), infos)
    return None
