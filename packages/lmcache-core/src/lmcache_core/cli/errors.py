"""The CLI's own error: a problem with what the user asked for, printed without a traceback."""

from __future__ import annotations


class CLIError(Exception):
    """Bad arguments or an unusable request; ``main`` prints the message and exits with status 2."""
