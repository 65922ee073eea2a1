"""Encodings and line endings: every golden fixture re-saved the ways real exports are saved
parses to the same messages; broken files fail with a reason that names the problem."""
from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from data_prep.encoding import decode_file, split_lines
from data_prep.errors import ParseError
from data_prep.formats import read_export

FIXTURES = Path(__file__).parent / "fixtures" / "exports"
SOURCES = sorted(p for p in FIXTURES.rglob("*") if p.is_file() and p.name != "expected.jsonl")
# Body lines of the golden multi-line message: real exports end them with a bare LF.
BODY_LINES = ("1. 김치찌개", "2. 돈까스", "-----", "투표 ㄱㄱ")


def _mixed_newlines(text: str) -> str:
    """CRLF between records, bare LF before the continuation lines of a body (as KakaoTalk writes)."""
    lines = text.split("\n")[:-1]
    out = lines[0]
    for line in lines[1:]:
        out += ("\n" if line.startswith(BODY_LINES) else "\r\n") + line
    return out + "\r\n"


def _cp949(text: str) -> bytes:
    # CP949 has no emoji and no narrow no-break space
    return text.replace("🌸", "★").replace("\u202f", " ").encode("cp949")


VARIANTS = {
    "utf-8-sig": (lambda t: codecs.BOM_UTF8 + t.encode("utf-8"), "utf-8-sig"),
    "utf-16-le-bom": (lambda t: t.encode("utf-16"), "utf-16"),
    "utf-16-be-bom": (lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"), "utf-16"),
    "utf-16-le-nobom": (lambda t: t.encode("utf-16-le"), "utf-16-le"),
    "cp949": (_cp949, "cp949"),
    "crlf": (lambda t: t.replace("\n", "\r\n").encode("utf-8"), "utf-8"),
    "mixed-crlf-lf": (lambda t: _mixed_newlines(t).encode("utf-8"), "utf-8"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_resaved_fixture_parses_to_the_same_messages(tmp_path: Path, source: Path, variant: str) -> None:
    encode, encoding = VARIANTS[variant]
    text = source.read_text(encoding="utf-8")
    path = tmp_path / source.name
    path.write_bytes(encode(text))
    reference, parsed = read_export(source), read_export(path)
    assert parsed.encoding == encoding
    assert parsed.format == reference.format
    assert parsed.lines == reference.lines and parsed.line_kinds == reference.line_kinds
    rename = (lambda s: s.replace("★", "🌸")) if variant == "cp949" else (lambda s: s)
    assert [(m.ts, rename(m.speaker), m.text) for m in parsed.messages] == \
           [(m.ts, m.speaker, m.text) for m in reference.messages]


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "export.txt"
    path.write_bytes(data)
    return path


KOREAN = "2024년 7월 1일 오후 3:15, 민수 : 안녕하세요 반갑습니다\n"


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"\r\n \n", "empty file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + bytes(range(256)) * 4, "binary file"),
    (b"\x01\x02\x03\x04hello\x05\x06\x07\x08world\x0e\x0f" * 20, "binary file"),
    (KOREAN.encode("utf-16")[:-1], "truncated: file ends in the middle of a UTF-16 character"),
    (b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00" + bytes(range(1, 256, 2)) * 20, "binary file"),
    (KOREAN.encode("utf-16-le") + "민".encode("utf-16-le")[:1], "truncated"),
    (KOREAN.encode("utf-8") + "민".encode("utf-8")[:2], "truncated: file ends in the middle of a UTF-8"),
    (b"2024 \x80\xff\x80 text\n", "cannot decode"),
])
def test_broken_files_fail_with_a_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ParseError) as e:
        read_export(path)
    assert reason in e.value.reason
    assert e.value.file == str(path)


def test_missing_file_is_a_parse_error(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="cannot read"):
        decode_file(tmp_path / "nope.txt")


def test_bom_inside_pasted_text_is_dropped(tmp_path: Path) -> None:
    text, encoding = decode_file(_write(tmp_path, codecs.BOM_UTF8 + b"a\n" + codecs.BOM_UTF8 + b"b\n"))
    assert (text, encoding) == ("a\nb\n", "utf-8-sig")


@pytest.mark.parametrize("text, lines", [
    ("a\r\nb\nc\r\n", ["a", "b", "c"]),
    ("a\rb", ["a", "b"]),
    ("a\n\nb\n", ["a", "", "b"]),
    ("a\u2028b\x0cc\x85d", ["a\u2028b\x0cc\x85d"]),  # not line breaks inside chat messages
    ("", []),
])
def test_split_lines(text: str, lines: list[str]) -> None:
    assert split_lines(text) == lines
