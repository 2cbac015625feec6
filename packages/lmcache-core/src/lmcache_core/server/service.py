"""The cache behind the server: sessions, leases, per-salt quotas, L1 in shared memory, L2 tiers.

:class:`CacheService` answers decoded requests (:mod:`lmcache_core.server.protocol`) from peers
(a peer is a connection's ZMQ routing id); it knows nothing of sockets, so the transport stays a
thin loop (:mod:`lmcache_core.server.server`).

Keys are computed here, as :class:`~lmcache_core.cache_engine.CacheEngine` computes them: the
chained prefix hash of the tokens with the salt, scoped by the registration (model id, chunk
formats, world size, rank) and the salt's tag. Engines that register the same scope share chunks;
different salts never do.

Leases: ``prepare_store`` reserves L1 buffers and ``prepare_retrieve`` pins entries, each under a
lease of the peer's session. A session silent for ``lease_seconds`` is dropped with its leases:
retrieve pins are released at once (a late reader learns it from ``commit_retrieve``'s
``lease_expired``), store buffers after a further ``lease_seconds`` of quarantine (so a stalled
writer cannot scribble over a buffer already handed to someone else). Thread-safe: the transport
thread calls :meth:`handle` and :meth:`sweep`, the HTTP thread :meth:`status`.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmcache_core.keys import CacheKey, KeyScope, salt_tag
from lmcache_core.layout import ChunkFormat, ChunkSection
from lmcache_core.memory.l1_pool import L1Entry, L1Pool
from lmcache_core.server import protocol as p
from lmcache_core.server.gpu_path import GpuServices, IpcMapping, load_gpu_backend, slot_tensors
from lmcache_core.server.shm import ShmArena, remove_stale
from lmcache_core.tokens import TokenChunker

if TYPE_CHECKING:
    import torch

    from lmcache_core.server.config import ServerConfig
    from lmcache_core.storage.tiers import ChunkRef, L2Tiers

logger = logging.getLogger(__name__)


class RequestError(Exception):
    """A request the service refuses; becomes an :class:`~lmcache_core.server.protocol.Error`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Session:
    """One connection: who it registered as, when it was last heard from, its leases."""

    id: int
    peer: bytes
    client: str
    last_seen: float
    engine: str = ""
    model_id: str = ""
    rank: int = 0
    world_size: int = 1
    formats: tuple[ChunkFormat, ...] = ()
    spec_tag: str = ""
    leases: set[int] = field(default_factory=set)
    scopes: dict[str | None, KeyScope] = field(default_factory=dict)
    ipc: IpcMapping | None = None  # the worker's KV mapped through IPC (GPU hosts)

    @property
    def registered(self) -> bool:
        return bool(self.spec_tag)


@dataclass
class _Item:
    key: CacheKey
    num_tokens: int
    start: int
    buffer: torch.Tensor
    entry: L1Entry | None = None  # retrieve: the pinned entry


@dataclass
class Lease:
    id: int
    session: int
    kind: str  # "store" or "retrieve"
    salt: str  # tag
    spec_tag: str
    formats: tuple[ChunkFormat, ...]
    items: list[_Item]
    skip: int = 0

    @property
    def nbytes(self) -> int:
        return sum(int(i.buffer.numel()) for i in self.items)


@dataclass
class Counters:
    """Since start; tokens are prompt tokens, bytes chunk bytes."""

    lookups: int = 0
    lookup_tokens: int = 0
    lookup_hit_tokens: int = 0
    lookup_l2_hit_tokens: int = 0
    stored_chunks: int = 0
    stored_bytes: int = 0
    store_present_chunks: int = 0
    store_full: int = 0
    retrieved_chunks: int = 0
    retrieved_bytes: int = 0
    retrieved_l2_chunks: int = 0
    leases_expired: int = 0
    sessions_expired: int = 0
    ipc_registrations: int = 0
    ipc_closed: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def _formats(descs: list[p.FormatDesc]) -> tuple[ChunkFormat, ...]:
    out = []
    for i, d in enumerate(descs):
        try:
            out.append(
                ChunkFormat(
                    d.num_layers,
                    tuple(ChunkSection(s.name, s.hidden, s.dtype, s.element_size) for s in d.sections),
                )
            )
        except (ValueError, TypeError) as e:
            raise RequestError("bad_request", f"formats[{i}]: {e}") from None
    return tuple(out)


