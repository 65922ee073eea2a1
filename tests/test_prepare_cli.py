"""python -m pipeline.prepare end to end: fixture exports, a built export with personal data, bad files."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from core.cli import run_cli
from data_prep.formats import PARSERS
from data_prep.records import Message, read_pairs
from pipeline.prepare import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "exports"
OUTPUTS = {"train.jsonl", "validation.jsonl", "dataset", "personas", "stats.json", "report.md", "report.png",
           "config.json"}
RAW = ["010-1234-5678", "kim.yh@naver.com", "900101-1234567", "김영희", "영희", "Alice", "110-123-456789"]


def chat(n_conversations: int = 12) -> list[Message]:
    """민수 answers 김영희 and Alice; every conversation leaks a phone, an e-mail, names..."""
    t, msgs = datetime(2024, 3, 1, 9, 0), []
    for i in range(n_conversations):
        t += timedelta(hours=5)
        lines = [("김영희", f"민수야 {i}번째 질문! 내 번호 010-1234-5678 저장해"), ("민수", f"영희야 알겠어 ㅋㅋㅋㅋㅋㅋ {i}"),
                 ("Alice", "메일은 kim.yh@naver.com 이야"), ("회원님", "사진"), ("민수", f"Alice 고마워 {i}"),
                 ("회원님", f"주민번호 900101-1234567 계좌 110-123-456789 {i}"), ("민수", f"김영희가 그러던데 {i}?")]
        msgs += [Message(t + timedelta(minutes=3 * k), s, x) for k, (s, x) in enumerate(lines)]
    return msgs


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("in") / "KakaoTalk_김영희.txt"
    path.write_text(PARSERS["kakao_windows"].write(chat()), encoding="utf-8")
    return path


def prepare(*args) -> int:
    return run_cli(main, [str(a) for a in args])


def all_output_bytes(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_built_export_end_to_end_no_raw_pii(export, tmp_path, capsys):
    out = tmp_path / "runs" / "minsu" / "data"
    assert prepare(export, "--out", out, "--persona", "민수", "--export", "alpaca", "--export", "messages") == 0
    assert {p.name for p in out.iterdir()} == OUTPUTS | {f"{s}_{k}.jsonl" for s in ("train", "validation")
                                                        for k in ("alpaca", "messages")}
    blob = all_output_bytes(out) + capsys.readouterr().err.encode()
    for raw in RAW:
        assert raw.encode() not in blob, raw
    train, val = read_pairs(out / "train.jsonl"), read_pairs(out / "validation.jsonl")
    assert {p.conversation_id for p in train}.isdisjoint({p.conversation_id for p in val}) and val
    assert all(p.context and p.persona == "민수" for p in train + val)
    assert any("<전화번호>" in t.text for p in train for t in p.context)
    assert train[0].instruction.startswith("너는 민수야.")
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert set(stats["speakers"]) == {"민수", "친구1", "친구2", "친구3"}
    assert stats["dropped"] == {"media": 12}
    assert stats["redactions"]["phone"] == 12 and stats["redactions"]["name"] >= 36
    f = stats["files"][0]
    assert f["format"] == "kakao_windows" and sum(f["line_kinds"].values()) == f["lines"]
    assert stats["pairs"]["민수"]["train"] + stats["pairs"]["민수"]["validation"] == len(train) + len(val)
    assert json.loads((out / "config.json").read_text())["personas"] == ["민수"]
    import datasets
    assert datasets.load_from_disk(str(out / "dataset"))["train"].num_rows == len(train)


def test_edited_persona_card_is_kept_on_rerun(export, tmp_path):
    out = tmp_path / "data"
    assert prepare(export, "--out", out, "--persona", "민수", "--persona", "나") == 0
    card = out / "personas" / "민수.yaml"
    card.write_text(card.read_text(encoding="utf-8").replace("너는 민수야.", "너는 부산 사람 민수야."), encoding="utf-8")
    assert prepare(export, "--out", out, "--persona", "민수", "--persona", "나") == 0
    assert "부산 사람" in card.read_text(encoding="utf-8")
    pairs = read_pairs(out / "train.jsonl") + read_pairs(out / "validation.jsonl")
    assert {p.instruction.split(".")[0] for p in pairs} == {"너는 부산 사람 민수야", "너는 나야"}
    assert not list(tmp_path.glob(".data.*"))  # no temp/old folders left beside --out


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*") if p.suffix in (".txt", ".csv")))
def test_fixture_exports(fixture, tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare(FIXTURES / fixture, "--out", out, "--persona", "나", "--val-ratio", "0") == 0
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert set(stats["speakers"]) == {"나", "친구1", "친구2"}  # 민수 and 지은🌸 pseudonymised
    assert sum(stats["dropped"].values()) == stats["messages"]["parsed"] - stats["messages"]["kept"]
    assert "지은" not in all_output_bytes(out).decode("utf-8", "ignore")
    # every line accounted for; the join and leave lines counted by kind, in stats.json and report.md
    assert stats["files"][0]["unparsed_lines"] == 0
    assert stats["system_lines"] == stats["files"][0]["system_kinds"] == {"join": 1, "leave": 1}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## System lines (by kind)\n| kind | count |\n|---|---|\n| join | 1 |\n| leave | 1 |\n" in report


def test_list_speakers_and_unknown_persona(export, tmp_path, capsys):
    assert prepare(export, "--list-speakers") == 0
    listing = capsys.readouterr().out
    assert "김영희" in listing and "민수" in listing
    assert prepare(export, "--out", tmp_path / "o", "--persona", "철수") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "철수" in err[0] and "김영희" in err[0]
    assert not (tmp_path / "o").exists()
    assert prepare(export, "--out", tmp_path / "me", "--persona", "회원님") == 0  # the exporting user = 나
    assert json.loads((tmp_path / "me" / "stats.json").read_text(encoding="utf-8"))["personas"] == ["나"]


def test_persona_without_replies_is_an_error(tmp_path, capsys):
    t = datetime(2024, 1, 1)
    msgs = [Message(t + timedelta(hours=3 * i), s, "안녕") for i, s in enumerate(["혼자", "둘", "혼자"])]
    path = tmp_path / "chat.txt"
    path.write_text(PARSERS["kakao_windows"].write(msgs), encoding="utf-8")
    assert prepare(path, "--out", tmp_path / "o", "--persona", "혼자") == 2
    assert "no pairs for persona 혼자" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "train.jsonl").write_text("previous run\n")
    assert prepare(path, "--out", tmp_path / "kept", "--persona", "혼자") == 2  # fails inside staging
    assert (tmp_path / "kept" / "train.jsonl").read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.txt", "kept"]


BAD = {"empty.txt": b"", "binary.txt": bytes(range(256)) * 4, "notes.txt": "그냥 메모\n장보기 목록\n".encode(),
       "cp949_cut.txt": "[민수] [오후 3:15] 안녕".encode("utf-16-le")[:-1]}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_exit_2_one_line_no_output(name, tmp_path, capsys):
    bad = tmp_path / name
    bad.write_bytes(BAD[name])
    out = tmp_path / "new" / "data"
    assert prepare(bad, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "new").exists()


def test_subprocess_bad_file_and_fast_start(tmp_path):
    bad = tmp_path / "empty.txt"
    bad.write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "pipeline.prepare", str(bad), "--out", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "empty.txt" in r.stderr
    code = ("import sys, pipeline.prepare; heavy = {'kss', 'datasets', 'torch', 'transformers', 'matplotlib'}"
            " & set(sys.modules); assert not heavy, heavy")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0


def test_bad_flags(export, tmp_path, capsys):
    assert prepare(export, "--out", tmp_path / "o", "--val-ratio", "1.5", "--context-turns", "0") == 2
    err = capsys.readouterr().err
    assert "--val-ratio" in err and "--context-turns" in err


def test_smilestyle_export_persona_card_reflects_style(tmp_path):
    from data_prep import smilestyle

    dialogues = smilestyle.load_dialogues()[:60]
    chat_ = smilestyle.build_chat(dialogues, "formal", persona_name="존댓말", partner_name="친구")
    path = tmp_path / "smile.txt"
    path.write_text(smilestyle.write_export(chat_, "kakao_windows"), encoding="utf-8")
    out = tmp_path / "out"
    assert prepare(path, "--out", out, "--persona", "존댓말") == 0
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["pairs"]["존댓말"]["train"] > 20 and stats["pairs"]["존댓말"]["validation"] > 0
    card = (out / "personas" / "존댓말.yaml").read_text(encoding="utf-8")
    assert "- 요" in card  # the formal style ends its sentences with -요


def test_unparsed_lines_counted_redacted_and_strict(tmp_path, capsys):
    t = datetime(2024, 1, 1, 9)
    msgs = [Message(t + timedelta(minutes=i), s, f"말 {i}") for i, s in enumerate(["영희", "민수"] * 3)]
    text = PARSERS["kakao_windows"].write(msgs).replace(
        "[민수] [오전 9:01] 말 1", "[민수] [오전 9:01] 말 1\n[영희] [25:99] 깨진 줄 010-9999-8888")
    path = tmp_path / "chat.txt"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    assert prepare(path, "--out", out, "--persona", "민수") == 0
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    f = stats["files"][0]
    assert f["unparsed_lines"] == 1 and sum(f["line_kinds"].values()) == f["lines"]
    assert f["unparsed_samples"][0]["text"].startswith("[친구1]") and "<전화번호>" in f["unparsed_samples"][0]["text"]
    assert "010-9999-8888" not in capsys.readouterr().err
    assert prepare(path, "--out", tmp_path / "strict", "--persona", "민수", "--strict") == 2
    err = capsys.readouterr().err
    assert "chat.txt:7" in err and "010-9999-8888" not in err and "영희" not in err
    assert not (tmp_path / "strict").exists()


def test_background_writer_writes_the_same_files(export, tmp_path):
    """run(background=True) (forked worker draws the chart and builds the dataset) == inline."""
    from pipeline.prepare import PrepareConfig, run

    outs = {}
    for bg in (False, True):
        outs[bg] = tmp_path / f"bg{int(bg)}"
        run(PrepareConfig(inputs=(str(export),), out=str(outs[bg]), personas=("민수",)), background=bg)
    names = {p.relative_to(outs[True]) for p in outs[True].rglob("*") if p.is_file()}
    assert names == {p.relative_to(outs[False]) for p in outs[False].rglob("*") if p.is_file()}
    for name in ("train.jsonl", "validation.jsonl", "stats.json", "report.md", "personas/민수.yaml"):
        assert (outs[True] / name).read_bytes() == (outs[False] / name).read_bytes(), name
    import datasets
    a, b = (datasets.load_from_disk(str(o / "dataset")) for o in (outs[True], outs[False]))
    assert a["train"].to_list() == b["train"].to_list() and a["validation"].num_rows == b["validation"].num_rows


def _fail(*args) -> None:
    raise OSError("disk full")


def test_background_writer_raises_the_workers_error():
    from data_prep.background import BackgroundWriter

    with BackgroundWriter(enabled=True) as bg:
        bg.submit(_fail)
        with pytest.raises(OSError, match="disk full"):
            bg.wait()
        result = bg.start(_fail)  # start(): the error comes with the result
        with pytest.raises(OSError, match="disk full"):
            result()
        assert bg.start(divmod, 7, 2)() == (3, 1)
