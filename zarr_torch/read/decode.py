"""Decode: a chunk's stored bytes to an array, by zarr_torch's own decoders or zarr's.

zarr_torch decodes a chunk itself when it knows every codec of its chain: the v3
``bytes`` codec of either byte order, the compressors zstd, blosc, gzip, any codec of
numcodecs' registry (zlib, lz4, bz2, imagecodecs' JPEG-XL once registered, ...), the
``crc32c`` checksum, and v2 filters. Those decoders release the GIL and run on the
process's decode threads; where a chunk is exactly one frame they write it straight into
the batch (numcodecs decoders take ``out=``). Any other chain (transposes, string
dtypes, nested sharding) goes to zarr's own codec pipeline, one call per batch.

    decoder = direct_decoder(arr.metadata, codecs, chunk_shape)
    frame = decoder.decode(raw, out=batch[k][None])   # writes into batch[k]
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import zstandard
from zarr.abc.codec import Codec
from zarr.core.array_spec import ArrayConfig, ArraySpec
from zarr.core.buffer import default_buffer_prototype
from zarr.registry import get_pipeline_class

#: numpy dtype kinds zarr_torch leaves to zarr: objects, strings, datetimes.
UNDECODED_KINDS = "OUSVMm"


class ChecksumError(ValueError):
    """A chunk's bytes do not match the checksum stored with them."""


class _Crc32c:
    """The v3 ``crc32c`` codec: check the trailing little-endian CRC-32C and strip it."""

    def decode(self, buf: Any, out: Any = None) -> memoryview:
        view = memoryview(buf).cast("B")
        if len(view) < 4:
            raise ChecksumError(f"{len(view)} bytes cannot hold a CRC-32C checksum")
        body, (stored,) = view[:-4], struct.unpack("<I", view[-4:])
        if google_crc32c.value(body.tobytes()) != stored:
            raise ChecksumError("stored and computed CRC-32C checksums differ: the chunk is corrupt")
        return body


class _Zstd:
    """zstd frames, by python-zstandard: it releases the GIL and streams a frame straight
    into ``out`` (no result of its own to allocate, fault in and copy: 0.43 against 0.57 ms
    or more for a 2.4 MB chunk); checksums are verified, and a frame holding more or
    fewer bytes than ``out`` fails.
    :meth:`decode_rows` sends each row where it goes and stops after the last one needed."""

    _local = threading.local()

    def _context(self) -> zstandard.ZstdDecompressor:
        try:
            return self._local.dctx
        except AttributeError:  # a decompression context is not thread-safe: one per thread
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
            return dctx

    def decode(self, buf: Any, out: np.ndarray | None = None) -> Any:
        if out is None:
            return self._context().decompress(buf)
        view = memoryview(out).cast("B")
        with self._context().stream_reader(buf, closefd=False) as reader:
            # one call fills it when the frame says its size (zstd decodes it in one pass)
            got = reader.readinto(view)
            if got < len(view) and got + _fill(reader, view[got:]) < len(view):
                raise _fewer(len(view))
            if reader.read(1):  # also verifies a content checksum at the frame's end
                raise _more(len(view))
        return out

    def decode_rows(self, buf: Any, dests: Sequence[Any], row_bytes: int, rows: int) -> int:
        """Stream the frame's leading rows of ``row_bytes`` each into ``dests`` (row ``r``
        into ``dests[r]``; None: not needed) and stop after the last; a frame with a
        content checksum is read to its end (to verify it), as is one of ``rows`` rows
        (to find any extra bytes). ``buf`` is the frame's bytes or a file open at its
        start. Returns the bytes decoded."""
        whole = len(dests) >= rows or zstandard.get_frame_parameters(_header(buf)).has_checksum
        upto = rows if whole else len(dests)
        with self._context().stream_reader(buf, closefd=False) as reader:
            for r, dest in enumerate(dests[:upto]):
                if dest is None:
                    continue
                # rows nobody needs are decoded and dropped by the reader (a forward seek)
                if (
                    reader.seek(r * row_bytes) < r * row_bytes
                    or _fill(reader, memoryview(dest).cast("B")) < row_bytes
                ):
                    raise _fewer(upto * row_bytes)
            if reader.seek(upto * row_bytes) < upto * row_bytes:
                raise _fewer(upto * row_bytes)
            if whole and reader.read(1):
                raise _more(rows * row_bytes)
        return upto * row_bytes


def _fewer(needed: int) -> ValueError:
    return ValueError(f"a zstd frame holds fewer bytes than the {needed} needed")


def _more(size: int) -> ValueError:
    return ValueError(f"a zstd frame holds more bytes than its chunk's {size}")


def _header(buf: Any) -> Any:
    """The start of a zstd frame, at least its header: of its bytes, or of a file open at
    its start (left there)."""
    if not hasattr(buf, "read"):
        return buf
    header = buf.read(18)  # ZSTD_FRAMEHEADERSIZE_MAX
    buf.seek(0)
    return header


def _fill(reader: Any, view: memoryview) -> int:
    """Read from ``reader`` into ``view`` until it is full or the frame ends."""
    got = 0
    while got < len(view) and (n := reader.readinto(view[got:])):
        got += n
    return got


