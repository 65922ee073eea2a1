"""Files: sha256 of a file, JSON reading with a user-facing error, atomic writes of a file or a folder.

Every write that must never be seen half done goes through here: :func:`atomic_write`
for one file and :func:`atomic_dir` for a whole folder. Both write beside the target
(same filesystem), flush what they wrote to disk, and publish with one rename; an
existing folder is swapped with the new one in one step (Linux ``renameat2``
``RENAME_EXCHANGE``), so a kill at any point leaves the complete old folder or the
complete new one. Where the filesystem cannot swap, the old folder is moved aside
first and :func:`recover` puts it back if the process dies before the new one is in.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from core.errors import UserError

STALE_TEMP_S = 6 * 3600  # temp folders of runs killed hard are removed once this old
KILL_ENV = "KAKAO_PERSONA_TEST_KILL"  # tests only: "POINT:NAME", where the write of folder NAME kills itself
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # from <fcntl.h> and <linux/fs.h>


def kill_point(point: str, target: Path) -> None:
    """Die here (SIGKILL, no cleanup) when :data:`KILL_ENV` is ``point:target-name``; the kill tests set it."""
    if os.environ.get(KILL_ENV) == f"{point}:{target.name}":
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


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
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: str | Path, replace: bool = True, carry: Sequence[str] = ()) -> Iterator[Path]:
    """A fresh temp folder beside ``target``, swapped in for ``target`` when the block succeeds.

    ``replace``: an existing ``target`` is swapped out (output folders, checkpoints);
    otherwise the first finished copy wins and ours is dropped (caches: same inputs,
    same result). ``carry``: entries of the old ``target`` that the new folder lacks
    are hard-linked (copied where links fail) into it before the swap, so they survive
    it. Files and folders are fsynced before the swap. On any error the temp folder is
    removed; those that killed runs left behind (the process id in the name is gone, or
    the folder is :data:`STALE_TEMP_S` old) are removed by the next write.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    prefix = f".{target.name}.tmp-"
    for old in target.parent.glob(prefix + "*"):
        if _gone(old.name[len(prefix):].split("-")[0]) or time.time() - old.stat().st_mtime > STALE_TEMP_S:
            shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{prefix}{os.getpid()}-"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the result is an ordinary folder
        if carry and target.is_dir():
            _carry_over(target, tmp, carry)
        fsync_tree(tmp)
        kill_point("before-publish", target)
        _publish(tmp, target, replace)
        kill_point("after-publish", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover(target: str | Path) -> None:
    """Undo a swap that a kill cut in half: the old folder moved aside and the new one not in yet.

    Only the fallback swap (two renames) can leave this; asides of processes still
    running are left alone, and those beside a complete ``target`` are removed.
    """
    target = Path(target)
    asides = [p for p in target.parent.glob(f".{target.name}.old-*") if _gone(p.name.rsplit("-", 1)[-1])]
    asides.sort(key=lambda p: p.stat().st_mtime)
    if asides and not target.exists():
        asides.pop().rename(target)
        _fsync_dir(target.parent)
    for p in asides:
        shutil.rmtree(p, ignore_errors=True)


def fsync_tree(root: str | Path) -> None:
    """Flush every file and folder under ``root`` to disk (a rename after this cannot publish holes)."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(folder)


def _fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform without directory handles: nothing to flush
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _gone(pid: str) -> bool:
    """Whether ``pid`` (from a temp folder's name) is a process id and no such process runs."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False


def _carry_over(target: Path, tmp: Path, names: Sequence[str]) -> None:
    for name in names:
        src, dst = target / name, tmp / name
        if dst.exists() or not src.exists():
            continue
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, dst)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the system or filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # not Linux, or a libc before glibc 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _publish(tmp: Path, target: Path, replace: bool) -> None:
    if replace and target.exists():
        if not _exchange(tmp, target):  # tmp now holds the old folder, removed by the caller
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            target.rename(old)
            kill_point("half-swapped", target)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(target.parent)
        return
    try:
        os.rename(tmp, target)
        _fsync_dir(target.parent)
    except OSError:
        if replace or not target.is_dir():
            raise
