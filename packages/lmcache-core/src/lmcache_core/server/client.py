"""CacheClient: one connection (ZMQ DEALER) to a cache server, and the shared memory it maps.

One client is one registered engine rank (``register``), or a bare connection for ``stats``.
Calls are synchronous request/reply, thread-safe (one lock around the socket); a background
thread sends a heartbeat whenever no request went out for ``heartbeat_seconds``, so the server
keeps this connection's leases.

Failure: a call that gets no reply within ``timeout`` seconds raises :class:`ServerUnavailable`,
drops the socket and enters back-off: calls fail at once with :class:`ServerUnavailable` until
the back-off (``backoff_min`` doubling to ``backoff_max`` seconds) has passed, then one call
reconnects (hello, and register again with the same arguments). A caller turns
:class:`ServerUnavailable` into a miss (recompute) and simply calls again later. Leases of a lost
connection are gone: committing one raises :class:`ServerError` (``lease_unknown``).

Byte path: :meth:`CacheClient.view` maps a :class:`~lmcache_core.server.protocol.Slot`'s segment
once (``mmap`` of the server's shared-memory file) and returns a uint8 torch tensor
``[nbytes]`` over the slot itself: the backend gathers into it or scatters from it, no copy.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmcache_core.server import protocol as p
from lmcache_core.tokens import as_token_array

if TYPE_CHECKING:
    import torch

    from lmcache_core.layout import ChunkFormat

logger = logging.getLogger(__name__)


class ServerUnavailable(ConnectionError):
    """The server did not answer (down, restarting, refusing this client's key); retry later."""


class ServerError(RuntimeError):
    """The server answered with an error; ``code`` is a key of
    :data:`lmcache_core.server.protocol.ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def format_descs(formats: Sequence[ChunkFormat]) -> list[p.FormatDesc]:
    """The wire description of chunk formats (one per layer group)."""
    return [
        p.FormatDesc(
            f.num_layers, [p.SectionDesc(s.name, s.hidden, s.dtype, s.element_size) for s in f.sections]
        )
        for f in formats
    ]


def token_bytes(tokens: Any) -> bytes:
    """Token ids (list, numpy, CPU tensor) as the uint32 little-endian bytes requests carry."""
    return as_token_array(tokens).tobytes()


class _Segment:
    """A server segment mapped into this process."""

    def __init__(self, path: str) -> None:
        import torch

        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.size = size
        self.tensor = (
            torch.frombuffer(self.map, dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
        )


class CacheClient:
    """A connection to the cache server at ``endpoint``.

    ``endpoint``: ``ipc:///run/lmcache/server.sock`` or ``tcp://host:port``. ``auth_key``: the
    shared key (bytes, or a path via :func:`lmcache_core.server.auth.read_key_file`) a server
    off 127.0.0.1 requires. ``timeout``: seconds to wait for a reply. ``shm_dir``: where the
    server's segments are as this process sees them (default: the server's ``shm_dir``, from its
    hello reply).

    Typical use by an engine worker::

        client = CacheClient("ipc:///run/lmcache/server.sock")
        client.register("engine-a", rank=0, world_size=1, model_id="m", formats=[fmt])
        lease = client.prepare_store(tokens, salt=None)
        for slot in lease.slots:
            backend.gather(layout, kv, slots[slot.start:slot.end], client.view(slot)...)
        client.commit_store(lease.lease, filled=len(lease.slots))
    """

    def __init__(
        self,
        endpoint: str,
        *,
        auth_key: bytes | None = None,
        timeout: float = 5.0,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        heartbeat: bool = True,
        shm_dir: str | None = None,
        name: str = "",
    ) -> None:
        if not isinstance(endpoint, str) or not endpoint.startswith(("ipc://", "tcp://")):
            raise ValueError(f"endpoint: expected ipc:///path or tcp://host:port, given {endpoint!r}")
        for label, v in (("timeout", timeout), ("backoff_min", backoff_min), ("backoff_max", backoff_max)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{label}: expected a positive number of seconds, given {v!r}")
        import zmq

        self._zmq = zmq
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.backoff_min = float(backoff_min)
        self.backoff_max = float(backoff_max)
        self.shm_dir = shm_dir
        self.name = name or f"pid{os.getpid()}"
        self._auth_key = auth_key
        self._ctx: Any = zmq.Context.instance()
        self._sock: Any = None
        self._lock = threading.RLock()
        self._rids = itertools.count(1)
        self._registration: p.Register | None = None
        self._ipc_registration: p.RegisterIpc | None = None
        #: the server's IPC event handle for this connection (register_ipc's reply; b"": none)
        self.ipc_event = b""
        self._segments: dict[str, _Segment] = {}
        self._retry_at = 0.0
        self._backoff = self.backoff_min
        self._last_sent = 0.0
        self._closed = False
        self.hello: p.HelloReply | None = None
        self.session = 0
        self.spec_tag = ""
        self.connects = 0
        self._heartbeat_stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if heartbeat:
            self._heartbeat = threading.Thread(
                target=self._beat, name="lmcache-client-heartbeat", daemon=True
            )
            self._heartbeat.start()

    # ---- connection ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> p.HelloReply:
        """Connect now (hello, and register again if :meth:`register` was called); raises
        :class:`ServerUnavailable` when the server does not answer in time."""
        with self._lock:
            self._retry_at = 0.0
            self._ensure()
            assert self.hello is not None
            return self.hello

    def _ensure(self) -> None:
        """Connected, or :class:`ServerUnavailable` (at once while backing off)."""
        if self._closed:
            raise ServerUnavailable("client closed")
        if self._sock is not None:
            return
        now = time.monotonic()
        if now < self._retry_at:
            raise ServerUnavailable(
                f"{self.endpoint}: unreachable; next try in {self._retry_at - now:.1f} s (back-off)"
            )
        zmq = self._zmq
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
        if self._auth_key is not None:
            from lmcache_core.server.auth import client_keys

            public, secret, server_public = client_keys(self._auth_key)
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_serverkey = server_public
        sock.connect(self.endpoint)
        self._sock = sock
        try:
            hello = self._call(p.Hello(version=p.PROTOCOL_VERSION, client=self.name))
            assert isinstance(hello, p.HelloReply)
            self.hello = hello
            if self._registration is not None:
                reg = self._call(self._registration)
                assert isinstance(reg, p.RegisterReply)
                self.session, self.spec_tag = reg.session, reg.spec_tag
                self.ipc_event = b""
                if self._ipc_registration is not None:
                    ipc = self._call(self._ipc_registration)
                    assert isinstance(ipc, p.RegisterIpcReply)
                    self.ipc_event = ipc.event
        except BaseException:
            self._drop()
            raise
        self.connects += 1
        self._backoff = self.backoff_min
        logger.info("connected to %s (server %s)", self.endpoint, hello.server)

    def _drop(self, backoff: bool = True) -> None:
        """Close the socket; with ``backoff``, wait before the next try."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if backoff:
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self.backoff_max, self._backoff * 2)
        else:
            self._retry_at = 0.0

    def _call(self, request: p.Request) -> p.AnyReply:
        """Send ``request`` and return its reply (an :class:`~lmcache_core.server.protocol.Error`
        raises :class:`ServerError`); lock held, socket open."""
        sock = self._sock
        rid = next(self._rids)
        request.rid = rid
        try:
            sock.send(p.encode(request))
        except self._zmq.Again:
            self._drop()
            raise ServerUnavailable(f"{self.endpoint}: not connected") from None
        self._last_sent = time.monotonic()
        deadline = self._last_sent + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                if time.monotonic() < deadline:
                    continue
                self._drop()
                raise ServerUnavailable(f"{self.endpoint}: no reply within {self.timeout} s")
            reply = p.decode_reply(sock.recv())
            if reply.rid != rid:  # a late reply to a request given up on
                continue
            if isinstance(reply, p.Error):
                if reply.code == "version":
                    self._drop()
                raise ServerError(reply.code, reply.message)
            return reply

    def request(self, request: p.Request) -> p.AnyReply:
        """Send any request (connecting first if needed) and return its reply. A server that no
        longer knows this connection (it restarted on the same address, or dropped the session
        after ``lease_seconds`` of silence) answers ``hello_first``: the client then connects
        again at once (hello, register) and sends the request once more."""
        with self._lock:
            self._ensure()
            try:
                return self._call(request)
            except ServerError as e:
                if e.code != "hello_first":
                    raise
                logger.info("%s: the server lost this session; connecting again", self.endpoint)
            self._drop(backoff=False)
            self._ensure()
            return self._call(request)

    def _beat(self) -> None:
        while not self._heartbeat_stop.wait(0.2):
            hello = self.hello
            period = hello.heartbeat_seconds if hello is not None else 1.0
            if self._sock is None or time.monotonic() - self._last_sent < period:
                continue
            try:
                self.heartbeat()
            except (ServerUnavailable, ServerError) as e:
                logger.debug("heartbeat: %s", e)

    def close(self) -> None:
        """Stop the heartbeat, close the socket and unmap the segments (views must be gone)."""
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(2.0)
        with self._lock:
            self._closed = True
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None
            segments, self._segments = self._segments, {}
        for seg in segments.values():
            del seg.tensor
            try:
                seg.map.close()
            except BufferError:  # a view is still alive; the mapping goes with it
                pass

    def __enter__(self) -> CacheClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- operations ----------------------------------------------------------------------------

    def register(
        self,
        engine: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        model_id: str = "model",
        formats: Sequence[ChunkFormat] | Sequence[p.FormatDesc] = (),
    ) -> p.RegisterReply:
        """Register this connection as ``engine``'s rank ``rank`` of ``world_size`` serving
        ``model_id``, whose chunks have ``formats`` (one per layer group). Remembered and sent
        again on every reconnect."""
        descs = [f if isinstance(f, p.FormatDesc) else format_descs([f])[0] for f in formats]
        reg = p.Register(engine=engine, model_id=model_id, rank=rank, world_size=world_size, formats=descs)
        with self._lock:
            self._ensure()
            reply = self._call(reg)
            assert isinstance(reply, p.RegisterReply)
            self._registration = reg
            self._ipc_registration = None  # the server closed the mapping with the old registration
            self.ipc_event = b""
            self.session, self.spec_tag = reply.session, reply.spec_tag
            return reply

    def supports(self, op: str) -> bool:
        """Whether the server (as of this connection's hello) knows ``op`` (a newer op needs
        its :data:`~lmcache_core.server.protocol.MINOR_OF`)."""
        with self._lock:
            self._ensure()
            assert self.hello is not None
            return self.hello.minor >= p.MINOR_OF.get(op, 0)

    def register_ipc(
        self, groups: Sequence[p.IpcGroup], event: bytes, device: int = -1
    ) -> p.RegisterIpcReply:
        """(GPU hosts, after :meth:`register`) Hand the server this worker's KV tensors by IPC
        handle, one :class:`~lmcache_core.server.protocol.IpcGroup` per chunk format, and the
        handle of the event recorded before each :meth:`store_ipc`. Remembered and sent again on
        every reconnect; :attr:`ipc_event` is the server's event handle. ServerError
        ``no_gpu``: the server has no GPU backend (use the shared-memory ops);
        ``unknown_op``: the server predates it."""
        req = p.RegisterIpc(groups=list(groups), event=event, device=device)
        with self._lock:
            self._ensure()
            if self._registration is None:
                raise ServerError("not_registered", "register_ipc: call register first")
            reply = self._call(req)
            assert isinstance(reply, p.RegisterIpcReply)
            self._ipc_registration = req
            self.ipc_event = reply.event
            return reply

    def release_ipc(self) -> None:
        """The server unmaps this worker's KV (before the worker frees or reallocates it)."""
        with self._lock:
            self._ipc_registration = None
            self.ipc_event = b""
            if self._sock is not None:
                self._call(p.ReleaseIpc())

    def store_ipc(
        self, tokens: Any, slot_mapping: Sequence[bytes], salt: str | None = None, stop: int = -1
    ) -> p.CommitReply:
        """The server gathers the chunks of ``tokens`` it lacks from the mapped KV (after this
        worker's event) and publishes them. ``slot_mapping``: per group, int64 LE bytes per token."""
        reply = self.request(
            p.StoreIpc(tokens=token_bytes(tokens), salt=salt, stop=stop, slot_mapping=list(slot_mapping))
        )
        assert isinstance(reply, p.CommitReply)
        return reply

    def retrieve_ipc(
        self, tokens: Any, slot_mapping: Sequence[bytes], salt: str | None = None, skip: int = 0
    ) -> p.CommitReply:
        """The server scatters the cached prefix of ``tokens`` into the mapped KV and records
        its event (:attr:`ipc_event`): wait for it on the compute stream before reading the pages."""
        reply = self.request(
            p.RetrieveIpc(tokens=token_bytes(tokens), salt=salt, skip=skip, slot_mapping=list(slot_mapping))
        )
        assert isinstance(reply, p.CommitReply)
        return reply

    def lookup(self, tokens: Any, salt: str | None = None, prefetch: bool = True) -> p.LookupReply:
        """Longest cached prefix of ``tokens`` (L1, then L2; L2 hits start prefetching)."""
        reply = self.request(p.Lookup(tokens=token_bytes(tokens), salt=salt, prefetch=prefetch))
        assert isinstance(reply, p.LookupReply)
        return reply

    def prepare_store(self, tokens: Any, salt: str | None = None, stop: int = -1) -> p.PrepareReply:
        """A lease on slots for the chunks of ``tokens`` not cached yet (ending at or before
        ``stop`` tokens; -1: all). Fill them, then :meth:`commit_store` (or :meth:`release`)."""
        reply = self.request(p.PrepareStore(tokens=token_bytes(tokens), salt=salt, stop=stop))
        assert isinstance(reply, p.PrepareReply)
        return reply

    def commit_store(self, lease: int, filled: int) -> p.CommitReply:
        """Publish the first ``filled`` slots of ``lease`` (the rest are freed)."""
        reply = self.request(p.CommitStore(lease=lease, filled=filled))
        assert isinstance(reply, p.CommitReply)
        return reply

    def prepare_retrieve(self, tokens: Any, salt: str | None = None, skip: int = 0) -> p.PrepareReply:
        """A lease on the pinned slots of the cached prefix of ``tokens`` from token ``skip``."""
        reply = self.request(p.PrepareRetrieve(tokens=token_bytes(tokens), salt=salt, skip=skip))
        assert isinstance(reply, p.PrepareReply)
        return reply

    def commit_retrieve(self, lease: int) -> p.CommitReply:
        """The scatter from ``lease``'s slots is done. :class:`ServerError` (``lease_expired``,
        ``lease_unknown``): the slots may have changed while read; do not use that KV."""
        reply = self.request(p.CommitRetrieve(lease=lease))
        assert isinstance(reply, p.CommitReply)
        return reply

    def release(self, lease: int) -> None:
        """Give up ``lease`` (store slots freed unpublished, retrieve slots unpinned)."""
        self.request(p.Release(lease=lease))

    def heartbeat(self) -> p.HeartbeatReply:
        reply = self.request(p.Heartbeat())
        assert isinstance(reply, p.HeartbeatReply)
        return reply

    def stats(self) -> dict[str, Any]:
        """The server's status document (as ``/status`` serves it)."""
        reply = self.request(p.Stats())
        assert isinstance(reply, p.StatsReply)
        return reply.status

    # ---- shared memory ---------------------------------------------------------------------------

    def view(self, slot: p.Slot) -> torch.Tensor:
        """uint8 tensor ``[slot.nbytes]`` over ``slot`` in the server's shared memory (the
        segment is mapped on first use and kept). :class:`ServerError` (``segment_unavailable``)
        when the segment cannot be mapped (another user's, another mount namespace, gone)."""
        seg = self._segments.get(slot.segment)
        if seg is None:
            if not slot.segment or "/" in slot.segment or slot.segment.startswith("."):
                raise ValueError(f"slot.segment: expected a segment file name, given {slot.segment!r}")
            hello = self.hello
            directory = self.shm_dir or (hello.shm_dir if hello is not None else "/dev/shm")
            try:
                seg = _Segment(os.path.join(directory, slot.segment))
            except OSError as e:
                raise ServerError(
                    "segment_unavailable", f"cannot map {slot.segment!r} in {directory}: {e.strerror}"
                ) from None
            with self._lock:
                self._segments.setdefault(slot.segment, seg)
                seg = self._segments[slot.segment]
        if slot.offset < 0 or slot.nbytes < 0 or slot.offset > seg.size - slot.nbytes:
            raise ValueError(
                f"slot: expected a byte range inside segment {slot.segment!r} ({seg.size} bytes), "
                f"given offset {slot.offset} + {slot.nbytes} bytes"
            )
        return seg.tensor[slot.offset : slot.offset + slot.nbytes]

    def unmap(self, segment: str) -> None:
        """Forget a mapped segment (after the server replaced it)."""
        with self._lock:
            self._segments.pop(segment, None)
