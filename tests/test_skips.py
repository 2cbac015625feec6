"""Skips that cannot hide a failure, each run in a real pytest subprocess (pytester).

* tests/conftest.py skips (or, under ``CI=true``, fails) only the tests under tests/ when a test
  plugin is missing, never the core's tests collected in the same session;
* :mod:`lmcache_core.testing.require`: a missing always-installed dependency skips, and fails
  under ``CI=true``;
* ``LMCACHE_REQUIRE_BACKEND`` turns the conformance suite's "cannot run here" skip into a failure
  that gives the probe's reason (shown with the dummy test backend, disabled by default).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")
NO_SUCH_DIST = "lmcache-no-such-test-plugin"


def _environment(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name in ("CI", "LMCACHE_REQUIRE_BACKEND", "LMCACHE_TEST_DUMMY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def session_with_a_missing_plugin(pytester: pytest.Pytester) -> pytest.Pytester:
    """core/ (a passing test) and tests/ (this directory's conftest, one plugin dist missing)."""
    text = CONFTEST.read_text()
    found = re.findall(r"^PLUGIN_DISTS = \([^)]*\)", text, flags=re.MULTILINE)
    assert len(found) == 1, "tests/conftest.py no longer names PLUGIN_DISTS as this test expects"
    wanted = found[0]
    pytester.mkdir("core")
    pytester.mkdir("tests")
    (pytester.path / "core" / "test_core.py").write_text("def test_core():\n    assert 2 * 21 == 42\n")
    (pytester.path / "tests" / "conftest.py").write_text(
        text.replace(wanted, f'PLUGIN_DISTS = ("{NO_SUCH_DIST}",)')
    )
    (pytester.path / "tests" / "test_cross.py").write_text("def test_cross():\n    assert 1 + 1 == 2\n")
    return pytester


def test_a_missing_plugin_skips_only_the_tests_under_tests(
    session_with_a_missing_plugin: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(monkeypatch)
    result = session_with_a_missing_plugin.runpytest_subprocess(
        "core", "tests", "-rs", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, skipped=1)
    out = result.stdout.str()
    assert "core/test_core.py ." in out and "tests/test_cross.py s" in out, out
    assert f"tests/test_cross.py:1: test plugins ['{NO_SUCH_DIST}'] not installed (run .venv/bin/pip" in out


def test_a_missing_plugin_fails_under_ci(
    session_with_a_missing_plugin: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(monkeypatch, CI="true")
    result = session_with_a_missing_plugin.runpytest_subprocess("core", "tests", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "core/test_core.py ." in out and "tests/test_cross.py E" in out, out
    assert f"test plugins ['{NO_SUCH_DIST}'] not installed (run .venv/bin/pip" in out, out
    assert "CI=true and `make test` installs it: a failure, not a skip" in out, out


REQUIRE_USER = """
from lmcache_core.testing.require import import_module, missing_dependency

def test_present():
    assert import_module("json", "stdlib").dumps([1]) == "[1]"

def test_missing_server():
    missing_dependency("redis-server", "apt-get install -y redis-server")
"""

REQUIRE_MODULE_LEVEL = """
from lmcache_core.testing.require import import_module

mod = import_module("lmcache_no_such_module.sub", "pip install it", module_level=True)

def test_never_runs():
    assert mod is None
"""


@pytest.mark.parametrize("ci", ["", "true", "True", "1"])
def test_missing_dependencies_skip_and_fail_only_under_ci_true(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    _environment(monkeypatch, CI=ci)
    pytester.makepyfile(test_user=REQUIRE_USER, test_module_level=REQUIRE_MODULE_LEVEL)
    result = pytester.runpytest_subprocess(
        "-rs",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",  # as tools/test_matrix.py runs
    )
    out = result.stdout.str()
    assert "redis-server not installed (apt-get install -y redis-server)" in out, out
    assert "lmcache_no_such_module.sub not installed (pip install it)" in out, out
    if ci.lower() == "true":
        result.assert_outcomes(passed=1, failed=1, errors=1)  # the module-level one: a collection error
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        assert out.count("CI=true and `make test` installs it: a failure, not a skip") >= 2, out
    else:
        result.assert_outcomes(passed=1, skipped=2)
        assert result.ret == pytest.ExitCode.OK


def test_import_module_raises_an_import_error_that_is_not_a_missing_module(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dependency that is installed but broken is an error, never a skip."""
    _environment(monkeypatch)
    pytester.makepyfile(broken_dep="import lmcache_no_such_inner_module\n")
    pytester.makepyfile(
        test_broken="""
from lmcache_core.testing.require import import_module

def test_broken():
    import_module("broken_dep", "pip install broken_dep")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "ModuleNotFoundError: No module named 'lmcache_no_such_inner_module'" in result.stdout.str()


DUMMY_CONFORMANCE = """
from lmcache_core.testing import ConformanceSuite

pytest_plugins = ["lmcache_core.testing"]


class TestDummyConformance(ConformanceSuite):
    backend_name = "dummy"
    device = "cpu"
"""

PROBE_REASON = "test-only backend, disabled: set LMCACHE_TEST_DUMMY=1 to enable it"


@pytest.mark.parametrize(
    ("env", "outcome"),
    [
        ({}, "skipped"),
        ({"LMCACHE_REQUIRE_BACKEND": "arm,cuda"}, "skipped"),  # another backend is required
        ({"LMCACHE_REQUIRE_BACKEND": "dummy"}, "errors"),
        ({"LMCACHE_REQUIRE_BACKEND": "cuda, dummy"}, "errors"),
        ({"LMCACHE_REQUIRE_BACKEND": "dummy", "LMCACHE_TEST_DUMMY": "1"}, "passed"),  # it runs: met
    ],
)
def test_require_backend_turns_the_conformance_skip_into_a_failure(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], outcome: str
) -> None:
    _environment(monkeypatch, **env)
    pytester.makepyfile(test_dummy_conformance=DUMMY_CONFORMANCE)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider", "-k", "test_device_hooks")
    result.assert_outcomes(**{outcome: 1})
    if outcome == "passed":
        return
    assert f"backend 'dummy' cannot run on this host: {PROBE_REASON}" in result.stdout.str()
    required = f"LMCACHE_REQUIRE_BACKEND={env.get('LMCACHE_REQUIRE_BACKEND')} requires backend 'dummy'"
    assert (required in result.stdout.str()) == (outcome == "errors"), result.stdout.str()
