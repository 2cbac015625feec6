"""Plain-text tables for the CLI: left-aligned text, right-aligned numbers, no dependency."""

from __future__ import annotations

from collections.abc import Sequence


def _is_number(cell: str) -> bool:
    head = cell.split(" ", 1)[0].rstrip("x%")
    try:
        float(head)
    except ValueError:
        return False
    return True


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "") -> str:
    """Render ``rows`` under ``headers``; a cell that starts with a number is right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    for i, row in enumerate(cells):
        if len(row) != len(headers):
            raise ValueError(f"rows[{i}]: expected {len(headers)} cells, given {len(row)}")
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(row: Sequence[str], align_numbers: bool) -> str:
        out = []
        for cell, width in zip(row, widths, strict=True):
            out.append(cell.rjust(width) if align_numbers and _is_number(cell) else cell.ljust(width))
        return (indent + "  ".join(out)).rstrip()

    rule = indent + "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers), False), rule, *(line(r, True) for r in cells)])
