"""Chat-export readers: one module per format, picked from the :data:`PARSERS` registry.

``read_export(path)`` decodes the file (:mod:`data_prep.encoding`), sniffs the
format from its first non-blank lines, parses it, and accounts for every
physical line (``line_kinds``) so nothing is dropped silently::

    from data_prep.formats import read_export
    parsed = read_export("KakaoTalk_20240502.txt")
    parsed.format, len(parsed.messages), parsed.line_kinds["unparsed"]
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from data_prep.encoding import decode_file, split_lines
from data_prep.errors import ParseError
from data_prep.formats import generic_csv, generic_jsonl, kakao_android, kakao_ios, kakao_macos, kakao_windows
from data_prep.formats._common import KINDS, Format
from data_prep.records import Message

# Order matters only where two formats could claim the same head: the KakaoTalk
# macOS header (Date,User,Message) also fits the generic CSV aliases.
PARSERS: dict[str, Format] = {
    f.name: f
    for f in (
        kakao_windows.FORMAT, kakao_android.FORMAT, kakao_ios.FORMAT,
        kakao_macos.FORMAT, generic_jsonl.FORMAT, generic_csv.FORMAT,
    )
}

HEAD_LINES = 50  # non-blank lines the sniffers see; headers and file names come first
HEAD_SCAN = 2000  # physical lines scanned to find them (leading blank runs)


@dataclass(frozen=True)
class ParsedFile:
    """One parsed export. ``line_kinds`` values sum to ``lines``; ``unparsed`` lists (line number, raw line)."""

    path: str
    format: str
    encoding: str
    lines: int
    messages: list[Message]
    line_kinds: dict[str, int]
    unparsed: list[tuple[int, str]]


def head_lines(lines: list[str], n: int = HEAD_LINES) -> list[str]:
    """The first ``n`` non-blank lines (what ``Format.detect`` sees)."""
    return [line for line in lines[:HEAD_SCAN] if line.strip()][:n]


def detect_format(lines: list[str]) -> Format | None:
    """The first registered format whose ``detect`` accepts the head of ``lines``."""
    head = head_lines(lines)
    return next((f for f in PARSERS.values() if f.detect(head)), None)


@contextmanager
def _gc_paused():
    """Parsing allocates millions of objects and frees none: cyclic GC passes would only cost time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_text(text: str, source: str, encoding: str = "utf-8", strict: bool = False) -> ParsedFile:
    """Parse already-decoded export text (``source`` names it in errors and in each Message)."""
    lines = split_lines(text)
    if not any(line.strip() for line in lines):
        raise ParseError(source, "empty file")
    fmt = detect_format(lines)
    if fmt is None:
        raise ParseError(source, "not a chat export: no KakaoTalk (Windows/macOS/Android/iOS) "
                                 "or generic CSV/JSONL message line found at the start of the file")
    with _gc_paused():
        messages, kinds, unparsed = fmt.parse(lines, source)
    # Invariant of every parser, not user input: each physical line has exactly one kind.
    assert sum(kinds.values()) == len(lines) and set(kinds) <= set(KINDS), (fmt.name, kinds, len(lines))
    if not any(m.speaker for m in messages):
        raise ParseError(source, f"no chat message parsed (looked like {fmt.name}; "
                                 f"{len(unparsed)} unparsed lines)")
    if strict and unparsed:
        line_no, raw = unparsed[0]
        raise ParseError(source, f"unparsed line ({len(unparsed)} in all, strict mode): {raw[:80]!r}", line_no)
    return ParsedFile(source, fmt.name, encoding, len(lines), messages, kinds, unparsed)


def read_export(path: str | Path, strict: bool = False) -> ParsedFile:
    """Decode, detect and parse one export file.

    Raises :class:`ParseError` for empty, binary, undecodable or truncated files,
    files that are not chat exports, and (``strict``) any unparsed line.
    """
    text, encoding = decode_file(path)
    return parse_text(text, str(path), encoding, strict)


__all__ = ["Format", "PARSERS", "ParsedFile", "read_export", "parse_text", "detect_format", "head_lines", "KINDS"]
