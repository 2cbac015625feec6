"""Redis and Redis Cluster L2 through redis-py (hiredis parses replies when it is installed).

URLs: ``redis://[:password@]host:port/db``, ``rediss://...`` (TLS), and
``redis+cluster://[:password@]host:port`` (any node of the cluster; the client finds the rest).
Parameters: ``prefix`` (key prefix, default ``lmkv:``), ``ttl`` (seconds, 0 = none; let the
server's ``maxmemory-policy allkeys-lru`` evict otherwise), ``socket_timeout`` (default 5 s),
``connect_timeout`` (default 2 s), ``max_connections`` (default 2 x ``in_flight``), plus the
common ones of :class:`~lmcache_core.storage.adapter.L2Adapter`.

Each object is one Redis string: header + payload (:mod:`~lmcache_core.storage.object_format`).
A batch is one pipeline (no transaction): ``SET`` / ``EXISTS`` / ``GET`` / ``UNLINK`` per key,
one round trip for the whole batch (per node for a cluster). redis-py's own retries are turned
off: a refused or timed-out connection marks the tier unavailable at once, and the adapter's
back-off decides when to try again. An error reply for one key (for example ``OOM``, OutOfMemoryError, when the
server is full and evicts nothing) fails that key only.

Lookups ask ``TYPE`` (one reply per key, like ``EXISTS``), so a value of another type under a key
(a LIST, a HASH) is never a hit: with a non-empty ``prefix`` (the project's own namespace) it is
deleted, otherwise remembered as a bad key. A Redis Cluster that cannot be reached when the tier
opens starts the tier unavailable; it connects when the cluster answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from lmcache_core.storage.adapter import (
    L2Adapter,
    LoadRequest,
    OpResult,
    Status,
    StoreItem,
    TierUnavailable,
)
from lmcache_core.storage.object_format import CorruptObject, encode_object, split_object
from lmcache_core.storage.url import L2URL


def _reason(reply: BaseException) -> str:
    """redis-py's exception name for an error reply (``OutOfMemoryError`` for ``OOM``, ...)."""
    return type(reply).__name__


