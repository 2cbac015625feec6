"""Wire protocol of the cache server: msgspec Structs encoded as msgpack, one per ZMQ frame.

A client's DEALER sends one frame per request; the server's ROUTER answers with one frame. Every
request carries ``rid`` (the client's request number), echoed in its reply so a client can drop
late replies to requests it gave up on. The first request of a connection is :class:`Hello`,
whose ``version`` must equal :data:`PROTOCOL_VERSION`; the server answers anything else first
with an :class:`Error` of code ``"hello_first"``.

Tokens travel as bytes: the prompt's ids as little-endian uint32 (``[num_tokens]``,
:func:`lmcache_core.tokens.as_token_array`). KV bytes never travel: :class:`Slot` names a place
in the server's shared memory (segment, byte offset, byte count) that the worker gathers into
(store) or scatters from (retrieve).

Decoding is typed (no code runs on decode, no pickle): a frame that is not msgpack, or not one of
the requests, or larger than the server's limit, gets an :class:`Error` reply and the server keeps
serving. Error codes are the keys of :data:`ERROR_CODES`.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import numpy as np

#: Bumped on any incompatible change of a Struct below (checked at hello: must be equal).
PROTOCOL_VERSION = 1
#: Bumped when requests are added (old clients keep working; a new client sends a newer request
#: only to a server whose :class:`HelloReply` ``minor`` is at least the request's
#: :data:`MINOR_OF`). 1: the GPU IPC ops (``register_ipc``, ``store_ipc``, ``retrieve_ipc``,
#: ``release_ipc``).
PROTOCOL_MINOR = 1

#: Default largest request frame in bytes (a 1M-token prompt is 4 MiB of uint32).
DEFAULT_MAX_MESSAGE_BYTES = 8 * 2**20

Name = Annotated[str, msgspec.Meta(max_length=256)]
Salt = Annotated[str, msgspec.Meta(max_length=4096)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]

#: Error code -> what it means.
ERROR_CODES = {
    "malformed": "the frame is not a msgpack request of this protocol",
    "unknown_op": "the request's op is not one this server knows",
    "too_large": "the frame exceeds the server's max_message_bytes",
    "version": "the client's protocol version differs from the server's",
    "hello_first": "the connection has not sent hello yet",
    "not_registered": "the request needs register first",
    "bad_request": "a field's value is out of range (the message says which)",
    "lease_unknown": "the lease does not exist (released, expired or from another connection)",
    "lease_expired": "the lease expired (no heartbeat in time); its slots may have been reused",
    "shutting_down": "the server is stopping",
    "no_gpu": "the request needs a GPU backend on the server (serve --gpu-backend), and it has none",
    "segment_unavailable": "(client side) a slot's shared-memory segment cannot be mapped",
    "internal": "the server failed on this request (logged there); it keeps serving",
}


class Request(msgspec.Struct, tag_field="op", forbid_unknown_fields=True):
    """Base of every request: ``rid`` is echoed in the reply."""

    rid: Count = 0


class Hello(Request, tag="hello"):
    """First request of a connection: the protocol version and a free-form client name."""

    version: int = 0
    client: Name = ""


class SectionDesc(msgspec.Struct, array_like=True):
    """One plane kind of a chunk format (:class:`lmcache_core.layout.ChunkSection`)."""

    name: Name
    hidden: Annotated[int, msgspec.Meta(gt=0, lt=2**31)]
    dtype: Name
    element_size: Annotated[int, msgspec.Meta(gt=0, le=64)]


class FormatDesc(msgspec.Struct, array_like=True):
    """One layer group's chunk format (:class:`lmcache_core.layout.ChunkFormat`)."""

    num_layers: Annotated[int, msgspec.Meta(gt=0, lt=2**20)]
    sections: Annotated[list[SectionDesc], msgspec.Meta(min_length=1, max_length=8)]


class Register(Request, tag="register"):
    """Who the client is and what its chunks look like: the engine's name, its tensor-parallel
    rank and world size, the model id, and every layer group's chunk format (the key scope is
    ``(model_id, formats, world_size, rank, salt)``: engines registering the same share chunks)."""

    engine: Name = ""
    model_id: Name = "model"
    rank: Count = 0
    world_size: Annotated[int, msgspec.Meta(gt=0, lt=2**16)] = 1
    formats: Annotated[list[FormatDesc], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)


