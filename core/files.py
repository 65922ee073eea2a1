"""Files: sha256 of a file, JSON reading with a user-facing error, atomic writes of a file or a folder.

Every write that must never be seen half done goes through here: :func:`atomic_write`
for one file and :func:`atomic_dir` for a whole folder. Both write beside the target
(same filesystem) and publish with one rename.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from core.errors import UserError

STALE_TEMP_S = 6 * 3600  # temp folders of runs killed hard are removed once this old


def sha256_of(path: str | Path) -> str:
    """Streaming sha256 of one file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path, what: str, how: str) -> dict:
    """A JSON object from ``path``; a UserError saying the file is not ``what`` (and ``how`` to make one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not {what} ({type(e).__name__}); {how}") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: not {what} (not a JSON object); {how}")
    return data


def read_json_or_empty(path: str | Path) -> dict:
    """A JSON object from ``path``, or {} when it is missing or unreadable (caches, state files)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def atomic_write(path: str | Path, data: str | bytes | dict | list, indent: int = 1) -> None:
    """Write text, bytes or JSON (``indent``) to ``path``: a temp file beside it, then one rename."""
    path = Path(path)
    if not isinstance(data, (str, bytes)):
        data = json.dumps(data, ensure_ascii=False, indent=indent)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """A fresh temp folder beside ``target``, renamed to ``target`` when the block succeeds.

    ``replace``: an existing ``target`` is swapped out (output folders, checkpoints);
    otherwise the first finished copy wins and ours is dropped (caches: same inputs,
    same result). On any error the temp folder is removed; temp folders that runs
    killed hard left behind are removed once they are :data:`STALE_TEMP_S` old.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    for old in target.parent.glob(prefix + "*"):
        if time.time() - old.stat().st_mtime > STALE_TEMP_S:
            shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the result is an ordinary folder
        _publish(tmp, target, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path, replace: bool) -> None:
    if replace and target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, target)
    except OSError:
        if replace or not target.is_dir():
            raise
