"""A one-line progress display on stderr, without any dependency: the CLI's
:class:`~lmcache_core.bench.progress.ProgressSink`.

On a terminal the line is rewritten in place; otherwise (a pipe, a log file, a test) each new
phase is printed on its own line and per-repeat updates are dropped, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``begin(total)``; ``phase(text)`` starts step ``i/total``; ``update(text)`` refines it."""

    def __init__(self, total: int = 0, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.step = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()
        self._phase = ""
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def _draw(self, text: str) -> None:
        elapsed = time.perf_counter() - self._start
        line = f"[{self.step}/{self.total} {elapsed:5.1f}s] {text}"
        if self.live:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def begin(self, total: int) -> None:
        """The run has ``total`` steps."""
        self.total = total

    def skip(self) -> None:
        """One announced step will not run."""
        self.total -= 1

    def phase(self, text: str) -> None:
        """Start the next step, described by ``text``."""
        self.step += 1
        self._phase = text
        if self.enabled:
            self._draw(text)

    def update(self, detail: str) -> None:
        """Refine the current step (terminal only, at most 20 redraws per second)."""
        now = time.perf_counter()
        if self.live and now - self._last_draw > 0.05:
            self._last_draw = now
            self._draw(f"{self._phase} {detail}")

    def note(self, text: str) -> None:
        """Print a message on its own line without losing the progress line."""
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Clear the live line."""
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()
