"""Kernel benches that backends of non-torch array families provide (``bench kernels --backend``).

A backend whose KV are not torch tensors (JAX arrays: the ``tpu`` backend) measures its own
gather/scatter next to its own roof (the framework's copy of the same bytes between the same
memories), because the core's pool and memcpy roof are torch and host memcpy. It registers a
module under the entry-point group :data:`GROUP`, named like the backend, with::

    run(*, quick: bool, repeats: int, warmup: int, pool_mib: int | None, seed: int) -> dict

returning one JSON-able report: ``roof`` (what the roof copies, in words), ``results`` (rows
with ``case``, ``op``, ``chunk_bytes``, ``kernel_gbps``/``roof_gbps`` as
:meth:`lmcache_core.bench.timing.Stats.to_json`, ``ratio_kernel_roof``, ``verified``),
``all_verified`` and ``notes``. This module finds and runs it; it imports no framework.
"""

from __future__ import annotations

import datetime
import importlib
from importlib.metadata import entry_points
from typing import Any

GROUP = "lmcache_core.bench_kernels"


def available() -> dict[str, str]:
    """Backend name -> module of every installed plugin kernel bench."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def run(
    backend: str, *, quick: bool, repeats: int, warmup: int, pool_mib: int | None, seed: int
) -> dict[str, Any]:
    """Run the kernel bench of ``backend``; ValueError listing the installed ones when none."""
    found = available()
    if backend not in found:
        raise ValueError(
            f"backend: expected one of {sorted(found)} (plugin kernel benches), given {backend!r}"
        )
    module = importlib.import_module(found[backend])
    report: dict[str, Any] = module.run(
        quick=quick, repeats=repeats, warmup=warmup, pool_mib=pool_mib, seed=seed
    )
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"command": "bench kernels", "backend": backend, "date": date, "repeats": repeats, **report}
