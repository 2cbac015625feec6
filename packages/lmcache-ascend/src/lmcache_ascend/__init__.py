"""lmcache-ascend: the Huawei Ascend NPU backend of lmcache-core, an ordinary backend plugin.

Registered as ``ascend`` in the ``lmcache_core.backends`` entry-point group; it serves KV on
torch device type ``"npu"`` (torch_npu) and follows lmcache-core through the backend hook API
version (:data:`lmcache_core.plugin_api.API_VERSION`), not a pinned release.

Status: unverified on Ascend hardware. What ran on this project's CI hosts (no NPU, no CANN):
the core's conformance suite on the torch-ops path (CPU tensors, under a test switch), the host
emulation of the AscendC kernel's logic against the reference for every NPU layout and dtype,
and the probe against a temporary root laid out as an Ascend host (docs/ascend.md).

Modules: :mod:`~lmcache_ascend.probe` (cheap: never imports torch_npu),
:mod:`~lmcache_ascend.plugin` (imports torch_npu; the hooks), :mod:`~lmcache_ascend.hooks`
(hook implementations over a kernel path and a device), :mod:`~lmcache_ascend.torch_ops` (the
device-agnostic per-plane index path), :mod:`~lmcache_ascend.ascendc` (the compiled AscendC
kernels, when built), :mod:`~lmcache_ascend.device` (torch_npu host memory, streams, events),
:mod:`~lmcache_ascend.kernel_args` (the kernels' packed argument table).

Importing this package is cheap: it imports neither torch nor torch_npu.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: The honest status line every report of this package carries.
UNVERIFIED = "unverified on Ascend hardware"
