"""Argument types and flags shared by the bench commands, and bench errors turned into CLI errors.

Types (for ``add_argument(type=...)``) raise :class:`argparse.ArgumentTypeError`, so argparse
prints ``argument --NAME: <reason>`` and exits with status 2. :func:`bench_error` turns a
:class:`ValueError` of :mod:`lmcache_core.bench` (message ``"keyword: reason"``) into a
:class:`~lmcache_core.cli.errors.CLIError` naming the option (``"--keyword: reason"``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from lmcache_core.cli.errors import CLIError


def positive_int(text: str) -> int:
    """``"3"`` -> 3; anything but an integer > 0 is an argument error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, given {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, given {text!r}")
    return value


def count(text: str) -> int:
    """``"0"`` -> 0; anything but an integer >= 0 is an argument error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, given {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, given {text!r}")
    return value


def byte_size(option: str) -> Callable[[str], int]:
    """A type for ``option``: ``"256K"``, ``"32M"``, ``"4096"`` -> bytes (> 0)."""

    def parse(text: str) -> int:
        from lmcache_core.units import parse_bytes

        try:
            return parse_bytes(option, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def add_output_flags(parser: argparse.ArgumentParser, progress: bool = True) -> None:
    """``--json`` (one JSON document on stdout) and, with ``progress``, ``--no-progress``."""
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def add_quick_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """``--quick``: a smoke run; ``what`` says what it shrinks."""
    parser.add_argument("--quick", action="store_true", help=what)


_KEYWORD = re.compile(r"([a-z][a-z0-9_]*)(:.*)", re.DOTALL)


def bench_error(error: Exception, args: argparse.Namespace) -> CLIError:
    """``error`` as a CLIError; a leading ``keyword:`` that is one of ``args`` becomes ``--keyword:``."""
    message = str(error)
    m = _KEYWORD.fullmatch(message)
    if m is not None and m.group(1) in vars(args):
        message = "--" + m.group(1).replace("_", "-") + m.group(2)
    return CLIError(message)