class Lookup(Request, tag="lookup"):
    """Longest cached prefix of ``tokens`` (uint32 LE bytes); ``prefetch`` starts L2 -> L1 loads."""

    tokens: bytes = b""
    salt: Salt | None = None
    prefetch: bool = True


class PrepareStore(Request, tag="prepare_store"):
    """Reserve slots for the chunks of ``tokens`` not cached yet, up to the chunk ending at or
    before ``stop`` tokens (-1: all; the first token whose KV the engine lacks otherwise)."""

    tokens: bytes = b""
    salt: Salt | None = None
    stop: int = -1


class CommitStore(Request, tag="commit_store"):
    """The first ``filled`` slots of ``lease`` hold their chunks: publish them, free the rest."""

    lease: Count = 0
    filled: Count = 0


class PrepareRetrieve(Request, tag="prepare_retrieve"):
    """Pin the cached prefix of ``tokens`` from the chunk holding token ``skip`` on, loading L1
    misses from L2; stops at the first chunk that no tier has."""

    tokens: bytes = b""
    salt: Salt | None = None
    skip: Count = 0


class CommitRetrieve(Request, tag="commit_retrieve"):
    """The scatter of ``lease``'s slots is done: unpin them. An error reply (``lease_expired``)
    means the slots may have changed under the reader: its KV must not be used."""

    lease: Count = 0


class Release(Request, tag="release"):
    """Give up ``lease`` without publishing anything."""

    lease: Count = 0


IpcHandle = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
Axes = Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=2**62)]], msgspec.Meta(max_length=8)]


class IpcTensor(msgspec.Struct, array_like=True):
    """A worker's KV tensor as the server maps it: the fields of
    :class:`lmcache_gpu.ipc.ExportedTensor` (handle of the allocation, byte offset into it, the
    worker's GPU index, torch dtype name, shape and strides in elements)."""

    handle: IpcHandle
    offset: Count
    device: Annotated[int, msgspec.Meta(ge=0, lt=2**16)]
    dtype: Name
    shape: Axes
    strides: Axes


class IpcHints(msgspec.Struct, omit_defaults=True):
    """:class:`lmcache_core.layout_registry.LayoutHints` of one layer group (``kind``: the
    layout the worker detected), so the server detects the same layout on the mapped tensors."""

    kind: Name | None = None
    num_kv_heads: Annotated[int, msgspec.Meta(gt=0, lt=2**31)] | None = None
    head_size: Annotated[int, msgspec.Meta(gt=0, lt=2**31)] | None = None
    block_size: Annotated[int, msgspec.Meta(gt=0, lt=2**31)] | None = None
    num_layers: Annotated[int, msgspec.Meta(gt=0, lt=2**20)] | None = None
    isa: Name | None = None
    head_size_v: Annotated[int, msgspec.Meta(gt=0, lt=2**31)] | None = None
    variant: Name | None = None


class IpcGroup(msgspec.Struct, array_like=True):
    """One layer group's KV tensors (flattened layer-major, in the worker's order), its layout
    hints, and how many tensors make one layer (1: a tensor per layer or for every layer; 2: a
    ``(K, V)`` tuple per layer)."""

    tensors: Annotated[list[IpcTensor], msgspec.Meta(min_length=1, max_length=4096)]
    hints: IpcHints = msgspec.field(default_factory=IpcHints)
    per_layer: Annotated[int, msgspec.Meta(gt=0, le=8)] = 1


class RegisterIpc(Request, tag="register_ipc"):
    """(minor 1) After ``register``, on a GPU host: the worker's KV tensors (one
    :class:`IpcGroup` per registered chunk format) and the handle of its interprocess event,
    recorded on the forward's stream before every ``store_ipc``. ``device``: the server's index
    of the worker's GPU (-1: the worker's own index). The server maps them once for the session
    (until ``release_ipc``, another ``register_ipc``/``register``/``hello``, or the session's
    expiry) and answers its own event's handle (:class:`RegisterIpcReply`)."""

    groups: Annotated[list[IpcGroup], msgspec.Meta(min_length=1, max_length=64)] = msgspec.field(
        default_factory=list
    )
    event: bytes = b""
    device: Annotated[int, msgspec.Meta(ge=-1, lt=2**16)] = -1


