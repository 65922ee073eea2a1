"""The walls between the folders hold: the import-linter contracts in pyproject.toml, on the real code.

Each contract names its wall (layers: pipeline over chatbot and data_prep over core;
no cycles inside a folder; data_prep without torch/transformers/gradio; the chat
engine without gradio; training without the chat). A broken one prints the import
chain that crosses it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    code = lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 broken" in out


def test_importing_data_prep_and_core_loads_no_heavy_library():
    """What the contracts cannot see: nothing heavy is imported at run time either."""
    import subprocess

    code = ("import sys, core, core.errors, core.cli, core.files, core.chat_format, core.adapter_format, "
            "core.models, data_prep.formats, data_prep.pairs, data_prep.errors, chatbot.adapters, chatbot.decoding; "
            "print(sorted(m for m in ('torch', 'transformers', 'gradio', 'peft') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_script_of_the_project_compiles():
    """The benches and scripts no test imports still parse (an import rewrite once left one unindented)."""
    import ast

    files = [p for d in ("bench", "pipeline", "chatbot", "core", "data_prep", "tests") for p in (REPO / d).rglob("*.py")]
    assert len(files) > 50
    for path in files:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path))  # SyntaxError names the file and line
