"""Making stores and opening arrays: once per process, through the retrying wrapper.

arr = run(open_array("s3://bucket/ep0.zarr", "data/camera0_rgb", {"anon": True}))

One storage option is zarr_torch's own, never passed to fsspec: ``max_requests_per_host``,
the requests in flight at once to one server from each process (default
:data:`REQUESTS_PER_HOST`, 64, for every store reached over a network; local folders and
zips are read in place). S3 takes that many; a small HTTP server may not:
``python -m http.server`` (listen backlog 5) stalls each connection beyond its backlog a
second or more (the client's retried SYN), so give it ``{"max_requests_per_host": 4}``:

    ds = ZarrFrameDataset(index, storage_options={"max_requests_per_host": 4})
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import zarr.api.asynchronous as zasync
from zarr.abc.store import Store
from zarr.core.array import AsyncArray, parse_array_metadata
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import AsyncGroup
from zarr.core.metadata import ArrayMetadata
from zarr.errors import NodeNotFoundError
from zarr.storage import FsspecStore, LocalStore, StorePath, ZipStore

from zarr_torch import objectstores
from zarr_torch.process import gather_bounded, process_state, run
from zarr_torch.redact import redact_uri, scrub
from zarr_torch.storage import HostLimit, ReliableStore

Options = Mapping[str, Any]
#: connections s3fs may hold open to S3 unless the storage options say otherwise.
S3_CONNECTIONS = 64
#: the storage option bounding the requests in flight to one host, from each process and
#: event loop (see :func:`host_limit`); zarr_torch's own, never passed to fsspec.
#: ``python -m http.server`` (listen backlog 5) needs ``{"max_requests_per_host": 4}``.
MAX_REQUESTS_OPTION = "max_requests_per_host"
#: requests in flight to one host when the storage options do not say: as many as the
#: connections of an S3 store (:data:`S3_CONNECTIONS`).
REQUESTS_PER_HOST = S3_CONNECTIONS
#: distinct metadata documents a process keeps parsed (see :func:`open_node`).
METADATA_PARSED = 4096


def is_local(uri: str) -> bool:
    """True for a plain path or a ``file://`` URL (a zipped store's too)."""
    return "://" not in uri or uri.startswith("file://")


def is_zip(uri: str) -> bool:
    """True for a zipped store: a ``zip::`` URL, or a local path ending in ``.zip``."""
    return uri.startswith("zip::") or (is_local(uri) and uri.rstrip("/").endswith(".zip"))


def local_path(uri: str) -> str:
    """The file system path of a local ``uri``."""
    return re.sub(r"^file://", "", uri)


def options_key(options: Options | None) -> str:
    """A hashable, order-independent key for storage options."""
    if not options:  # most stores (every local one): asked for each array of every batch
        return "{}"
    return json.dumps(options, sort_keys=True, default=repr)


def array_key(uri: str, path: str, options: Options | None) -> tuple[str, str, str]:
    """The key of the array at ``path`` in ``uri`` among what this process has open."""
    return uri, path, options_key(options)


def fsspec_options(storage_options: Options | None) -> dict[str, Any]:
    """``storage_options`` without zarr_torch's own (``max_requests_per_host``, ``backend``):
    what fsspec gets (aiohttp would refuse an unknown keyword)."""
    ours = (MAX_REQUESTS_OPTION, objectstores.BACKEND_OPTION)
    return {k: v for k, v in (storage_options or {}).items() if k not in ours}


def request_host(uri: str, storage_options: Options | None = None) -> str | None:
    """The server that requests for ``uri`` go to, as ``scheme://host:port`` (never with
    credentials); None for stores read in place (local folders and zips, ``memory://``).

    An S3 store's host is its ``endpoint_url`` (in ``client_kwargs`` or the options), else
    its bucket; a chained URL's (``zip::``, ``simplecache::``) is its last URL's.
    """
    target = re.split(r"::(?=[A-Za-z][A-Za-z0-9+.-]*://)", uri)[-1]  # not an IPv6 host's "::"
    if is_local(target) or target.startswith("memory://"):
        return None
    options = storage_options or {}
    if target.startswith("s3://"):
        endpoint = (options.get("client_kwargs") or {}).get("endpoint_url") or options.get("endpoint_url")
        target = str(endpoint) if endpoint else target
    parts = urlsplit(target)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a port that is no number: the host alone
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def host_limit(uri: str, storage_options: Options | None = None) -> HostLimit | None:
    """How many requests may be in flight at once to ``uri``'s host, from each process:
    ``max_requests_per_host`` of ``storage_options`` (a positive int), else
    :data:`REQUESTS_PER_HOST` (64); None for stores read in place (local folders and zips).

    ``python -m http.server`` (listen backlog 5) needs ``{"max_requests_per_host": 4}``;
    object stores take the default. Raises ``ValueError`` for a limit that is not a
    positive whole number.
    """
    requests = (storage_options or {}).get(MAX_REQUESTS_OPTION)
    host = request_host(uri, storage_options)
    limit = HostLimit(host or "", REQUESTS_PER_HOST if requests is None else requests)  # validates it
    return None if host is None else limit


