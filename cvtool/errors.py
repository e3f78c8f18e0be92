"""The errors cvtool expects: bad input, an unusable file or option, an interrupted run.

Every module raises a subclass of `CvtoolError` for what a user can fix; the command line prints
its message as one line and exits with its `exit_code` (2: usage or unusable input). Anything
else is a bug and keeps its traceback. Standard library only: imported everywhere.
"""

from __future__ import annotations

__all__ = ["CvtoolError", "Interrupted"]


class CvtoolError(Exception):
    """An expected failure; str() is the whole message (it names the file and the problem)."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) arrived: unwinds like Ctrl-C so every cleanup runs; exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
