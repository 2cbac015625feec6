"""KV exported by one process and copied by another through HIP IPC, ordered by IPC events.

The entry-point checks run everywhere; the two-process tests need an AMD GPU (gfx90a) and ROCm
torch (skipped elsewhere with the probe's reason). Bodies: :class:`lmcache_gpu.testing.IpcTests`.
"""

from __future__ import annotations

from lmcache_gpu.testing import IpcTests


class TestGfx90aIpc(IpcTests):
    package = "lmcache_rocm"
    backend = "rocm"
    runtime = "HIP"
