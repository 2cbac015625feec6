"""Shared fixtures of lmcache-ascend's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lmcache_ascend.probe import CPU_SWITCH
from lmcache_core.backend import Backend
from lmcache_core.discovery import discover_backends
from lmcache_core.testing.require import backend_cannot_run

pytest_plugins = ["lmcache_core.testing"]


@pytest.fixture(scope="class")
def torch_ops_on_cpu() -> Iterator[None]:
    """The CPU test switch on: the ``ascend`` backend serves CPU KV through its torch-ops path."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CPU_SWITCH, "1")
        yield


@pytest.fixture(scope="module")
def ascend_npu_backend() -> Backend:
    """The loaded ``ascend`` backend for ``npu`` tensors (imports torch_npu), or a skip with the reason.

    The skip is a failure under ``LMCACHE_REQUIRE_BACKEND=ascend`` (the CI workflow's Ascend job on
    the self-hosted runner labelled ``ascend-npu``), so a broken NPU host cannot pass as skips.
    """
    from lmcache_core.selection import get_backend

    found = {d.name: d for d in discover_backends()}
    ascend = found.get("ascend")
    if (
        ascend is None
        or not ascend.available
        or ascend.probe is None
        or "npu" not in ascend.probe.device_types
    ):
        reason = "not registered" if ascend is None else ascend.reason
        backend_cannot_run("ascend", f"backend 'ascend' cannot run on this host (no NPU): {reason}")
    try:
        return get_backend("npu", name="ascend")
    except RuntimeError as e:
        backend_cannot_run("ascend", f"backend 'ascend' failed to load on this host: {e}")
