"""Server mode of the vLLM worker: the cache lives in ``lmcache-core serve``, not in the worker.

:class:`ServerEngine` stands in for the worker's :class:`~lmcache_core.cache_engine.CacheEngine`
(the calls :class:`~.worker.WorkerSide` and the runner make: ``register_kv_caches``, ``lookup``,
``store``, ``retrieve``, ``poll_stores``, ``wait_stores``, ``stores_in_flight``, ``flush``,
``close``), over a :class:`~lmcache_core.server.client.CacheClient`:

* register: the layout of the worker's KV is detected and the backend for its device chosen
  here, as in process; the rank registers with the server under its model, rank and chunk
  formats (so every engine of the same model and layout shares the same keys);
* store: ``prepare_store`` leases shared-memory slots for the chunks the server lacks; the local
  backend gathers each chunk straight into its slot (``[num_kv, num_layers, chunk_tokens,
  hidden]`` per layer group, back to back); ``commit_store`` publishes them;
* retrieve: ``prepare_retrieve`` leases the cached prefix's slots; the backend scatters from
  them into the engine's pages; ``commit_retrieve`` confirms the slots were not reused meanwhile
  (if it fails, the load counts as nothing and vLLM recomputes those blocks);
* lookup: the server's answer (L1 and L2 tokens of the cached prefix).

The copies are synchronous on the host (CPU backends); a GPU backend synchronizes its stream
before committing. Server unreachable: the client raises
:class:`~lmcache_core.server.client.ServerUnavailable`, each call here answers "nothing"
(a miss, no store), the engine keeps serving by recomputing, and the client reconnects with
back-off on a later call (registering again). After a reconnect the server's segments may be
new files: the mapped ones are forgotten.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmcache_core.cache_engine import CacheResult, RegisteredKV, chunk_views
from lmcache_core.config import CacheEngineConfig
from lmcache_core.layout import KVCacheSpec
from lmcache_core.layout_registry import LayoutHints, detect_layout, flatten_kv_caches

if TYPE_CHECKING:
    import torch

    from lmcache_core.backend import Backend
    from lmcache_core.server.client import CacheClient
    from lmcache_core.server.protocol import Slot

logger = logging.getLogger(__name__)

#: Seconds between two warnings about an unreachable server.
WARN_EVERY_S = 30.0
#: Reconnection: back-off between attempts (seconds), doubling from the least to the most. An
#: attempt against a server that is down waits the client's ``timeout`` for the hello's reply.
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 8.0


class ServerEngine(RegisteredKV):
    """The worker's cache calls served by a cache server (see the module docstring)."""

    def __init__(self, config: CacheEngineConfig, client: CacheClient, engine_name: str) -> None:
        self.config = config
        self.client = client
        self.engine_name = engine_name
        self._backend: Backend | None = None
        self._spec: KVCacheSpec | None = None
        self._kv: list[torch.Tensor] = []
        self._segments: set[str] = set()
        self._connects = -1
        self._last_warning = 0.0
        self.unavailable = 0  # calls answered "nothing" because the server was unreachable
        self._next_try = 0.0
        self._backoff = BACKOFF_MIN_S
        self._registered = False  # the client remembers the registration once it went through

    # ---- set-up ---------------------------------------------------------------------------------

    def register_kv_caches(
        self, kv_caches: Sequence[torch.Tensor], hints: LayoutHints | None = None
    ) -> KVCacheSpec:
        """Detect the layout, choose the backend, and register this rank with the server (if it
        is unreachable now, the first call that reaches it registers first)."""
        self._kv = list(flatten_kv_caches(list(kv_caches)))
        self._spec = KVCacheSpec((detect_layout(list(kv_caches), hints or LayoutHints()),))
        self._choose_backend([self._kv], self.config.backend)
        self._registered = False
        self._guard("register", lambda: None, None)  # registers when the server is reachable
        return self._spec

    def _register(self) -> None:
        """Register this rank (the client sends it again by itself on every reconnect). A server
        whose ``chunk_size`` differs from this engine's is refused (:class:`ServerError`
        ``chunk_size``): the scheduler plans loads and stores in this engine's chunks."""
        from lmcache_core.server.client import ServerError

        hello = self.client.hello
        if hello is not None and hello.chunk_size and hello.chunk_size != self.config.chunk_size:
            raise ServerError(
                "chunk_size",
                f"the server's chunk_size is {hello.chunk_size}, this engine's {self.config.chunk_size};"
                " set the connector's chunk_size to the server's",
            )
        self.client.register(
            self.engine_name,
            rank=self.config.rank,
            world_size=self.config.world_size,
            model_id=self.config.model_id,
            formats=[g.chunk_format for g in self.spec.groups],
        )
        self._registered = True

    def close(self) -> None:
        self.client.close()

    # ---- failure handling -------------------------------------------------------------------------

    def _reachable(self) -> bool:
        """Connected, or connected now (one try once the back-off has passed: hello, register
        again), else back-off doubling to ``BACKOFF_MAX_S``. False at once while backing off."""
        from lmcache_core.server.client import ServerError, ServerUnavailable

        if self.client.connected:
            return True
        now = time.monotonic()
        if now < self._next_try:
            return False
        try:
            self.client.connect()
            self._backoff = BACKOFF_MIN_S
            return True
        except ServerUnavailable:
            pass
        except ServerError as e:  # e.g. a protocol version the server does not speak
            logger.warning("lmcache-core server %s refused the connection: %s", self.client.endpoint, e)
        self._next_try = time.monotonic() + self._backoff
        self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
        return False

    def _guard(self, what: str, call: Any, default: Any) -> Any:
        """``call()``, or ``default`` when the server is unreachable or refuses (logged, rate-limited)."""
        from lmcache_core.server.client import ServerError, ServerUnavailable

        try:
            if not self._reachable():
                raise ServerUnavailable(f"{self.client.endpoint}: unreachable (backing off)")
            if not self._registered and self._spec is not None:
                self._register()
            return call()
        except (ServerUnavailable, ServerError) as e:
            self.unavailable += 1
            now = time.monotonic()
            if now - self._last_warning > WARN_EVERY_S:
                self._last_warning = now
                logger.warning(
                    "lmcache-core server %s: %s failed (%s); recomputing", self.client.endpoint, what, e
                )
            return default

    def _fresh_segments(self) -> None:
        """After a reconnect the server may have new segment files: forget the mapped ones."""
        if self.client.connects != self._connects:
            for name in self._segments:
                self.client.unmap(name)
            self._segments.clear()
            self._connects = self.client.connects

    def _chunks(self, slot: Slot) -> list[torch.Tensor]:
        """Each layer group's chunk inside ``slot``: typed ``[num_kv, num_layers, tokens, hidden]``
        when its sections are alike, else its uint8 bytes."""
        buffer = self.client.view(slot)
        self._segments.add(slot.segment)
        n = slot.end - slot.start
        need = self.spec.chunk_nbytes(n)
        if need > buffer.numel():
            raise ValueError(f"slot: {buffer.numel()} bytes hold no chunk of {n} tokens ({need} bytes)")
        return chunk_views(self.spec, buffer, n)

    def _salt(self, cache_salt: str | None) -> str | None:
        return cache_salt if cache_salt is not None else self.config.cache_salt

    # ---- the three operations -----------------------------------------------------------------------

    def lookup(self, tokens: Any, *, cache_salt: str | None = None) -> CacheResult:
        t0 = time.perf_counter()
        reply = self._guard("lookup", lambda: self.client.lookup(tokens, self._salt(cache_salt)), None)
        if reply is None:
            return CacheResult(seconds=time.perf_counter() - t0)
        return CacheResult(
            tokens=reply.tokens,
            nbytes=reply.nbytes,
            chunks=reply.chunks,
            l2_tokens=reply.l2_tokens,
            l2_bytes=reply.l2_bytes,
            l2_chunks=reply.l2_chunks,
            seconds=time.perf_counter() - t0,
        )

    def store(
        self,
        tokens: Any,
        kv_caches: Sequence[torch.Tensor],
        slot_mapping: torch.Tensor,
        *,
        cache_salt: str | None = None,
        owner: Any = None,
    ) -> CacheResult:
        """Gather the chunks the server lacks into leased slots and publish them."""
        t0 = time.perf_counter()
        lease = self._guard(
            "prepare_store", lambda: self.client.prepare_store(tokens, self._salt(cache_salt)), None
        )
        if lease is None or not lease.slots:
            if lease is not None and lease.lease:
                self._guard("release", lambda: self.client.release(lease.lease), None)
            return CacheResult(seconds=time.perf_counter() - t0)
        self._fresh_segments()
        layout = self.spec.groups[0]
        filled = 0
        try:
            for slot in lease.slots:
                (out,) = self._chunks(slot)
                self.backend.gather(layout, self._kv, slot_mapping[slot.start : slot.end], out, 0)
                filled += 1
            self._sync()
        except Exception:
            logger.exception("lmcache-core server store: gather failed after %d chunks", filled)
        reply = self._guard("commit_store", lambda: self.client.commit_store(lease.lease, filled), None)
        if reply is None:
            return CacheResult(seconds=time.perf_counter() - t0)
        return CacheResult(
            tokens=reply.tokens, nbytes=reply.nbytes, chunks=reply.chunks, seconds=time.perf_counter() - t0
        )

    def retrieve(
        self,
        tokens: Any,
        kv_caches: Sequence[torch.Tensor],
        slot_mapping: torch.Tensor,
        *,
        skip_leading_tokens: int = 0,
        cache_salt: str | None = None,
    ) -> CacheResult:
        """Scatter the cached prefix (from ``skip_leading_tokens``) from leased slots into the pages."""
        t0 = time.perf_counter()
        skip = skip_leading_tokens
        lease = self._guard(
            "prepare_retrieve",
            lambda: self.client.prepare_retrieve(tokens, self._salt(cache_salt), skip),
            None,
        )
        if lease is None or not lease.slots:
            if lease is not None and lease.lease:
                self._guard("release", lambda: self.client.release(lease.lease), None)
            return CacheResult(seconds=time.perf_counter() - t0)
        self._fresh_segments()
        layout = self.spec.groups[0]
        end = skip
        nbytes = chunks = l2_tokens = l2_bytes = l2_chunks = 0
        try:
            for slot in lease.slots:
                if slot.start > end or slot.end <= end:
                    break  # not contiguous with what is loaded: stop at the gap
                (src,) = self._chunks(slot)
                self.backend.scatter(
                    layout, self._kv, slot_mapping[slot.start : slot.end], src, max(0, skip - slot.start)
                )
                end = slot.end
                nbytes += slot.nbytes
                chunks += 1
                if slot.l2:
                    l2_tokens += slot.end - slot.start
                    l2_bytes += slot.nbytes
                    l2_chunks += 1
            self._sync()
        except Exception:
            logger.exception("lmcache-core server retrieve: scatter failed at token %d", end)
        committed = self._guard("commit_retrieve", lambda: self.client.commit_retrieve(lease.lease), None)
        if committed is None:  # the slots may have been reused while read: the KV is not trusted
            return CacheResult(seconds=time.perf_counter() - t0)
        return CacheResult(
            tokens=end - skip,
            nbytes=nbytes,
            chunks=chunks,
            l2_tokens=l2_tokens,
            l2_bytes=l2_bytes,
            l2_chunks=l2_chunks,
            seconds=time.perf_counter() - t0,
        )

    def _sync(self) -> None:
        """Wait for the backend's copies on the KV's device (a no-op wait on CPU backends)."""
        backend = self.backend
        if self._kv and self._kv[0].device.type != "cpu":
            backend.synchronize(backend.record_event(backend.current_stream(self._kv[0].device)))

    # ---- what the worker polls (copies here are synchronous) ----------------------------------------

    def poll_stores(self) -> int:
        return 0

    def stores_in_flight(self, owner: Any = None) -> int:
        return 0

    def wait_stores(self) -> int:
        """Nothing to wait for: every store was committed before :meth:`store` returned."""
        return 0

    def flush(self, timeout: float | None = None) -> bool:
        """True: this engine holds nothing queued (L2 write-behind is the server's, and the
        server drains it on SIGTERM)."""
        return True