class _Blosc:
    """Blosc, checking the compressed size its header states against the bytes there are:
    blosc itself decodes a chunk cut short by a few bytes into wrong pixels."""

    _codec = numcodecs.Blosc()

    def decode(self, buf: Any, out: Any = None) -> Any:
        view = memoryview(buf).cast("B")
        if len(view) < 16:
            raise ValueError(f"a blosc chunk of {len(view)} bytes cannot hold its 16-byte header")
        plain, _, stated = struct.unpack_from("<III", view, 4)
        if stated != len(view):
            raise ValueError(
                f"a blosc chunk holds {len(view)} bytes, but its header says {stated}: truncated"
            )
        if out is not None and plain != len(out):
            raise ValueError(f"a blosc chunk decodes to {plain} bytes, but its chunk needs {len(out)}")
        return self._codec.decode(view, out=out)


#: compressors zarr_torch decodes itself rather than with numcodecs, by codec name.
OWN_DECODERS = {"zstd": _Zstd, "blosc": _Blosc}


def _numcodecs_equivalent(codec: Codec) -> Any | None:
    """The numcodecs codec that decodes what the zarr v3 bytes-to-bytes ``codec`` encoded."""
    spec = codec.to_dict()
    name, config = spec["name"], dict(spec.get("configuration") or {})
    if name in OWN_DECODERS:
        return OWN_DECODERS[name]()  # a blosc header says how its chunk was compressed
    if name == "gzip":
        return numcodecs.GZip(level=config.get("level", 5))
    if name == "crc32c":
        return _Crc32c()
    if name.startswith("numcodecs."):
        try:
            return numcodecs.get_codec({"id": name.removeprefix("numcodecs."), **config})
        except (ValueError, TypeError, KeyError):
            return None
    return None


def _value(x: Any) -> Any:
    """An enum's value, or the value itself (zarr 3.3 turned several enums into strings)."""
    return getattr(x, "value", x)


@dataclass(frozen=True)
class DirectDecoder:
    """Decodes one chunk with numcodecs-like steps in order, then a view as ``stored``.

    ``into`` says whether :meth:`decode` can write straight into the caller's bytes of
    the chunk (one compressor or none, C order, native byte order); ``fresh`` whether the
    chunk it returns never shares memory with ``raw`` (its last step is a compressor), so
    ``raw`` may be a buffer the caller reuses; ``streams`` whether :meth:`decode_rows`
    takes ``raw`` as an open file too, read only as far as the rows it needs (zstd alone).
    """

    steps: tuple[Any, ...]
    stored: np.dtype
    shape: tuple[int, ...]
    order: str = "C"
    into: bool = field(init=False)
    fresh: bool = field(init=False)
    streams: bool = field(init=False)
    #: ``decode(raw, out=...)`` for :attr:`into`: the compressor's own when it is the chain
    decode_into: Callable[..., Any] = field(init=False, repr=False, compare=False)
    #: whether the last step writes a chunk into ``out`` given as flat bytes.
    _last_fills_out: bool = field(init=False)
    #: whether it decodes on the thread that calls it, with no threads of its own
    #: (numcodecs' blosc, called on a process's main thread, starts its own).
    threadless: bool = field(init=False)
    #: the steps before the last, and the last (None: no step), found once: a tile of a
    #: few KB decodes in about a microsecond, so lookups per chunk show.
    _before: tuple[Any, ...] = field(init=False, repr=False, compare=False)
    _last: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        into = (
            self.order == "C"
            and self.stored.isnative
            and all(isinstance(s, _Crc32c) for s in self.steps[:-1])
        )
        last = self.steps[-1] if self.steps else None
        object.__setattr__(self, "_before", self.steps[:-1])
        object.__setattr__(self, "_last", last)
        object.__setattr__(self, "into", into)
        object.__setattr__(self, "fresh", isinstance(last, COMPRESSORS))
        object.__setattr__(self, "streams", into and len(self.steps) == 1 and isinstance(last, _Zstd))
        object.__setattr__(self, "_last_fills_out", last is not None and _fills_flat_out(last))
        object.__setattr__(self, "threadless", all(isinstance(s, THREADLESS) for s in self.steps))
        alone = len(self.steps) == 1 and self._last_fills_out
        object.__setattr__(self, "decode_into", last.decode if into and alone else self.decode)

    def decode(self, raw: Any, out: np.ndarray | None = None) -> np.ndarray:
        """The chunk of ``raw`` bytes; with ``out`` (the chunk's bytes in the batch, a flat
        uint8 array; needs :attr:`into`) written there and returned, else a new (possibly
        read-only) array of the chunk's shape."""
        buf = raw
        for step in self._before:
            buf = step.decode(buf)
        last = self._last
        if out is not None:
            if self._last_fills_out:
                last.decode(buf, out=out)
                return out
            data = buf if last is None else last.decode(buf)  # image codecs: (H, W, C) arrays
            flat = data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else memoryview(data)
            if len(flat) != len(out):
                raise ValueError(f"a chunk decoded to {len(flat)} bytes, but its chunk needs {len(out)}")
            out[:] = np.frombuffer(flat, dtype=np.uint8)
            return out
        if last is not None:
            buf = last.decode(buf)
        data = buf.view(self.stored) if isinstance(buf, np.ndarray) else np.frombuffer(buf, dtype=self.stored)
        return data.reshape(self.shape, order=self.order)  # type: ignore[call-overload]

    def decode_rows(self, raw: Any, dests: Sequence[Any]) -> int:
        """Decode the chunk's leading rows (first axis) into ``dests``: row ``r``'s bytes
        into ``dests[r]`` (flat uint8; None: not needed); returns the bytes decoded. A
        zstd chain (needs :attr:`into`) streams each row to its place and stops after the
        last one needed; any other chain decodes the chunk, then copies the rows."""
        assert self.into, "rows go out as they are stored: native byte order, C order"
        rows = self.shape[0]
        row_bytes = math.prod(self.shape[1:]) * self.stored.itemsize
        last = self._last
        if isinstance(last, _Zstd):
            buf = raw
            for step in self._before:
                buf = step.decode(buf)
            return last.decode_rows(buf, dests, row_bytes, rows)
        chunk = self.decode(raw)
        flat = chunk.reshape(rows, -1).view(np.uint8)
        for dest, row in zip(dests, flat, strict=False):
            if dest is not None:
                dest[:] = row
        return chunk.nbytes