#: One ``int64`` little-endian slot per token of the request's tokens, per layer group.
SlotBytes = Annotated[list[bytes], msgspec.Meta(max_length=64)]


class StoreIpc(Request, tag="store_ipc"):
    """(minor 1) ``prepare_store``, the gather and ``commit_store`` in one request: the server
    waits (on its copy stream) for the worker's event, gathers the chunks not cached yet from
    the mapped KV (``slot_mapping``: per group, int64 LE per token) into L1 and publishes them;
    answers a :class:`CommitReply`."""

    tokens: bytes = b""
    salt: Salt | None = None
    stop: int = -1
    slot_mapping: SlotBytes = msgspec.field(default_factory=list)


class RetrieveIpc(Request, tag="retrieve_ipc"):
    """(minor 1) ``prepare_retrieve``, the scatter and ``commit_retrieve`` in one request: the
    server scatters the cached prefix from the chunk holding token ``skip`` on into the mapped KV,
    records its event after the scatter, and answers a :class:`CommitReply` (the worker's compute
    stream waits for that event before reading the pages)."""

    tokens: bytes = b""
    salt: Salt | None = None
    skip: Count = 0
    slot_mapping: SlotBytes = msgspec.field(default_factory=list)


class ReleaseIpc(Request, tag="release_ipc"):
    """(minor 1) Unmap the session's KV tensors (the worker frees or reallocates them)."""


class Heartbeat(Request, tag="heartbeat"):
    """Keeps the connection's leases alive (every request does; this one when idle)."""


class Stats(Request, tag="stats"):
    """The server's status document (what ``/status`` serves)."""


REQUESTS = (
    Hello,
    Register,
    Lookup,
    PrepareStore,
    CommitStore,
    PrepareRetrieve,
    CommitRetrieve,
    Release,
    Heartbeat,
    Stats,
    RegisterIpc,
    StoreIpc,
    RetrieveIpc,
    ReleaseIpc,
)
AnyRequest = (
    Hello
    | Register
    | Lookup
    | PrepareStore
    | CommitStore
    | PrepareRetrieve
    | CommitRetrieve
    | Release
    | Heartbeat
    | Stats
    | RegisterIpc
    | StoreIpc
    | RetrieveIpc
    | ReleaseIpc
)
OPS = frozenset(str(r.__struct_config__.tag) for r in REQUESTS)
#: The minor version a server must announce before a client sends the op.
MINOR_OF = {str(r.__struct_config__.tag): 1 for r in (RegisterIpc, StoreIpc, RetrieveIpc, ReleaseIpc)}


# ---- replies ---------------------------------------------------------------------------------


class Reply(msgspec.Struct, tag_field="op"):
    rid: int = 0


class Error(Reply, tag="error"):
    """The request failed; ``code`` is a key of :data:`ERROR_CODES`."""

    code: str = "internal"
    message: str = ""


class HelloReply(Reply, tag="hello"):
    """Server version and the timing a client must keep: heartbeat at least every
    ``heartbeat_seconds``; leases die ``lease_seconds`` after the last request. ``shm_dir``:
    where the server's segments are (a client in another mount namespace may map them
    elsewhere). ``minor``: :data:`PROTOCOL_MINOR` (a server from before minor versions sends
    none: 0). ``gpu``: the server's GPU backend (``"cuda"``; "" = none: no IPC ops)."""

    version: int = PROTOCOL_VERSION
    minor: int = 0
    server: str = ""
    chunk_size: int = 0
    save_partial_chunks: bool = True
    heartbeat_seconds: float = 1.0
    lease_seconds: float = 5.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    shm_dir: str = "/dev/shm"
    gpu: str = ""


class RegisterReply(Reply, tag="register"):
    session: int = 0
    spec_tag: str = ""


