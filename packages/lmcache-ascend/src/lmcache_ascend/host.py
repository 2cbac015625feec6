"""The torch-ops path on CPU tensors: the ``ascend`` plugin object of the CPU test switch.

Selected only when ``LMCACHE_ASCEND_TORCH_OPS_ON_CPU=1`` (:data:`lmcache_ascend.probe.CPU_SWITCH`),
so the core's conformance suite and ``bench kernels --backend ascend --device cpu`` run the very
torch-ops code an NPU runs without torch_npu, and so normal selection never hands CPU KV to it
(the ``arm`` backend's). No torch_npu, no device: :class:`lmcache_ascend.device.HostDevice`.
"""

from __future__ import annotations

from lmcache_ascend.device import HostDevice
from lmcache_ascend.hooks import AscendHooks, TorchOpsKernels

_device = HostDevice()
#: The plugin object (``lmcache_ascend.host:PLUGIN``).
PLUGIN = AscendHooks(
    TorchOpsKernels(_device), _device, "CPU tensors under the test switch (no torch_npu)", pinned_host=False
)
