"""The store wrapper every read goes through: retries and strict missing chunks.

Object stores fail in passing (503 SlowDown, 500 InternalError, reset connections,
timeouts). One layer retries: this one, with capped exponential backoff and full jitter,
and a deadline that bounds the whole read, attempts included. The S3 stores zarr_torch
makes turn s3fs's and botocore's own retries off unless the storage options set them.
Failures are recognised by exception type, error code and HTTP status, never by
message text.

Zarr returns the fill value for a chunk that does not exist, so a half-uploaded store
reads as black frames. Inside ``read_options(strict=True)``, a missing chunk is an error.

A :class:`HostLimit` bounds the requests in flight to one host: a batch sends all its
chunk requests at once, which S3 takes but a small server does not. Each attempt holds
one of the host's slots while it is in flight (never while it waits to retry); the
storage option ``max_requests_per_host`` sets the limit (default 64 for every store
reached over a network, see :mod:`zarr_torch.stores`). ``python -m http.server`` accepts
5 pending connections (its listen backlog) and each connection beyond them stalls a
second or more (the client's retried SYN): give it ``{"max_requests_per_host": 4}``.
The limit holds in each process (and event loop): ``DataLoader`` workers have one each.

    store = ReliableStore(FsspecStore.from_url("s3://bucket/ep.zarr"), RetryPolicy(deadline=30))
    store = ReliableStore(FsspecStore.from_url("http://host:8000/ep.zarr"),
                          limit=HostLimit("http://host:8000", 4))
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from zarr_torch.process import process_state

T = TypeVar("T")

#: S3 error codes that mean "try again later".
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "503",
        "500",
    }
)
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
TRANSIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT})
#: the keys zarr reads to find metadata; absent ones are normal, never "missing chunks".
METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})

_strict: ContextVar[bool] = ContextVar("zarr_torch_strict_chunks", default=False)
_policy: ContextVar[RetryPolicy | None] = ContextVar("zarr_torch_retry_policy", default=None)


class MissingChunkError(FileNotFoundError):
    """A chunk that the array's shape says exists is absent from the store."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep retrying a transient failure.

    Attempt ``n`` waits a random time up to ``min(max_delay, base_delay * 2**n)``; no
    attempt starts after ``deadline`` seconds, and at most ``max_attempts`` are made.
    """

    max_attempts: int = 10
    base_delay: float = 0.05
    max_delay: float = 2.0
    deadline: float = 60.0

    def delays(self) -> Iterator[float]:
        """The waits between attempts (full jitter)."""
        for n in range(self.max_attempts - 1):
            yield random.uniform(0, min(self.max_delay, self.base_delay * 2**n))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a failure worth retrying.

    Looks at S3 error codes and HTTP status codes on botocore errors, connection and
    timeout exception types of the HTTP stack, the errno of connection resets, and
    obstore's ``GenericError`` (see :func:`_is_obstore_generic`).
    """
    for err in _chain(exc):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in TRANSIENT_CODES or status in TRANSIENT_STATUS:
                return True
        if isinstance(err, ConnectionError | TimeoutError | asyncio.TimeoutError):
            return True
        if isinstance(err, OSError) and err.errno in TRANSIENT_ERRNOS:
            return True
        if type(err).__module__.split(".")[0] in ("aiohttp", "botocore") and any(
            c.__name__
            in (
                "ClientConnectionError",
                "ClientPayloadError",
                "HTTPClientError",
                "ServerTimeoutError",
                "ConnectionError",
            )
            for c in type(err).__mro__
        ):
            return True
        if _is_obstore_generic(err):
            return True
    return False


def _is_obstore_generic(err: BaseException) -> bool:
    """obstore's ``GenericError``: what it raises (with its own retries off) for a request
    answered 5xx or 429, a reset or refused connection and a timeout. It carries no status:
    the failures that are not worth retrying have types of their own (not found is
    ``FileNotFoundError``; ``PermissionDeniedError``, ``UnauthenticatedError``, ...). A
    4xx it has no type for (400, 416) is a ``GenericError`` too, retried until the policy
    gives up."""
    return type(err).__module__.split(".")[0] == "obstore" and any(
        c.__name__ == "GenericError" for c in type(err).__mro__
    )


async def retrying(call: Callable[[], Awaitable[T]], policy: RetryPolicy) -> T:
    """Await ``call()``, again after each transient failure, as ``policy`` allows.

    The deadline bounds the whole call, attempts included: an endpoint that accepts a
    connection and never answers is a ``TimeoutError`` after ``policy.deadline`` seconds.
    """
    start = time.monotonic()
    delays = policy.delays()
    while True:
        limit = asyncio.timeout(max(0.0, policy.deadline - (time.monotonic() - start)))
        try:
            async with limit:
                return await call()
        except Exception as exc:
            if limit.expired():
                raise TimeoutError(f"no answer within the retry deadline of {policy.deadline:g} s") from exc
            delay = next(delays, None)
            if not is_transient(exc) or delay is None or time.monotonic() - start + delay > policy.deadline:
                raise
            await asyncio.sleep(delay)


