"""Who may reach a chat: loopback detection and secrets from a flag, a file or the environment.

Shared by the web chat (``python -m chatbot``: a USER:PASSWORD login) and the OpenAI-compatible
server (``python -m chatbot.serve``: a bearer key). Imports no gradio and no model code.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from core.errors import UserError


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret(flag: str | None, flag_name: str, file: str | None, env_name: str,
                env: dict | None = None) -> tuple[str | None, str]:
    """(secret, where it came from): ``flag``, else the first line of ``file``, else ``$env_name``.

    Giving both the flag and the file is a UserError, so is an unreadable or empty file. The
    secret is None when none of the three is set.
    """
    if flag is not None and file is not None:
        raise UserError(f"{flag_name} and {flag_name}-file: give one")
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{flag_name}-file {file}: cannot read it ({type(e).__name__})") from e
        if not lines or not lines[0].strip():
            raise UserError(f"{flag_name}-file {file}: empty (write the secret on its first line)")
        return lines[0].strip(), f"{flag_name}-file {file}"
    if flag is not None:
        return flag, flag_name
    value = (env if env is not None else os.environ).get(env_name, "").strip()
    return value or None, f"${env_name}"
