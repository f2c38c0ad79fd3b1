"""The index file (``.zti``): one saved :class:`~zarr_torch.index.SelectionIndex`.

One file, little-endian, readable without parsing its rows::

    bytes 0-7     magic b"\\x89ZTI\\r\\n\\x1a\\n"
    bytes 8-11    format version (u4), now 2
    bytes 12-15   CRC-32 of the JSON header (u4); 0 in files written before it was
                  recorded, which are read unchecked
    bytes 16-23   length of the JSON header in bytes (u8)
    bytes 24-     the JSON header: row dtype, row count, stores (root as source
                  and path, and metadata fingerprint, never storage options), each
                  distinct array metadata once, the arrays table's dtype and length
    zero padding  up to the next multiple of 4096, so the rows start on a page
    rows          the raw row records, row count x 16 bytes
    arrays        the arrays table (store, metadata, episode of every array), to the
                  end of the file

The rows are memory-mapped on read: reading is constant in time and memory whatever the
row count, and processes reading the same file share its pages.

    write("frames.zti", header, rows, arrays)
    header, rows, mapped, table = read("frames.zti", ROW_DTYPE, TABLE_DTYPE)
"""

from __future__ import annotations

import json
import mmap
import os
import stat as stat_
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"\x89ZTI\r\n\x1a\n"
FORMAT_VERSION = 2
#: the rows start at a multiple of this many bytes (a memory page).
ALIGN = 4096
_PREAMBLE = struct.Struct("<8sIIQ")

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class MappedRows:
    """Which rows of which index file an index holds: enough to map them again elsewhere.

    A loaded index pickles to this instead of its rows, so a ``spawn`` worker maps the
    same file (sharing its pages) rather than receiving a copy of every row.

        rows = mapped[10:20].map()
    """

    path: str
    offset: int
    count: int
    dtype: np.dtype
    #: (device, inode, size, mtime in ns) of the file when it was first mapped.
    identity: tuple[int, int, int, int]
    #: the rows held, as positions in the file's row table.
    span: range

    def __getitem__(self, key: slice) -> MappedRows:
        return replace(self, span=self.span[key])

    def map(self) -> np.ndarray:
        """The rows, memory-mapped; ValueError if the file changed since it was first mapped."""
        with open(self.path, "rb") as f:
            if _identity(os.fstat(f.fileno())) != self.identity:
                raise ValueError(f"{self.path}: the index file changed since it was loaded; load it again")
            rows = _map(f, self.dtype, self.offset, self.count)
        span = self.span
        return rows[span.start : span.stop if span.stop >= 0 else None : span.step]


def rows_offset(header_length: int) -> int:
    """Where the rows start after a JSON header of ``header_length`` bytes."""
    end = _PREAMBLE.size + header_length
    return -(-end // ALIGN) * ALIGN


def write(path: PathLike, header: dict[str, Any], rows: np.ndarray, arrays: np.ndarray) -> int:
    """Write ``header``, ``rows`` and the ``arrays`` table to ``path`` atomically; return the
    file size in bytes (the header records both tables' dtypes and lengths).

    The file is written beside ``path`` and renamed over it, so a reader (or a process
    that has the old file mapped) never sees a half-written index.
    """
    path = Path(path)
    header = {
        **header,
        "row_dtype": [list(f) for f in rows.dtype.descr],
        "rows": len(rows),
        "array_dtype": [list(f) for f in arrays.dtype.descr],
        "arrays": len(arrays),
    }
    body = json.dumps(header, separators=(",", ":")).encode()
    offset = rows_offset(len(body))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, zlib.crc32(body), len(body)))
            f.write(body)
            f.write(bytes(offset - _PREAMBLE.size - len(body)))
            f.write(np.ascontiguousarray(rows).view(np.uint8))
            f.write(np.ascontiguousarray(arrays).view(np.uint8))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return offset + rows.nbytes + arrays.nbytes


def read(
    path: PathLike, dtype: np.dtype, array_dtype: np.dtype
) -> tuple[dict[str, Any], np.ndarray, MappedRows, MappedRows]:
    """The JSON header, the memory-mapped rows and the memory-mapped arrays table of the
    index file at ``path`` (with where each is, to map them again elsewhere).

    Raises ``ValueError`` naming the file when it is not a regular file or not an index
    file, was written by another format version, holds rows of another layout, is
    truncated, or its header does not match its checksum.
    """
    name = os.fspath(path)
    if not stat_.S_ISREG(os.stat(name).st_mode):  # a FIFO or device would block or never end
        raise ValueError(f"{name}: not a zarr_torch index file (not a regular file)")
    with open(name, "rb") as f:
        stat = os.fstat(f.fileno())
        preamble = f.read(_PREAMBLE.size)
        if preamble[: len(MAGIC)] != MAGIC:
            raise ValueError(f"{name}: not a zarr_torch index file (it does not start with the ZTI magic)")
        if len(preamble) < _PREAMBLE.size:
            raise ValueError(f"{name}: truncated index file ({stat.st_size} bytes)")
        _, version, checksum, header_length = _PREAMBLE.unpack(preamble)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{name}: index format version {version} is not supported; this zarr_torch reads "
                f"version {FORMAT_VERSION}: build the index again (zarr-torch index build, or "
                "SelectionIndex.build(...).save(...)), or use the zarr_torch that wrote it"
            )
        offset = rows_offset(header_length)
        if stat.st_size < offset:
            raise ValueError(f"{name}: truncated index file ({stat.st_size} bytes, header cut short)")
        body = f.read(header_length)
        if checksum and zlib.crc32(body) != checksum:
            raise ValueError(f"{name}: corrupt index header (it does not match its checksum)")
        try:
            header = json.loads(body)
            count, arrays = int(header["rows"]), int(header["arrays"])
            layout = np.dtype([tuple(field) for field in header["row_dtype"]])
            array_layout = np.dtype([tuple(field) for field in header["array_dtype"]])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise ValueError(f"{name}: corrupt index header ({type(exc).__name__}: {exc})") from exc
        if count < 0 or arrays < 0:
            raise ValueError(f"{name}: corrupt index header ({count} rows, {arrays} arrays)")
        if (layout, array_layout) != (dtype, array_dtype):
            raise ValueError(
                f"{name}: tables of layout {layout}, {array_layout} are not supported "
                f"(expected {dtype}, {array_dtype})"
            )
        table_offset = offset + count * dtype.itemsize
        expected = table_offset + arrays * array_dtype.itemsize
        if stat.st_size != expected:
            state = "truncated" if stat.st_size < expected else "corrupt"
            raise ValueError(
                f"{name}: {state} index file ({stat.st_size} bytes, its header promises "
                f"{count} rows and {arrays} arrays in {expected} bytes)"
            )
        rows = _map(f, dtype, offset, count)
    mapped = MappedRows(name, offset, count, dtype, _identity(stat), range(count))
    table = MappedRows(name, table_offset, arrays, array_dtype, _identity(stat), range(arrays))
    return header, rows, mapped, table


def _map(f: Any, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
    if count == 0:  # mmap cannot map an empty range
        return np.empty(0, dtype=dtype)
    buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


__all__ = ["FORMAT_VERSION", "MAGIC", "MappedRows", "read", "rows_offset", "write"]