@contextlib.contextmanager
def read_options(*, strict: bool = False, retry: RetryPolicy | None = None) -> Iterator[None]:
    """Within this block (and the tasks it starts), reads follow these options.

    ``strict``: a missing chunk raises :class:`MissingChunkError`. ``retry``: the retry
    policy, instead of each store's own.

        with read_options(strict=True):
            await arr.getitem(0)   # MissingChunkError if chunk 0 was never written
    """
    tokens = _strict.set(strict), _policy.set(retry)
    try:
        yield
    finally:
        _strict.reset(tokens[0])
        _policy.reset(tokens[1])


def strict_reads() -> bool:
    """Whether the reads of the running context are strict (see :func:`read_options`)."""
    return _strict.get()


def _is_chunk_key(key: str) -> bool:
    return key.rsplit("/", 1)[-1] not in METADATA_NAMES


@dataclass(frozen=True)
class HostLimit:
    """At most ``requests`` requests in flight to ``host`` at once, in each process and
    event loop, from every store given this limit.

    ``host`` names the server, ``scheme://host:port``, without credentials (see
    :func:`zarr_torch.stores.request_host`). Stores of one host with different limits
    do not share slots.
    """

    host: str
    requests: int

    def __post_init__(self) -> None:
        if isinstance(self.requests, bool) or not isinstance(self.requests, int) or self.requests < 1:
            raise ValueError(
                f"max_requests_per_host is a whole number of requests, at least 1, not {self.requests!r}"
            )

    def slots(self) -> asyncio.Semaphore:
        """The semaphore of this host and limit in this process and the running event loop."""
        return process_state().request_slots(self.host, self.requests)


class ReliableStore(WrapperStore[Store]):
    """A read-only view of a store whose reads retry transient failures.

    Under ``read_options(strict=True)``, a chunk key that is absent raises
    :class:`MissingChunkError` instead of reading as the fill value. With a ``limit``,
    every read request (get, ranges, exists, sizes, listings) holds one of the host's
    slots while it is in flight.
    """

    def __init__(
        self, store: Store, policy: RetryPolicy | None = None, limit: HostLimit | None = None
    ) -> None:
        super().__init__(store)
        self.policy = policy or RetryPolicy()
        self.limit = limit

    def _with_store(self, store: Store) -> ReliableStore:
        return type(self)(store, self.policy, self.limit)

    async def _request(self, call: Callable[[], Awaitable[T]]) -> T:
        """One attempt, holding a slot of the host (when limited) until it is answered."""
        if self.limit is None:
            return await call()
        async with self.limit.slots():
            return await call()

    def _retry(self, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return retrying(lambda: self._request(call), _policy.get() or self.policy)

    def _check(self, key: str, value: Buffer | None) -> Buffer | None:
        if value is None and _strict.get() and _is_chunk_key(key):
            raise MissingChunkError(f"chunk {key!r} is missing")
        return value

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        value = await self._retry(lambda: self._store.get(key, prototype, byte_range))
        return self._check(key, value)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        if self.limit is None:
            values = await self._retry(lambda: self._store.get_partial_values(prototype, key_ranges))
        else:  # one request per range, each in a slot (the wrapped store would send all at once)
            values = await asyncio.gather(
                *(self._retry(functools.partial(self._store.get, k, prototype, r)) for k, r in key_ranges)
            )
        return [self._check(k, v) for (k, _), v in zip(key_ranges, values, strict=True)]

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:  # zarr's own default, through this store's get
            yield key, await self.get(key, prototype, byte_range)

    if hasattr(Store, "get_ranges"):  # zarr >= 3.2: coalesced ranges fetched through get, above

        def get_ranges(self, key: str, byte_ranges: Any, *, prototype: BufferPrototype, **kwargs: Any) -> Any:
            options = {k: v for k, v in kwargs.items() if v is not None}
            return Store.get_ranges(self, key, byte_ranges, prototype=prototype, **options)  # type: ignore[attr-defined]

    async def exists(self, key: str) -> bool:
        return await self._retry(lambda: self._store.exists(key))

    async def getsize(self, key: str) -> int:
        return await self._retry(lambda: self._store.getsize(key))

    def list(self) -> AsyncIterator[str]:
        return self._listing(self._store.list)

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        return self._listing(lambda: self._store.list_prefix(prefix))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        return self._listing(lambda: self._store.list_dir(prefix))

    async def _listing(self, keys: Callable[[], AsyncIterator[str]]) -> AsyncIterator[str]:
        """The keys a listing gives, listed whole within one slot when limited (so that
        whoever reads them may make requests of the host meanwhile)."""
        if self.limit is None:
            async for key in keys():
                yield key
            return
        async with self.limit.slots():
            listed = [key async for key in keys()]
        for key in listed:
            yield key

    def __repr__(self) -> str:
        return f"ReliableStore({self._store!r})"
