"""Probe of the ``cuda`` backend: extension built, torch a CUDA build, an NVIDIA GPU visible.

May assume: the standard library, :mod:`lmcache_core.plugin_api` and :mod:`lmcache_cuda.gpu_probe`.
Must not, at import time or when called: import torch (it reads ``torch/version.py`` as text
unless torch is already imported), load the extension or libcudart, or raise for an ordinary
"not here" answer. Cost: a ``find_spec``, one small generated module, one small text file and a
directory listing under ``/proc/driver/nvidia``.

The answers, in order: extension not built; torch is a ROCm build (``torch.version.hip`` set: the
``rocm`` backend serves it); no NVIDIA GPU visible (``"compiled, no device: ..."``); torch built
without CUDA; else available. Whether the compiled architectures run on the GPU is checked when the
plugin loads (it needs the runtime).
"""

from __future__ import annotations

from lmcache_core.plugin_api import BackendProbe
from lmcache_cuda import gpu_probe

#: Dotted path of the hook implementations, imported only when this backend is chosen.
PLUGIN = "lmcache_cuda.plugin:plugin"
PACKAGE = "lmcache_cuda"


def probe() -> BackendProbe:
    """Available when ``lmcache_cuda._C`` is built, torch is a CUDA build and an NVIDIA GPU is visible."""
    missing = gpu_probe.not_built(PACKAGE, "cuda", "packages/lmcache-cuda")
    if missing is not None:
        return missing
    info = gpu_probe.build_info(PACKAGE)
    compiled = (
        f"compiled for {info.describe()}" if info else "compiled (no _build_info: architectures unknown)"
    )
    torch = gpu_probe.torch_build()
    if torch.hip:
        return gpu_probe.unavailable(
            f"{compiled}, but {torch.describe()} is a ROCm build (torch.version.hip = {torch.hip!r}); "
            "the rocm backend serves it"
        )
    gpus = gpu_probe.nvidia_gpus()
    if not gpus.names:
        note = "" if torch.cuda else f"; {torch.describe()} has no CUDA either"
        return gpu_probe.unavailable(
            f"compiled, no device: {compiled}; no NVIDIA GPU visible ({gpus.why_none}){note}"
        )
    if not torch.cuda:
        return gpu_probe.unavailable(
            f"{compiled}; {len(gpus.names)} NVIDIA GPU(s) visible, but {torch.describe()} is built without "
            "CUDA: install a CUDA build of torch"
        )
    return gpu_probe.available(
        f"{compiled}; {len(gpus.names)} NVIDIA GPU(s): {', '.join(gpus.names)}; {torch.describe()}", PLUGIN
    )
