"""What a bench tells its caller while it runs: steps, per-repeat detail, and notes.

A bench calls :meth:`ProgressSink.begin` once it knows how many steps it has, then
:meth:`~ProgressSink.phase` per step, :meth:`~ProgressSink.update` per repeat and
:meth:`~ProgressSink.note` for a message the user should see (a failure count, a slow engine
start). :class:`NoProgress` ignores everything; the terminal display is
:class:`lmcache_core.cli.progress.Progress`. No rendering here.
"""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    """Receives a bench's progress; every method returns quickly and never raises."""

    def begin(self, total: int) -> None:
        """The bench has ``total`` steps."""

    def phase(self, text: str) -> None:
        """The next step starts; ``text`` says what it does."""

    def update(self, detail: str) -> None:
        """Detail of the current step (e.g. ``"3/11"`` repeats)."""

    def skip(self) -> None:
        """One step counted in ``begin`` will not run."""

    def note(self, text: str) -> None:
        """A message for the user, shown on its own line."""


class NoProgress:
    """A :class:`ProgressSink` that shows nothing."""

    def begin(self, total: int) -> None:
        pass

    def phase(self, text: str) -> None:
        pass

    def update(self, detail: str) -> None:
        pass

    def skip(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass
