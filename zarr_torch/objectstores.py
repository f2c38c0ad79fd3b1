"""Stores read through obstore (Rust's ``object_store``): S3, GCS, Azure and plain HTTP.

Each store chooses its backend by the storage option ``backend``, zarr_torch's own (never
passed to fsspec, and part of the store's cache key like every option):

    ds = ZarrFrameDataset("s3://bucket/episodes/", array="data/camera0_rgb",
                          storage_options={"backend": "obstore", "anon": True})

``"fsspec"`` (s3fs, gcsfs, adlfs, aiohttp) is the default (:data:`DEFAULT_BACKEND`, the one
place that decides it); ``"obstore"`` needs ``pip install 'zarr-torch[obstore]'``. Local
folders and zips are read as before whatever the backend says: in place, and zipped
stores in object storage through fsspec's zip layer.

The options are the ones s3fs (gcsfs, adlfs) take, translated into obstore's config:
``key``/``secret``/``token``, ``anon``, ``endpoint_url`` and ``region_name`` (at the top
or in ``client_kwargs``), ``requester_pays``, ``config_kwargs`` timeouts and addressing
style. An option with no obstore equivalent (``profile``, ``s3_additional_kwargs``, ...)
is a ``ValueError`` naming it: silently dropping it could read with other credentials.
Unlike s3fs, obstore does not look a bucket's region up: give ``region_name`` (or
``AWS_REGION``) for a bucket outside ``us-east-1``. Credentials missing from the options
come from the environment (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``, instance metadata).

The stores of one bucket (or HTTP host) with the same options share one obstore client
per process, and with it its connection pool: a thousand episode stores cost one client,
not a thousand (each takes milliseconds to make and opens connections of its own).

Retries are :class:`~zarr_torch.storage.ReliableStore`'s alone: obstore's own are turned
off. A request answered 5xx or 429, a reset connection or a timeout is obstore's
``GenericError``, which ``is_transient`` retries; not found is ``FileNotFoundError``
(an absent chunk); denied and unauthenticated requests have types of their own and are
not retried. Error messages keep their first line, with credentials replaced; obstore's
debug dump becomes a note of the traceback.

**Fork.** obstore runs its requests on a runtime of threads started by the first request
a process makes. A process forked after that has the runtime but not its threads: every
request would hang. So each process makes its own requests (stores are per process,
dropped after fork), and a forked process whose parent had started the runtime raises
:class:`ForkedRuntimeError` at its first request instead of hanging. With obstore, start
``DataLoader`` workers with ``multiprocessing_context="spawn"`` or ``"forkserver"``; fork
works only while the parent has made no obstore request (an index loaded from a file,
nothing read in the parent). Requests made through obstore by other code of the parent
are not seen here.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import ObjectStore

from zarr_torch.process import process_state
from zarr_torch.redact import redact_uri, scrub

T = TypeVar("T")

#: the storage option choosing a store's backend; zarr_torch's own, never passed to fsspec.
BACKEND_OPTION = "backend"
FSSPEC = "fsspec"
OBSTORE = "obstore"
BACKENDS = (FSSPEC, OBSTORE)
#: the backend of a store whose options name none. The one place to change the default
#: (e.g. to ``OBSTORE if obstore_installed() else FSSPEC``): see :func:`default_backend`.
DEFAULT_BACKEND = FSSPEC

_S3, _GCS, _AZURE, _HTTP = "s3", "gcs", "azure", "http"
#: URL schemes obstore reads, by service.
SCHEMES = {
    "s3": _S3,
    "s3a": _S3,
    "gs": _GCS,
    "gcs": _GCS,
    "az": _AZURE,
    "azure": _AZURE,
    "abfs": _AZURE,
    "abfss": _AZURE,
    "http": _HTTP,
    "https": _HTTP,
}
#: obstore's own retries, off: ReliableStore is the one layer that retries.
NO_RETRIES: dict[str, Any] = {"max_retries": 0}
#: fsspec options that only tune fsspec's own caches and event loop: nothing to translate.
FSSPEC_ONLY = frozenset(
    {
        "skip_instance_cache",
        "use_listings_cache",
        "listings_expiry_time",
        "max_paths",
        "asynchronous",
        "loop",
        "default_block_size",
        "default_fill_cache",
        "default_cache_type",
        "cache_regions",
        "block_size",
        "cache_timeout",
    }
)


class ForkedRuntimeError(RuntimeError):
    """obstore's runtime was started in a process this one was forked from: its requests
    would hang."""


def obstore_installed() -> bool:
    """True when obstore can be imported (``pip install 'zarr-torch[obstore]'``)."""
    return importlib.util.find_spec("obstore") is not None


def default_backend() -> str:
    """The backend of stores whose options name none (:data:`DEFAULT_BACKEND`)."""
    return DEFAULT_BACKEND


def scheme_of(uri: str) -> str:
    """The lower-case URL scheme of ``uri`` ('' for a plain path)."""
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def backend_of(uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """``"obstore"`` or ``"fsspec"``: which backend reads the store at ``uri`` (a remote,
    unzipped URL; callers read local folders and zips themselves).

    Raises ``ValueError`` for an unknown backend, and for ``"obstore"`` asked of a URL
    it cannot read (a chained URL such as ``simplecache::s3://``, ``memory://``).
    """
    chosen = (storage_options or {}).get(BACKEND_OPTION)
    if chosen is None:
        chosen = default_backend()
    if chosen not in BACKENDS:
        raise ValueError(f"storage option {BACKEND_OPTION!r} is one of {BACKENDS}, not {chosen!r}")
    if chosen == OBSTORE and ("::" in uri.split("://", 1)[0] or scheme_of(uri) not in SCHEMES):
        raise ValueError(
            f"backend 'obstore' reads {', '.join(s + '://' for s in SCHEMES)} URLs, not "
            f"{redact_uri(uri)!r}: use backend 'fsspec' for it"
        )
    return chosen


# -- options ------------------------------------------------------------------------------


def _seconds(value: Any) -> timedelta:
    return timedelta(seconds=float(value))


def _unsupported(service: str, names: Iterable[str]) -> ValueError:
    return ValueError(
        f"storage option(s) {', '.join(sorted(names))} of {service} have no obstore equivalent: "
        f"drop them or use backend 'fsspec'"
    )


def _s3_config(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    config: dict[str, Any] = {}
    client: dict[str, Any] = {}
    client_kwargs = dict(options.pop("client_kwargs", None) or {})
    config_kwargs = dict(options.pop("config_kwargs", None) or {})
    # an endpoint or region in client_kwargs or at the top, as s3fs takes them
    for ours, theirs in (
        ("endpoint", ("endpoint_url",)),
        ("region", ("region_name",)),
        ("access_key_id", ("key", "aws_access_key_id")),
        ("secret_access_key", ("secret", "aws_secret_access_key")),
        ("session_token", ("token", "aws_session_token")),
    ):
        for name in theirs:
            for source in (options, client_kwargs):
                value = source.pop(name, None)
                if value is not None:
                    config[ours] = value
    if options.pop("anon", False):
        config["skip_signature"] = True
    if options.pop("requester_pays", False):
        config["request_payer"] = True
    if options.pop("use_ssl", True) is not True:
        raise _unsupported("s3", ["use_ssl"])
    verify = client_kwargs.pop("verify", None)
    if verify is False:
        client["allow_invalid_certificates"] = True
    elif isinstance(verify, str):
        client["root_certificate"] = verify
    # botocore's Config: the pool and retries are this module's; timeouts and addressing map
    config_kwargs.pop("max_pool_connections", None)
    config_kwargs.pop("retries", None)
    if "connect_timeout" in config_kwargs:
        client["connect_timeout"] = _seconds(config_kwargs.pop("connect_timeout"))
    if "read_timeout" in config_kwargs:
        client["read_timeout"] = _seconds(config_kwargs.pop("read_timeout"))
    if "region_name" in config_kwargs:
        config.setdefault("region", config_kwargs.pop("region_name"))
    if str(config_kwargs.get("signature_version", "")).upper() == "UNSIGNED":
        config_kwargs.pop("signature_version")
        config["skip_signature"] = True
    s3 = dict(config_kwargs.pop("s3", None) or {})
    style = s3.pop("addressing_style", None)
    if style in ("virtual", "path"):
        config["virtual_hosted_style_request"] = style == "virtual"
    elif style not in (None, "auto"):
        s3["addressing_style"] = style
    left = [f"client_kwargs.{k}" for k in client_kwargs] + [f"config_kwargs.{k}" for k in config_kwargs]
    left += [f"config_kwargs.s3.{k}" for k in s3] + list(options)
    if left:
        raise _unsupported("s3", left)
    if str(config.get("endpoint", "")).startswith("http://"):
        client["allow_http"] = True
    return config, client


def _gcs_config(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    config: dict[str, Any] = {}
    token = options.pop("token", None)
    options.pop("project", None)  # names a billing project for writes; reads need none
    if token == "anon" or options.pop("anon", False):
        config["skip_signature"] = True
    elif isinstance(token, Mapping):
        config["service_account_key"] = json.dumps(dict(token))
    elif isinstance(token, str) and token not in ("google_default", "cloud", "browser"):
        config["service_account"] = token  # the path of a service account's JSON key
    elif token not in (None, "google_default", "cloud"):
        raise _unsupported("gcs", [f"token={token!r}"])
    endpoint = options.pop("endpoint_url", None)
    if endpoint:
        config["base_url"] = endpoint
    if options:
        raise _unsupported("gcs", options)
    return config, {"allow_http": True} if str(endpoint or "").startswith("http://") else {}


def _azure_config(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    config: dict[str, Any] = {}
    for ours, theirs in (
        ("account_name", "account_name"),
        ("account_key", "account_key"),
        ("client_id", "client_id"),
        ("client_secret", "client_secret"),
        ("tenant_id", "tenant_id"),
    ):
        value = options.pop(theirs, None)
        if value is not None:
            config[ours] = value
    sas = options.pop("sas_token", None)
    if sas:
        config["sas_key"] = str(sas).lstrip("?")
    if options.pop("anon", False):
        config["skip_signature"] = True
    if options:
        raise _unsupported("azure", options)
    return config, {}


def _http_config(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    if options:
        raise _unsupported("http", options)
    return {}, {}


_CONFIGS = {_S3: _s3_config, _GCS: _gcs_config, _AZURE: _azure_config, _HTTP: _http_config}


def obstore_config(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of obstore's ``<Service>Store.from_url(uri, ...)`` for
    fsspec-style ``storage_options`` (without zarr_torch's own options): ``config`` (not
    for HTTP), ``client_options`` and ``retry_config`` (obstore's retries off).

    Raises ``ValueError`` naming the options that have no obstore equivalent.
    """
    service = SCHEMES[scheme_of(uri)]
    options = {k: v for k, v in (storage_options or {}).items() if k not in FSSPEC_ONLY}
    options.pop(BACKEND_OPTION, None)
    config, client = _CONFIGS[service](options)
    if uri.startswith("http://"):
        client["allow_http"] = True
    kwargs: dict[str, Any] = {"client_options": client, "retry_config": dict(NO_RETRIES)}
    if service != _HTTP:
        kwargs["config"] = config
    return kwargs


# -- the store ------------------------------------------------------------------------

#: the process that started obstore's runtime (made the first request), inherited by fork.
_runtime_pid: int | None = None


def claim_runtime() -> None:
    """Note that this process makes obstore requests (starting its runtime); raise
    :class:`ForkedRuntimeError` when the runtime was started in a process this one was
    forked from, whose threads did not come along: a request would hang."""
    global _runtime_pid
    pid = os.getpid()
    if _runtime_pid is None:
        _runtime_pid = pid
    elif _runtime_pid != pid:
        raise ForkedRuntimeError(
            f"obstore's runtime was started in process {_runtime_pid} before this process "
            f"({pid}) was forked from it: its threads did not come along and every request "
            "would hang. Start DataLoader workers with multiprocessing_context='spawn' or "
            "'forkserver' (or make no obstore request in the parent before forking: load a "
            "saved index instead of building one, and read nothing there)"
        )


def runtime_started_here() -> bool:
    """Whether this process has made obstore requests through zarr_torch."""
    return _runtime_pid == os.getpid()


class ObstoreStore(ObjectStore):
    """zarr's :class:`~zarr.storage.ObjectStore` for one URL, made by :func:`make_obstore`:
    the keys under ``prefix`` of an obstore client that the other stores of its bucket or
    host share; never used by a forked process whose parent started obstore's runtime
    (:func:`claim_runtime`), shown by its URL without credentials, its errors' messages
    one line without credentials."""

    def __init__(
        self,
        store: Any,
        *,
        read_only: bool = True,
        uri: str = "",
        prefix: str = "",
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(store, read_only=read_only)
        self.uri = uri
        self.prefix = prefix.strip("/")
        self._options = dict(storage_options or {})

    def with_read_only(self, read_only: bool = False) -> ObstoreStore:
        return type(self)(
            self.store, read_only=read_only, uri=self.uri, prefix=self.prefix, storage_options=self._options
        )

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and self.prefix == getattr(other, "prefix", None)

    __hash__ = None  # type: ignore[assignment]  # as zarr's: equal by client, prefix and mode

    def __str__(self) -> str:
        return redact_uri(self.uri) or "obstore"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def _cleaned(self, exc: BaseException) -> None:
        """``exc`` with its message's first line, credentials replaced; obstore's debug
        dump becomes a note (shown in tracebacks)."""
        if not exc.args or not isinstance(exc.args[0], str):
            return
        head, _, debug = exc.args[0].partition("\n\nDebug source:\n")
        try:
            exc.args = (scrub(head.strip(), self._options), *exc.args[1:])
            if debug:
                exc.add_note("obstore: " + scrub(debug.strip(), self._options))
        except (AttributeError, TypeError):  # an exception that keeps its message elsewhere
            pass

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        claim_runtime()
        try:
            return await call()
        except Exception as exc:
            self._cleaned(exc)
            raise

    async def _listing(self, keys: Callable[[], AsyncIterator[str]]) -> AsyncIterator[str]:
        claim_runtime()
        try:
            async for key in keys():
                yield key
        except Exception as exc:
            self._cleaned(exc)
            raise

    def _key(self, key: str) -> str:
        """The client's key for the store's ``key`` (or listing prefix)."""
        return f"{self.prefix}/{key}" if self.prefix and key else self.prefix or key

    def _keys(self, keys: Callable[[], AsyncIterator[str]]) -> AsyncIterator[str]:
        """The store's keys of a listing that yields the client's."""
        cut = len(self.prefix) + 1 if self.prefix else 0
        return (key[cut:] async for key in self._listing(keys))

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        return await self._call(lambda: super(ObstoreStore, self).get(self._key(key), prototype, byte_range))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        ranges = [(self._key(key), byte_range) for key, byte_range in key_ranges]
        return await self._call(lambda: super(ObstoreStore, self).get_partial_values(prototype, ranges))

    async def exists(self, key: str) -> bool:
        return await self._call(lambda: super(ObstoreStore, self).exists(self._key(key)))

    async def getsize(self, key: str) -> int:
        return await self._call(lambda: super(ObstoreStore, self).getsize(self._key(key)))

    async def getsize_prefix(self, prefix: str) -> int:
        return await self._call(lambda: super(ObstoreStore, self).getsize_prefix(self._key(prefix)))

    async def set(self, key: str, value: Buffer) -> None:
        await self._call(lambda: super(ObstoreStore, self).set(self._key(key), value))

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await self._call(lambda: super(ObstoreStore, self).set_if_not_exists(self._key(key), value))

    async def delete(self, key: str) -> None:
        await self._call(lambda: super(ObstoreStore, self).delete(self._key(key)))

    async def delete_dir(self, prefix: str) -> None:
        self._check_writable()
        prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        for key in [key async for key in self.list_prefix(prefix)]:
            await self.delete(key)

    def list(self) -> AsyncIterator[str]:
        return self.list_prefix("")

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        return self._keys(lambda: super(ObstoreStore, self).list_prefix(self._key(prefix)))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:  # zarr's are relative to the prefix
        return self._listing(lambda: super(ObstoreStore, self).list_dir(self._key(prefix)))


def make_obstore(
    uri: str, storage_options: Mapping[str, Any] | None = None, *, read_only: bool = True
) -> ObstoreStore:
    """A zarr store reading ``uri`` (``s3://``, ``gs://``, ``az://``, ``abfs://``,
    ``http(s)://``) through obstore, configured from fsspec-style ``storage_options``
    (see :func:`obstore_config`), obstore's own retries off.

    Making it sends no request (obstore's runtime starts at the first one). Raises
    ``ImportError`` when obstore is not installed, :class:`ForkedRuntimeError` in a forked
    process whose parent started obstore's runtime, ``ValueError`` for options obstore
    cannot take.
    """
    if not obstore_installed():
        raise ImportError(
            f"storage option {BACKEND_OPTION!r}: 'obstore' needs obstore: pip install 'zarr-torch[obstore]'"
        )
    if _runtime_pid not in (None, os.getpid()):
        claim_runtime()  # raises: say so before anything is made
    from obstore import store as obstores

    kwargs = obstore_config(uri, storage_options)
    parts = urlsplit(uri.rstrip("/"))
    root = f"{parts.scheme}://{parts.netloc}"
    clients = process_state().clients
    key = (root, json.dumps(kwargs, sort_keys=True, default=repr))
    if key not in clients:  # a client costs ms to make and holds its own connection pool
        service = SCHEMES[scheme_of(uri)]
        cls = {_S3: obstores.S3Store, _GCS: obstores.GCSStore, _AZURE: obstores.AzureStore}.get(
            service, obstores.HTTPStore
        )
        try:
            clients[key] = cls.from_url(root, **kwargs)
        except Exception as exc:  # a config obstore refuses: its message may quote values
            raise ValueError(
                f"cannot make an obstore store for {redact_uri(uri)!r}: {type(exc).__name__}: "
                f"{scrub(str(exc).split(chr(10))[0], storage_options)}"
            ) from None
    return ObstoreStore(
        clients[key], read_only=read_only, uri=uri, prefix=parts.path, storage_options=storage_options
    )
