"""Plain-text tables: numbers right-aligned, text left-aligned, rows checked against the headers."""

from __future__ import annotations

import pytest

from lmcache_core.cli.table import format_table


def test_table_aligns_numbers_right_and_text_left() -> None:
    text = format_table(["name", "GB/s"], [["a", "1.50"], ["long name", "12.25"]])
    assert text.splitlines() == [
        "name       GB/s",
        "---------  -----",
        "a           1.50",
        "long name  12.25",
    ]
    with pytest.raises(ValueError, match=r"rows\[0\]"):
        format_table(["a", "b"], [["only one"]])