def make_store(uri: str, storage_options: Options | None = None, *, read_only: bool = True) -> Store:
    """A zarr store for ``uri``: a local path, ``file://``, a zipped store (``ep.zarr.zip``,
    ``zip::file:///ep.zarr.zip``, ``zip::s3://bucket/ep.zarr.zip``) or any fsspec URL.

    ``max_requests_per_host`` is not the store's (:func:`get_store` applies it) and never
    reaches fsspec; ``backend`` chooses fsspec or obstore (:mod:`zarr_torch.objectstores`)."""
    if is_zip(uri):
        inner = uri.removeprefix("zip::")
        if is_local(inner):  # zarr's ZipStore: one open zip file, its members read in place
            return ZipStore(local_path(inner), mode="r" if read_only else "a")
        return FsspecStore.from_url(uri, storage_options=fsspec_options(storage_options), read_only=True)
    if is_local(uri):
        return LocalStore(local_path(uri), read_only=read_only)
    if objectstores.backend_of(uri, storage_options) == objectstores.OBSTORE:  # see objectstores
        return objectstores.make_obstore(uri, fsspec_options(storage_options), read_only=read_only)
    options = fsspec_options(storage_options)
    if uri.startswith("s3://"):
        # botocore's default pool of 10 connections caps a batch's fetches; retries are
        # ReliableStore's alone (s3fs's 5 attempts times botocore's 5 stacked up under it).
        config = options.get("config_kwargs", {})
        options["config_kwargs"] = {
            "max_pool_connections": S3_CONNECTIONS,
            "retries": {"total_max_attempts": 1},
            **config,
        }
        # s3fs's whole-object read sizes the object with a HEAD first when it may split it
        # over max_concurrency (default 10) requests: two round trips for every chunk
        # (fsspec/s3fs#1027). A chunk is never worth splitting; a range read never does.
        options.setdefault("max_concurrency", 1)
    store = FsspecStore.from_url(uri, storage_options=options, read_only=read_only)
    if uri.startswith("s3://"):  # an instance of these options only: fsspec keys its cache by them
        store.fs.retries = 1
    return store


def get_store(uri: str, storage_options: Options | None = None) -> Store:
    """This process's read-only store for ``uri``, created on first use.

    Its reads retry transient failures (see :mod:`zarr_torch.storage`) and hold one of
    the host's :func:`host_limit` slots while in flight. The store is cached by ``uri``
    and all of ``storage_options``, ``max_requests_per_host`` included.
    """
    state = process_state()
    key = (uri, options_key(storage_options))
    if key not in state.stores:
        limit = host_limit(uri, storage_options)
        state.stores[key] = ReliableStore(make_store(uri, storage_options), limit=limit)
    return state.stores[key]


async def open_node(
    uri: str, path: str = "", storage_options: Options | None = None, *, zarr_format: int | None = None
) -> AsyncArray | AsyncGroup:
    """Open the array or group at ``path`` in the store at ``uri``.

    ``zarr_format`` (2 or 3), when known, reads only that format's metadata documents
    instead of probing for both, and parses each distinct document once per process.
    Raises ``FileNotFoundError`` naming the store (and the path when the store exists),
    and ``ValueError`` naming both when its metadata cannot be read (invalid JSON, an
    unknown dtype, a negative shape).
    """
    store = get_store(uri, storage_options)
    try:
        if zarr_format is not None:
            arr = await _open_parsed(await StorePath.open(store, path, mode="r"), zarr_format)
            if arr is not None:
                return arr
        return await zasync.open(store=store, path=path, mode="r", zarr_format=zarr_format)
    except (FileNotFoundError, NodeNotFoundError) as exc:
        shown = redact_uri(uri)
        if path and await _store_exists(store):
            raise FileNotFoundError(f"no Zarr array or group {path!r} in store {shown!r}") from exc
        raise FileNotFoundError(
            f"no Zarr store at {shown!r} (no zarr.json, .zgroup or .zarray found)"
        ) from exc
    except (ValueError, TypeError, KeyError) as exc:  # after not-found: zarr's are ValueErrors too
        if type(exc).__name__ == "UnknownCodecError":  # zarr's (v3) and numcodecs' (v2)
            raise ValueError(_unknown_codec(uri, path, exc)) from exc
        raise ValueError(
            f"unreadable Zarr metadata of {path or '/'!r} in store {redact_uri(uri)!r}: "
            f"{type(exc).__name__}: {scrub(str(exc), storage_options)}"
        ) from exc
    except Exception as exc:  # the store could not be reached: say which, without secrets
        raise OSError(
            f"cannot open {path or '/'!r} in store {redact_uri(uri)!r}: "
            f"{type(exc).__name__}: {scrub(str(exc), storage_options)}"
        ) from exc


