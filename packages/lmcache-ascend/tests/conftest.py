"""Shared fixtures of lmcache-ascend's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lmcache_ascend.probe import CPU_SWITCH

pytest_plugins = ["lmcache_core.testing"]


@pytest.fixture(scope="class")
def torch_ops_on_cpu() -> Iterator[None]:
    """The CPU test switch on: the ``ascend`` backend serves CPU KV through its torch-ops path."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CPU_SWITCH, "1")
        yield
