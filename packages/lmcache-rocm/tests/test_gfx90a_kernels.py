"""The rocm kernels on a GPU (needs an AMD gfx90a GPU (MI200 series) and ROCm torch); skipped with the probe's reason elsewhere.

Bitwise against the reference for every layout variant and dtype through each host path (mapped,
staged) and device chunks, host and device slot mappings, unaligned chunks (narrow accesses),
several chunks per launch, bad slots writing nothing, the plane-table cache, page-locked host
memory and streams/events. Run under the sanitizer with `make -C packages/lmcache-rocm sanitize`.
"""

from __future__ import annotations

from lmcache_gpu.testing import KernelTests


class TestRocmKernels(KernelTests):
    package = "lmcache_rocm"
    backend = "rocm"
    runtime = "HIP"
