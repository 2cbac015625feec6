"""A tier's codec chain: parsed from text, checked, run forward on store and backward on load.

Text form (the ``serde`` URL parameter): codecs joined by ``,``, each ``name`` followed by
``:option=value`` pairs, e.g. ``int8:group=32,zstd:level=3,aesgcm:key_file=/etc/lmcache/kv.key``.
``""`` and ``none`` are the empty chain (objects stored plain, version-1 headers).

Encoding runs the codecs in order; a codec that does not apply to a chunk (``fp8`` on a chunk of
mixed dtypes) is skipped and not recorded. The header's :class:`Serde` record lists the codecs
applied, each with its parameters and ``n``, the length in bytes of what it was given. Decoding
runs them backwards with the codecs this process has: the tier's own configured instances
(they hold its keys), else the registered class built for reading. A codec this process lacks
raises :class:`~lmcache_core.serde.codec.CodecError` ``missing_codec``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmcache_core.serde.codec import ITEMSIZE, STAGE_NAMES, TENSOR, ChunkInfo, Codec, CodecError
from lmcache_core.serde.registry import codec_class
from lmcache_core.storage.object_format import Serde


def parse_chain(text: str) -> Chain:
    """A chain from its text form (see the module docstring); ValueError naming the bad part."""
    if not isinstance(text, str):
        raise TypeError(f"serde: expected chain text like 'fp8,zstd', given {type(text).__name__}")
    if text.strip().lower() in ("", "none"):
        return Chain(())
    codecs: list[Codec] = []
    for item in text.split(","):
        name, *opts = item.strip().split(":")
        if not name:
            raise ValueError(f"serde: expected codec names separated by ',', given {text!r}")
        options: dict[str, str] = {}
        for opt in opts:
            k, eq, v = opt.partition("=")
            if not eq or not k:
                raise ValueError(f"serde {name}: expected option=value after ':', given {opt!r} in {text!r}")
            if k in options:
                raise ValueError(f"serde {name}: option {k!r} given twice in {text!r}")
            options[k] = v
        codecs.append(codec_class(name)(options))
    return Chain(codecs)


class Chain:
    """An ordered list of configured codecs (stages non-decreasing, each name at most once)."""

    def __init__(self, codecs: Sequence[Codec]) -> None:
        self.codecs = tuple(codecs)
        seen: set[str] = set()
        stage = -1
        for c in self.codecs:
            if c.name in seen:
                raise ValueError(f"serde: codec {c.name!r} given twice in {self.spec()!r}")
            if c.stage < stage:
                raise ValueError(
                    f"serde: {c.name!r} ({STAGE_NAMES.get(c.stage)}) must come before the "
                    f"{STAGE_NAMES.get(stage)} codecs in {self.spec()!r}; order: tensor "
                    "codecs (fp8, int8), then byte codecs (zstd, lz4), then ciphers (aesgcm)"
                )
            seen.add(c.name)
            stage = c.stage
        self._readers: dict[str, Codec | str] = {c.name: c for c in self.codecs}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.codecs)

    @property
    def lossless(self) -> bool:
        return all(c.lossless for c in self.codecs)

    def spec(self) -> str:
        return ",".join(c.spec() for c in self.codecs)

    def __repr__(self) -> str:
        return f"Chain({self.spec()!r})"

    # ---- encode --------------------------------------------------------------------------------

    def encode(
        self, data: Any, key: str, fmt: str, dtype: str, shape: tuple[int, ...]
    ) -> tuple[Any, Serde] | None:
        """Encode ``data`` (any C-contiguous buffer: the plain chunk) for object ``key`` whose
        header meta is ``fmt``/``dtype``/``shape``. Returns (encoded uint8 array, its record),
        or None when no codec applied (store it plain)."""
        plain = np.frombuffer(memoryview(data).cast("B"), np.uint8)
        cur: Any = plain
        applied: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        itemsize = ITEMSIZE.get(dtype, 1)
        for codec in self.codecs:
            inner = Serde(plain.nbytes, tuple(applied)).to_bytes().decode() if applied else ""
            got = codec.encode(cur, ChunkInfo(key, fmt, dtype, shape, itemsize, inner))
            if got is None:
                continue
            out, params = got
            if "n" in params:
                raise RuntimeError(f"serde {codec.name}: parameter name 'n' is the chain's own")
            params = {**params, "n": str(cur.nbytes)}
            applied.append((codec.name, tuple(sorted(params.items()))))
            cur = np.frombuffer(memoryview(out).cast("B"), np.uint8)
            if codec.stage == TENSOR:
                itemsize = 1
        if not applied:
            return None
        return cur, Serde(plain.nbytes, tuple(applied))

    # ---- decode --------------------------------------------------------------------------------

    def reader(self, name: str) -> Codec:
        """The codec that decodes ``name`` here; CodecError ``missing_codec`` if none."""
        got = self._readers.get(name)
        if got is None:
            try:
                got = codec_class(name).for_reading()
            except (ImportError, ValueError, TypeError) as e:
                got = f"{type(e).__name__}: {e}"
            with self._lock:
                got = self._readers.setdefault(name, got)
        if isinstance(got, str):
            raise CodecError("missing_codec", f"{name}: {got}")
        return got

    def check(self, serde: Serde) -> None:
        """Raise CodecError unless every codec of ``serde`` can be decoded here (before any
        payload byte is read)."""
        for name, _ in serde.chain:
            self.reader(name)

    def decode(self, serde: Serde, data: Any, key: str, fmt: str, dtype: str, shape: tuple[int, ...],
               out: Any) -> None:  # fmt: skip
        """Decode ``data`` (the stored payload) into ``out`` (a writable buffer of
        ``serde.plain_len`` bytes). Raises CodecError; ``out`` may then hold partial bytes."""
        target = np.frombuffer(memoryview(out).cast("B"), np.uint8)
        if target.nbytes != serde.plain_len:
            raise ValueError(f"out: expected {serde.plain_len} bytes, given {target.nbytes}")
        codecs = [self.reader(name) for name, _ in serde.chain]
        infos: list[ChunkInfo] = []
        itemsize = ITEMSIZE.get(dtype, 1)
        for i, codec in enumerate(codecs):
            inner = Serde(serde.plain_len, serde.chain[:i]).to_bytes().decode() if i else ""
            infos.append(ChunkInfo(key, fmt, dtype, shape, itemsize, inner))
            if codec.stage == TENSOR:
                itemsize = 1
        cur: Any = np.frombuffer(memoryview(data).cast("B"), np.uint8)
        for i in reversed(range(len(codecs))):
            params = dict(serde.chain[i][1])
            try:
                n = int(params.pop("n"))
            except (KeyError, ValueError):
                raise CodecError("bad_encoding", f"{codecs[i].name}: no valid input length") from None
            if i == 0 and n != serde.plain_len:
                raise CodecError("bad_encoding", f"chain input {n} bytes, record says {serde.plain_len}")
            got = codecs[i].decode(cur, params, infos[i], n, target if i == 0 else None)
            cur = np.frombuffer(memoryview(got).cast("B"), np.uint8)
            if cur.nbytes != n:
                raise CodecError("bad_encoding", f"{codecs[i].name} gave {cur.nbytes} bytes, expected {n}")
        if cur.ctypes.data != target.ctypes.data:
            target[:] = cur
