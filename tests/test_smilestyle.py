"""SmileStyle -> chat export converter, on the real TSV (../shared/data, about 0.3 s)."""
from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from core.errors import UserError
from data_prep.formats import PARSERS, parse_text
from data_prep.smilestyle import GAP, build_chat, build_chats, build_group_chat, load_dialogues, main, write_export

TSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "smilestyle" / "smilestyle_dataset.tsv"
pytestmark = pytest.mark.skipif(not TSV.exists(), reason=f"shared data missing: {TSV}")


@pytest.fixture(scope="module")
def dialogues():
    return load_dialogues(TSV)


def test_load_dialogues_splits_at_empty_rows(dialogues) -> None:
    assert len(dialogues) == 236
    assert sum(len(d) for d in dialogues) == 3705 - 1 - 234  # header and separator rows
    first = dialogues[0][0]
    assert len(first) == 17 and first["informal"] == "안녕! 나는 고양이 6마리 키워."


def test_persona_replies_in_its_style_partner_in_informal(dialogues) -> None:
    skipped: Counter = Counter()
    chat = build_chat(dialogues[:1], "halbae", skipped=skipped)
    d = dialogues[0]
    expected = [("친구" if i % 2 == 0 else "할배", row["informal" if i % 2 == 0 else "halbae"])
                for i, row in enumerate(d) if row["informal" if i % 2 == 0 else "halbae"]]
    assert [(m.speaker, m.text) for m in chat] == expected
    assert sum(skipped.values()) == len(d) - len(expected)
    assert chat[0].speaker == "친구"  # the partner opens, the persona replies


def test_empty_cells_are_skipped_and_counted(dialogues) -> None:
    skipped: Counter = Counter()
    chat = build_chat(dialogues, "halbae", persona_name="할아버지", skipped=skipped)
    persona_rows = sum(len(d[1::2]) for d in dialogues)
    empty = sum(1 for d in dialogues for row in d[1::2] if not row["halbae"])
    assert skipped == Counter({"empty halbae cell": empty})
    assert sum(m.speaker == "할아버지" for m in chat) == persona_rows - empty > 500


def test_dialogues_are_hours_apart_and_times_deterministic(dialogues) -> None:
    chat = build_chat(dialogues[:20], "king")
    gaps = [b.ts - a.ts for a, b in zip(chat, chat[1:])]
    assert all(g > timedelta(0) for g in gaps)
    assert sum(g >= GAP for g in gaps) == 19
    assert chat == build_chat(dialogues[:20], "king")


def test_group_and_separate_chats(dialogues) -> None:
    group = build_group_chat(dialogues[:6], ["halbae", "king", "sosim"], persona_parity=0)
    assert {m.speaker for m in group} == {"친구", "할배", "왕", "소심이"}
    chats = build_chats(dialogues[:3], ["halbae", "king"])
    assert set(chats) == {"halbae", "king"} and {m.speaker for m in chats["king"]} == {"친구", "왕"}


@pytest.mark.parametrize("fmt", sorted(PARSERS))
def test_written_export_parses_back(dialogues, fmt: str) -> None:
    chat = build_chat(dialogues[:30], "seonbi")
    parsed = parse_text(write_export(chat, fmt), "smilestyle")
    assert parsed.format == fmt and parsed.unparsed == []
    assert [(m.ts, m.speaker, m.text) for m in parsed.messages] == [(m.ts, m.speaker, m.text) for m in chat]


def test_unknown_style_is_a_user_error(dialogues) -> None:
    with pytest.raises(UserError, match="unknown style"):
        build_chat(dialogues, "pirate")


def test_cli_writes_one_file_per_style(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path), "--styles", "halbae,king", "--limit", "5", "--tsv", str(TSV)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smilestyle_halbae.txt", "smilestyle_king.txt"]
    out = capsys.readouterr().out
    assert "57 messages from 5 dialogues" in out and "skipped 0 rows" in out
