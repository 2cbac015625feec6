"""KV exported by one process and copied by another through CUDA IPC, ordered by IPC events.

The entry-point checks run everywhere; the two-process tests need an NVIDIA GPU and CUDA torch
(skipped elsewhere with the probe's reason). Bodies: :class:`lmcache_gpu.testing.IpcTests`.
"""

from __future__ import annotations

from lmcache_gpu.testing import IpcTests


class TestCudaIpc(IpcTests):
    package = "lmcache_cuda"
    backend = "cuda"
    runtime = "CUDA"
