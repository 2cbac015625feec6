"""Shared set-up of the cross-package tests that use the installed test plugins (tests/plugins/).

Every test here is skipped, with the install command, when the plugins are not installed, and
runs with none of the plugins' switches set (a test sets the ones it needs).
"""

from __future__ import annotations

import importlib.metadata

import pytest

PLUGIN_DISTS = ("lmcache-dummy-backend", "lmcache-broken-probe", "lmcache-dummy-twin")
INSTALL = (
    ".venv/bin/pip install --no-deps --no-build-isolation -e tests/plugins/lmcache-dummy-backend "
    "-e tests/plugins/lmcache-broken-probe -e tests/plugins/lmcache-dummy-twin"
)


def _missing_dists() -> list[str]:
    missing = []
    for dist in PLUGIN_DISTS:
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    return missing


def plugin_env_vars() -> tuple[str, ...]:
    """``LMCACHE_BACKEND`` and every switch of the test plugins."""
    import lmcache_dummy_backend as dummy
    import lmcache_dummy_twin as twin

    return ("LMCACHE_BACKEND", dummy.ENABLE_ENV, dummy.BADAPI_ENV, dummy.NOIMPORT_ENV, twin.ENABLE_ENV)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = _missing_dists()
    if missing:
        skip = pytest.mark.skip(reason=f"test plugins {missing} not installed: run {INSTALL}")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    if _missing_dists():
        return
    for var in plugin_env_vars():
        monkeypatch.delenv(var, raising=False)
