"""Hook implementations of the ``tpu`` backend (see :mod:`lmcache_core.hookspecs`).

May assume: the probe found JAX; the kernel hooks are reached only through
:class:`lmcache_core.backend.Backend`, which validated every argument (JAX KV of a declared
layout, host numpy chunk of the KV dtype, numpy int64 slot mapping). Must not at import time:
compile, allocate on a device or start threads (importing JAX starts its runtime, which the core
does only when it selects this backend).

Functional (hook API 1.2): JAX arrays are immutable, so ``lmcache_scatter`` returns new KV arrays
(the old ones are donated to the update and deleted). Stream and event hooks are not
implemented: a gather returns when its rows are in the host chunk, and JAX orders a scatter's
update before any later computation on the arrays it returns, so the reference's no-op stream
and events are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from lmcache_core.hookspecs import hookimpl
from lmcache_core.layout import KVLayout
from lmcache_core.plugin_api import API_1_2, KV_DTYPE_NAMES, Capabilities
from lmcache_tpu import buckets, probe, rows, settings, xla

BUILT_AGAINST_API: tuple[int, int] = API_1_2


def status() -> tuple[str, dict[str, str]]:
    """The text ``lmcache-core info`` shows, e.g. ``JAX 0.10.2 on cpu (1 device); no TPU here ...``."""
    config = settings.read()
    platform = jax.default_backend()
    devices = jax.devices()
    tpu, tpu_text = probe.tpu_here()
    where = tpu_text if not tpu else tpu_text.removeprefix("TPU: ") + " found"
    host = xla.host_memory_kind(devices[0], config.host_memory) or "plain device_get"
    kernel = config.kernel
    pallas = (
        "on (interpreted: no TPU)"
        if kernel == "pallas" and platform != "tpu"
        else "on"
        if kernel == "pallas"
        else "off"
    )
    text = (
        f"JAX {jax.__version__} on {platform} ({len(devices)} device{'s' if len(devices) != 1 else ''}); "
        f"{where}; kernel {kernel}, buckets {buckets.BUCKETS[0]}..{buckets.MAX_BUCKET} blocks; "
        f"Pallas DMA kernel {pallas} ({settings.KERNEL_ENV}=pallas; unmeasured on TPU); "
        f"chunks via {host}"
    )
    extra = {
        "jax": jax.__version__,
        "platform": platform,
        "devices": str(len(devices)),
        "tpu": "yes" if tpu else "no",
        "kernel": kernel,
        "host_memory": host,
    }
    return text, extra


@hookimpl
def lmcache_api_version() -> tuple[int, int]:
    return BUILT_AGAINST_API


@hookimpl
def lmcache_capabilities() -> Capabilities:
    text, extra = status()
    return Capabilities(
        layouts=frozenset(rows.LAYOUTS),
        dtypes=frozenset(KV_DTYPE_NAMES),
        pinned_host=False,
        status=text,
        extra=extra,
        arrays=frozenset({"jax"}),
        functional=True,
    )


@hookimpl
def lmcache_gather(
    layout: KVLayout,
    kv_caches: Sequence[Any],
    slot_mapping: np.ndarray,
    out: np.ndarray,
    skip_prefix: int,
    stream: int,
) -> None:
    slots, tokens = xla.live(slot_mapping, skip_prefix)
    if len(slots):
        xla.plan_for(layout, kv_caches).gather(kv_caches, slots, tokens, out)


@hookimpl
def lmcache_scatter(
    layout: KVLayout,
    kv_caches: Sequence[Any],
    slot_mapping: np.ndarray,
    src: np.ndarray,
    skip_prefix: int,
    stream: int,
) -> list[Any]:
    slots, tokens = xla.live(slot_mapping, skip_prefix)
    plan = xla.plan_for(layout, kv_caches)  # made (and compiled) even for an empty chunk
    if not len(slots):
        return list(kv_caches)
    return plan.scatter(kv_caches, slots, tokens, src)