class CacheService:
    """The server's cache (see the module docstring). ``close`` drains write-behind and frees
    the shared memory. ``gpu``: the GPU backend serving ``register_ipc`` (default: loaded from
    ``config.gpu_backend``; None when that is empty: IPC requests get ``no_gpu``)."""

    def __init__(self, config: ServerConfig, name: str = "", gpu: GpuServices | None = None) -> None:
        self.config = config
        self.name = name or f"lmcache-core/{os.getpid()}"
        self.started = time.time()
        self.gpu: GpuServices | None = gpu
        if gpu is None and config.gpu_backend:  # before any segment exists: a bad setting leaks none
            self.gpu = load_gpu_backend(config.gpu_backend)
        self._lock = threading.RLock()
        self.stale_removed = remove_stale(config.shm_dir)
        self.arena = ShmArena(
            config.shm_dir,
            config.effective_segment_bytes,
            config.l1_bytes + 2 * config.effective_segment_bytes,  # room for fragmentation
        )
        # the whole budget is made (and committed) now: growing later would stall every client
        # behind the zeroing of a new segment
        for _ in range(-(-config.l1_bytes // self.arena.segment_bytes)):
            self.arena.add_segment()
        self._acct = threading.Lock()  # guards _salt_bytes (L1's listener runs on L2 threads too)
        self._salt_bytes: dict[str, int] = {}  # committed L1 bytes per salt tag
        self._leased_bytes: dict[str, int] = {}  # reserved by store leases per salt tag
        self.l1 = L1Pool(config.l1_bytes, self.arena.allocate, self.arena.free, self._on_l1_change)
        self.tiers: L2Tiers | None = None
        if config.l2_urls:
            from lmcache_core.storage.tiers import L2Tiers

            self.tiers = L2Tiers(
                config.l2_urls,
                queue_bytes=config.effective_queue_bytes,
                queue_items=config.l2_queue_items,
                batch=config.l2_batch,
                workers=config.l2_workers,
            )
            self.tiers.attach_l1(self.l1)
        self._quotas = {
            salt_tag(None if s == "" else s) if s != "*" else "*": b
            for s, b in config.salt_quota_bytes.items()
        }
        self._chunker = TokenChunker(config.chunk_size, config.save_partial_chunks)
        self._sessions: dict[bytes, Session] = {}
        self._leases: dict[int, Lease] = {}
        self._storing: dict[CacheKey, int] = {}  # key -> store lease in flight
        self._expired: deque[int] = deque(maxlen=4096)  # recently expired lease ids
        self._quarantine: deque[tuple[float, torch.Tensor]] = deque()
        self._ids = itertools.count(1)
        self.counters = Counters()
        self.closing = False
        self._locked: list[torch.Tensor] = []  # L1 segments page-locked with the GPU backend
        if self.gpu is not None:
            for t in self.arena.segment_tensors():
                try:
                    self.gpu.register_host(t)
                    self._locked.append(t)
                except (RuntimeError, ValueError) as e:  # works unlocked, through a staging copy
                    logger.warning("L1 segment not page-locked (%s): GPU copies are staged", e)

    # ---- accounting ------------------------------------------------------------------------------

    def _on_l1_change(self, entry: L1Entry, sign: int) -> None:  # L1 lock held
        key = entry.key
        if isinstance(key, CacheKey):
            salt = key.scope.salt
            with self._acct:
                self._salt_bytes[salt] = self._salt_bytes.get(salt, 0) + sign * entry.nbytes

    def _salt_used(self) -> dict[str, int]:
        with self._acct:
            return dict(self._salt_bytes)

    def _quota(self, salt: str) -> int | None:
        return self._quotas.get(salt, self._quotas.get("*"))

    def _room_for(self, salt: str, nbytes: int) -> bool:
        """Evict the salt's own LRU chunks until ``nbytes`` more fit its quota; False if they cannot."""
        quota = self._quota(salt)
        if quota is None:
            return True
        while self._salt_used().get(salt, 0) + self._leased_bytes.get(salt, 0) + nbytes > quota:
            if not self.l1.evict_matching(lambda e: isinstance(e.key, CacheKey) and e.key.scope.salt == salt):
                return False
        return True

    # ---- dispatch --------------------------------------------------------------------------------

    def handle(self, peer: bytes, request: p.AnyRequest) -> p.AnyReply:
        """The reply to ``request`` from ``peer``; never raises for a bad request."""
        try:
            with self._lock:
                if self.closing:
                    raise RequestError("shutting_down", "the server is stopping")
                reply: p.AnyReply
                if isinstance(request, p.Hello):
                    reply = self._hello(peer, request)
                else:
                    session = self._sessions.get(peer)
                    if session is None:
                        raise RequestError("hello_first", "send hello (with the protocol version) first")
                    session.last_seen = time.monotonic()
                    reply = getattr(self, "_" + str(type(request).__struct_config__.tag))(session, request)
                    session.last_seen = time.monotonic()  # a slow request (an L2 load) is no silence
        except RequestError as e:
            reply = self.error(e.code, str(e))
        except Exception as e:
            logger.exception("request %s failed", type(request).__name__)
            reply = self.error("internal", f"{type(e).__name__}: {e}")
        reply.rid = request.rid
        return reply

    def error(self, code: str, message: str, rid: int = 0) -> p.Error:
        with self._lock:
            self.counters.errors[code] = self.counters.errors.get(code, 0) + 1
        return p.Error(rid=rid, code=code, message=message)

    def _hello(self, peer: bytes, req: p.Hello) -> p.AnyReply:
        if req.version != p.PROTOCOL_VERSION:
            raise RequestError(
                "version", f"version: this server speaks protocol {p.PROTOCOL_VERSION}, given {req.version}"
            )
        old = self._sessions.pop(peer, None)
        if old is not None:
            self._drop_session(old)
        self._sessions[peer] = Session(next(self._ids), peer, req.client, time.monotonic())
        c = self.config
        return p.HelloReply(
            server=self.name,
            chunk_size=c.chunk_size,
            save_partial_chunks=c.save_partial_chunks,
            heartbeat_seconds=c.heartbeat_seconds,
            lease_seconds=c.lease_seconds,
            max_message_bytes=c.max_message_bytes,
            shm_dir=c.shm_dir,
            minor=p.PROTOCOL_MINOR,
            gpu=self.gpu.backend if self.gpu is not None else "",
        )

    def _register(self, s: Session, req: p.Register) -> p.AnyReply:
        if not req.formats:
            raise RequestError(
                "bad_request", "formats: expected one chunk format per layer group, given none"
            )
        if not 0 <= req.rank < req.world_size:
            raise RequestError(
                "bad_request", f"rank: expected 0 <= rank < world_size ({req.world_size}), given {req.rank}"
            )
        if not req.model_id or "|" in req.model_id:
            raise RequestError(
                "bad_request", f"model_id: expected a non-empty name without '|', given {req.model_id!r}"
            )
        formats = _formats(req.formats)
        self._close_ipc(s)  # mapped for the previous registration's formats
        s.engine, s.model_id, s.rank, s.world_size = req.engine, req.model_id, req.rank, req.world_size
        s.formats = formats
        s.spec_tag = "+".join(f.tag for f in formats)
        s.scopes = {}
        return p.RegisterReply(session=s.id, spec_tag=s.spec_tag)

    # ---- GPU IPC -----------------------------------------------------------------------------

    def _register_ipc(self, s: Session, req: p.RegisterIpc) -> p.AnyReply:
        if self.gpu is None:
            raise RequestError(
                "no_gpu",
                "register_ipc: this server has no GPU backend (start it with gpu_backend = "
                "'lmcache_cuda' or 'lmcache_rocm', LMCACHE_SERVER_GPU_BACKEND); use the shared-memory ops",
            )
        if not s.registered:
            raise RequestError("not_registered", "register (engine, rank, chunk formats) first")
        if len(req.event) != 64:
            raise RequestError(
                "bad_request", f"event: expected a 64-byte IPC event handle, given {len(req.event)} bytes"
            )
        self._close_ipc(s)
        try:
            s.ipc = IpcMapping(self.gpu, req, s.formats)
        except (ValueError, TypeError) as e:
            raise RequestError("bad_request", str(e)) from None
        self.counters.ipc_registrations += 1
        return p.RegisterIpcReply(event=s.ipc.event_handle, tensors=s.ipc.tensors)

    def _release_ipc(self, s: Session, req: p.ReleaseIpc) -> p.AnyReply:
        self._close_ipc(s)
        return p.Ack()

    def _close_ipc(self, s: Session) -> None:
        if s.ipc is not None:
            mapping, s.ipc = s.ipc, None
            mapping.close()
            self.counters.ipc_closed += 1

    def _mapping(
        self, s: Session, op: str, slot_mapping: list[bytes], tokens: bytes
    ) -> tuple[IpcMapping, list[torch.Tensor]]:
        if s.ipc is None:
            if self.gpu is None:
                raise RequestError(
                    "no_gpu", f"{op}: this server has no GPU backend; use the shared-memory ops"
                )
            raise RequestError("not_registered", f"{op}: register_ipc (the KV's IPC handles) first")
        try:
            return s.ipc, slot_tensors(slot_mapping, len(s.formats), len(tokens) // 4)
        except ValueError as e:
            raise RequestError("bad_request", str(e)) from None

    def _store_ipc(self, s: Session, req: p.StoreIpc) -> p.AnyReply:
        mapping, slots = self._mapping(s, "store_ipc", req.slot_mapping, req.tokens)
        prepared = self._prepare_store(s, p.PrepareStore(tokens=req.tokens, salt=req.salt, stop=req.stop))
        assert isinstance(prepared, p.PrepareReply)
        lease = self._leases[prepared.lease]
        try:
            mapping.gather([(it.buffer, it.start, it.start + it.num_tokens) for it in lease.items], slots)
        except BaseException:
            self._end_lease(self._take_lease(s, lease.id))
            raise
        return self._commit_store(s, p.CommitStore(lease=lease.id, filled=len(lease.items)))

    def _retrieve_ipc(self, s: Session, req: p.RetrieveIpc) -> p.AnyReply:
        mapping, slots = self._mapping(s, "retrieve_ipc", req.slot_mapping, req.tokens)
        prepared = self._prepare_retrieve(
            s, p.PrepareRetrieve(tokens=req.tokens, salt=req.salt, skip=req.skip)
        )
        assert isinstance(prepared, p.PrepareReply)
        lease = self._leases[prepared.lease]
        try:
            mapping.scatter(
                [(it.buffer, it.start, it.start + it.num_tokens) for it in lease.items],
                slots,
                req.skip,
            )
        except BaseException:
            self._end_lease(self._take_lease(s, lease.id))
            raise
        return self._commit_retrieve(s, p.CommitRetrieve(lease=lease.id))

    def _heartbeat(self, s: Session, req: p.Heartbeat) -> p.AnyReply:
        return p.HeartbeatReply(leases=len(s.leases))

    def _stats(self, s: Session, req: p.Stats) -> p.AnyReply:
        return p.StatsReply(status=self.status())

    # ---- keys ------------------------------------------------------------------------------------

    def _chunks(self, s: Session, tokens: bytes, salt: str | None) -> list[tuple[int, int, CacheKey]]:
        if not s.registered:
            raise RequestError("not_registered", "register (engine, rank, chunk formats) first")
        try:
            arr = p.tokens_from_bytes(tokens)
        except ValueError as e:
            raise RequestError("bad_request", str(e)) from None
        scope = s.scopes.get(salt)
        if scope is None:
            if len(s.scopes) >= 1024:  # a client cycling through salts must not grow this forever
                s.scopes.clear()
            scope = KeyScope(s.model_id, s.spec_tag, s.world_size, s.rank, salt_tag(salt))
            s.scopes[salt] = scope
        return [(a, b, scope.key(h)) for a, b, h in self._chunker.prefix_hashes(arr, salt)]

    def _nbytes(self, formats: tuple[ChunkFormat, ...], num_tokens: int) -> int:
        return sum(f.nbytes(num_tokens) for f in formats)

    def _ref(self, s: Session | Lease, key: CacheKey, num_tokens: int) -> ChunkRef:
        from lmcache_core.storage.tiers import chunk_ref

        return chunk_ref(key, s.spec_tag, s.formats, num_tokens)

    def _slot(self, item: _Item, end: int, l2: bool = False) -> p.Slot:
        segment, offset = self.arena.locate(item.buffer)
        return p.Slot(item.start, end, segment, offset, int(item.buffer.numel()), l2)

    # ---- lookup ------------------------------------------------------------------------------------

    def _lookup(self, s: Session, req: p.Lookup) -> p.AnyReply:
        chunks = self._chunks(s, req.tokens, req.salt)
        first_miss = next((i for i, (_, _, k) in enumerate(chunks) if k not in self.l1), len(chunks))
        run = first_miss
        if first_miss < len(chunks) and self.tiers is not None:
            refs = [self._ref(s, k, e - a) for a, e, k in chunks[first_miss:]]
            run += self.tiers.found_run(refs, prefetch=req.prefetch and self.config.l2_prefetch)
        hit = chunks[run - 1][1] if run else 0
        l1_hit = chunks[first_miss - 1][1] if first_miss else 0
        nbytes = sum(self._nbytes(s.formats, e - a) for a, e, _ in chunks[:run])
        l2_bytes = sum(self._nbytes(s.formats, e - a) for a, e, _ in chunks[first_miss:run])
        c = self.counters
        c.lookups += 1
        c.lookup_tokens += len(req.tokens) // 4
        c.lookup_hit_tokens += hit
        c.lookup_l2_hit_tokens += hit - l1_hit
        return p.LookupReply(
            tokens=hit,
            chunks=run,
            nbytes=nbytes,
            l2_tokens=hit - l1_hit,
            l2_chunks=run - first_miss,
            l2_bytes=l2_bytes,
        )

    # ---- store -------------------------------------------------------------------------------------

    def _new_lease(self, s: Session, kind: str, salt: str | None, items: list[_Item], skip: int = 0) -> Lease:
        lease = Lease(next(self._ids), s.id, kind, salt_tag(salt), s.spec_tag, s.formats, items, skip)
        self._leases[lease.id] = lease
        s.leases.add(lease.id)
        return lease

    def _prepare_store(self, s: Session, req: p.PrepareStore) -> p.AnyReply:
        chunks = self._chunks(s, req.tokens, req.salt)
        tag = salt_tag(req.salt)
        items: list[_Item] = []
        present = 0
        full = False
        for start, end, key in chunks:
            if req.stop >= 0 and end > req.stop:
                break
            if self.l1.touch(key) or key in self._storing:
                present += 1
                continue
            nbytes = self._nbytes(s.formats, end - start)
            buffer = None
            if self._room_for(tag, nbytes):
                try:
                    buffer = self.l1.reserve(nbytes)
                except MemoryError as e:
                    logger.warning("L1: %s", e)
            if buffer is None:
                full = True
                self.counters.store_full += 1
                break
            self._leased_bytes[tag] = self._leased_bytes.get(tag, 0) + nbytes
            items.append(_Item(key, end - start, start, buffer))
        self.counters.store_present_chunks += present
        lease = self._new_lease(s, "store", req.salt, items)
        for it in items:
            self._storing[it.key] = lease.id
        slots = [self._slot(it, it.start + it.num_tokens) for it in items]
        return p.PrepareReply(lease=lease.id, slots=slots, present=present, full=full)

    def _take_lease(self, s: Session, lease_id: int, kind: str | None = None) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None or lease.session != s.id:
            if lease_id in self._expired:
                raise RequestError(
                    "lease_expired",
                    f"lease {lease_id}: expired (no request for {self.config.lease_seconds} s)",
                )
            raise RequestError("lease_unknown", f"lease: no lease {lease_id} on this connection")
        if kind is not None and lease.kind != kind:
            raise RequestError(
                "bad_request", f"lease: expected a {kind} lease, given {lease_id} ({lease.kind})"
            )
        del self._leases[lease_id]
        s.leases.discard(lease_id)
        return lease

    def _commit_store(self, s: Session, req: p.CommitStore) -> p.AnyReply:
        lease = self._leases.get(req.lease)
        if lease is not None and lease.session == s.id and req.filled > len(lease.items):
            raise RequestError(
                "bad_request", f"filled: expected at most {len(lease.items)} slots, given {req.filled}"
            )
        lease = self._take_lease(s, req.lease, "store")
        tiers = self.tiers
        chunks = tokens = nbytes = 0
        for i, it in enumerate(lease.items):
            self._unstore(lease, it)
            if i >= req.filled:
                self.l1.release(it.buffer)
                continue
            entry = self.l1.commit(
                it.key, it.buffer, it.num_tokens, pins=tiers.pins_per_store if tiers else 0
            )
            if tiers is not None:
                tiers.write_behind(self._ref(lease, it.key, it.num_tokens), entry)
            chunks += 1
            tokens += it.num_tokens
            nbytes += int(it.buffer.numel())
        self.counters.stored_chunks += chunks
        self.counters.stored_bytes += nbytes
        return p.CommitReply(chunks=chunks, tokens=tokens, nbytes=nbytes)

    def _unstore(self, lease: Lease, it: _Item) -> None:
        if self._storing.get(it.key) == lease.id:
            del self._storing[it.key]
        self._leased_bytes[lease.salt] -= int(it.buffer.numel())

    # ---- retrieve ----------------------------------------------------------------------------------

    def _prepare_retrieve(self, s: Session, req: p.PrepareRetrieve) -> p.AnyReply:
        chunks = [c for c in self._chunks(s, req.tokens, req.salt) if c[1] > req.skip]
        tiers = self.tiers
        not_in_l1: set[CacheKey] = set()
        if tiers is not None:
            not_in_l1 = {k for _, _, k in chunks if k not in self.l1}
            missing = next(
                (i for i, c in enumerate(chunks) if c[2] not in self.l1 and not tiers.pending(c[2])), None
            )
            if missing is not None:
                tiers.found_run([self._ref(s, k, e - a) for a, e, k in chunks[missing:]], prefetch=True)
        items: list[_Item] = []
        slots: list[p.Slot] = []
        for start, end, key in chunks:
            entry = self.l1.pin(key)
            if entry is None and tiers is not None:
                entry = tiers.fetch(self._ref(s, key, end - start))
                if entry is not None:
                    self.counters.retrieved_l2_chunks += 1
            if entry is None:
                break
            it = _Item(key, end - start, start, entry.buffer, entry)
            items.append(it)
            slots.append(self._slot(it, end, key in not_in_l1))
        lease = self._new_lease(s, "retrieve", req.salt, items, req.skip)
        return p.PrepareReply(lease=lease.id, slots=slots)

    def _commit_retrieve(self, s: Session, req: p.CommitRetrieve) -> p.AnyReply:
        lease = self._take_lease(s, req.lease, "retrieve")
        tokens = nbytes = 0
        for it in lease.items:
            assert it.entry is not None
            self.l1.unpin(it.entry)
            tokens += it.num_tokens - max(0, lease.skip - it.start)
            nbytes += int(it.buffer.numel())
        self.counters.retrieved_chunks += len(lease.items)
        self.counters.retrieved_bytes += nbytes
        return p.CommitReply(chunks=len(lease.items), tokens=tokens, nbytes=nbytes)

    def _release(self, s: Session, req: p.Release) -> p.AnyReply:
        self._end_lease(self._take_lease(s, req.lease))
        return p.Ack()

    def _end_lease(self, lease: Lease, quarantine_until: float | None = None) -> None:
        """Unpin a retrieve lease's entries; free a store lease's buffers (or quarantine them
        until ``quarantine_until``, monotonic seconds)."""
        if lease.kind == "retrieve":
            for it in lease.items:
                assert it.entry is not None
                self.l1.unpin(it.entry)
            return
        for it in lease.items:
            self._unstore(lease, it)
            if quarantine_until is not None:
                self._quarantine.append((quarantine_until, it.buffer))
            else:
                self.l1.release(it.buffer)

    # ---- expiry ----------------------------------------------------------------------------------

    def _drop_session(self, s: Session, expired_at: float | None = None) -> None:
        """End the session's leases; ``expired_at`` (monotonic seconds): it went silent, so its
        store buffers are quarantined for ``lease_seconds`` from then."""
        expired = expired_at is not None
        until = None if expired_at is None else expired_at + self.config.lease_seconds
        for lease_id in sorted(s.leases):
            lease = self._leases.pop(lease_id, None)
            if lease is not None:
                self._end_lease(lease, until)
                if expired:
                    self._expired.append(lease_id)
                    self.counters.leases_expired += 1
        s.leases.clear()
        self._close_ipc(s)

    def sweep(self, now: float | None = None) -> int:
        """Drop sessions silent for ``lease_seconds`` (their leases with them) and free
        quarantined buffers whose time has come; returns the sessions dropped."""
        now = time.monotonic() if now is None else now
        with self._lock:
            dead = [s for s in self._sessions.values() if now - s.last_seen > self.config.lease_seconds]
            for s in dead:
                del self._sessions[s.peer]
                if s.leases:
                    logger.warning(
                        "session %d (%s %s rank %d): silent for %.1f s; reclaiming %d leases",
                        s.id, s.client, s.engine, s.rank, now - s.last_seen, len(s.leases),
                    )  # fmt: skip
                self._drop_session(s, now)
                self.counters.sessions_expired += 1
            while self._quarantine and self._quarantine[0][0] <= now:
                self.l1.release(self._quarantine.popleft()[1])
            return len(dead)

    # ---- status and shutdown -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The status document: engines, L1 (and per salt tag), tiers and their health, hit rates."""
        with self._lock:
            now = time.monotonic()
            l1 = self.l1.stats()
            c = self.counters
            leased = sum(self._leased_bytes.values()) + sum(int(b.numel()) for _, b in self._quarantine)
            used = self._salt_used()
            salts = sorted(set(used) | set(self._leased_bytes))
            tiers = []
            if self.tiers is not None:
                for a, snap in zip(self.tiers.adapters, self.tiers.snapshots(), strict=True):
                    tiers.append({"name": a.name, "healthy": not a.health.down, **snap.to_json()})
            return {
                "server": {
                    "name": self.name,
                    "pid": os.getpid(),
                    "protocol": p.PROTOCOL_VERSION,
                    "protocol_minor": p.PROTOCOL_MINOR,
                    "gpu_backend": self.gpu.backend if self.gpu is not None else "",
                    "uptime_seconds": round(time.time() - self.started, 3),
                    "listen": self.config.listen,
                    "closing": self.closing,
                },
                "engines": [
                    {
                        "session": s.id,
                        "client": s.client,
                        "engine": s.engine,
                        "model_id": s.model_id,
                        "rank": s.rank,
                        "world_size": s.world_size,
                        "spec_tag": s.spec_tag,
                        "leases": len(s.leases),
                        "ipc_tensors": s.ipc.tensors if s.ipc is not None else 0,
                        "idle_seconds": round(now - s.last_seen, 3),
                    }
                    for s in self._sessions.values()
                    if s.registered
                ],
                "connections": len(self._sessions),
                "l1": {
                    "capacity_bytes": l1.capacity_bytes,
                    "used_bytes": l1.used_bytes,
                    "entries": l1.entries,
                    "entry_bytes": sum(used.values()),
                    "leased_bytes": leased,
                    "pinned_retrieve_leases": sum(1 for x in self._leases.values() if x.kind == "retrieve"),
                    "store_leases": sum(1 for x in self._leases.values() if x.kind == "store"),
                    "free_buffers": l1.free_buffers,
                    "evictions": l1.evictions,
                    "shm_segments": len(self.arena.names),
                    "shm_bytes": self.arena.mapped_bytes,
                },
                "salts": {
                    tag: {
                        "bytes": used.get(tag, 0),
                        "leased_bytes": self._leased_bytes.get(tag, 0),
                        "quota_bytes": self._quota(tag),
                    }
                    for tag in salts
                },
                "tiers": tiers,
                "hits": {
                    "lookups": c.lookups,
                    "lookup_tokens": c.lookup_tokens,
                    "hit_tokens": c.lookup_hit_tokens,
                    "l2_hit_tokens": c.lookup_l2_hit_tokens,
                    "hit_rate": round(c.lookup_hit_tokens / c.lookup_tokens, 6) if c.lookup_tokens else 0.0,
                    "stored_chunks": c.stored_chunks,
                    "stored_bytes": c.stored_bytes,
                    "store_present_chunks": c.store_present_chunks,
                    "store_full": c.store_full,
                    "retrieved_chunks": c.retrieved_chunks,
                    "retrieved_bytes": c.retrieved_bytes,
                    "retrieved_l2_chunks": c.retrieved_l2_chunks,
                    "leases_expired": c.leases_expired,
                    "sessions_expired": c.sessions_expired,
                    "ipc_registrations": c.ipc_registrations,
                    "ipc_closed": c.ipc_closed,
                    "errors": dict(c.errors),
                },
            }

    def close(self, drain_seconds: float | None = None) -> bool:
        """Refuse new requests, drain write-behind (up to ``drain_seconds``, default the
        config's), close the tiers and unlink the shared memory. True when everything queued for
        L2 was written."""
        with self._lock:
            self.closing = True
            for s in list(self._sessions.values()):
                self._drop_session(s)
            self._sessions.clear()
        drained = True
        deadline = self.config.drain_seconds if drain_seconds is None else drain_seconds
        if self.tiers is not None:
            drained = self.tiers.flush(deadline)
            if not drained:
                logger.warning("write-behind not drained within %.1f s; the rest is not written", deadline)
            self.tiers.close(flush_timeout=0)
            self.tiers = None
        if self.gpu is not None:
            for t in self._locked:
                try:
                    self.gpu.unregister_host(t)
                except RuntimeError as e:
                    logger.debug("unlocking an L1 segment: %s", e)
            self._locked = []
        self.arena.close()
        return drained
