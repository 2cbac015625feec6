"""The compiled AscendC kernels (``liblmc_ascend_kernels.so``), driven through ctypes on NPU tensors.

Per call: :func:`lmcache_ascend.kernel_args.pack` builds the argument table; the host copy of the
slot mapping is taken once, checked with the table (``lmc_ascend_check``: ``ascend_checks.h`` and
``kv_checks.h``, ValueError before anything moves), then the same bytes are uploaded; the kernel
(``lmc_ascend_kv_transfer``, over ``block_dim`` AI cores) moves rows between the paged KV and a
device staging chunk; one asynchronous copy per kind moves the live rows between the staging chunk
and the host chunk. Everything is enqueued on the backend's stream; temporaries are tied to it
with ``record_stream``.

Only :mod:`lmcache_ascend.plugin` uses this module, on an NPU host where the package build found
CANN. Unverified on Ascend hardware: nothing here has run on an NPU.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmcache_ascend.hooks import ByDirection
from lmcache_ascend.kernel_args import pack
from lmcache_core.backends.reference import chunk_sections
from lmcache_core.layout import KVLayout
from lmcache_core.native_args import native_layout

LIBRARY = "liblmc_ascend_kernels.so"
#: AI cores a launch spreads rows over (Ascend 910B: 40 vector cores); env override.
BLOCK_DIM_ENV = "LMCACHE_ASCEND_BLOCK_DIM"
DEFAULT_BLOCK_DIM = 40


def build_status() -> tuple[bool, str]:
    """Whether the package build compiled the kernels, and what it said (``_build_info``)."""
    try:
        from lmcache_ascend import _build_info  # type: ignore[attr-defined]
    except ImportError:
        return (
            False,
            "AscendC kernels not built (package not built with CMake: pip install packages/lmcache-ascend)",
        )
    if not _build_info.KERNELS_BUILT:
        return False, f"AscendC kernels not built: {_build_info.KERNELS_REASON}"
    return True, f"AscendC kernels for {_build_info.SOC_VERSION}, CANN {_build_info.CANN_PATH}"


def load(device: Any) -> tuple[AscendCKernels | None, str]:
    """The compiled kernels on ``device`` (a :class:`lmcache_ascend.device.NpuDevice`), or None and
    why not (the torch-ops path is used then)."""
    built, status = build_status()
    if not built:
        return None, status
    path = Path(__file__).resolve().parent / LIBRARY
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return None, f"{status}, but {path} failed to load: {e}"
    return AscendCKernels(lib, device), status


class AscendCKernels(ByDirection):
    """gather/scatter through ``lmc_ascend_check`` + ``lmc_ascend_launch`` (see the module docstring)."""

    name = "ascendc"

    def __init__(self, lib: ctypes.CDLL, device: Any) -> None:
        i64p = ctypes.POINTER(ctypes.c_int64)
        lib.lmc_ascend_check.restype = ctypes.c_char_p
        lib.lmc_ascend_check.argtypes = [i64p, ctypes.c_int64, i64p, i64p, ctypes.c_uint64, ctypes.c_int64]
        lib.lmc_ascend_launch.restype = ctypes.c_int
        lib.lmc_ascend_launch.argtypes = [
            ctypes.c_uint32,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lib = lib
        self._device = device
        self._block_dim = int(os.environ.get(BLOCK_DIM_ENV, DEFAULT_BLOCK_DIM))

    def transfer(
        self, gather: bool, layout: KVLayout, kv: Sequence[torch.Tensor], slots: torch.Tensor, chunk: torch.Tensor,
        skip: int, stream: int,
    ) -> None:  # fmt: skip
        native = native_layout(layout, kv)
        if native.device is None or native.device.type != "npu":
            raise ValueError(f"kv_caches: expected tensors on one npu device, given {list(native.devices)}")
        n = int(slots.shape[0])
        args = torch.tensor(pack(native, gather=gather, num_tokens=n, skip_prefix=skip), dtype=torch.int64)
        host_slots = slots.to("cpu", torch.int64, copy=True).contiguous()  # read once: checked, then uploaded
        nbytes = layout.chunk_format.nbytes(n)
        dev = native.device
        staging = torch.empty(nbytes, dtype=torch.uint8, device=dev)
        sizes = torch.tensor(native.tensor_nbytes, dtype=torch.int64)
        i64p = ctypes.POINTER(ctypes.c_int64)
        err = self._lib.lmc_ascend_check(
            ctypes.cast(args.data_ptr(), i64p), args.numel(), ctypes.cast(sizes.data_ptr(), i64p),
            ctypes.cast(host_slots.data_ptr(), i64p), staging.data_ptr(), nbytes,
        )  # fmt: skip
        if err is not None:
            raise ValueError(err.decode())
        handle = self._device.stream(stream)
        with self._device.stream_context(stream):
            args_dev = args.pin_memory().to(dev, non_blocking=True)
            slots_dev = host_slots.pin_memory().to(dev, non_blocking=True)
            stage = chunk_sections(layout, staging, n)
            host = chunk_sections(layout, chunk.view(torch.uint8).view(-1) if chunk.dim() == 4 else chunk, n)
            live = slots[skip:].to("cpu") >= 0
            tokens = None if bool(live.all()) else (torch.nonzero(live).squeeze(1) + skip)
            if not gather:
                _copy_rows(stage, host, skip, tokens)
            rc = self._lib.lmc_ascend_launch(
                self._block_dim, ctypes.c_void_p(int(handle.npu_stream)), args_dev.data_ptr(), slots_dev.data_ptr(),
                staging.data_ptr(),
            )  # fmt: skip
            if rc != 0:
                raise RuntimeError(f"lmc_ascend_kv_transfer launch failed: ACL error {rc}")
            if gather:
                _copy_rows(host, stage, skip, tokens)
            for t in (args_dev, slots_dev, staging):
                t.record_stream(handle)


def _copy_rows(
    dst: list[torch.Tensor], src: list[torch.Tensor], skip: int, tokens: torch.Tensor | None
) -> None:
    """Copy the live token rows of each kind's section ``[num_layers, num_tokens, hidden_k]``."""
    for d, s in zip(dst, src, strict=True):
        if tokens is None:
            d[:, skip:].copy_(s[:, skip:], non_blocking=True)
        else:
            d.index_copy_(1, tokens.to(d.device), s.index_select(1, tokens.to(s.device)).to(d.device))
