"""Probe of the ``rocm`` backend: extension built, torch a ROCm build, an AMD GPU it was compiled for.

May assume: the standard library, :mod:`lmcache_core.plugin_api` and :mod:`lmcache_gpu.probing`
(and :mod:`lmcache_gpu.build_info`). Must not, at import time or when called: import torch (it
reads ``torch/version.py`` as text unless torch is already imported), load the extension or
libamdhip64, or raise for an ordinary "not here" answer. Cost: a ``find_spec``, one small
generated module, one small text file and the KFD topology files under ``/sys``.

ROCm torch reports its GPUs as device type ``"cuda"`` and ``torch.cuda.is_available()`` is true on
it, so ROCm is told apart from CUDA by ``torch.version.hip``. The answers, in order: extension not
built; no AMD GPU visible (``"compiled, no device: ..."``); torch not a ROCm build; no visible GPU
of a compiled architecture; else available.
"""

from __future__ import annotations

from pathlib import Path

from lmcache_core.plugin_api import BackendProbe
from lmcache_gpu import build_info, probing
from lmcache_gpu.probing import GpuScan

#: Dotted path of the hook implementations, imported only when this backend is chosen.
PLUGIN = "lmcache_rocm.plugin:plugin"
PACKAGE = "lmcache_rocm"


def gfx_name(target_version: int) -> str:
    """``gfx_target_version`` of the KFD topology -> gfx name: 90010 -> ``"gfx90a"``, 90402 -> ``"gfx942"``."""
    major, minor, stepping = target_version // 10000, (target_version // 100) % 100, target_version % 100
    return f"gfx{major}{minor}{stepping:x}"


def amd_gpus(
    kfd: Path = Path("/dev/kfd"), topology: Path = Path("/sys/class/kfd/kfd/topology/nodes")
) -> GpuScan:
    """AMD GPUs from the KFD topology: nodes with SIMDs, named by ``gfx_target_version``."""
    hidden = probing.hidden_by(("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"))
    if hidden:
        return GpuScan((), f"hidden by {hidden}")
    if not kfd.exists():
        return GpuScan((), f"no ROCm kernel driver: {kfd} missing")
    names = []
    nodes = sorted(topology.iterdir()) if topology.is_dir() else []
    for node in nodes:
        try:
            props = dict(
                line.split(None, 1) for line in (node / "properties").read_text().splitlines() if " " in line
            )
        except OSError:
            continue
        if int(props.get("simd_count", "0")) > 0:
            names.append(gfx_name(int(props.get("gfx_target_version", "0"))))
    return GpuScan(tuple(names), "" if names else f"no GPU node in {topology}")


def probe() -> BackendProbe:
    """Available when ``lmcache_rocm._C`` is built for a visible AMD GPU and torch is a ROCm build."""
    missing = probing.not_built(PACKAGE, "rocm", "packages/lmcache-rocm")
    if missing is not None:
        return missing
    info = build_info.read(PACKAGE)
    compiled = (
        f"compiled for {info.describe()}" if info else "compiled (no _build_info: architectures unknown)"
    )
    torch = probing.torch_build()
    not_rocm = f"{torch.describe()} is not a ROCm build (torch.version.hip is None)"
    gpus = amd_gpus()
    if not gpus.names:
        note = "" if torch.hip else f"; {not_rocm}"
        return probing.unavailable(
            f"compiled, no device: {compiled}; no ROCm GPU visible ({gpus.why_none}){note}"
        )
    if not torch.hip:
        return probing.unavailable(f"{compiled}; {len(gpus.names)} AMD GPU(s) visible, but {not_rocm}")
    if info and not set(gpus.names) & set(info.archs):
        return probing.unavailable(
            f"{compiled}, but the visible GPUs are {', '.join(sorted(set(gpus.names)))}: rebuild with "
            f"-Ccmake.define.CMAKE_HIP_ARCHITECTURES={';'.join(sorted(set(gpus.names)))}"
        )
    return probing.available(
        f"{compiled}; {len(gpus.names)} AMD GPU(s): {', '.join(gpus.names)}; {torch.describe()}", PLUGIN
    )
