"""GPU test bases: what every GPU backend's tests check, written once.

Each vendor package's tests subclass these with its names and facts, as backends subclass the
core's ``ConformanceSuite``:

* :class:`ProbeTests` (CPU): the probe's answers and cost (:mod:`lmcache_gpu.testing.probe`);
* :class:`ExtensionTests` (CPU): the build, native checks, pointer table, plan, host memory, the
  wrapper, plugin and CLI (:mod:`lmcache_gpu.testing.extension`);
* :class:`KernelTests` (GPU): the kernels bit for bit against the reference
  (:mod:`lmcache_gpu.testing.kernels`);
* :class:`OrderingTests` (GPU): the engine's copies ordered against the forward
  (:mod:`lmcache_gpu.testing.ordering`);
* :class:`IpcTests` (CPU entry points + two GPU processes): KV and events shared between
  processes, copies ordered by IPC events (:mod:`lmcache_gpu.testing.ipc`).

Imported only by tests (it imports pytest); nothing in the product imports it.
"""

from __future__ import annotations

from lmcache_gpu.testing.extension import ExtensionTests
from lmcache_gpu.testing.ipc import IpcTests
from lmcache_gpu.testing.kernels import KernelTests
from lmcache_gpu.testing.ordering import OrderingTests
from lmcache_gpu.testing.probe import ProbeTests

__all__ = ["ExtensionTests", "IpcTests", "KernelTests", "OrderingTests", "ProbeTests"]
