"""Probe of the ``cuda`` backend: extension built, torch a CUDA build, an NVIDIA GPU visible.

May assume: the standard library, :mod:`lmcache_core.plugin_api` and :mod:`lmcache_gpu.probing`
(and :mod:`lmcache_gpu.build_info`). Must not, at import time or when called: import torch (it
reads ``torch/version.py`` as text unless torch is already imported), load the extension or
libcudart, or raise for an ordinary "not here" answer. Cost: a ``find_spec``, one small generated
module, one small text file and a directory listing under ``/proc/driver/nvidia``.

The answers, in order: extension not built; torch is a ROCm build (``torch.version.hip`` set: the
``rocm`` backend serves it); no NVIDIA GPU visible (``"compiled, no device: ..."``); torch built
without CUDA; else available. Whether the compiled architectures run on the GPU is checked when the
plugin loads (it needs the runtime).
"""

from __future__ import annotations

from pathlib import Path

from lmcache_core.plugin_api import BackendProbe
from lmcache_gpu import build_info, probing
from lmcache_gpu.probing import GpuScan

#: Dotted path of the hook implementations, imported only when this backend is chosen.
PLUGIN = "lmcache_cuda.plugin:plugin"
PACKAGE = "lmcache_cuda"


def nvidia_gpus(proc: Path = Path("/proc/driver/nvidia/gpus"), dev: Path = Path("/dev")) -> GpuScan:
    """NVIDIA GPUs from the driver's /proc entries (one directory per GPU; ``Model:`` in ``information``).

    Containers that expose the device nodes but not /proc/driver/nvidia count ``/dev/nvidiaN``.
    """
    hidden = probing.hidden_by(("CUDA_VISIBLE_DEVICES",))
    if hidden:
        return GpuScan((), f"hidden by {hidden}")
    if not proc.is_dir():
        nodes = sorted(p.name for p in dev.glob("nvidia[0-9]*")) if dev.is_dir() else []
        if nodes:
            return GpuScan(tuple("NVIDIA GPU" for _ in nodes))
        return GpuScan((), f"no NVIDIA driver: {proc} missing")
    names = []
    for gpu in sorted(proc.iterdir()):
        model = "NVIDIA GPU"
        try:
            for line in (gpu / "information").read_text(errors="replace").splitlines():
                if line.startswith("Model:"):
                    model = line.split(":", 1)[1].strip()
        except OSError:
            pass
        names.append(model)
    return GpuScan(tuple(names), "" if names else f"{proc} is empty")


def probe() -> BackendProbe:
    """Available when ``lmcache_cuda._C`` is built, torch is a CUDA build and an NVIDIA GPU is visible."""
    missing = probing.not_built(PACKAGE, "cuda", "packages/lmcache-cuda")
    if missing is not None:
        return missing
    info = build_info.read(PACKAGE)
    compiled = (
        f"compiled for {info.describe()}" if info else "compiled (no _build_info: architectures unknown)"
    )
    torch = probing.torch_build()
    if torch.hip:
        return probing.unavailable(
            f"{compiled}, but {torch.describe()} is a ROCm build (torch.version.hip = {torch.hip!r}); "
            "the rocm backend serves it"
        )
    gpus = nvidia_gpus()
    if not gpus.names:
        note = "" if torch.cuda else f"; {torch.describe()} has no CUDA either"
        return probing.unavailable(
            f"compiled, no device: {compiled}; no NVIDIA GPU visible ({gpus.why_none}){note}"
        )
    if not torch.cuda:
        return probing.unavailable(
            f"{compiled}; {len(gpus.names)} NVIDIA GPU(s) visible, but {torch.describe()} is built without "
            "CUDA: install a CUDA build of torch"
        )
    return probing.available(
        f"{compiled}; {len(gpus.names)} NVIDIA GPU(s): {', '.join(gpus.names)}; {torch.describe()}", PLUGIN
    )
