"""Byte sizes and durations written as text: ``"512M"``, ``"4G"``, ``"2.5"`` seconds.

A leaf module (it imports only the standard library): :mod:`lmcache_core.config` and
:mod:`lmcache_core.storage.url` both parse with it. Every failure is a ValueError naming the
setting, what was expected and what was given.
"""

from __future__ import annotations

import math

#: Binary multipliers of a size suffix (``K`` = 2**10 bytes, ..., ``T`` = 2**40 bytes).
SIZE_SUFFIX = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(name: str, text: str) -> int:
    """``"512M"``, ``"4G"``, ``"1.5GiB"``, ``"1048576"`` -> bytes (positive, below 2**63).

    Suffixes are binary (``K`` = 1024 bytes); ValueError naming ``name`` otherwise.
    """
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = SIZE_SUFFIX.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in SIZE_SUFFIX else t
    try:
        number = float(digits) * mult
    except ValueError:
        raise ValueError(f"{name}: expected a byte size like 4G or 512M, given {text!r}") from None
    if not math.isfinite(number) or number >= 2**63:
        raise ValueError(f"{name}: expected a finite byte size below 8E (2**63), given {text!r}")
    value = int(number)
    if value <= 0:
        raise ValueError(f"{name}: expected a positive byte size, given {text!r}")
    return value


def parse_seconds(name: str, text: str) -> float:
    """``"2.5"`` -> 2.5 seconds, finite and >= 0; ValueError naming ``name`` otherwise (inf, nan)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}: expected a number of seconds, given {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite, non-negative number of seconds, given {text!r}")
    return value
