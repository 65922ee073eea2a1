"""The chat-export reading error (a :class:`core.errors.UserError` that names the file and line)."""
from __future__ import annotations

from core.errors import UserError


class ParseError(UserError):
    """A file that cannot be read as a chat export."""

    def __init__(self, file: str, reason: str, line: int | None = None):
        self.file, self.reason, self.line = file, reason, line
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {reason}")
