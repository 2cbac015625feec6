"""Hook implementations of every GPU backend (see :mod:`lmcache_core.hookspecs`).

Each vendor package's ``plugin`` module makes one :class:`GpuPlugin` over its
:class:`~lmcache_gpu.kernels.GpuKernels` and its driver scan, e.g.
``plugin = GpuPlugin(KERNELS, driver_scan=nvidia_gpus)``; the probe names it as
``"<package>.plugin:plugin"`` and the core registers the instance (pluggy takes instances whose
methods carry ``@hookimpl``).

May assume: the probe found the extension; torch imports; the core validated every argument of a
kernel hook (native code checks slots and sizes again before writing). Must not at import time:
allocate, create streams or fail for want of a GPU. At load it asks the runtime for devices: with
none (and none shown by the driver), the backend still loads and its status says
``"compiled, no device"``; with GPUs the runtime cannot use (a driver too old for the toolkit it was
built with) or a GPU this build has no code for, loading fails with the remedy (the core then falls
back and says why). Loading creates no GPU context: device properties are read without one and
compared with the build's architectures (:func:`arch_runs`); the runtime's own kernel-image check
runs at registration, on the KV's device only (``GpuKernels.new_stream``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lmcache_core.device_hooks import ForwardingHooks
from lmcache_core.hookspecs import hookimpl
from lmcache_core.layout_registry import LAYOUT_KINDS
from lmcache_core.plugin_api import API_1_1, Capabilities, supported_dtypes
from lmcache_gpu import build_info
from lmcache_gpu.kernels import GpuKernels
from lmcache_gpu.probing import GpuScan

#: Backend hook API version this plugin was written against.
BUILT_AGAINST_API: tuple[int, int] = API_1_1


def arch_runs(device_arch: str, build_archs: Sequence[str]) -> bool:
    """True when a build for ``build_archs`` has code ``device_arch`` runs, without asking the runtime.

    CUDA: a binary ``sm_XY`` runs on ``sm_XZ`` with ``Z >= Y`` (same major); an arch-specific
    ``sm_90a`` only on ``sm_90``; PTX ``compute_XY`` on any ``sm`` at least ``XY`` (JIT). HIP: the
    gfx name must match (feature suffixes such as ``:xnack-`` ignored). Names CMake resolves itself
    (``native``, ``all``) count as a match.
    """

    def cc(name: str, prefix: str) -> tuple[int, int] | None:
        digits = name[len(prefix) :].rstrip("af")
        if not name.startswith(prefix) or not digits.isdigit() or len(digits) < 2:
            return None
        return int(digits[:-1]), int(digits[-1])

    if any(not a.startswith(("sm_", "compute_", "gfx")) for a in build_archs):
        return True  # "native", "all": CMake chose; the kernel-image check at registration decides
    dev = cc(device_arch, "sm_")
    if dev is None:  # HIP
        return device_arch.split(":")[0] in {a.split(":")[0] for a in build_archs}
    for arch in build_archs:
        if arch.startswith("sm_") and (got := cc(arch, "sm_")) is not None:
            specific = arch[-1] in "af"
            if (specific and got == dev) or (not specific and got[0] == dev[0] and got[1] <= dev[1]):
                return True
        elif arch.startswith("compute_") and (got := cc(arch, "compute_")) is not None:
            if arch[-1] not in "af" and got <= dev:
                return True
    return False


def missing_images(devices: Sequence[Mapping[str, Any]], build_archs: Sequence[str]) -> str:
    """``""`` when the build has code for every device, else one text naming each GPU without it.

    ``devices``: what ``GpuKernels.device_info`` returns per GPU index (``name``, ``arch``);
    ``build_archs``: the build's targets (``("sm_80", "sm_90", "compute_90")``). E.g.
    ``"GPU 0 (Tesla T4, sm_75), GPU 2 (Tesla T4, sm_75)"``.
    """
    if not build_archs:
        return ""
    lacking = [
        f"GPU {index} ({dev['name']}, {dev['arch']})"
        for index, dev in enumerate(devices)
        if not arch_runs(str(dev["arch"]), build_archs)
    ]
    return ", ".join(lacking)


class GpuPlugin(ForwardingHooks[GpuKernels, GpuKernels]):
    """The hooks of one GPU backend: the identity hooks here; the kernel and device hooks
    (:class:`lmcache_core.device_hooks.ForwardingHooks`) go to ``kernels``, which is its device too.

    ``kernels``: its :class:`GpuKernels`; ``driver_scan``: its vendor's driver scan (the GPUs the
    kernel driver shows, without the runtime), used to tell "no GPU here" from "GPUs this
    runtime cannot use".
    """

    def __init__(self, kernels: GpuKernels, driver_scan: Callable[[], GpuScan]) -> None:
        super().__init__(kernels, kernels)
        self.driver_scan = driver_scan

    def status(self) -> tuple[str, dict[str, str]]:
        """The status line ``lmcache-core info`` shows and the extra fields, from the runtime.

        Raises ImportError (loading fails, the core falls back and says why) when the driver shows
        GPUs the runtime cannot use, or when GPUs lack code in this build: one message naming every
        such GPU and the rebuild that fixes it.
        """
        info = self.kernels.build_info()
        runtime = str(info["runtime"])
        described = build_info.read(self.kernels.package)
        compiled = (
            f"compiled for {described.describe()}"
            if described
            else f"compiled for {info['archs'].replace(';', ', ')} ({runtime} {info['runtime_version']})"
        )
        count, error = self.kernels.device_count()
        paths = self.kernels.host_paths()
        extra = {
            "runtime": runtime,
            "runtime_version": str(info["runtime_version"]),
            "archs": str(info["archs"]),
            "gather_host_path": paths["gather"],
            "scatter_host_path": paths["scatter"],
            "host_alloc": f"{self.kernels.host_alloc_method()} ({self.kernels.host_alloc_name()})",
            "devices": str(count),
        }
        backend = self.kernels.backend
        if count == 0:
            scan = self.driver_scan()
            if scan.names:  # the driver shows GPUs the runtime cannot use: fail loading, with the remedy
                raise ImportError(
                    f"backend {backend!r}: {compiled}, and the driver shows "
                    f"{len(scan.names)} GPU(s) ({', '.join(scan.names)}), but the {runtime} runtime "
                    f"it was built with sees none: {error or 'no reason given'}. Rebuild it with a toolkit "
                    f"the installed driver supports (make -C packages/lmcache-{backend} install)"
                )
            return f"compiled, no device: {compiled}; {error or 'the runtime sees no GPU'}", extra
        devices = [self.kernels.device_info(d) for d in range(count)]  # properties: no context
        archs = [a for a in str(info["archs"]).replace(",", ";").split(";") if a]
        lacking = missing_images(devices, archs)
        if lacking:
            raise ImportError(
                f"backend {backend!r}: {compiled} has no code for {lacking}: built for {', '.join(archs)}. "
                f"Rebuild for them, e.g. `pip install --no-build-isolation --no-deps -e packages/lmcache-{backend} "
                f"-Ccmake.define.CMAKE_{runtime}_ARCHITECTURES=native`"
            )
        extra["device"] = f"{devices[0]['name']} ({devices[0]['arch']})"
        names = ", ".join(f"{d['name']} ({d['arch']})" for d in devices)
        return (
            f"{compiled}; {count} GPU(s): {names}; host chunks: gather {paths['gather']}, "
            f"scatter {paths['scatter']} (defaults not yet measured)",
            extra,
        )

    @hookimpl
    def lmcache_api_version(self) -> tuple[int, int]:
        return BUILT_AGAINST_API

    @hookimpl
    def lmcache_capabilities(self) -> Capabilities:
        status, extra = self.status()
        return Capabilities(
            layouts=frozenset(LAYOUT_KINDS),
            dtypes=supported_dtypes(),
            pinned_host=True,
            status=status,
            extra=extra,
        )
