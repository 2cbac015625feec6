"""Shared set-up of the cross-package tests that use the installed test plugins (tests/plugins/).

Every test under tests/ (and only there: the matrix runs the core's tests in the same session)
is skipped, with the install command, when the plugins are not installed; under ``CI=true``
(``make test`` always installs them) it fails instead. Each runs with none of the plugins'
switches set (a test sets the ones it needs).
"""

from __future__ import annotations

import importlib.metadata

import pytest

from lmcache_core.testing.require import missing_dependency

PLUGIN_DISTS = (
    "lmcache-dummy-backend",
    "lmcache-broken-probe",
    "lmcache-dummy-twin",
    "lmcache-numpy-functional",
)
INSTALL = (
    ".venv/bin/pip install --no-deps --no-build-isolation -e tests/plugins/lmcache-dummy-backend "
    "-e tests/plugins/lmcache-broken-probe -e tests/plugins/lmcache-dummy-twin "
    "-e tests/plugins/lmcache-numpy-functional"
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
    import lmcache_numpy_functional as numpy_functional

    return (
        "LMCACHE_BACKEND",
        dummy.ENABLE_ENV,
        dummy.BADAPI_ENV,
        dummy.NOIMPORT_ENV,
        twin.ENABLE_ENV,
        numpy_functional.ENABLE_ENV,
    )


def require_plugins() -> None:
    """Skip (fail under ``CI=true``) unless every test plugin is installed."""
    missing = _missing_dists()
    if missing:
        missing_dependency(f"test plugins {missing}", f"run {INSTALL}")


@pytest.fixture(autouse=True)
def _clean_plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Autouse in this directory only (a conftest's fixtures do not reach the core's tests)."""
    require_plugins()
    for var in plugin_env_vars():
        monkeypatch.delenv(var, raising=False)