async def _open_parsed(store_path: StorePath, zarr_format: int) -> AsyncArray | None:
    """The array at ``store_path`` from its ``zarr_format`` metadata documents (see
    :func:`_parsed`); None when they are absent or not an array's, for zarr to say what
    is there."""
    prototype = default_buffer_prototype()
    names = _DOCUMENTS[zarr_format]
    found = await asyncio.gather(*((store_path / name).get(prototype) for name in names))
    data = [None if buffer is None else buffer.to_bytes() for buffer in found]
    return _array_of(data, zarr_format, store_path)


#: the metadata documents of an array of each zarr format, the first one required.
_DOCUMENTS = {3: ("zarr.json",), 2: (".zarray", ".zattrs")}


def _array_of(found: list[bytes | None], zarr_format: int, store_path: StorePath) -> AsyncArray | None:
    """The array at ``store_path`` whose ``zarr_format`` documents hold ``found`` bytes
    (None: absent); None when the first is absent, or they are not an array's."""
    if found[0] is None:
        return None

    def document() -> dict | None:
        document = json.loads(found[0])
        if zarr_format == 2:
            return {**document, "attributes": json.loads(found[1]) if found[1] is not None else {}}
        return document if document.get("node_type") == "array" else None

    metadata = _parsed(b"\0".join(b"" if data is None else data for data in found), document)
    return None if metadata is None else AsyncArray(metadata, store_path)


def _parsed(key: bytes, document: Callable[[], dict | None]) -> ArrayMetadata | None:
    """The array metadata of ``document()`` (None: not an array's), parsed once in this
    process for each distinct ``key`` (its bytes): a thousand episodes written alike parse
    once, whether read from their stores or from an index."""
    parsed = process_state().metadata
    if key not in parsed:
        found = document()
        if found is None:
            return None
        if len(parsed) >= METADATA_PARSED:
            parsed.clear()
        parsed[key] = parse_array_metadata(found)
    return parsed[key]


def _unknown_codec(uri: str, path: str, exc: BaseException) -> str:
    names = re.findall(r"'+([^']+)'+", str(exc))
    codec = str(getattr(exc, "codec_id", None) or (names[-1] if names else exc)).strip("'\"")
    return (
        f"array {path or '/'!r} in store {redact_uri(uri)!r} uses codec {codec!r}, which is not "
        "registered in this process: install the package that provides it and register it "
        "(numcodecs.register_codec, or for imagecodecs' JPEG-XL and the like "
        "imagecodecs.numcodecs.register_codecs()) in a module that DataLoader workers import too "
        "(the module of your transform, or worker_init_fn): spawn and forkserver workers start "
        "without the main script's registrations"
    )


async def _store_exists(store: Store) -> bool:
    try:
        await zasync.open(store=store, mode="r")
    except (FileNotFoundError, NodeNotFoundError):
        return False
    return True


class ArraySpec(NamedTuple):
    """What a process needs to open one array: where, how, and (from an index) its
    metadata document, so that opening it makes no request."""

    uri: str
    path: str
    options: Options | None = None
    #: how many leading axes number its items (see ``ArrayEntry.item_axes``).
    item_axes: int = 1
    #: the array's metadata as zarr reads it (``zarr.json``, or ``.zarray`` with attributes).
    document: dict | None = None
    #: its zarr format (2 or 3) when known: opened without its document, the array is read
    #: from that format's documents alone, not found by trying each format's.
    zarr_format: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """The array's key among what this process has open (see :func:`array_key`)."""
        return array_key(self.uri, self.path, self.options)


def metadata_document(arr: AsyncArray) -> dict:
    """The metadata document of an open array, as zarr reads it from its store: opening
    the array again from it (:func:`open_array`) makes no request."""
    buffers = arr.metadata.to_buffer_dict(default_buffer_prototype())
    if arr.metadata.zarr_format == 3:
        return json.loads(buffers["zarr.json"].to_bytes())
    attrs = buffers.get(".zattrs")
    document = json.loads(buffers[".zarray"].to_bytes())
    return {**document, "attributes": json.loads(attrs.to_bytes()) if attrs else {}}


