"""The progress line: steps counted as the bench announces them, one line per phase off a terminal."""

from __future__ import annotations

import io

from lmcache_core.cli.progress import Progress


def test_phases_count_against_the_announced_total_and_updates_stay_off_pipes() -> None:
    out = io.StringIO()
    p = Progress(stream=out)
    p.begin(3)
    p.phase("fill")
    p.update("1/2")  # not a terminal: dropped
    p.skip()
    p.phase("copy")
    p.note("a note")
    p.close()
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines[:2]] == ["fill", "copy"]
    assert lines[0].startswith("[1/3 ") and lines[1].startswith("[2/2 ") and lines[2] == "a note"


def test_disabled_progress_shows_notes_only() -> None:
    out = io.StringIO()
    p = Progress(stream=out, enabled=False)
    p.begin(1)
    p.phase("fill")
    p.note("kept")
    assert out.getvalue() == "kept\n"
