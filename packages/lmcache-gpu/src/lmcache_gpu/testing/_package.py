"""What every GPU test base shares: the package under test, a small CPU KV case, the skip reason.

Subclasses of the bases in :mod:`lmcache_gpu.testing` set ``package`` (``"lmcache_cuda"``),
``backend`` (``"cuda"``) and ``runtime`` (``"CUDA"`` / ``"HIP"``). May assume: pytest and torch
import. Imported only by tests.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch

from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_core.testing.cases import random_bits_
from lmcache_gpu.kernels import GpuKernels


class PackageUnderTest:
    """The vendor package a test class checks; subclasses set the three names."""

    package: ClassVar[str] = ""
    backend: ClassVar[str] = ""
    runtime: ClassVar[str] = ""

    @classmethod
    def module(cls, name: str) -> Any:
        return importlib.import_module(f"{cls.package}.{name}")

    @classmethod
    def ext(cls) -> Any:
        return cls.module("_C")

    @classmethod
    def kernels(cls) -> GpuKernels:
        return cls.module("kernels").KERNELS  # type: ignore[no-any-return]

    @classmethod
    def device_count(cls) -> int:
        return int(cls.ext().device_count()[0])


def nhd_case(num_tokens: int = 8, dtype: torch.dtype = torch.float16) -> tuple[list[torch.Tensor], KVLayout]:
    """CPU vLLM NHD tensors (2 layers, 4 blocks of 16, 2 heads of 8) full of random bits, and the layout."""
    tensors, hints = allocate_example(
        "vllm_flash_nhd", num_layers=2, num_blocks=4, block_size=16, num_kv_heads=2, head_size=8, dtype=dtype
    )
    gen = torch.Generator().manual_seed(num_tokens)
    for t in tensors:
        random_bits_(t, gen)
    return tensors, detect_layout(tensors, hints)


def layout_dtype(layout: KVLayout) -> torch.dtype:
    return getattr(torch, layout.dtype)  # type: ignore[no-any-return]


def gpu_skip_reason(package: str, backend: str) -> str | None:
    """Why the GPU tests cannot run here (the probe's reason), or None."""
    probe = importlib.import_module(f"{package}.probe").probe()
    if not probe.available:
        return f"backend {backend!r} cannot run on this host: {probe.reason}"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    return None
