"""Block-count buckets: how many compiled gathers/scatters a layout needs, whatever the requests.

A transfer of ``n`` live token rows is cut into pieces of at most ``MAX_BUCKET`` blocks' rows
(``MAX_BUCKET * block_size``); each piece runs the executable of the smallest bucket in
:data:`BUCKETS` whose ``bucket * block_size`` rows hold it (unused rows are padding that is read
from block 0 and dropped on write). So a layout has ``len(BUCKETS)`` gathers and as many scatters,
compiled once, for any mix of request sizes.
"""

from __future__ import annotations

from typing import NamedTuple

#: Block counts compiled per layout: 1, 2, 4, ... 64.
BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
MAX_BUCKET = BUCKETS[-1]


class Piece(NamedTuple):
    """Rows ``[start, start + rows)`` of a transfer, run by the executable of ``bucket`` blocks."""

    start: int
    rows: int
    bucket: int


def bucket_for(blocks: int) -> int:
    """The smallest bucket of at least ``blocks`` blocks (1 <= blocks <= MAX_BUCKET)."""
    if not 1 <= blocks <= MAX_BUCKET:
        raise ValueError(f"blocks: expected 1 <= blocks <= {MAX_BUCKET}, given {blocks}")
    return next(b for b in BUCKETS if b >= blocks)


def pieces(num_rows: int, block_size: int) -> list[Piece]:
    """The pieces that move ``num_rows`` rows in buckets of ``block_size``-row blocks."""
    if block_size < 1:
        raise ValueError(f"block_size: expected >= 1, given {block_size}")
    out, start, most = [], 0, MAX_BUCKET * block_size
    while start < num_rows:
        rows = min(most, num_rows - start)
        out.append(Piece(start, rows, bucket_for(-(-rows // block_size))))
        start += rows
    return out
