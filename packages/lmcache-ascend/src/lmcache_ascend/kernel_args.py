"""The packed int64 argument table of the AscendC kernel (``csrc/kv_ascend_logic.h`` ``ArgsWord``).

One table describes one transfer: a header (format magic, direction, tokens, skip_prefix,
tensors, the geometry dims), ``MAX_KINDS`` plane kinds of ``KIND_FIELDS`` integers each
(:func:`lmcache_core.native_args.kind_fields`, unused kinds zero), then the tensors' byte
addresses ``[num_tensors]``, ``plane_tensor`` and ``plane_offset`` ``[num_kinds * num_layers]``.
The NPU launcher uploads it next to the slot mapping; the host emulation passes it as is.

Imports nothing heavy: it works on :class:`lmcache_core.native_args.NativeLayout` integers.
"""

from __future__ import annotations

from lmcache_core.layout import MAX_KINDS
from lmcache_core.native_args import KIND_FIELDS, NativeLayout

#: ``"LMCASC01"`` as a little-endian int64 (``LMC_ASCEND_ARGS_MAGIC``): the table's format.
MAGIC = int.from_bytes(b"LMCASC01", "little")
#: Header words before the tensor addresses (``LMC_ASCEND_ARGS_HEADER``).
HEADER = 9 + MAX_KINDS * KIND_FIELDS


def _i64(v: int) -> int:
    """``v`` as the int64 the kernel reads (addresses above 2**63 wrap, as the C cast does)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def pack(native: NativeLayout, *, gather: bool, num_tokens: int, skip_prefix: int) -> list[int]:
    """The table's int64 words for one transfer of ``num_tokens`` chunk tokens over ``native``."""
    num_kinds, num_layers, num_blocks, block_size = native.dims
    kinds = [v for kind in native.kinds for v in kind]
    kinds += [0] * (MAX_KINDS * KIND_FIELDS - len(kinds))
    return [
        MAGIC,
        int(gather),
        num_tokens,
        skip_prefix,
        len(native.tensor_address),
        num_kinds,
        num_layers,
        num_blocks,
        block_size,
        *kinds,
        *(_i64(a) for a in native.tensor_address),
        *native.plane_tensor,
        *native.plane_offset,
    ]
