"""Errors meant for users: one line, no traceback, exit code 2 at the CLI."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or a bad flag. The CLI prints ``error: <message>`` and exits 2."""


class ParseError(UserError):
    """A file that cannot be read as a chat export."""

    def __init__(self, file: str, reason: str, line: int | None = None):
        self.file, self.reason, self.line = file, reason, line
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {reason}")
