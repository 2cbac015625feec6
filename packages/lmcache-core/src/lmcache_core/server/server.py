"""The server process's transport: a ZMQ ROUTER loop around :class:`~lmcache_core.server.service.CacheService`.

One thread receives ``[routing id, frame]``, decodes the frame (typed msgpack, size-checked),
asks the service for the reply and sends it back; between requests it sweeps expired sessions.
A frame that cannot be decoded gets an error reply and the loop goes on. :meth:`CacheServer.stop`
(SIGTERM, SIGINT) ends the loop; :meth:`CacheServer.close` then drains write-behind within
``drain_seconds`` and removes the socket and the shared memory.

Listening: ``ipc://`` sockets are made in a directory of mode 0700 and chmod 0600; a TCP address
other than 127.0.0.1 refuses to start without an authentication key (:mod:`lmcache_core.server.auth`).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
import time
from typing import Any

from lmcache_core.server import protocol as p
from lmcache_core.server.auth import read_key_file, requires_key, secure_server_socket
from lmcache_core.server.config import ServerConfig
from lmcache_core.server.service import CacheService

logger = logging.getLogger(__name__)


def _prepare_ipc_path(path: str) -> None:
    """Make the socket's directory (0700 when we create it) and remove a stale socket file."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise ValueError(f"listen: {path!r} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: a dead server's socket
        else:
            raise ValueError(f"listen: another server is listening on {path!r}")
        finally:
            probe.close()


class CacheServer:
    """``lmcache-core serve``: the service, its ROUTER socket and (optionally) its HTTP side."""

    def __init__(self, config: ServerConfig) -> None:
        import zmq

        self.config = config
        if requires_key(config.listen) and not config.auth_key_file:
            raise ValueError(
                f"auth_key_file: required to listen on {config.listen} (only ipc:// and 127.0.0.1 go "
                f"without a key); create one with: head -c 32 /dev/urandom | base64 > KEY; chmod 600 KEY"
            )
        key = read_key_file(config.auth_key_file) if config.auth_key_file else None
        self._zmq = zmq
        self._ctx = zmq.Context()
        self._auth: Any = None
        self.service = CacheService(config)
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.http: Any = None
        self.endpoint = config.listen
        self._ipc_path = ""
        try:
            self._sock = self._ctx.socket(zmq.ROUTER)
            self._sock.setsockopt(zmq.LINGER, 0)
            # a frame far beyond the limit is cut at the transport (that peer is disconnected);
            # one moderately over it gets a too_large reply below
            self._sock.setsockopt(zmq.MAXMSGSIZE, 4 * config.max_message_bytes)
            if key is not None:
                self._auth = secure_server_socket(self._ctx, self._sock, key)
            if config.listen.startswith("ipc://"):
                self._ipc_path = config.listen[len("ipc://") :]
                _prepare_ipc_path(self._ipc_path)
                old = os.umask(0o177)
                try:
                    self._sock.bind(config.listen)
                finally:
                    os.umask(old)
                os.chmod(self._ipc_path, 0o600)
            else:
                self._sock.bind(config.listen)
                self.endpoint = str(self._sock.getsockopt_string(zmq.LAST_ENDPOINT))
            if config.http:
                from lmcache_core.server.http import StatusHTTPServer

                self.http = StatusHTTPServer(config.http, self)
        except BaseException:
            self.close(0)
            raise

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler or another thread)."""
        self._stop.set()

    def serve_forever(self) -> None:
        """Answer requests until :meth:`stop`."""
        zmq = self._zmq
        sock = self._sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        tick = min(0.25, self.config.heartbeat_seconds / 2)
        next_sweep = time.monotonic() + tick
        max_bytes = self.config.max_message_bytes
        self.ready.set()
        logger.info("serving on %s", self.endpoint)
        while not self._stop.is_set():
            if poller.poll(int(tick * 1000)):
                for _ in range(256):  # a burst, then look at the clock again
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._answer(frames, max_bytes)
            now = time.monotonic()
            if now >= next_sweep:
                self.service.sweep(now)
                next_sweep = now + tick

    def _answer(self, frames: list[bytes], max_bytes: int) -> None:
        peer = frames[0]
        if len(frames) != 2:
            reply: p.AnyReply = self.service.error(
                "malformed", f"frames: expected 1 per request, given {len(frames) - 1}"
            )
        else:
            try:
                request = p.decode_request(frames[1], max_bytes)
            except p.ProtocolError as e:
                reply = self.service.error(e.code, str(e), e.rid)
            else:
                reply = self.service.handle(peer, request)
        try:
            self._sock.send_multipart([peer, p.encode(reply)], self._zmq.NOBLOCK)
        except self._zmq.Again:  # the peer's queue is full (it stopped reading): drop the reply
            logger.debug("reply to a peer that is not reading dropped")

    def close(self, drain_seconds: float | None = None) -> bool:
        """Stop HTTP, drain write-behind (up to ``drain_seconds``), free the shared memory, close
        the socket. True when every chunk queued for L2 was written."""
        if self.http is not None:
            self.http.close()
            self.http = None
        drained = self.service.close(drain_seconds)
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._ctx.term()
        if self._ipc_path:
            try:
                os.unlink(self._ipc_path)
            except FileNotFoundError:
                pass
        return drained
