"""Probe of the ``tpu`` backend: is JAX installed, and is there a TPU here.

May assume: the standard library and :mod:`lmcache_core.plugin_api`.
Must not, at import time or when called: import JAX or libtpu (importing JAX starts its runtime
and, on a TPU VM, takes the chips), or raise for an ordinary "not here" answer. It looks modules
up with ``importlib.util.find_spec`` and device nodes up with ``glob``.

The backend serves JAX arrays on any JAX platform (TPU, and JAX's CPU backend, where the same
jitted code runs): it is available whenever JAX is installed; whether a TPU is present is told
in the reason (and by ``lmcache-core info``).
"""

from __future__ import annotations

import glob
import importlib.util

from lmcache_core.plugin_api import BackendProbe, Priority

#: Dotted path of the hook implementations, imported only when this backend is chosen.
PLUGIN = "lmcache_tpu.plugin"
#: Device nodes a TPU VM exposes: /dev/accel* (v4 and later), /dev/vfio/<n> (v5e/v6e VFIO).
TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")


def tpu_devices(globs: tuple[str, ...] = TPU_DEVICE_GLOBS) -> list[str]:
    """The TPU device nodes present (sorted), e.g. ``["/dev/accel0", "/dev/accel1"]``."""
    return sorted(p for pattern in globs for p in glob.glob(pattern))


def tpu_here(globs: tuple[str, ...] = TPU_DEVICE_GLOBS) -> tuple[bool, str]:
    """``(True, "libtpu + /dev/accel0 ...")`` when libtpu is installed and a TPU device node
    exists; else ``(False, why not)``."""
    has_libtpu = importlib.util.find_spec("libtpu") is not None
    nodes = tpu_devices(globs)
    if has_libtpu and nodes:
        shown = ", ".join(nodes[:4]) + (f" (+{len(nodes) - 4})" if len(nodes) > 4 else "")
        return True, f"TPU: libtpu + {shown}"
    missing = [
        what
        for what, ok in (
            ("libtpu not installed", has_libtpu),
            ("no /dev/accel* or /dev/vfio/<n> node", nodes),
        )
        if not ok
    ]
    return False, "no TPU here (" + "; ".join(missing) + ")"


def probe() -> BackendProbe:
    """Available when JAX can be imported; serves JAX arrays on every device type."""
    if importlib.util.find_spec("jax") is None:
        return BackendProbe(
            available=False,
            reason="JAX is not installed; `pip install lmcache-tpu` (on a TPU VM: `lmcache-tpu[tpu]`)",
            priority=Priority.ACCELERATOR,
            device_types=("*",),
            plugin=None,
            array_types=("jax",),
        )
    _, tpu = tpu_here()
    return BackendProbe(
        available=True,
        reason=f"JAX arrays on any JAX platform; {tpu}",
        priority=Priority.ACCELERATOR,
        device_types=("*",),
        plugin=PLUGIN,
        array_types=("jax",),
    )
