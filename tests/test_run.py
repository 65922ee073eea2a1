"""pipeline.run: the stages run in order once, are skipped when nothing changed, and rerun from
the first stage whose flags (or training defaults) changed. Tiny Gemma base (--base-model DIR),
2 training steps."""
from __future__ import annotations

import json
from pathlib import Path

from core.cli import run_cli
from pipeline import run as run_module
from pipeline.run import STATE_FILE, main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kakao_example.txt"


def _argv(tiny_gemma_dir, out: Path, cache: Path, *extra: str) -> list[str]:
    general = out.parent / "general.txt"
    general.write_text("오늘은 날씨가 맑다.\n버스를 기다렸다.\n", encoding="utf-8")
    return [str(EXAMPLE), "--persona", "민수", "--out", str(out), "--base-model", str(tiny_gemma_dir),
            "--cache-dir", str(cache), "--threads", "1", "--max-steps", "2", "--eval-every", "0",
            "--max-examples", "2", "--samples", "1", "--max-new-tokens", "3",
            "--general", str(general), *extra]


def _statuses(out: str) -> dict[str, str]:
    """{stage: 'ran' | 'skipped'} from the run's progress lines."""
    res = {}
    for line in out.splitlines():
        if line.startswith("[") and "] " in line and ": " in line:
            name, status = line.split("] ", 1)[1].split(": ", 1)
            res[name] = "skipped" if "skipped" in status else res.get(name, "ran")
    return res


def test_run_skips_unchanged_stages_and_reruns_from_a_changed_flag(tiny_gemma_dir, tmp_path, capsys, monkeypatch):
    from pipeline.train import parse_args

    real_defaults = run_module.train_defaults
    cli = parse_args(["--data", "d", "--out", "o"])  # what python -m pipeline.train uses without flags
    assert real_defaults() == {k: getattr(cli, k) for k in real_defaults()} and "out" not in real_defaults()
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert run_cli(main, _argv(tiny_gemma_dir, out, cache, "--samples", "1")) == 0
    first = capsys.readouterr().out
    assert _statuses(first) == {"prepare": "ran", "extend": "ran", "train:민수": "ran", "evaluate": "ran"}
    adapter = out / "adapters" / "민수"
    for name in ("manifest.json", "adapter_model.safetensors", "eval.json", "eval.md", "perplexity.png"):
        assert (adapter / name).is_file(), name
    assert (out / "data" / "train.jsonl").is_file()
    assert f"python -m chatbot --adapters {out / 'adapters'}" in first
    state = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))["stages"]
    assert set(state) == {"prepare", "extend", "train:민수", "evaluate"}
    mtime = (adapter / "adapter_model.safetensors").stat().st_mtime_ns

    assert run_cli(main, _argv(tiny_gemma_dir, out, cache, "--samples", "1")) == 0
    second = _statuses(capsys.readouterr().out)
    assert second == {"prepare": "skipped", "extend": "ran", "train:민수": "skipped", "evaluate": "skipped"}
    assert (adapter / "adapter_model.safetensors").stat().st_mtime_ns == mtime

    assert run_cli(main, _argv(tiny_gemma_dir, out, cache, "--samples", "1", "--lora-r", "2")) == 0
    third = _statuses(capsys.readouterr().out)
    assert third == {"prepare": "skipped", "extend": "ran", "train:민수": "ran", "evaluate": "ran"}
    assert json.loads((adapter / "manifest.json").read_text(encoding="utf-8"))["config"]["lora_r"] == 2

    # a project version whose training defaults changed retrains (and re-evaluates) with the same flags
    changed = {**real_defaults(), "max_steps": 241}
    monkeypatch.setattr(run_module, "train_defaults", lambda: changed)
    assert run_cli(main, _argv(tiny_gemma_dir, out, cache, "--samples", "1", "--lora-r", "2")) == 0
    fourth = _statuses(capsys.readouterr().out)
    assert fourth == {"prepare": "skipped", "extend": "ran", "train:민수": "ran", "evaluate": "ran"}

    # one whose persona card measures more (a new field the chat reads) prepares again, and so on
    fields = run_module.card_fields()
    assert "polite_share" in fields
    monkeypatch.setattr(run_module, "card_fields", lambda: [*fields, "new_field"])
    assert run_cli(main, _argv(tiny_gemma_dir, out, cache, "--samples", "1", "--lora-r", "2")) == 0
    fifth = _statuses(capsys.readouterr().out)
    assert fifth == {"prepare": "ran", "extend": "ran", "train:민수": "ran", "evaluate": "ran"}


def test_run_reports_missing_inputs_in_one_line(tmp_path, capsys):
    code = run_cli(main, [str(tmp_path / "nope.txt"), "--persona", "민수", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nope.txt: no such file" in err and "\n" not in err


def test_chat_is_started_as_its_own_process(capfd):
    """--chat runs ``python -m chatbot`` in a child process (here with --help: it prints the chat's usage)."""
    assert run_module.open_chat(["--help"]) == 0
    assert "usage: python -m chatbot" in capfd.readouterr().out