#: numcodecs' compressors: each decodes on the thread that calls it, with none of its own.
_NUMCODECS_COMPRESSORS = (
    numcodecs.GZip,
    numcodecs.Zlib,
    numcodecs.BZ2,
    numcodecs.LZMA,
    numcodecs.LZ4,
    numcodecs.Zstd,
)
#: decoders whose output is always new memory, never a view of their input.
COMPRESSORS = (_Zstd, _Blosc, *_NUMCODECS_COMPRESSORS)
#: decoders that decode on the calling thread alone: any other (blosc, image codecs, a
#: codec of numcodecs' registry) may start threads of its own.
THREADLESS = (_Zstd, _Crc32c, *_NUMCODECS_COMPRESSORS)


def _fills_flat_out(codec: Any) -> bool:
    """Whether ``codec.decode(buf, out=flat_bytes)`` writes the chunk there: zarr_torch's
    own decoders and numcodecs' compressors do; image codecs (imagecodecs' JPEG-XL, ...)
    want ``out`` in the image's shape, so their result is copied instead."""
    return isinstance(codec, _Zstd | _Blosc) or type(codec).__module__.startswith("numcodecs.")


def direct_decoder(meta: Any, codecs: Sequence[Codec] | None, shape: tuple[int, ...]) -> DirectDecoder | None:
    """zarr_torch's decoder for chunks of ``shape`` of an array with metadata ``meta``,
    or None when a codec of its chain is not one zarr_torch decodes.

    ``codecs`` is the v3 chain of one chunk (the inner chain of a sharded array); v2
    arrays read their compressor and filters from ``meta``.
    """
    if meta.zarr_format == 2:
        dtype = np.dtype(meta.dtype.to_native_dtype())
        if dtype.kind in UNDECODED_KINDS:
            return None
        chain = [meta.compressor, *reversed(meta.filters or ())]
        steps = [OWN_DECODERS[c.codec_id]() if c.codec_id in OWN_DECODERS else c for c in chain if c]
        return DirectDecoder(tuple(steps), dtype, shape, meta.order)
    dtype = np.dtype(meta.data_type.to_native_dtype())
    if dtype.kind in UNDECODED_KINDS or not codecs or type(codecs[0]).__name__ != "BytesCodec":
        return None
    endian = _value(codecs[0].endian)
    stored = dtype.newbyteorder("<" if endian == "little" else ">") if endian else dtype
    steps = [_numcodecs_equivalent(c) for c in reversed(codecs[1:])]
    if any(s is None for s in steps):
        return None
    return DirectDecoder(tuple(steps), stored, shape)


async def decode_with_zarr(
    meta: Any, codecs: Sequence[Codec] | None, shape: tuple[int, ...], raws: Sequence[bytes]
) -> list[np.ndarray]:
    """Decode chunks of ``shape`` with zarr's own codec pipeline, all in one call.

    ``codecs`` is the chain of one chunk (v3), or None for the array's own pipeline (v2).
    """
    prototype = default_buffer_prototype()
    if meta.zarr_format == 2:
        from zarr.core.array import create_codec_pipeline

        pipeline, dtype, config = create_codec_pipeline(meta), meta.dtype, {"order": meta.order}
    else:
        pipeline, dtype, config = get_pipeline_class().from_codecs(codecs), meta.data_type, {}
    spec = ArraySpec(
        shape=shape,
        dtype=dtype,
        fill_value=meta.fill_value,
        config=ArrayConfig.from_dict(config),
        prototype=prototype,
    )
    decoded = await pipeline.decode([(prototype.buffer.from_bytes(bytes(r)), spec) for r in raws])
    return [np.asarray(d.as_ndarray_like()) for d in decoded]
