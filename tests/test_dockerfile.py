"""The Dockerfile, read as instructions and partly run: what it copies, its torch guard, the command it serves.

No Docker daemon is needed: the instructions are parsed, the torch guard's shell
snippet runs with stand-in ``python``/``pip`` commands, and the CMD is parsed by
the chat's own argument parser.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _steps() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical, buf = [], ""
    for line in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        continued = line.rstrip().endswith("\\")
        buf += line.rstrip().rstrip("\\").strip() + " "
        if not continued:
            logical.append(buf.strip())
            buf = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in logical]


def _args() -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in _steps() if k == "ARG" and "=" in a)


def _index(pred) -> int:
    return next(i for i, step in enumerate(_steps()) if pred(*step))


def test_every_package_is_copied_before_the_install():
    import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"][
        "find"]["include"]
    packages = {name.rstrip("*") for name in include}
    install = _index(lambda k, a: k == "RUN" and "pip install -e ." in a)
    copied = {a.split()[0] for k, a in _steps()[:install] if k == "COPY"}
    assert packages <= copied, f"not copied into the image: {packages - copied}"
    assert all((REPO / name).is_dir() for name in packages)


def test_default_model_is_extended_after_the_install_and_before_the_app_user():
    steps = _steps()
    extend = _index(lambda k, a: k == "RUN" and "python -m pipeline.extend" in a)
    assert _index(lambda k, a: k == "RUN" and "pip install -e ." in a) < extend < _index(lambda k, a: k == "USER")
    env = " ".join(a for k, a in steps if k == "ENV").split()
    cache = dict(x.split("=", 1) for x in env if "=" in x)["KAKAO_PERSONA_CACHE"]
    assert cache.startswith("/opt/kakao-persona") and "chown -R app:app /opt/kakao-persona" in steps[extend][1]


def _fake_bin(tmp_path: Path, torch_installed: bool) -> Path:
    """``python`` that imports torch or fails as told, and ``pip`` that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    py = bin_dir / "python"
    found = "echo fake-torch; exit 0" if torch_installed else "exit 1"
    py.write_text(f'#!/bin/sh\ncase "$2" in *torch*) {found};; esac\nexit 0\n')
    pip = bin_dir / "pip"
    pip.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "pip.log"}\n')
    for f in (py, pip):
        f.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("torch_installed", [True, False])
def test_torch_guard_keeps_a_base_image_torch_and_installs_the_pinned_one_otherwise(tmp_path, torch_installed):
    guard = _steps()[_index(lambda k, a: k == "RUN" and "import torch" in a)][1]
    env = {**os.environ, **_args(), "PATH": f"{_fake_bin(tmp_path, torch_installed)}:{os.environ['PATH']}"}
    done = subprocess.run(["sh", "-c", guard], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    pip_log = tmp_path / "pip.log"
    if torch_installed:
        assert not pip_log.exists()
    else:
        args = _args()
        assert pip_log.read_text().split() == ["install", f"torch=={args['TORCH_VERSION']}", "--index-url",
                                               args["TORCH_INDEX"]]
        assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"


def test_command_is_the_chat_on_all_interfaces_serving_the_mounted_adapters():
    sys.path.insert(0, str(REPO))
    from chatbot.__main__ import _args as chat_args

    steps = _steps()
    cmd = json.loads(next(a for k, a in steps if k == "CMD"))
    assert cmd[:3] == ["python", "-m", "chatbot"]
    args = chat_args(cmd[3:])
    assert (args.host, args.port, args.adapters, args.share) == ("0.0.0.0", 7860, "/adapters", False)
    assert ("EXPOSE", str(args.port)) in steps and ("VOLUME", '["/adapters"]') in steps
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", "runs", "adapters", ".git"} <= set(ignored)
