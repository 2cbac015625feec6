"""A test that cannot run here: skip it, or fail it where the run promised that it would run.

Two switches turn skips into failures, so that a broken set-up cannot pass as a row of skips:

* ``CI=true`` (set by GitHub Actions and by ``.ci/run``): a dependency that ``make test`` always
  installs (vLLM, redis-server, moto_server, the test plugins) is missing. Use
  :func:`missing_dependency` or :func:`import_module`.
* ``LMCACHE_REQUIRE_BACKEND=<name>[,<name>...]`` (set by each vendor job of the CI workflow): a
  named backend's probe or device says it cannot run on this host, e.g. a GPU runner whose probe
  wrongly reports "no device". Use :func:`backend_cannot_run`.

Elsewhere these are skips with the same reason. Failures use ``pytrace=False``: the reason and
the remedy are the whole report. Imports only the standard library and pytest.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

#: Comma-separated backend entry-point names that must run here; their "cannot run" skips fail.
REQUIRE_BACKEND_ENV = "LMCACHE_REQUIRE_BACKEND"
#: ``CI=true``: dependencies that ``make test`` installs must be present.
CI_ENV = "CI"


def in_ci() -> bool:
    """True when ``CI`` is ``true`` (any case): missing always-installed dependencies fail."""
    return os.environ.get(CI_ENV, "").strip().lower() == "true"


def required_backends() -> frozenset[str]:
    """Backend names listed in ``LMCACHE_REQUIRE_BACKEND`` (empty when unset)."""
    value = os.environ.get(REQUIRE_BACKEND_ENV, "")
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def backend_cannot_run(backend: str, reason: str) -> NoReturn:
    """Skip with ``reason``; fail instead when ``backend`` is listed in ``LMCACHE_REQUIRE_BACKEND``."""
    if backend in required_backends():
        pytest.fail(
            f"{reason}\n{REQUIRE_BACKEND_ENV}={os.environ[REQUIRE_BACKEND_ENV]} requires backend "
            f"{backend!r} to run on this host, so this is a failure, not a skip",
            pytrace=False,
        )
    pytest.skip(reason)
    raise AssertionError("unreachable: pytest.skip raises")  # for type checkers that cannot see pytest


def missing_dependency(what: str, remedy: str, *, module_level: bool = False) -> NoReturn:
    """Skip because ``what`` is not installed (``remedy`` says how to install it); fail under CI=true.

    ``module_level``: called while a test module is imported (skips or fails the whole module).
    """
    reason = f"{what} not installed ({remedy})"
    if in_ci():
        pytest.fail(
            f"{reason}\n{CI_ENV}=true and `make test` installs it: a failure, not a skip", pytrace=False
        )
    pytest.skip(reason, allow_module_level=module_level)
    raise AssertionError("unreachable: pytest.skip raises")


def import_module(name: str, remedy: str, *, module_level: bool = False) -> ModuleType:
    """``importlib.import_module(name)``, or :func:`missing_dependency` when it is not installed.

    Only a missing ``name`` (or a missing parent package) counts; any other import error raises.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
            raise
        missing_dependency(name, remedy, module_level=module_level)
