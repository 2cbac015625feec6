"""How vLLM's scheduler asks the workers' cache engines what they hold.

The scheduler-side connector decides how many prompt tokens come from the cache, but the cache
(L1 host memory in particular) lives in each worker's :class:`~lmcache_core.cache_engine.CacheEngine`.
vLLM may run the scheduler and the workers in one process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``
with the UniProc executor) or in several (the default on CPU: an EngineCore process plus one
process per worker). Both cases are served the same way:

* every worker registers a lookup handler under an address made of vLLM's ``engine_id``, the
  data-parallel rank and its own rank, in a process-wide table (:func:`register_local`) and on a
  Unix socket (:class:`LookupServer`, ``multiprocessing.connection`` with an auth key derived
  from the engine id, in a directory only this user can enter). Only byte frames cross the socket
  (``send_bytes``/``recv_bytes``): a :class:`LookupRequest` and a :class:`LookupReply`, msgspec
  Structs encoded as msgpack and decoded against their type, never pickle;
* the scheduler (:class:`LookupClient`) calls the handler directly when it is in the table (same
  process) and over the socket otherwise, and takes the smallest answer over all ranks.

A worker that does not answer within ``timeout`` seconds counts as a miss: the request is
computed, never wrong. Plain Python and msgspec (a dependency of vLLM): no torch, no vLLM.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from array import array
from collections.abc import Callable, Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import msgspec

logger = logging.getLogger(__name__)

#: ``handler(tokens, cache_salt) -> answer``; the answer is a small dict of numbers.
Handler = Callable[[Sequence[int], "str | None"], dict[str, Any]]

_LOCAL: dict[str, Handler] = {}
_LOCAL_LOCK = threading.Lock()


class LookupUnavailable(Exception):
    """A worker's lookup handler could not be reached or did not answer in time."""


def socket_dir() -> Path:
    """``$TMPDIR/lmcache-core-<uid>``, created with mode 0700."""
    d = Path(tempfile.gettempdir()) / f"lmcache-core-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def address(engine_id: str, dp_rank: int, rank: int) -> str:
    """The socket path of one worker (short enough for AF_UNIX's 108-byte limit)."""
    tag = hashlib.sha256(engine_id.encode()).hexdigest()[:16]
    return str(socket_dir() / f"{tag}-dp{dp_rank}-r{rank}.sock")


def authkey(engine_id: str) -> bytes:
    return hashlib.sha256(b"lmcache-core lookup " + engine_id.encode()).digest()


def register_local(addr: str, handler: Handler) -> None:
    with _LOCAL_LOCK:
        _LOCAL[addr] = handler


def unregister_local(addr: str) -> None:
    with _LOCAL_LOCK:
        _LOCAL.pop(addr, None)


#: The largest frame either side reads (bytes): a prompt of 16 Mi tokens, with room for the rest.
MAX_FRAME = 64 << 20

#: One value of an answer: a number, a string, None or a dict of numbers (the cost estimates).
AnswerValue = int | float | str | None | dict[str, float]


class LookupRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Scheduler -> worker: ``tokens`` is the prompt, ``[num_tokens]`` uint32 in native byte order
    (both ends run on one host); ``salt`` is the request's cache_salt."""

    tokens: bytes
    salt: str | None


class LookupReply(msgspec.Struct, forbid_unknown_fields=True):
    """Worker -> scheduler: the handler's answer, or ``error`` (``"Type: message"``) when it raised."""

    answer: dict[str, AnswerValue] | None = None
    error: str | None = None


_ENC = msgspec.msgpack.Encoder()
_DEC_REQUEST = msgspec.msgpack.Decoder(LookupRequest)
_DEC_REPLY = msgspec.msgpack.Decoder(LookupReply)


def _pack(tokens: Sequence[int]) -> bytes:
    return array("I", tokens).tobytes()


def _unpack(data: bytes) -> list[int]:
    a = array("I")
    if len(data) % a.itemsize:
        raise ValueError(f"tokens: expected a multiple of {a.itemsize} bytes, given {len(data)}")
    a.frombytes(data)
    return a.tolist()


