"""``fp8``: KV in 8-bit floats (e4m3 or e5m2) with a float32 scale per (K/V, layer, head).

Applies to uniform chunks (header shape ``[num_kv, num_layers, num_tokens, hidden]`` in float32,
float16 or bfloat16); any other chunk is left to the next codec. ``hidden`` is cut into heads of
``head_size`` channels (option, default 128; one group per (K/V, layer) when ``hidden`` is not a
multiple). Each head's scale is the power of two that brings its absolute maximum over the
chunk's tokens into ``(fmax / 2, fmax]`` (fmax 448 for e4m3, 57344 for e5m2): every value is in
range where a plain cast would saturate, values that are normal fp8 numbers either way round
exactly as in a plain cast (scaling by a power of two is exact), and a head of small values leaves
fp8's subnormal range. On KV whose heads all peak near ``fmax / 2 .. fmax`` the two are identical. A chunk with non-finite values is stored without fp8.

Encoded bytes: the scales (float32 ``[num_kv, num_layers, heads]``), then the values
(``[num_kv, num_layers, num_tokens, hidden]``, one byte each). Recorded: ``format``, ``heads``.
``scaling=none`` turns the scales off: a plain cast, as LMCache does, for comparison.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from lmcache_core.serde._tensor import FLOATS, as_tensor, into
from lmcache_core.serde.codec import ITEMSIZE, TENSOR, ChunkInfo, Codec, CodecError, int_option, param

FORMATS = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


class Fp8(Codec):
    name = "fp8"
    stage = TENSOR
    lossless = False
    options: ClassVar[dict[str, str]] = {"format": "e4m3", "head_size": "128", "scaling": "head"}

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        if self.config["format"] not in FORMATS:
            raise ValueError(
                f"serde fp8: option format: expected one of {sorted(FORMATS)}, given {self.config['format']!r}"
            )
        if self.config["scaling"] not in ("head", "none"):
            raise ValueError(
                f"serde fp8: option scaling: expected head or none, given {self.config['scaling']!r}"
            )
        self.head_size = int_option("fp8", "head_size", self.config["head_size"], 1, 1 << 20)

    def encode(self, data: Any, info: ChunkInfo) -> tuple[Any, dict[str, str]] | None:
        import torch

        if info.dtype not in FLOATS or len(info.shape) != 4 or info.itemsize != ITEMSIZE[info.dtype]:
            return None
        kv, layers, tokens, hidden = info.shape
        f8 = getattr(torch, FORMATS[self.config["format"]])
        fmax = float(torch.finfo(f8).max)
        x = as_tensor(data, info.dtype)
        if self.config["scaling"] == "none":
            q = x.to(f8)
            return q.view(torch.uint8).numpy(), {"format": self.config["format"], "heads": "0"}
        heads = hidden // self.head_size if hidden % self.head_size == 0 else 1
        xs = x.view(kv, layers, tokens, heads, hidden // heads).float()
        amax = xs.abs().amax(dim=(2, 4))  # [kv, layers, heads]
        if not bool(torch.isfinite(amax).all()):
            return None
        # a power of two: dividing and multiplying by it are exact, so a value that is normal in fp8
        # either way rounds exactly as a plain cast would
        scale = torch.where(amax > 0, torch.exp2(torch.ceil(torch.log2(amax / fmax))), torch.ones_like(amax))
        q = (xs / scale[:, :, None, :, None]).clamp_(-fmax, fmax).to(f8)
        out = np.empty(scale.numel() * 4 + q.numel(), np.uint8)
        out[: scale.numel() * 4] = scale.contiguous().view(torch.uint8).numpy().reshape(-1)
        out[scale.numel() * 4 :] = q.view(torch.uint8).numpy().reshape(-1)
        return out, {"format": self.config["format"], "heads": str(heads)}

    def decode(self, data: Any, params: Mapping[str, str], info: ChunkInfo, out_len: int,
               out: Any = None) -> Any:  # fmt: skip
        import torch

        fmt = param(params, "fp8", "format")
        if fmt not in FORMATS or info.dtype not in FLOATS or len(info.shape) != 4:
            raise CodecError("bad_encoding", f"fp8: format {fmt!r}, chunk {info.dtype} {info.shape}")
        kv, layers, tokens, hidden = info.shape
        try:
            heads = int(param(params, "fp8", "heads"))
        except ValueError:
            heads = -1
        numel = kv * layers * tokens * hidden
        nscale = kv * layers * heads * 4
        if (
            heads < 0
            or (heads and hidden % heads)
            or data.nbytes != nscale + numel
            or out_len != numel * ITEMSIZE[info.dtype]
        ):
            raise CodecError(
                "bad_encoding", f"fp8: {data.nbytes} bytes for heads={heads}, chunk {info.shape}"
            )
        values = torch.from_numpy(np.take(_lut(fmt), data[nscale:]))  # float32, 3-6x torch's fp8 cast
        if heads == 0:
            return into(out, values, info.dtype, out_len)
        scale = torch.from_numpy(data[:nscale].copy()).view(torch.float32).view(kv, layers, 1, heads, 1)
        x = values.view(kv, layers, tokens, heads, hidden // heads).mul_(scale)
        return into(out, x, info.dtype, out_len)


@functools.lru_cache(maxsize=2)
def _lut(fmt: str) -> Any:
    """float32 value of each of the 256 bytes of fp8 format ``fmt`` (numpy ``[256]``)."""
    import torch

    return torch.arange(256, dtype=torch.uint8).view(getattr(torch, FORMATS[fmt])).float().numpy()