async def open_array(
    uri: str,
    path: str = "",
    storage_options: Options | None = None,
    *,
    refresh: bool = False,
    zarr_format: int | None = None,
    document: dict | None = None,
) -> AsyncArray:
    """This process's handle on the array at ``path`` in ``uri``, opened once.

    ``refresh=True`` reads the metadata again and replaces the cached handle;
    ``zarr_format`` is passed to :func:`open_node`. With its metadata ``document`` (from
    an index) the array opens with no request; the read engine checks it against the
    store when a chunk turns out absent.
    Raises ``FileNotFoundError`` when it does not exist, ``ValueError`` when it is a group.
    """
    known = {"zarr_format": zarr_format, "document": document}
    arr = None if refresh else opened_array(uri, path, storage_options, **known)
    if arr is None:
        node = await open_node(uri, path, storage_options, zarr_format=zarr_format)
        if not isinstance(node, AsyncArray):
            # datachain's wording, so a test's pytest.raises(match=...) holds for both libraries
            raise ValueError(f"{path!r} is not a Zarr array in store {redact_uri(uri)!r}: it is a group")
        arr = _keep(array_key(uri, path, storage_options), node)
    return arr


def opened_array(
    uri: str,
    path: str = "",
    storage_options: Options | None = None,
    *,
    zarr_format: int | None = None,
    document: dict | None = None,
) -> AsyncArray | None:
    """:func:`open_array`'s handle when it takes no trip to zarr's I/O loop: open in this
    process already, made from its metadata ``document``, or, in a local folder store of
    a known ``zarr_format``, from that format's documents read in this thread (a
    ``DataLoader`` worker then starts no loop to open its local arrays: 10 ms of its
    first batch). None otherwise, or when they are not an array's: :func:`open_array`
    then opens it, or says why not.

        arr = opened_array("ep0.zarr", "data/camera0_rgb", zarr_format=3)
    """
    key = array_key(uri, path, storage_options)
    arr = process_state().arrays.get(key)
    if arr is not None:
        return arr
    if document is not None:
        metadata = _parsed(json.dumps(document, sort_keys=True).encode(), lambda: document)
        return _keep(key, AsyncArray(metadata, StorePath(get_store(uri, storage_options), path)))
    if zarr_format is None or not is_local(uri) or is_zip(uri):
        return None
    found = []
    for name in _DOCUMENTS[zarr_format]:
        try:
            with open(os.path.join(local_path(uri), path, name), "rb") as file:
                found.append(file.read())
        except FileNotFoundError:
            found.append(None)
        except OSError:  # a folder in a document's place, say: open_array tells which
            return None
    try:
        arr = _array_of(found, zarr_format, StorePath(get_store(uri, storage_options), path))
    except (ValueError, TypeError, KeyError):  # unreadable metadata: open_array names the array
        return None
    return None if arr is None else _keep(key, arr)


def _keep(key: tuple[str, str, str], arr: AsyncArray) -> AsyncArray:
    """Keep ``arr`` as this process's handle on array ``key`` (its layout made afresh)."""
    state = process_state()
    state.arrays[key] = arr
    state.layouts.pop(key, None)
    return arr


def open_arrays(
    specs: Iterable[ArraySpec | tuple[str, str, Options | None]], *, refresh: bool = False
) -> list[AsyncArray]:
    """Open every ``(uri, path, storage_options)`` concurrently; the first error is raised.

    ``refresh=True`` reads fresh metadata even for arrays this process has open.

    arrays = open_arrays([("ep0.zarr", "data/camera0_rgb", None)])
    """
    return run(gather_bounded(open_array(s[0], s[1], s[2], refresh=refresh) for s in specs))


async def missing_chunks(arr: AsyncArray) -> list[str]:
    """Store keys of the chunks (shards, if sharded) that ``arr``'s shape implies but the
    store lacks. Lists the array's prefix once.

        missing = run(missing_chunks(run(open_array("ep0.zarr", "data/camera0_rgb"))))
    """
    grid = arr.shards or arr.chunks
    counts = [-(-size // step) for size, step in zip(arr.shape, grid, strict=True)]
    prefix = f"{arr.store_path.path}/" if arr.store_path.path else ""
    present = {key async for key in arr.store_path.store.list_prefix(prefix)}
    expected = (prefix + arr.metadata.encode_chunk_key(c) for c in itertools.product(*map(range, counts)))
    return [key for key in expected if key not in present]