class LookupServer:
    """Serves ``handler`` on a Unix socket at ``addr`` from a daemon thread per connection."""

    def __init__(self, addr: str, handler: Handler, key: bytes) -> None:
        self.addr = addr
        self._handler = handler
        if os.path.exists(addr):
            os.unlink(addr)
        self._listener = Listener(addr, family="AF_UNIX", authkey=key)
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="lmcache-lookup-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                logger.warning("lookup server %s: accept failed", self.addr, exc_info=True)
                continue
            except Exception:  # a client that fails the auth handshake
                logger.warning("lookup server %s: rejected a connection", self.addr, exc_info=True)
                continue
            threading.Thread(
                target=self._serve, args=(conn,), name="lmcache-lookup-conn", daemon=True
            ).start()

    def _serve(self, conn: Connection) -> None:
        with conn:
            while not self._closed:
                try:
                    frame = conn.recv_bytes(MAX_FRAME)
                except (EOFError, OSError):  # closed, or a frame over MAX_FRAME (stream unusable)
                    return
                try:
                    request = _DEC_REQUEST.decode(frame)
                except msgspec.DecodeError as e:
                    logger.warning("lookup server %s: malformed request: %s", self.addr, e)
                    reply = LookupReply(error=f"malformed request: {e}")
                else:
                    try:
                        reply = LookupReply(answer=self._handler(_unpack(request.tokens), request.salt))
                    except Exception as e:
                        logger.exception("lookup handler failed")
                        reply = LookupReply(error=f"{type(e).__name__}: {e}")
                try:
                    conn.send_bytes(_ENC.encode(reply))
                except (OSError, TypeError) as e:  # TypeError: an answer msgpack cannot carry
                    logger.warning("lookup server %s: reply not sent: %s", self.addr, e)
                    return

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.close()
        finally:
            if os.path.exists(self.addr):
                try:
                    os.unlink(self.addr)
                except OSError:
                    pass


class LookupClient:
    """Asks every rank's handler (``addrs``) and returns their answers, in rank order."""

    def __init__(self, addrs: Sequence[str], key: bytes, timeout: float) -> None:
        self.addrs = list(addrs)
        self._key = key
        self._timeout = timeout
        self._conns: dict[str, Connection] = {}
        self._lock = threading.Lock()

    def _ask(self, addr: str, tokens: Sequence[int], salt: str | None) -> dict[str, Any]:
        with _LOCAL_LOCK:
            local = _LOCAL.get(addr)
        if local is not None:
            try:
                return local(tokens, salt)
            except Exception as e:
                logger.exception("lookup handler failed")
                raise LookupUnavailable(f"worker at {addr} failed the lookup: {type(e).__name__}: {e}") from e
        conn = self._conns.get(addr)
        try:
            if conn is None:
                conn = Client(addr, family="AF_UNIX", authkey=self._key)
                self._conns[addr] = conn
            conn.send_bytes(_ENC.encode(LookupRequest(_pack(tokens), salt)))
            if not conn.poll(self._timeout):
                raise LookupUnavailable(f"worker at {addr} did not answer within {self._timeout} s")
            reply = _DEC_REPLY.decode(conn.recv_bytes(MAX_FRAME))
        except (OSError, EOFError, AuthenticationError, msgspec.DecodeError) as e:
            self._drop(addr)
            raise LookupUnavailable(f"worker at {addr} unreachable: {type(e).__name__}: {e}") from e
        except LookupUnavailable:
            self._drop(addr)  # a late answer must not be read as the next one's
            raise
        if reply.error is not None or reply.answer is None:
            raise LookupUnavailable(f"worker at {addr} failed the lookup: {reply.error}")
        return reply.answer

    def _drop(self, addr: str) -> None:
        conn = self._conns.pop(addr, None)
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def lookup(self, tokens: Sequence[int], salt: str | None) -> list[dict[str, Any]]:
        """Every rank's answer; :class:`LookupUnavailable` when one of them fails."""
        with self._lock:
            return [self._ask(a, tokens, salt) for a in self.addrs]

    def close(self) -> None:
        with self._lock:
            for a in list(self._conns):
                self._drop(a)
