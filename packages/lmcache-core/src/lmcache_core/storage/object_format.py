"""The byte format of a chunk in every L2 tier: a small self-describing header, then the payload.

::

    offset  size  field
    0       4     magic b"LMKV"
    4       2     version (1: plain payload; 2: encoded payload, serde record below)
    6       2     header_len: bytes before the payload (header + zero padding)
    8       8     payload_len (bytes)
    16      8     payload checksum (algorithm below; crc32 uses the low 32 bits)
    24      1     checksum algorithm: 1 = xxh3_64, 2 = crc32
    25      1     ndim of the chunk's shape
    26      2     key length (bytes, utf-8)
    28      2     format tag length
    30      1     dtype length
    31      1     reserved (0)
    32      4     num_tokens covered by the chunk
    36      4     crc32 of the used header bytes, computed with this field zeroed
    40      8*n   shape (uint64 each)
    ...           key, format tag, dtype (utf-8)
    version 2:    2 bytes serde record length, then the record (utf-8 JSON, see :class:`Serde`)
    ...           zero padding up to header_len
    header_len    payload_len bytes of payload

All integers are little-endian. The key is stored in full, so a reader can check it got the
object it asked for (object names are digests of keys). A header whose magic, version, header
checksum, key, format or sizes do not match, or a payload whose checksum does not match, is a
*corrupt* object: callers treat it as a miss and never hand its bytes on.

Checksum choice (measured on this project's machine, 32 MiB, median of 7): xxh3_64 15.3 GiB/s,
xxh64 5.0, zlib.crc32 1.05, hashlib.blake2b 0.49, sha256 0.62. xxh3_64 costs about 2 ms per
32 MiB chunk and releases the GIL; crc32 (30 ms) does not scale across threads here. xxh3 comes
from ``xxhash``, a dependency of the core; should it still be missing (a broken install),
writers fall back to crc32.

Damaged versus unverifiable: :class:`CorruptObject` means proven damaged under this format
(bad header checksum, bad payload checksum, wrong key, truncated, zeroed): callers may remove
it. :class:`UnverifiableObject` (a subclass) means this reader cannot judge it: another magic
(a foreign format), another version (a newer writer during a rolling upgrade), or a checksum
algorithm it cannot compute. It is a miss and must be left untouched.

Versions: a plain object (no codec chain) is written as version 1, readable by every reader. An
object whose payload went through a codec chain (:mod:`lmcache_core.serde`) is version 2: its
header also records the chain, each codec's parameters and the plain payload's length. A reader
that predates version 2 sees ``newer_version`` (unverifiable: a miss, left in place), so it never
hands encoded bytes on as KV. The payload checksum covers the stored (encoded) bytes.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lmcache_core.layout import ChunkFormat

MAGIC = b"LMKV"
#: The newest version this module reads and writes (1: plain payload, 2: with a serde record).
VERSION = 2
PLAIN_VERSION = 1
VERSIONS = (1, 2)
#: Largest serde record (JSON bytes) a header carries.
MAX_SERDE = 1024
XXH3_64 = 1
CRC32 = 2
ALGORITHMS = {"xxh3": XXH3_64, "crc32": CRC32}

_FIXED = struct.Struct("<4sHHQQBBHHBBII")
FIXED_SIZE = _FIXED.size  # 40
_CRC_OFFSET = 36
#: Largest header we write or accept (keeps a reader's first read bounded).
MAX_HEADER = 4096
#: Headers are padded to a multiple of this, so payloads start 64-byte aligned in files.
HEADER_ALIGN = 64

try:  # a core dependency; a host that lacks it still reads nothing it cannot verify
    import xxhash

    _xxhash: Any = xxhash
except ImportError:  # pragma: no cover - depends on the environment
    _xxhash = None


class CorruptObject(ValueError):
    """An object proven damaged under this format; ``reason`` is a short tag. Removable."""

    #: Whether a reader may delete the object (False: it cannot judge it).
    removable = True

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class UnverifiableObject(CorruptObject):
    """An object this reader cannot judge (``foreign_format``, ``newer_version``,
    ``unverifiable`` checksum): a miss, never loaded, never deleted."""

    removable = False


def has_xxhash() -> bool:
    return _xxhash is not None


def default_algorithm() -> int:
    """xxh3_64 when ``xxhash`` is installed, else crc32."""
    return XXH3_64 if _xxhash is not None else CRC32


def parse_algorithm(name: str) -> int:
    """``"xxh3"`` / ``"crc32"`` -> algorithm id; ValueError listing the valid names otherwise."""
    algo = ALGORITHMS.get(name)
    if algo is None:
        raise ValueError(f"checksum: expected one of {sorted(ALGORITHMS)}, given {name!r}")
    if algo == XXH3_64 and _xxhash is None:
        raise ValueError("checksum: xxh3 needs the 'xxhash' package (pip install xxhash), not installed")
    return algo


def checksum(algo: int, payload: Any) -> int:
    """Checksum of ``payload`` (any C-contiguous buffer) with algorithm ``algo``."""
    if algo == XXH3_64:
        if _xxhash is None:
            raise UnverifiableObject("unverifiable", "object uses xxh3_64 and 'xxhash' is missing")
        return int(_xxhash.xxh3_64_intdigest(payload))
    if algo == CRC32:
        return zlib.crc32(payload)
    raise UnverifiableObject("unverifiable", f"unknown checksum algorithm {algo}")


def can_verify(algo: int) -> bool:
    """Whether this process can compute checksum algorithm ``algo``."""
    return algo == CRC32 or (algo == XXH3_64 and _xxhash is not None)


@dataclass(frozen=True)
class Serde:
    """How a stored payload was encoded: the codec chain in the order it was applied, each
    codec's parameters (text to text, what its decoder needs) and the plain payload's length in
    bytes. Stored in a version-2 header as ``{"n": plain_len, "c": [[name, {param: value}]]}``."""

    plain_len: int
    chain: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]

    def to_bytes(self) -> bytes:
        doc = {"n": self.plain_len, "c": [[name, dict(params)] for name, params in self.chain]}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Serde:
        """Parse a record; :class:`CorruptObject` (``bad_header``) when it is not one."""
        try:
            doc = json.loads(raw.decode())
            plain_len = doc["n"]
            chain = tuple(
                (str(name), tuple(sorted((str(k), str(v)) for k, v in params.items())))
                for name, params in doc["c"]
            )
            if isinstance(plain_len, bool) or not isinstance(plain_len, int) or plain_len < 0:
                raise ValueError(plain_len)
            if not chain or not all(isinstance(n, str) and n for n, _ in chain):
                raise ValueError("empty chain")
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise CorruptObject("bad_header", f"serde record {raw[:80]!r}: {e}") from None
        return cls(plain_len, chain)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.chain)


@dataclass(frozen=True)
class ObjectMeta:
    """What a chunk is: format tag (e.g. a ``KVCacheSpec.tag``), dtype, shape and tokens covered;
    ``serde`` says how its payload was encoded (None: stored plain)."""

    fmt: str
    dtype: str
    shape: tuple[int, ...]
    num_tokens: int = 0
    serde: Serde | None = None


def chunk_meta(spec_tag: str, formats: Sequence[ChunkFormat], num_tokens: int) -> ObjectMeta:
    """The header meta of a stored chunk of ``num_tokens`` tokens of a model's layer groups.

    One group whose sections are alike (:attr:`ChunkFormat.is_uniform`): its ``[num_kv,
    num_layers, num_tokens, hidden]`` in its dtype. Otherwise (several groups, or sections of
    different widths or dtypes: Ascend MLA nope/rope) ``uint8 [total bytes]``, every group's
    sections back to back in ``formats`` order; ``spec_tag`` (the
    :attr:`lmcache_core.layout.KVCacheSpec.tag` of ``formats``) names the sections.
    """
    if len(formats) == 1 and formats[0].is_uniform:
        f = formats[0]
        return ObjectMeta(spec_tag, f.dtype, f.shape(num_tokens), num_tokens)
    return ObjectMeta(spec_tag, "uint8", (sum(f.nbytes(num_tokens) for f in formats),), num_tokens)


@dataclass(frozen=True)
class ObjectHeader:
    """A decoded header. ``header_len`` is where the payload starts."""

    key: str
    meta: ObjectMeta
    payload_len: int
    checksum: int
    algorithm: int
    header_len: int

    @property
    def total_len(self) -> int:
        return self.header_len + self.payload_len

    @property
    def plain_len(self) -> int:
        """Bytes of the decoded payload (``payload_len`` when stored plain)."""
        return self.payload_len if self.meta.serde is None else self.meta.serde.plain_len

    def plain(self) -> ObjectHeader:
        """This header as the caller of a load sees it once the payload is decoded: no serde
        record, ``payload_len`` the plain length."""
        if self.meta.serde is None:
            return self
        meta = ObjectMeta(self.meta.fmt, self.meta.dtype, self.meta.shape, self.meta.num_tokens)
        return ObjectHeader(self.key, meta, self.plain_len, self.checksum, self.algorithm, self.header_len)


def encode_header(
    key: str, meta: ObjectMeta, payload: Any, payload_len: int, algo: int, align: int = HEADER_ALIGN
) -> bytes:
    """Header bytes for ``payload`` (a buffer of ``payload_len`` bytes), padded to ``align``.
    Version 1 when ``meta.serde`` is None, else version 2 with the serde record."""
    kb, fb, db = key.encode(), meta.fmt.encode(), meta.dtype.encode()
    sb = b"" if meta.serde is None else meta.serde.to_bytes()
    if len(kb) > 2048 or len(fb) > 1024 or len(db) > 64 or len(meta.shape) > 16 or len(sb) > MAX_SERDE:
        raise ValueError(
            f"key/meta: expected key <= 2048 bytes, format <= 1024, dtype <= 64, ndim <= 16, serde "
            f"record <= {MAX_SERDE}, given {len(kb)}, {len(fb)}, {len(db)}, {len(meta.shape)}, {len(sb)}"
        )
    version = PLAIN_VERSION if meta.serde is None else VERSION
    used = FIXED_SIZE + 8 * len(meta.shape) + len(kb) + len(fb) + len(db)
    used += 0 if meta.serde is None else 2 + len(sb)
    header_len = -(-used // align) * align
    if header_len > MAX_HEADER and align <= MAX_HEADER:
        raise ValueError(f"header: {header_len} bytes exceeds {MAX_HEADER}")
    out = bytearray(header_len)
    _FIXED.pack_into(
        out, 0, MAGIC, version, header_len, payload_len, checksum(algo, payload), algo, len(meta.shape),
        len(kb), len(fb), len(db), 0, meta.num_tokens, 0,
    )  # fmt: skip
    pos = FIXED_SIZE
    struct.pack_into(f"<{len(meta.shape)}Q", out, pos, *meta.shape)
    pos += 8 * len(meta.shape)
    for part in (kb, fb, db):
        out[pos : pos + len(part)] = part
        pos += len(part)
    if meta.serde is not None:
        struct.pack_into("<H", out, pos, len(sb))
        out[pos + 2 : pos + 2 + len(sb)] = sb
    struct.pack_into("<I", out, _CRC_OFFSET, zlib.crc32(memoryview(out)[:used]))
    return bytes(out)


def header_size_needed(prefix: Any) -> int:
    """Bytes of header that follow from the first ``FIXED_SIZE`` bytes (``prefix``).

    An object that does not start with this format's magic is foreign (unverifiable), except
    an empty or zero-filled start, which is what a torn write leaves (damaged); so is a start
    that is this magic cut short.
    """
    n = len(prefix)
    head = bytes(prefix[:4])
    if n == 0 or (head == MAGIC[: len(head)] and n < FIXED_SIZE):
        raise CorruptObject("truncated", f"{n} bytes, header needs {FIXED_SIZE}")
    if head != MAGIC:
        if head == b"\0" * len(head):
            raise CorruptObject("zeroed", "object starts with zero bytes")
        raise UnverifiableObject("foreign_format", f"magic {head!r}")
    version = struct.unpack_from("<H", prefix, 4)[0]
    if version not in VERSIONS:
        raise UnverifiableObject("newer_version" if version > VERSION else "other_version",
                                 f"{version}, this reader knows {VERSION}")  # fmt: skip
    return int(struct.unpack_from("<H", prefix, 6)[0])


def decode_header(data: Any, expect_key: str | None = None) -> ObjectHeader:
    """Decode and check the header at the start of ``data`` (at least ``header_len`` bytes).

    Raises :class:`CorruptObject` on any mismatch, including a stored key that is not ``expect_key``.
    """
    header_len = header_size_needed(data)
    if len(data) < FIXED_SIZE or header_len < FIXED_SIZE:
        raise CorruptObject("bad_header", f"header_len {header_len}")
    (_, version, _, payload_len, csum, algo, ndim, klen, flen, dlen, _, num_tokens, hcrc) = (
        _FIXED.unpack_from(data, 0)
    )
    used = FIXED_SIZE + 8 * ndim + klen + flen + dlen
    slen = 0
    if version >= 2:
        if used + 2 > min(header_len, len(data)):
            raise CorruptObject("bad_header", f"serde length at {used} past the header ({header_len})")
        slen = struct.unpack_from("<H", data, used)[0]
        used += 2 + slen
    if used > header_len or len(data) < used:
        raise CorruptObject("bad_header", f"fields need {used} bytes, header has {header_len}")
    raw = bytearray(memoryview(data)[:used])
    raw[_CRC_OFFSET : _CRC_OFFSET + 4] = b"\0\0\0\0"
    if zlib.crc32(raw) != hcrc:
        raise CorruptObject("bad_header", "header checksum mismatch")
    pos = FIXED_SIZE
    shape = struct.unpack_from(f"<{ndim}Q", raw, pos)
    pos += 8 * ndim
    key = bytes(raw[pos : pos + klen]).decode()
    pos += klen
    fmt = bytes(raw[pos : pos + flen]).decode()
    pos += flen
    dtype = bytes(raw[pos : pos + dlen]).decode()
    pos += dlen
    serde = Serde.from_bytes(bytes(raw[pos + 2 : pos + 2 + slen])) if version >= 2 else None
    if expect_key is not None and key != expect_key:
        raise CorruptObject("wrong_key", f"stored key {key!r}, asked for {expect_key!r}")
    if not can_verify(algo):  # before any payload byte is read or a buffer is asked for
        raise UnverifiableObject("unverifiable", f"checksum algorithm {algo} not available here")
    meta = ObjectMeta(fmt, dtype, tuple(int(s) for s in shape), int(num_tokens), serde)
    return ObjectHeader(key, meta, int(payload_len), int(csum), int(algo), header_len)


def verify_payload(header: ObjectHeader, payload: Any) -> None:
    """Raise :class:`CorruptObject` unless ``payload`` has the header's length and checksum."""
    n = memoryview(payload).nbytes
    if n != header.payload_len:
        raise CorruptObject("truncated", f"payload {n} bytes, header says {header.payload_len}")
    if checksum(header.algorithm, payload) != header.checksum:
        raise CorruptObject("bad_checksum", header.key)


def encode_object(key: str, meta: ObjectMeta, payload: Any, algo: int | None = None) -> bytes:
    """Header + payload as one ``bytes`` (for tiers that store a single value)."""
    view = memoryview(payload).cast("B")
    header = encode_header(key, meta, view, view.nbytes, default_algorithm() if algo is None else algo)
    return b"".join((header, view))


def split_object(data: Any, expect_key: str | None = None) -> tuple[ObjectHeader, memoryview]:
    """``(header, payload view)`` of a whole object, both checked; CorruptObject otherwise."""
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    header = decode_header(view, expect_key)
    if view.nbytes != header.total_len:
        raise CorruptObject("truncated", f"object {view.nbytes} bytes, header says {header.total_len}")
    payload = view[header.header_len :]
    verify_payload(header, payload)
    return header, payload
