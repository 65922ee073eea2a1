"""Nothing half-written: a kill at any point of a write leaves the complete old folder or the complete new one.

The writes run in forks of a child process (tests/kill_helpers.py) that SIGKILL themselves at a named
point (``core.files.KILL_ENV``: ``before-publish`` = everything written, nothing swapped;
``after-publish`` = swapped, the temp folder not yet removed; ``half-swapped`` = the two-rename
fallback between its renames) or, for a kill in the middle of writing, where a monkeypatched writer
calls ``os.kill``. Then the folder is read the way its users read it.
"""
from __future__ import annotations

import json
import logging
import shutil
import signal
from pathlib import Path

import pytest

from core import adapter_format
from core.errors import UserError
from core.files import atomic_dir, recover
from tests.kill_helpers import run_child, save_two_checkpoints
from tests.test_train_cli import no_gpu  # noqa: F401 (fixture)
from tests.test_train_helpers import persona_data, train_cache  # noqa: F401 (fixtures)

KILLED = -signal.SIGKILL


@pytest.fixture
def train_log(caplog, monkeypatch):
    """caplog for the training logger (import-linter, run in-process by test_imports, disables existing loggers)."""
    monkeypatch.setattr(logging.getLogger("pipeline.train"), "disabled", False)
    with caplog.at_level(logging.WARNING, logger="pipeline.train"):
        yield caplog


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- core.files.atomic_dir

WRITE_DIR = """
import sys
from pathlib import Path
from core import files
from tests.kill_helpers import run_cases
root, swap = Path(sys.argv[1]), sys.argv[2]
if swap == "fallback":  # a filesystem that cannot swap two folders in one step
    files._exchange = lambda a, b: False
def write(case):
    with files.atomic_dir(root / case / "out", carry=("keep",)) as tmp:
        for i in range(4):
            (tmp / f"f{i}").write_text("new")
run_cases(write, {p: p + ":out" for p in sys.argv[3:]})
"""


@pytest.mark.parametrize("swap", ["exchange", "fallback"])
def test_a_killed_folder_write_leaves_the_old_or_the_new_folder(tmp_path, swap):
    points = {"before-publish": "old", "after-publish": "new"}
    if swap == "fallback":
        points["half-swapped"] = "old"
    for point in points:
        target = tmp_path / point / "out"
        (target / "keep").mkdir(parents=True)
        (target / "keep" / "ckpt").write_text("c")
        for i in range(4):
            (target / f"f{i}").write_text("old")
    assert run_child(WRITE_DIR, tmp_path, swap, *points) == {p: KILLED for p in points}
    for point, expected in points.items():
        target = tmp_path / point / "out"
        if point == "half-swapped":  # the old folder is aside until the next write (or recover) puts it back
            assert not target.exists()
            recover(target)
        assert {p.name: p.read_text() for p in target.iterdir() if p.is_file()} == {f"f{i}": expected for i in range(4)}
        assert (target / "keep" / "ckpt").read_text() == "c"  # carried over into the new folder
        with atomic_dir(target, carry=("keep",)) as tmp:  # the next write removes what the kill left
            (tmp / "f0").write_text("next")
        assert _hidden(target.parent) == [] and (target / "keep" / "ckpt").read_text() == "c"


def test_a_failed_write_keeps_the_old_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "f").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "f").write_text("new")
        raise RuntimeError("check failed")
    assert (target / "f").read_text() == "old" and _hidden(tmp_path) == []


# ---------------------------------------------------------------- the final adapter save

WRITE_ADAPTER = """
import os, sys
from pathlib import Path
import torch
from core.adapter_format import write_adapter
from tests.chat_helpers import adapter_manifest, random_lora
from tests.kill_helpers import run_cases
torch.set_num_threads(1)
ext, root = Path(sys.argv[1]), Path(sys.argv[2])
model, tok, m = random_lora(ext, 2)
def write(case):
    if case == "mid-save":  # dies after the weights, before the tokenizer and the manifest
        tok.save_pretrained = lambda *a, **k: os.kill(os.getpid(), 9)
    write_adapter(model, tok, root / case / "a", adapter_manifest(m, "민수", "지영", 2), None,
                  lambda d: (d / "loss.png").write_bytes(b"plot 2"))
run_cases(write, {"mid-save": None, "before": "before-publish:a", "after": "after-publish:a", "whole": None})
"""


