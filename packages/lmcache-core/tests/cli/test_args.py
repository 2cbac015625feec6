"""Shared argument types and the translation of bench errors into option errors."""

from __future__ import annotations

import argparse

import pytest

from lmcache_core.cli.args import add_output_flags, bench_error, byte_size, count, positive_int


def test_types_accept_what_they_name_and_say_what_they_expected() -> None:
    assert positive_int("3") == 3 and count("0") == 0 and byte_size("--object-size")("256K") == 256 * 1024
    with pytest.raises(argparse.ArgumentTypeError, match="expected a positive integer, given '0'"):
        positive_int("0")
    with pytest.raises(argparse.ArgumentTypeError, match="expected a positive integer, given 'x'"):
        positive_int("x")
    with pytest.raises(argparse.ArgumentTypeError, match="expected a non-negative integer, given '-1'"):
        count("-1")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^--object-size: expected a byte size"):
        byte_size("--object-size")("huge")


def test_output_flags() -> None:
    parser = argparse.ArgumentParser()
    add_output_flags(parser)
    assert vars(parser.parse_args(["--json"])) == {"json": True, "no_progress": False}
    quiet = argparse.ArgumentParser()
    add_output_flags(quiet, progress=False)
    assert vars(quiet.parse_args([])) == {"json": False}


def test_bench_errors_name_the_option_they_came_from() -> None:
    args = argparse.Namespace(pool_mib=0, repeats=None)
    assert str(bench_error(ValueError("pool_mib: expected an integer >= 1, given 0"), args)) == (
        "--pool-mib: expected an integer >= 1, given 0"
    )
    # a keyword that is no option, or no keyword at all, is left as it is
    assert str(bench_error(ValueError("url: expected an L2 URL"), args)) == "url: expected an L2 URL"
    assert str(bench_error(RuntimeError("engine failed: log"), args)) == "engine failed: log"
