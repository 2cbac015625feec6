"""``int8``: symmetric 8-bit integers with a float32 scale per group of ``group`` elements.

Applies to chunks of float32, float16 or bfloat16 of any shape; groups run over the flat chunk
(``hidden`` is innermost, so a group that divides ``head_size`` stays inside one head). Each
group's scale is its absolute maximum / 127. The last group is zero-padded. A chunk with
non-finite values is stored without int8.

Encoded bytes: the scales (float32 ``[groups]``), then the values (int8 ``[groups * group]``).
Recorded: ``group``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from lmcache_core.serde._tensor import FLOATS, as_tensor, into
from lmcache_core.serde.codec import ITEMSIZE, TENSOR, ChunkInfo, Codec, CodecError, int_option, param


class Int8(Codec):
    name = "int8"
    stage = TENSOR
    lossless = False
    options: ClassVar[dict[str, str]] = {"group": "64"}

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        self.group = int_option("int8", "group", self.config["group"], 1, 1 << 20)

    def encode(self, data: Any, info: ChunkInfo) -> tuple[Any, dict[str, str]] | None:
        import torch

        if info.dtype not in FLOATS or info.itemsize != ITEMSIZE[info.dtype]:
            return None
        x = as_tensor(data, info.dtype)
        g = self.group
        groups = -(-x.numel() // g)
        xs = torch.zeros(groups * g, dtype=torch.float32)
        xs[: x.numel()] = x
        xs = xs.view(groups, g)
        amax = xs.abs().amax(dim=1, keepdim=True)
        if not bool(torch.isfinite(amax).all()):
            return None
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q = torch.round(xs / scale).clamp_(-127, 127).to(torch.int8)
        out = np.empty(groups * 4 + groups * g, np.uint8)
        out[: groups * 4] = scale.view(torch.uint8).numpy().reshape(-1)
        out[groups * 4 :] = q.view(torch.uint8).numpy().reshape(-1)
        return out, {"group": str(g)}

    def decode(self, data: Any, params: Mapping[str, str], info: ChunkInfo, out_len: int,
               out: Any = None) -> Any:  # fmt: skip
        import torch

        try:
            g = int(param(params, "int8", "group"))
        except ValueError:
            g = 0
        size = ITEMSIZE.get(info.dtype, 0)
        if info.dtype not in FLOATS or g <= 0 or out_len % size:
            raise CodecError("bad_encoding", f"int8: group {g}, chunk {info.dtype}")
        numel = out_len // size
        groups = -(-numel // g)
        if data.nbytes != groups * (4 + g):
            raise CodecError(
                "bad_encoding", f"int8: {data.nbytes} bytes for {numel} elements in groups of {g}"
            )
        scale = torch.from_numpy(data[: groups * 4].copy()).view(torch.float32).view(groups, 1)
        q = torch.from_numpy(data[groups * 4 :]).view(torch.int8).view(groups, g)
        x = (q.float() * scale).view(-1)[:numel]
        return into(out, x, info.dtype, out_len)