def _old_adapter(ext: Path, out: Path) -> None:
    from tests.chat_helpers import adapter_manifest, random_lora

    model, tok, m = random_lora(ext, 1)
    adapter_format.write_adapter(model, tok, out, adapter_manifest(m, "민수", "지영", 1), None,
                                 lambda d: (d / "loss.png").write_bytes(b"plot 1"))
    (out / "checkpoints" / "step-4").mkdir(parents=True)
    (out / "checkpoints" / "step-4" / "state.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 4, "loss": 1.0}\n')


def test_a_kill_during_the_adapter_save_leaves_a_complete_adapter(tiny_gemma_dir, train_cache, tmp_path):
    from tests.chat_helpers import extend_tiny

    ext = extend_tiny(tiny_gemma_dir, train_cache)
    _old_adapter(ext, tmp_path / "old" / "a")
    cases = {"mid-save": 1, "before": 1, "after": 2, "whole": 2}  # case: the seed of the adapter left
    for name in cases:
        shutil.copytree(tmp_path / "old" / "a", tmp_path / name / "a")
    assert run_child(WRITE_ADAPTER, ext, tmp_path) == {k: 0 if k == "whole" else KILLED for k in cases}
    for name, seed in cases.items():
        out = tmp_path / name / "a"
        m = adapter_format.read_manifest(out)  # refuses weights that are not the manifest's
        assert m["config"]["seed"] == seed, name
        assert adapter_format.check_weights(out, expect_token_delta=True) == []
        assert (out / "loss.png").read_bytes() == b"plot %d" % seed and (out / "tokenizer.json").is_file()
        # the training run's files survive the swap
        assert (out / "checkpoints" / "step-4" / "state.json").read_text() == "{}"
        assert (out / "metrics.jsonl").read_text() == '{"step": 4, "loss": 1.0}\n'
    assert _hidden(tmp_path / "whole") == []


def test_a_mixed_adapter_folder_is_refused_in_one_line(tiny_gemma_dir, train_cache, tmp_path):
    from chatbot.adapters import inspect_adapter
    from tests.chat_helpers import adapter_manifest, extend_tiny, random_lora

    ext = extend_tiny(tiny_gemma_dir, train_cache)
    for seed in (1, 2):
        model, tok, m = random_lora(ext, seed)
        manifest = adapter_manifest(m, "민수", "지영", seed)
        adapter_format.write_adapter(model, tok, tmp_path / f"s{seed}", manifest, None)
    assert adapter_format.read_manifest(tmp_path / "s1")["weights_sha256"]
    weights = adapter_format.ADAPTER_WEIGHTS
    shutil.copyfile(tmp_path / "s2" / weights, tmp_path / "s1" / weights)  # new weights beside an old manifest
    with pytest.raises(UserError) as e:
        adapter_format.read_manifest(tmp_path / "s1")
    assert "not the weights its manifest.json was written with" in str(e.value) and "\n" not in str(e.value)
    assert "not the weights" in inspect_adapter(tmp_path, tmp_path / "s1").reason
    assert "not the weights" in adapter_format.check_weights(tmp_path / "s1", True)[0]


# ---------------------------------------------------------------- checkpoints and resume

SAVE_CHECKPOINTS = """
import os, sys
from pathlib import Path
import torch
from tests.kill_helpers import run_cases, save_two_checkpoints
def write(case):
    if case == "mid-save":  # dies in step-4's save, after its weights, at the optimizer state
        save = torch.save
        torch.save = lambda obj, f, *a, **k: os.kill(os.getpid(), 9) if ".step-4." in str(f) else save(obj, f, *a, **k)
    save_two_checkpoints(Path(sys.argv[1]) / case)
run_cases(write, {p: None if p == "mid-save" else p + ":step-4" for p in sys.argv[2:]})
"""


def test_a_kill_during_a_checkpoint_save_keeps_the_previous_one(tmp_path):
    from pipeline.training.checkpoint import checkpoint_problem, find_checkpoint, list_checkpoints

    points = {"mid-save": ["step-2"], "before-publish": ["step-2"], "after-publish": ["step-2", "step-4"]}
    assert run_child(SAVE_CHECKPOINTS, tmp_path, *points) == {p: KILLED for p in points}
    for point, names in points.items():
        out = tmp_path / point
        assert [p.name for p in list_checkpoints(out)] == names
        newest = find_checkpoint(out, "latest")
        assert newest.name == names[-1] and checkpoint_problem(newest) is None


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("damage", [("trainable.safetensors", _truncate), ("state.json", _truncate),
                                    ("optimizer.pt", _flip_byte), ("rng.safetensors", Path.unlink)],
                         ids=["truncated-weights", "torn-state", "altered-optimizer", "missing-rng"])
def test_resume_latest_falls_back_past_an_unreadable_newest_checkpoint(tmp_path, train_log, damage):
    from pipeline.training.checkpoint import find_checkpoint

    save_two_checkpoints(tmp_path)
    name, harm = damage
    harm(tmp_path / "checkpoints" / "step-4" / name)
    assert find_checkpoint(tmp_path, "latest").name == "step-2"
    [line] = [r.getMessage() for r in train_log.records]
    assert "step-4" in line and name in line and "resuming from step-2" in line
    with pytest.raises(UserError, match="unreadable checkpoint"):
        find_checkpoint(tmp_path, str(tmp_path / "checkpoints" / "step-4"))
    _truncate(tmp_path / "checkpoints" / "step-2" / "trainable.safetensors")
    with pytest.raises(UserError, match="no readable checkpoint"):
        find_checkpoint(tmp_path, "latest")


# ---------------------------------------------------------------- metrics.jsonl

def test_a_torn_last_metrics_line_is_dropped_and_rewritten(tmp_path):
    from pipeline.training.loop import MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo', encoding="utf-8")
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    log = MetricsLog(path, enabled=True, resume_step=2)
    log.write({"step": 3, "loss": 1.0})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert path.read_text(encoding="utf-8").endswith('"loss": 1.0}\n')
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n', encoding="utf-8")  # damage inside: not a kill
    with pytest.raises(UserError, match="line 2 is not a metrics record"):
        read_metrics(path)


def test_resume_after_a_kill_continues_from_the_previous_checkpoint(tiny_gemma_dir, persona_data, train_cache,
                                                                   tmp_path, train_log, no_gpu):
    import torch

    from pipeline.train import parse_args
    from pipeline.training.run import train

    out = tmp_path / "run"
    flags = ["--data", persona_data, "--out", out, "--persona", "민수", "--base-model", tiny_gemma_dir,
             "--cache-dir", train_cache, "--max-steps", "6", "--batch-size", "2", "--eval-every", "3",
             "--save-every", "2", "--keep-checkpoints", "2", "--log-every", "1", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        train(parse_args([str(f) for f in flags]))
        # what a kill in step 6 could leave: a damaged newest checkpoint and a torn metrics line
        _truncate(out / "checkpoints" / "step-6" / "trainable.safetensors")
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write('{"step": 7, "lo')
        result = train(parse_args([str(f) for f in flags] + ["--resume", "latest"]))
    finally:
        torch.set_num_threads(threads)
    assert any("step-6" in r.getMessage() and "resuming from step-4" in r.getMessage() for r in train_log.records)
    assert result.manifest["metrics"]["steps"] == 6
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]  # 5 and 6 redone, no torn 7
    assert adapter_format.read_manifest(out)["weights_sha256"] == result.manifest["weights_sha256"]


# ---------------------------------------------------------------- prepare --out

PREPARE = """
import os, sys
from pathlib import Path
from core.cli import run_cli
from pipeline import prepare
from tests.kill_helpers import run_cases
export, root = sys.argv[1], Path(sys.argv[2])
def write(case):
    if case == "mid":  # dies after the pairs, before stats.json
        prepare.write_stats = lambda *a, **k: os.kill(os.getpid(), 9)
    run_cli(prepare.main, [export, "--out", str(root / case / "out"), "--persona", "민수", "--seed", "7"])
run_cases(write, {"mid": None, "before": "before-publish:out", "after": "after-publish:out"})
"""


def test_a_killed_prepare_leaves_the_previous_out_folder(tmp_path):
    from data_prep.formats import PARSERS
    from tests.test_prepare_cli import OUTPUTS, chat, prepare

    export = tmp_path / "chat.txt"
    export.write_text(PARSERS["kakao_windows"].write(chat()), encoding="utf-8")
    first = tmp_path / "first"
    assert prepare(export, "--out", first, "--persona", "민수") == 0
    card = first / "personas" / "민수.yaml"
    card.write_text(card.read_text(encoding="utf-8").replace("instruction:", "# my edit\ninstruction:"),
                    encoding="utf-8")
    cases = ("mid", "before", "after")
    for name in cases:
        shutil.copytree(first, tmp_path / name / "out")
    assert run_child(PREPARE, export, tmp_path) == {k: KILLED for k in cases}
    for name in cases:
        out = tmp_path / name / "out"
        assert {p.name for p in out.iterdir()} == OUTPUTS and json.loads((out / "stats.json").read_text("utf-8"))
        new = json.loads((out / "config.json").read_text(encoding="utf-8"))["seed"] == 7
        assert new == (name == "after"), name
        assert "# my edit" in (out / "personas" / "민수.yaml").read_text(encoding="utf-8")
        assert prepare(export, "--out", out, "--persona", "민수") == 0  # a re-run keeps the edit, clears the temp
        assert "# my edit" in (out / "personas" / "민수.yaml").read_text(encoding="utf-8")
        assert _hidden(out.parent) == []
