"""Errors meant for users: one line, no traceback, exit code 2 at the CLI."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or a bad flag. The CLI prints ``error: <message>`` and exits 2."""
