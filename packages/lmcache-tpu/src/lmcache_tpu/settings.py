"""The backend's settings, read from the environment when a transfer plan is made.

* ``LMCACHE_TPU_KERNEL``: ``xla`` (default): jitted XLA gathers/scatters; ``pallas``: the Pallas
  DMA kernel (:mod:`lmcache_tpu.pallas_kernels`) for the row copies. The Pallas kernel stays
  behind this setting until it is measured on a TPU; off a TPU it runs in Pallas' interpreter
  (about 1-2 MB/s: tests only).
* ``LMCACHE_TPU_HOST_MEMORY``: ``pinned_host`` (default) or ``unpinned_host``: the JAX memory kind
  chunks are moved to on their way to the host (``pinned_host`` falls back to ``unpinned_host``
  where the device has none; neither: a plain device-to-host copy).
* ``LMCACHE_TPU_PRECOMPILE``: ``1`` (default): every block-count bucket is compiled when a layout
  is first seen (registration); ``0``: each bucket on its first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

KERNEL_ENV = "LMCACHE_TPU_KERNEL"
HOST_MEMORY_ENV = "LMCACHE_TPU_HOST_MEMORY"
PRECOMPILE_ENV = "LMCACHE_TPU_PRECOMPILE"
KERNELS = ("xla", "pallas")
HOST_MEMORY_KINDS = ("pinned_host", "unpinned_host")


@dataclass(frozen=True)
class Settings:
    kernel: str = "xla"
    host_memory: str = "pinned_host"
    precompile: bool = True


def _choice(env: str, values: tuple[str, ...], default: str) -> str:
    value = os.environ.get(env, "") or default
    if value not in values:
        raise ValueError(f"{env}: expected one of {list(values)}, given {value!r}")
    return value


def read() -> Settings:
    """The settings from the environment; ValueError naming the variable for a bad value."""
    precompile = _choice(PRECOMPILE_ENV, ("0", "1"), "1")
    return Settings(
        kernel=_choice(KERNEL_ENV, KERNELS, "xla"),
        host_memory=_choice(HOST_MEMORY_ENV, HOST_MEMORY_KINDS, "pinned_host"),
        precompile=precompile == "1",
    )
