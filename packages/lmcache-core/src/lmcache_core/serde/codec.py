"""The codec interface: one reversible (or, for lossy codecs, approximately reversible) step.

A codec turns the bytes of a chunk into other bytes and back. It is built from the options the
tier was configured with (:meth:`Codec.__init__`, for writing and reading), or, when a reader
meets a codec its own chain does not name, from no options (:meth:`Codec.for_reading`).
:meth:`Codec.encode` returns the encoded bytes and the parameters its decoder needs (recorded in
the object header, text to text); :meth:`Codec.decode` gets them back.

Stages order a chain: tensor codecs (``fp8``, ``int8``: they read the chunk's dtype and shape)
come first, byte codecs (``zstd``, ``lz4``) next, ciphers (``aesgcm``) last; each at most once.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from lmcache_core.storage.object_format import UnverifiableObject

TENSOR = 0
BYTES = 1
CIPHER = 2
STAGE_NAMES = {TENSOR: "tensor", BYTES: "bytes", CIPHER: "cipher"}
#: Bytes per element of the dtypes a chunk header names (others count as 1: raw bytes).
ITEMSIZE = {"float64": 8, "float32": 4, "int32": 4, "float16": 2, "bfloat16": 2, "int16": 2}


class CodecError(UnverifiableObject):
    """A stored object this reader cannot decode (codec missing, wrong key, failed
    authentication, an encoding it does not understand): a miss, never loaded, never deleted."""


@dataclass(frozen=True)
class ChunkInfo:
    """What a codec is told about the chunk it encodes or decodes.

    ``key``: the object key (``model|spec|tpW.R|salt|hash``); ``fmt``, ``dtype``, ``shape``: the
    plain chunk's header meta (``shape`` in elements, e.g. ``[num_kv, num_layers, num_tokens,
    hidden]``); ``itemsize``: bytes per element of the data this codec receives (the dtype's
    size for the first codec, 1 after a tensor codec); ``inner``: the serde record of the codecs
    applied before this one (JSON text, empty for the first), which a cipher authenticates.
    """

    key: str
    fmt: str
    dtype: str
    shape: tuple[int, ...]
    itemsize: int
    inner: str = ""


def parse_options(name: str, options: Mapping[str, str], known: Mapping[str, str]) -> dict[str, str]:
    """``options`` checked against ``known`` (option -> default); ValueError naming the unknown
    ones and the valid ones. Returns every known option with its value or default."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        valid = ", ".join(sorted(known)) or "none"
        raise ValueError(f"serde {name}: unknown option(s) {', '.join(unknown)}; valid: {valid}")
    return {k: str(options.get(k, v)) for k, v in known.items()}


def int_option(codec: str, name: str, raw: str, minimum: int, maximum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if not minimum <= value <= maximum:
        raise ValueError(
            f"serde {codec}: option {name}: expected an integer in {minimum}..{maximum}, given {raw!r}"
        )
    return value


def param(params: Mapping[str, str], codec: str, name: str) -> str:
    """A recorded parameter, or CodecError ``bad_encoding`` when the header lacks it."""
    value = params.get(name)
    if value is None:
        raise CodecError("bad_encoding", f"{codec}: parameter {name!r} missing from the header")
    return value


class Codec(abc.ABC):
    """Base of every codec. Subclasses set ``name``, ``stage``, ``lossless`` and ``options``
    (option -> default text), and implement :meth:`encode` and :meth:`decode`. Instances are
    used from several threads at once: keep them immutable after ``__init__``."""

    name: ClassVar[str] = ""
    stage: ClassVar[int] = BYTES
    lossless: ClassVar[bool] = True
    options: ClassVar[dict[str, str]] = {}

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        self.config = parse_options(self.name, options or {}, self.options)

    @classmethod
    def for_reading(cls) -> Codec:
        """An instance that decodes what another writer encoded (its header gives the parameters)."""
        return cls()

    def spec(self) -> str:
        """This codec as chain text (``fp8:format=e4m3:head_size=128``)."""
        return ":".join([self.name, *(f"{k}={v}" for k, v in sorted(self.config.items()))])

    @abc.abstractmethod
    def encode(self, data: Any, info: ChunkInfo) -> tuple[Any, dict[str, str]] | None:
        """Encode ``data`` (uint8 numpy array ``[nbytes]``); returns the encoded bytes (a
        buffer) and the parameters to record, or None when the codec does not apply to this
        chunk (a tensor codec given bytes of mixed dtypes, a buffer over a codec's size limit):
        the chain then records it as not applied."""

    @abc.abstractmethod
    def decode(self, data: Any, params: Mapping[str, str], info: ChunkInfo, out_len: int,
               out: Any = None) -> Any:  # fmt: skip
        """Decode ``data`` (uint8 numpy array) back into ``out_len`` bytes: into ``out`` (a
        writable uint8 numpy array of ``out_len``) when given, returning it, else into a new
        buffer. Raises :class:`CodecError` when it cannot."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r})"
