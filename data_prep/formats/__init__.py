"""Chat-export readers: one module per format, picked from the :data:`PARSERS` registry.

``read_export(path)`` decodes the file (:mod:`data_prep.encoding`), sniffs the
format from its first non-blank lines, parses it, and accounts for every
physical line (``line_kinds``) so nothing is dropped silently, and the
system lines by kind (``system_kinds``: join, leave, invite...)::

    from data_prep.formats import read_export
    parsed = read_export("KakaoTalk_20240502.txt")
    parsed.format, len(parsed.messages), parsed.line_kinds["unparsed"], parsed.system_kinds
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from data_prep.encoding import decode_file, split_lines
from data_prep.errors import ParseError
from data_prep.formats import generic_csv, generic_jsonl, kakao_android, kakao_ios, kakao_macos, kakao_windows
from data_prep.formats._common import KINDS, OTHER_SYSTEM, SYSTEM_KINDS, Format, Progress, system_kind
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
    """One parsed export. ``line_kinds`` values sum to ``lines``; ``unparsed`` lists (line number, raw line).

    ``system_kinds``: the system messages (speaker "") by kind, a key of
    SYSTEM_KINDS or "other"; its values sum to the number of system messages.
    """

    path: str
    format: str
    encoding: str
    lines: int
    messages: list[Message]
    line_kinds: dict[str, int]
    unparsed: list[tuple[int, str]]
    system_kinds: dict[str, int]


def count_system_kinds(messages: list[Message]) -> dict[str, int]:
    """System messages (speaker "") by kind, in SYSTEM_KINDS order, "other" last; kinds with none left out."""
    counts = dict.fromkeys((*SYSTEM_KINDS, OTHER_SYSTEM), 0)
    for m in messages:
        if not m.speaker:
            counts[system_kind(m.text) or OTHER_SYSTEM] += 1
    return {k: n for k, n in counts.items() if n}


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


def parse_text(text: str, source: str, encoding: str = "utf-8", strict: bool = False,
               progress: Progress | None = None) -> ParsedFile:
    """Parse already-decoded export text (``source`` names it in errors and in each Message).

    ``progress`` is called with characters of ``text`` done since its last call
    (as parsing goes for the line formats); the calls add up to ``len(text)``.
    ``strict``: the first unparsed line is a ParseError giving its line number
    only, never its text (it may hold names and numbers).
    """
    lines = split_lines(text)
    if not any(line.strip() for line in lines):
        raise ParseError(source, "empty file")
    fmt = detect_format(lines)
    if fmt is None:
        raise ParseError(source, "not a chat export: no KakaoTalk (Windows/macOS/Android/iOS) "
                                 "or generic CSV/JSONL message line found at the start of the file")
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        progress(n)

    with _gc_paused():
        messages, kinds, unparsed = fmt.parse(lines, source, step if progress else None)
    if progress is not None and len(text) > done[0]:
        progress(len(text) - done[0])
    # Invariant of every parser, not user input: each physical line has exactly one kind.
    assert sum(kinds.values()) == len(lines) and set(kinds) <= set(KINDS), (fmt.name, kinds, len(lines))
    if not any(m.speaker for m in messages):
        raise ParseError(source, f"no chat message parsed (looked like {fmt.name}; "
                                 f"{len(unparsed)} unparsed lines)")
    if strict and unparsed:
        line_no = unparsed[0][0]  # not its text: an error message must not carry names or numbers
        raise ParseError(source, f"unparsed line ({len(unparsed)} in all, strict mode); open the file at this "
                                 "line, or run without --strict to have such lines counted and reported", line_no)
    return ParsedFile(source, fmt.name, encoding, len(lines), messages, kinds, unparsed, count_system_kinds(messages))


def read_export(path: str | Path, strict: bool = False, progress: Progress | None = None) -> ParsedFile:
    """Decode, detect and parse one export file.

    ``progress`` (e.g. a tqdm bar's ``update``) is called with bytes of the
    file done since its last call, while the file is parsed; the calls add up
    to the file size. Raises :class:`ParseError` for empty, binary, undecodable
    or truncated files, files that are not chat exports, and (``strict``) any
    unparsed line.
    """
    text, encoding = decode_file(path)
    if progress is None:
        return parse_text(text, str(path), encoding, strict)
    size, chars, done = Path(path).stat().st_size, max(len(text), 1), [0, 0]  # chars, bytes reported

    def step(n: int) -> None:  # characters -> bytes of the file (encodings differ in bytes per char)
        done[0] += n
        nbytes = size * done[0] // chars - done[1]
        done[1] += nbytes
        progress(nbytes)

    parsed = parse_text(text, str(path), encoding, strict, step)
    if size > done[1]:  # BOM and CR bytes are not in the text
        progress(size - done[1])
    return parsed


__all__ = ["Format", "PARSERS", "ParsedFile", "read_export", "parse_text", "detect_format", "head_lines", "KINDS",
           "SYSTEM_KINDS", "count_system_kinds"]