class RegisterIpcReply(Reply, tag="register_ipc"):
    """The server mapped ``tensors`` KV tensors; ``event``: the handle of its interprocess event
    (recorded after each ``retrieve_ipc``'s scatter)."""

    event: bytes = b""
    tensors: int = 0


class LookupReply(Reply, tag="lookup"):
    """Cached prefix: tokens, chunks and bytes, and the part of each found only in L2."""

    tokens: int = 0
    chunks: int = 0
    nbytes: int = 0
    l2_tokens: int = 0
    l2_chunks: int = 0
    l2_bytes: int = 0


class Slot(msgspec.Struct, array_like=True):
    """One chunk's place in shared memory: token range ``[start, end)`` of the prompt, segment
    name, byte offset and byte count (the chunk's groups back to back); ``l2``: it was not in L1
    when the request came (retrieve only)."""

    start: int
    end: int
    segment: str
    offset: int
    nbytes: int
    l2: bool = False


class PrepareReply(Reply, tag="prepare"):
    """A lease on ``slots`` (in prompt order). ``present``: chunks skipped because cached
    (store); ``full``: store stopped because L1 (or the salt's quota) had no room."""

    lease: int = 0
    slots: list[Slot] = msgspec.field(default_factory=list)
    present: int = 0
    full: bool = False


class CommitReply(Reply, tag="commit"):
    """Chunks, tokens and bytes published (store) or read (retrieve)."""

    chunks: int = 0
    tokens: int = 0
    nbytes: int = 0


class Ack(Reply, tag="ack"):
    pass


class HeartbeatReply(Reply, tag="heartbeat"):
    leases: int = 0


class StatsReply(Reply, tag="stats"):
    status: dict[str, Any] = msgspec.field(default_factory=dict)


AnyReply = (
    Error
    | HelloReply
    | RegisterReply
    | RegisterIpcReply
    | LookupReply
    | PrepareReply
    | CommitReply
    | Ack
    | HeartbeatReply
    | StatsReply
)

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(AnyRequest)
_reply_decoder = msgspec.msgpack.Decoder(AnyReply)
_raw_decoder = msgspec.msgpack.Decoder()


class ProtocolError(ValueError):
    """A frame that is not a valid message; ``code`` is ``malformed``, ``unknown_op`` or
    ``too_large`` and ``rid`` the request number when it could be read (else 0)."""

    def __init__(self, code: str, message: str, rid: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.rid = rid


def encode(message: Request | Reply) -> bytes:
    return _encoder.encode(message)


def decode_request(frame: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> AnyRequest:
    """The request in ``frame``; :class:`ProtocolError` for an oversized, malformed or unknown one."""
    if len(frame) > max_bytes:
        raise ProtocolError("too_large", f"frame: expected at most {max_bytes} bytes, given {len(frame)}")
    try:
        return _request_decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        rid, op = _peek(frame)
        if op is not None and op not in OPS:
            raise ProtocolError(
                "unknown_op", f"op: expected one of {sorted(OPS)}, given {op[:64]!r}", rid
            ) from None
        raise ProtocolError("malformed", f"frame: {e}", rid) from None


def _peek(frame: bytes) -> tuple[int, str | None]:
    """``(rid, op)`` of a frame that is a msgpack map, as far as they can be read."""
    try:
        raw = _raw_decoder.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        return 0, None
    if not isinstance(raw, dict):
        return 0, None
    rid = raw.get("rid")
    op = raw.get("op")
    return (
        rid if isinstance(rid, int) and 0 <= rid < 2**63 else 0,
        op if isinstance(op, str) else None,
    )


def decode_reply(frame: bytes) -> AnyReply:
    """The reply in ``frame`` (client side); :class:`ProtocolError` when it is not one."""
    try:
        return _reply_decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ProtocolError("malformed", f"reply: {e}") from None


def tokens_from_bytes(data: bytes) -> np.ndarray:
    """Request token bytes back to ``<u4`` ids ``[num_tokens]``; ValueError when the length is
    not a whole number of ids."""
    if len(data) % 4:
        raise ValueError(
            f"tokens: expected uint32 little-endian ids (a multiple of 4 bytes), given {len(data)} bytes"
        )
    return np.frombuffer(data, dtype="<u4")
