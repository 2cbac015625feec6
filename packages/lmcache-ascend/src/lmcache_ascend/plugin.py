"""The ``ascend`` backend on an NPU: imports torch_npu, then builds the hooks.

Imported only when the core loads this backend (its probe found torch_npu, device nodes and
CANN). ``import torch_npu`` happens here and only here; when it fails the core skips the backend
with the exception's text (or, when ``LMCACHE_BACKEND=ascend`` asked for it, fails loudly with it).

Kernel path: the compiled AscendC kernels when the package build produced them
(:mod:`lmcache_ascend.ascendc`), else the torch-ops path (:mod:`lmcache_ascend.torch_ops`), both
enqueued on the backend's NPU streams. Must not at import time: allocate device memory or start
work on the device.
"""

from __future__ import annotations

import torch
import torch_npu  # noqa: F401  (registers the npu device and torch.npu)

from lmcache_ascend import ascendc
from lmcache_ascend.device import NpuDevice
from lmcache_ascend.hooks import AscendHooks, Kernels, TorchOpsKernels

_device = NpuDevice(getattr(torch, "npu"))  # noqa: B009  (registered at run time by torch_npu)
_compiled, _why = ascendc.load(_device)
_kernels: Kernels = _compiled if _compiled is not None else TorchOpsKernels(_device)
#: The plugin object (``lmcache_ascend.plugin:PLUGIN``).
PLUGIN = AscendHooks(_kernels, _device, _why, pinned_host=True)
