"""``aesgcm``: AES-256-GCM at rest, a key per cache salt derived from a master key file.

Option ``key_file`` (required to write): a regular file of mode 0600 (else the tier refuses to
start) holding the master key: 32 or more bytes, or 64 or more hex digits. Per object:

* key = HKDF-SHA256(master, info = ``lmcache-core/aesgcm/v1`` + the key's salt tag), so
  tenants with different ``cache_salt`` values encrypt under different keys (the salt tag is
  the ``salt`` field of the object key: a hash, the salt itself never reaches storage);
* a fresh 96-bit random nonce, recorded with ``kid`` (a key id: HKDF of the master under
  another label, 8 bytes hex) so a reader with another master key reports ``aesgcm_wrong_key``
  without trying;
* associated data: the object key, the chunk format (format tag, dtype, shape) and the record of
  the codecs applied before this one, so an object copied under another key, or a header whose
  inner codec parameters were changed, fails authentication (``aesgcm_auth_failed``).

Threat model: protects chunks in L2 at rest and in transit to it (a stolen disk, a shared
bucket or Redis, another tenant's reader). It does not protect L1 (host memory holds plaintext)
or a host that holds the master key file; lookups still reveal which keys exist.
"""

from __future__ import annotations

import hmac
import os
import stat
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lmcache_core.serde.codec import CIPHER, ChunkInfo, Codec, CodecError, param

LABEL = b"lmcache-core/aesgcm/v1"
NONCE_BYTES = 12


def load_master_key(path: str) -> bytes:
    """The master key in ``path``; ValueError unless it is a regular file of mode 0600 holding
    32+ bytes (or 64+ hex digits)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"serde aesgcm: option key_file: cannot read {path!r} ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"serde aesgcm: option key_file: expected a regular file, given {path!r}")
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o600:
        raise ValueError(
            f"serde aesgcm: option key_file: expected mode 0600, given {mode:04o} on {path!r}; "
            f"run chmod 600 {path}"
        )
    with open(path, "rb") as f:
        raw = f.read(1 << 16)
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode()) if len(text) >= 64 else raw
    except (ValueError, UnicodeDecodeError):
        key = raw
    if len(key) < 32:
        raise ValueError(
            f"serde aesgcm: option key_file: expected at least 32 bytes of key, given {len(key)}"
        )
    return key


def _hkdf(master: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


def salt_of(key: str) -> str:
    """The salt tag field of an object key (``model|spec|tpW.R|salt|hash``); ``-`` otherwise."""
    parts = key.split("|")
    return parts[3] if len(parts) == 5 else "-"


def associated_data(info: ChunkInfo) -> bytes:
    shape = "x".join(str(s) for s in info.shape)
    return b"\0".join(
        p.encode() for p in ("lmcache-core/aesgcm/v1", info.key, info.fmt, info.dtype, shape, info.inner)
    )


class AesGcm(Codec):
    name = "aesgcm"
    stage = CIPHER
    lossless = True
    options: ClassVar[dict[str, str]] = {"key_file": ""}

    def __init__(self, options: Mapping[str, str] | None = None, *, reading: bool = False) -> None:
        super().__init__(options)
        self._master: bytes | None = None
        self.kid = ""
        if self.config["key_file"]:
            self._master = load_master_key(self.config["key_file"])
            self.kid = _hkdf(self._master, LABEL + b"/kid", 8).hex()
        elif not reading:
            raise ValueError("serde aesgcm: option key_file is required (aesgcm:key_file=/path/to/key)")
        self._keys: dict[str, AESGCM] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_reading(cls) -> Codec:
        """Without a key: every object it meets is a miss (``aesgcm_no_key``)."""
        return cls(reading=True)

    def spec(self) -> str:
        return f"aesgcm:key_file={self.config['key_file']}"

    def _cipher(self, salt: str) -> AESGCM:
        got = self._keys.get(salt)
        if got is None:
            assert self._master is not None
            got = AESGCM(_hkdf(self._master, LABEL + b"\0" + salt.encode()))
            with self._lock:
                if len(self._keys) >= 4096:
                    self._keys.clear()
                got = self._keys.setdefault(salt, got)
        return got

    def encode(self, data: Any, info: ChunkInfo) -> tuple[Any, dict[str, str]] | None:
        nonce = os.urandom(NONCE_BYTES)
        out = self._cipher(salt_of(info.key)).encrypt(nonce, data, associated_data(info))
        return out, {"kid": self.kid, "nonce": nonce.hex()}

    def decode(self, data: Any, params: Mapping[str, str], info: ChunkInfo, out_len: int,
               out: Any = None) -> Any:  # fmt: skip
        if self._master is None:
            raise CodecError("aesgcm_no_key", "this tier has no aesgcm key_file")
        if not hmac.compare_digest(param(params, "aesgcm", "kid"), self.kid):
            raise CodecError("aesgcm_wrong_key", f"object key id {params.get('kid')}, this tier's {self.kid}")
        try:
            nonce = bytes.fromhex(param(params, "aesgcm", "nonce"))
        except ValueError:
            nonce = b""
        if len(nonce) != NONCE_BYTES:
            raise CodecError("bad_encoding", "aesgcm: bad nonce")
        try:
            return self._cipher(salt_of(info.key)).decrypt(nonce, data, associated_data(info))
        except InvalidTag:
            raise CodecError("aesgcm_auth_failed", info.key) from None
