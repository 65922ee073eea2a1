"""pipeline.run: the stages run in order once, are skipped when nothing changed, and rerun from
the first stage whose flags (or training defaults) changed. Tiny Gemma base (--base-model DIR),
2 training steps."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import run as run_module
from pipeline.cli import run_cli
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
    real_defaults = run_module.train_defaults
    assert real_defaults()["max_steps"] == 240 and "out" not in real_defaults()
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


def test_run_reports_missing_inputs_in_one_line(tmp_path, capsys):
    code = run_cli(main, [str(tmp_path / "nope.txt"), "--persona", "민수", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nope.txt: no such file" in err and "\n" not in err


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text(encoding="utf-8")
    logical, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(buf.strip())
            buf = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in logical]


def test_dockerfile_serves_the_chat_on_all_interfaces_with_the_model_baked_in():
    steps = _dockerfile()
    kinds = [k for k, _ in steps]
    assert kinds[0] == "ARG" and steps[0][1].startswith("BASE_IMAGE=python:3.11-slim")
    assert ("FROM", "${BASE_IMAGE}") in steps
    assert {"EXPOSE", "CMD", "RUN", "COPY", "ENV"} <= set(kinds)
    assert ("EXPOSE", "7860") in steps
    args = " ".join(a for k, a in steps if k == "ARG")
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in args
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert '--index-url "${TORCH_INDEX}"' in runs and "python -m pipeline.extend" in runs
    # a CUDA base image's own torch is kept rather than replaced by the CPU pin
    assert runs.index('python -c "import torch"') < runs.index('pip install "torch==${TORCH_VERSION}"')
    assert "KAKAO_PERSONA_CACHE=" in " ".join(a for k, a in steps if k == "ENV")
    cmd = json.loads(next(a for k, a in steps if k == "CMD"))
    assert cmd[:3] == ["python", "-m", "chatbot"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--adapters") + 1] == "/adapters" and cmd[cmd.index("--port") + 1] == "7860"
    assert "--share" not in cmd
    ignored = (Path(__file__).resolve().parents[1] / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", "runs", "adapters", ".git"} <= set(ignored)