class RedisAdapter(L2Adapter):
    """L2 tier in one Redis server (``redis://`` or ``rediss://``)."""

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")

    def __init__(self, url: L2URL) -> None:
        super().__init__(url)
        import redis

        self._redis = redis
        if not url.hostname:
            raise ValueError(f"url: expected {url.scheme}://host:port/db (a host), given {url.redacted}")
        db = url.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"url {url.redacted}: db: expected a database number like /0, given {db!r}")
        self.prefix = url.text_param("prefix", "lmkv:")
        self.ttl = url.int_param("ttl", 0)
        self.socket_timeout = url.float_param("socket_timeout", 5.0, positive=True)
        self.connect_timeout = url.float_param("connect_timeout", 2.0, positive=True)
        self.max_connections = url.int_param("max_connections", 2 * self.in_flight, minimum=1)
        self._down_errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            ConnectionError,
            TimeoutError,
        )
        self.client: Any = None
        try:
            self.client = self._connect(url)
        except TierUnavailable as e:
            self._mark_down(e)  # one log line and unavailable_events; _ping connects later

    def _no_retry(self) -> Any:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return Retry(NoBackoff(), 0)

    def _connect(self, url: L2URL) -> Any:
        return self._redis.Redis.from_url(
            url.base,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.connect_timeout,
            max_connections=self.max_connections,
            retry=self._no_retry(),
        )

    def _name(self, key: str) -> str:
        return self.prefix + key

    def _pipeline(self, commands: Sequence[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        if self.client is None:
            raise TierUnavailable("not connected")
        try:
            pipe = self.client.pipeline(transaction=False)
            for method, args, kwargs in commands:
                getattr(pipe, method)(*args, **kwargs)
            return list(pipe.execute(raise_on_error=False))
        except self._down_errors as e:
            raise TierUnavailable(f"{type(e).__name__}: {e}") from e

    def _ping(self) -> None:
        if self.client is None:
            self.client = self._connect(self.url)
        try:
            self.client.ping()
        except self._down_errors as e:
            raise TierUnavailable(f"{type(e).__name__}: {e}") from e

    def _check_replies(self, replies: list[Any]) -> None:
        """A connection error inside a reply (cluster node gone) takes the tier down."""
        for r in replies:
            if isinstance(r, self._down_errors):
                raise TierUnavailable(f"{type(r).__name__}: {r}")

    def _store(self, items: Sequence[StoreItem]) -> list[OpResult]:
        kwargs = {"ex": self.ttl} if self.ttl else {}
        commands = [
            ("set", (self._name(i.key), encode_object(i.key, i.meta, i.payload, self.algorithm)), kwargs)
            for i in items
        ]
        replies = self._pipeline(commands)
        self._check_replies(replies)
        return [
            OpResult(Status.FAILED, _reason(r)) if isinstance(r, BaseException) else OpResult(Status.OK)
            for r in replies
        ]

    def _lookup(self, keys: Sequence[str]) -> list[bool]:
        replies = self._pipeline([("type", (self._name(k),), {}) for k in keys])
        self._check_replies(replies)
        out, wrong = [], []
        for k, r in zip(keys, replies, strict=True):
            kind = r.decode() if isinstance(r, bytes) else r
            if kind == "string":
                out.append(True)
                continue
            if isinstance(kind, str) and kind != "none":
                wrong.append(k)
            out.append(False)
        self._wrong_type(wrong)
        return out

    def _wrong_type(self, keys: list[str]) -> None:
        """Values of another type (LIST, HASH, ...) under ``keys``: delete them in our own
        namespace (a non-empty prefix), else remember them as bad keys."""
        if not keys:
            return
        self.metrics.inc("wrong_type", len(keys))
        if self.prefix:
            self._pipeline([("unlink", (self._name(k),), {}) for k in keys])
            self.log.warning(
                "wrong_type", f"{len(keys)} value(s) of another type under {self.prefix}*: deleted"
            )
        else:
            for k in keys:
                self.remember_bad(k, "wrong_type")

    def _load(self, requests: Sequence[LoadRequest]) -> list[OpResult]:
        replies = self._pipeline([("get", (self._name(r.key),), {}) for r in requests])
        self._check_replies(replies)
        out: list[OpResult] = []
        corrupt: list[str] = []
        wrong: list[str] = []
        for req, data in zip(requests, replies, strict=True):
            if isinstance(data, self._redis.exceptions.ResponseError) and str(data).startswith("WRONGTYPE"):
                wrong.append(req.key)
                out.append(OpResult(Status.CORRUPT, "wrong_type"))
                continue
            if isinstance(data, BaseException):
                out.append(OpResult(Status.FAILED, _reason(data)))
                continue
            if data is None:
                out.append(OpResult(Status.MISS))
                continue
            try:
                header, payload = split_object(data, expect_key=req.key)
            except CorruptObject as e:
                if not e.removable:  # a foreign or newer object: not ours to judge
                    out.append(OpResult(Status.UNVERIFIABLE, e.reason))
                    continue
                corrupt.append(req.key)
                out.append(OpResult(Status.CORRUPT, e.reason))
                continue
            buf = req.alloc(header)
            if buf is None:
                out.append(OpResult(Status.REJECTED, "declined", header))
                continue
            memoryview(buf).cast("B")[:] = payload
            out.append(OpResult(Status.HIT, "", header, buf))
        if corrupt:  # verified bad: remove so nobody pays for it again
            self._pipeline([("unlink", (self._name(k),), {}) for k in corrupt])
        self._wrong_type(wrong)
        return out

    def _delete(self, keys: Sequence[str]) -> list[bool]:
        replies = self._pipeline([("unlink", (self._name(k),), {}) for k in keys])
        self._check_replies(replies)
        return [not isinstance(r, BaseException) and bool(r) for r in replies]

    def _close(self) -> None:
        if self.client is None:
            return
        try:
            self.client.close()
        except Exception:  # closing a client of a dead server: nothing left to release
            pass


class RedisClusterAdapter(RedisAdapter):
    """L2 tier in a Redis Cluster (``redis+cluster://host:port``); batches are split per node."""

    schemes = ("redis+cluster",)

    def _connect(self, url: L2URL) -> Any:
        from redis.cluster import RedisCluster

        if url.hostname is None:
            raise ValueError(f"url: expected redis+cluster://host:port, given {url.redacted}")
        extra = (self._redis.exceptions.ClusterDownError, self._redis.exceptions.RedisClusterException)
        self._down_errors = (*self._down_errors, *(e for e in extra if e not in self._down_errors))
        try:
            return RedisCluster(
                host=url.hostname,
                port=url.port or 6379,
                password=url.password,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.connect_timeout,
                max_connections=self.max_connections,
                retry=self._no_retry(),
            )
        except self._down_errors as e:
            raise TierUnavailable(f"cluster at {url.redacted} unreachable: {e}") from e
