"""The cuda kernels on a GPU (needs an NVIDIA GPU (sm_80 or newer) and CUDA torch); skipped with the probe's reason elsewhere.

Bitwise against the reference for every layout variant and dtype through each host path (mapped,
staged) and device chunks, host and device slot mappings, unaligned chunks (narrow accesses),
several chunks per launch, bad slots writing nothing, the plane-table cache, page-locked host
memory and streams/events (bodies: :class:`lmcache_gpu.testing.KernelTests`). Run under the
sanitizer with `make -C packages/lmcache-cuda sanitize`.
"""

from __future__ import annotations

from lmcache_gpu.testing import KernelTests


class TestCudaKernels(KernelTests):
    package = "lmcache_cuda"
    backend = "cuda"
    runtime = "CUDA"
