"""python -m pipeline.audit: every leftover match with file, line and kind; exit 1/0/2; pipeline.run stops on one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import UserError
from pipeline import prepare
from pipeline.audit import main
from core.cli import run_cli
from pipeline.run import main as run_main


def _pair(response: str) -> str:
    return json.dumps({"persona": "민수", "instruction": "너는 민수야.", "context": [{"speaker": "친구1", "text": "뭐해"}],
                       "response": response, "conversation_id": "c1-00001", "source": "a.txt"}, ensure_ascii=False)


def _prepared(folder: Path, response: str = "응 3시 30분에 봐") -> Path:
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text(_pair("안녕") + "\n" + _pair(response) + "\n", encoding="utf-8")
    (folder / "validation.jsonl").write_text(_pair("그래") + "\n", encoding="utf-8")
    (folder / "stats.json").write_text(json.dumps({"redactions": {"phone": 3}}), encoding="utf-8")
    return folder


def test_clean_folder_exits_0(tmp_path, capsys):
    assert run_cli(main, [str(_prepared(tmp_path / "data"))]) == 0
    assert capsys.readouterr().out == ""


def test_each_leftover_is_listed_with_file_line_and_kind_and_exits_1(tmp_path, capsys):
    data = _prepared(tmp_path / "data", "번호 010-4471-\n6620 이야")  # split by a line break: JSON's \n
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "eval.md").write_text("# eval\n\n| 민수 | 메일 kim@naver.com |\n| 민수 | 010-4471-\n6620 |\n",
                                     encoding="utf-8")
    (adapter / "tokenizer.json").write_text('{"vocab": {"01012345678": 5}}', encoding="utf-8")  # not chat text
    terms = tmp_path / "mine.txt"
    terms.write_text("콩떡이\n", encoding="utf-8")
    (data / "report.md").write_text("콩떡이\n", encoding="utf-8")
    assert run_cli(main, [str(data), "--redact-list", str(terms)]) == 1
    want = [f"{data / 'report.md'}:1: listed", f"{data / 'train.jsonl'}:2: phone"]
    assert capsys.readouterr().out.splitlines() == want
    assert run_cli(main, [str(adapter)]) == 1
    out = capsys.readouterr().out
    assert out == f"{adapter / 'eval.md'}:3: email\n{adapter / 'eval.md'}:4: phone\n" and "kim@" not in out


def test_bad_input_exits_2(tmp_path, capsys):
    assert run_cli(main, [str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert run_cli(main, [str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_run_stops_after_prepare_on_a_finding_unless_keep_pii(tmp_path, capsys, monkeypatch):
    export = tmp_path / "chat.txt"
    export.write_text("x", encoding="utf-8")

    def leaky_prepare(argv):  # a prepare that let a phone number through
        _prepared(Path(argv[argv.index("--out") + 1]), "내 번호 010-5182-9930")
        return 0

    monkeypatch.setattr(prepare, "main", leaky_prepare)
    out = tmp_path / "run"
    assert run_cli(run_main, [str(export), "--persona", "민수", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "[2/" not in captured.out  # extend never started
    assert captured.err.startswith("error: audit: 1 possible personal data item(s) left") and "(phone)" in captured.err
    assert "010-5182" not in captured.err
    monkeypatch.setattr("pipeline.run.extend_stage", _stop_here)
    try:
        run_cli(run_main, [str(export), "--persona", "민수", "--out", str(tmp_path / "run2"), "--keep-pii"])
    except _Reached:
        pass
    assert "audit: skipped (--keep-pii)" in capsys.readouterr().out


class _Reached(Exception):
    pass


def _stop_here(cfg):
    raise _Reached


def test_run_passes_the_redact_list_to_prepare_and_fingerprints_it(tmp_path):
    from pipeline.run import build_parser, config_from_args, prepare_stage

    terms, export = tmp_path / "mine.txt", tmp_path / "chat.txt"
    terms.write_text("콩떡이\n", encoding="utf-8")
    export.write_text("x", encoding="utf-8")
    cfg = config_from_args(build_parser().parse_args([str(export), "--persona", "민수", "--redact-list", str(terms)]))
    stage = prepare_stage(cfg)
    assert stage.argv[-2:] == ("--redact-list", str(terms)) and terms in stage.inputs
    missing = config_from_args(build_parser().parse_args([str(export), "--persona", "민수", "--redact-list", "nope"]))
    with pytest.raises(UserError, match="--redact-list nope: no such file"):
        missing.validate()
