"""pytest hooks of the conformance suite: its two options, the seed in the header and summary.

Loaded by ``pytest_plugins = ["lmcache_core.testing"]`` in a test module, or earlier with
``pytest -p lmcache_core.testing`` (needed to pass the options on the command line, since pytest
parses the command line before it imports test modules).

PYTEST_DONT_REWRITE: this module has no asserts to rewrite; the marker silences pytest's warning
when a test module imported the package before registering it.
"""

from __future__ import annotations

import argparse

import pytest

#: Seed used when ``--lmcache-conformance-seed`` is not given.
DEFAULT_SEED = 0
#: Random cases per layout variant when ``--lmcache-conformance-cases`` is not given.
DEFAULT_CASES = 6

SEED_OPTION = "lmcache_conformance_seed"
CASES_OPTION = "lmcache_conformance_cases"

#: Set to True in ``config.stash`` once a conformance test was generated (summary line only then).
USED = pytest.StashKey[bool]()


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, given {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, given {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected at least 1 case per layout, given 0")
    return value


def seed_and_cases(config: pytest.Config) -> tuple[int, int]:
    """The suite's seed and cases per layout, with defaults when the plugin loaded late."""
    seed = config.getoption(SEED_OPTION, default=DEFAULT_SEED)
    cases = config.getoption(CASES_OPTION, default=DEFAULT_CASES)
    return int(seed), int(cases)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lmcache-conformance", "lmcache-core backend conformance suite")
    group.addoption(
        "--lmcache-conformance-seed", dest=SEED_OPTION, type=_non_negative_int, default=DEFAULT_SEED,
        help=f"seed of the random conformance cases (default {DEFAULT_SEED}); rerun a failure with it",
    )  # fmt: skip
    group.addoption(
        "--lmcache-conformance-cases", dest=CASES_OPTION, type=_positive_int, default=DEFAULT_CASES,
        help=f"random conformance cases per layout variant (default {DEFAULT_CASES})",
    )  # fmt: skip


def _line(config: pytest.Config) -> str:
    seed, cases = seed_and_cases(config)
    return (
        f"lmcache conformance: seed={seed}, {cases} cases per layout "
        f"(reproduce with -p lmcache_core.testing --lmcache-conformance-seed={seed} "
        f"--lmcache-conformance-cases={cases})"
    )


def pytest_report_header(config: pytest.Config) -> str:
    return _line(config)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    if config.stash.get(USED, False):
        terminalreporter.write_line(_line(config))
