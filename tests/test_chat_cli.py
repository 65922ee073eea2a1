"""The terminal chat (python -m chatbot.cli), driven through stdin in a subprocess on tiny personas."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatbot.cli import BubbleLines, resolve_persona
from chatbot.engine import GenerationParams
from core.errors import UserError
from tests.chat_helpers import chat_dirs, engine  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], stdin: str = "", timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "chatbot.cli", *args], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", env=env, cwd=ROOT, timeout=timeout)


def test_terminal_chat_streams_switches_and_resets(chat_dirs, engine):
    ext, adapters = chat_dirs
    p = GenerationParams(max_new_tokens=12)
    h1 = [{"role": "user", "content": "안녕 뭐해?"}]
    a1 = engine.reply(h1, "minji", p, seed=3)
    h2 = h1 + [{"role": "assistant", "content": a1}, {"role": "user", "content": "나도 심심해"}]
    a2 = engine.reply(h2, "junho", p, seed=3)
    a3 = engine.reply([{"role": "user", "content": "처음부터 다시"}], None, p, seed=3)
    stdin = "안녕 뭐해?\n/personas\n/persona junho\n나도 심심해\n/persona nobody\n/reset\n/persona base\n" \
            "처음부터 다시\n/quit\n이건 안 보내짐\n"
    r = _run(["--adapters", str(adapters), "--cache-dir", str(ext.parents[1]), "--persona", "minji",
              "--seed", "3", "--max-new-tokens", "12"], stdin)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    assert f"minji> {a1}" in out and f"junho> {a2}" in out and f"base> {a3}" in out
    assert any("val ppl" in line and line.strip().startswith("minji") for line in out)
    assert "(persona: junho)" in out and "(conversation cleared)" in out
    assert any("nobody: not a usable persona" in line for line in out)
    assert "안 보내짐" not in r.stdout


def test_missing_adapters_dir_one_line_exit_2(tmp_path):
    r = _run(["--adapters", str(tmp_path / "nope")])
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: --adapters") and len(r.stderr.strip().splitlines()) == 1


def test_unknown_persona_flag(engine):
    with pytest.raises(UserError, match="--persona nobody"):
        resolve_persona(engine, "nobody", "--persona")
    assert resolve_persona(engine, "base") is None and resolve_persona(engine, None) == "junho"


def test_burst_reply_prints_one_line_per_bubble():
    out = io.StringIO()
    lines = BubbleLines("민수> ", out)
    for partial in ("응", "응\n", "응\n지금", "응\n지금 가는 중\n\n5", "응\n지금 가는 중\n\n5분만"):
        lines.show(partial)
    lines.close()
    assert out.getvalue() == "민수> 응\n민수> 지금 가는 중\n민수> 5분만\n"
