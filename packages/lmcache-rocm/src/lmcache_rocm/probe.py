"""Probe of the ``rocm`` backend: extension built, torch a ROCm build, an AMD GPU it was compiled for.

May assume: the standard library, :mod:`lmcache_core.plugin_api` and :mod:`lmcache_rocm.gpu_probe`
(lmcache-cuda's file, carried here as a symlink). Must not, at import time or when called: import
torch (it reads ``torch/version.py`` as text unless torch is already imported), load the extension
or libamdhip64, or raise for an ordinary "not here" answer. Cost: a ``find_spec``, one small
generated module, one small text file and the KFD topology files under ``/sys``.

ROCm torch reports its GPUs as device type ``"cuda"`` and ``torch.cuda.is_available()`` is true on
it, so ROCm is told apart from CUDA by ``torch.version.hip``. The answers, in order: extension not
built; no AMD GPU visible (``"compiled, no device: ..."``); torch not a ROCm build; no visible GPU
of a compiled architecture; else available.
"""

from __future__ import annotations

from lmcache_core.plugin_api import BackendProbe
from lmcache_rocm import gpu_probe

#: Dotted path of the hook implementations, imported only when this backend is chosen.
PLUGIN = "lmcache_rocm.plugin:plugin"
PACKAGE = "lmcache_rocm"


def probe() -> BackendProbe:
    """Available when ``lmcache_rocm._C`` is built for a visible AMD GPU and torch is a ROCm build."""
    missing = gpu_probe.not_built(PACKAGE, "rocm", "packages/lmcache-rocm")
    if missing is not None:
        return missing
    info = gpu_probe.build_info(PACKAGE)
    compiled = (
        f"compiled for {info.describe()}" if info else "compiled (no _build_info: architectures unknown)"
    )
    torch = gpu_probe.torch_build()
    not_rocm = f"{torch.describe()} is not a ROCm build (torch.version.hip is None)"
    gpus = gpu_probe.amd_gpus()
    if not gpus.names:
        note = "" if torch.hip else f"; {not_rocm}"
        return gpu_probe.unavailable(
            f"compiled, no device: {compiled}; no ROCm GPU visible ({gpus.why_none}){note}"
        )
    if not torch.hip:
        return gpu_probe.unavailable(f"{compiled}; {len(gpus.names)} AMD GPU(s) visible, but {not_rocm}")
    if info and not set(gpus.names) & set(info.archs):
        return gpu_probe.unavailable(
            f"{compiled}, but the visible GPUs are {', '.join(sorted(set(gpus.names)))}: rebuild with "
            f"-Ccmake.define.CMAKE_HIP_ARCHITECTURES={';'.join(sorted(set(gpus.names)))}"
        )
    return gpu_probe.available(
        f"{compiled}; {len(gpus.names)} AMD GPU(s): {', '.join(gpus.names)}; {torch.describe()}", PLUGIN
    )
