"""Turn the bytes of a chat export into text and physical lines.

KakaoTalk exports come as UTF-8 (with or without BOM), UTF-16 (Windows "Unicode"
saves, with or without BOM) or CP949/EUC-KR (old Windows builds), and they mix
CRLF between records with bare LF inside multi-line messages. Everything here is
strict: a byte that does not decode is a :class:`ParseError`, never a silent
replacement character.
"""
from __future__ import annotations

import codecs
from pathlib import Path

from data_prep.errors import ParseError

# How many leading bytes the UTF-16/binary sniffers look at: enough for a few
# dozen records, small enough to stay free on a 100 MB export.
_SNIFF = 8192
# Control characters that never appear in text exports (tab, LF, VT, FF, CR, ESC allowed).
_CONTROL = frozenset(chr(c) for c in range(32) if c not in (9, 10, 11, 12, 13, 27)) | {"\x7f"}


def decode_file(path: str | Path) -> tuple[str, str]:
    """Read ``path`` and return ``(text, encoding)``; ``encoding`` names what was detected.

    Raises :class:`ParseError` for an empty file, a binary file, a file cut in
    the middle of a multibyte character, and bytes no supported encoding reads.
    """
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ParseError(name, f"cannot read file ({e.strerror or e})") from e
    if not data.strip():
        raise ParseError(name, "empty file")
    text, encoding = decode_bytes(data, name)
    _reject_binary(text, name)
    if "\ufeff" in text:  # exports pasted into one file carry their BOMs mid-text
        text = text.replace("\ufeff", "")
    return text, encoding


def decode_bytes(data: bytes, name: str = "<bytes>") -> tuple[str, str]:
    """Decode export bytes: BOM, UTF-16 by NUL pattern, strict UTF-8, then CP949."""
    if data.startswith(codecs.BOM_UTF8):
        return _decode(data[3:], "utf-8", name), "utf-8-sig"
    for bom, codec in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            return _decode(data[2:], codec, name), "utf-16"
    codec = _utf16_without_bom(data[:_SNIFF])
    if codec:
        try:
            return _decode(data, codec, name), codec
        except ParseError as e:  # only a guess from NUL positions: bad bytes mean binary
            if e.reason.startswith("truncated"):
                raise
            raise ParseError(name, "binary file, not a chat export (NUL bytes)") from None
    if b"\x00" in data:
        raise ParseError(name, "binary file, not a chat export (NUL bytes)")
    try:
        return _decode(data, "utf-8", name), "utf-8"
    except _NotThisCodec:
        pass
    try:
        return _decode(data, "cp949", name), "cp949"
    except _NotThisCodec as e:
        raise ParseError(name, f"cannot decode: not UTF-8, UTF-16 or CP949 (bad byte at offset {e.offset})") from None


class _NotThisCodec(Exception):
    def __init__(self, offset: int):
        self.offset = offset


def _decode(data: bytes, codec: str, name: str) -> str:
    """Strict decode; a failure in the last character means the file was cut short."""
    try:
        return data.decode(codec)
    except UnicodeDecodeError as e:
        if _is_truncation(e, len(data), codec):
            label = "UTF-16" if codec.startswith("utf-16") else codec.upper()
            raise ParseError(name, f"truncated: file ends in the middle of a {label} character") from e
        if codec.startswith("utf-16"):
            raise ParseError(name, f"cannot decode as UTF-16 (bad bytes at offset {e.start})") from e
        raise _NotThisCodec(e.start) from e


def _is_truncation(e: UnicodeDecodeError, size: int, codec: str) -> bool:
    if codec.startswith("utf-16"):
        # odd length, or a high surrogate with nothing after it
        return size % 2 == 1 or (e.end >= size and "end of data" in e.reason)
    return e.end >= size and e.start >= size - 3 and ("end of data" in e.reason or "incomplete" in e.reason)


def _utf16_without_bom(head: bytes) -> str | None:
    """UTF-16 without BOM: ASCII characters (digits, spaces, punctuation) leave NULs on one parity."""
    pairs = len(head) // 2
    if pairs < 4:
        return None
    even = head[0 : 2 * pairs : 2].count(0)
    odd = head[1 : 2 * pairs : 2].count(0)
    # Exports are at least ~20% ASCII (timestamps, spaces, digits): NULs pile up on one
    # side. Hangul syllables ending in 00 (대 U+B300) put a few on the other side;
    # binary files have them on both sides about equally.
    if odd >= 0.05 * pairs and odd > 3 * even:
        return "utf-16-le"
    if even >= 0.05 * pairs and even > 3 * odd:
        return "utf-16-be"
    return None


def _reject_binary(text: str, name: str) -> None:
    head = text[:_SNIFF]
    bad = sum(1 for ch in head if ch in _CONTROL)
    if bad > max(2, len(head) // 100):
        raise ParseError(name, "binary file, not a chat export (control characters)")


class Lines(list):
    """A list of physical lines that also keeps ``text``: the same lines joined by LF, ending in LF.

    Parsers scan ``text`` with one regex ``finditer`` (C speed) and index the
    lines in between; a plain list works too (they join it). Do not mutate.
    """

    __slots__ = ("text",)


def split_lines(text: str) -> Lines:
    """Physical lines: CRLF, LF and lone CR all end a line; a final newline adds no empty line.

    Not ``str.splitlines``: that also splits on U+2028, U+0085 and form feeds,
    which do occur inside chat messages.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = Lines(text.split("\n") if text else [])
    if lines and lines[-1] == "":
        lines.pop()
    lines.text = text if not text or text.endswith("\n") else text + "\n"
    return lines


__all__ = ["decode_file", "decode_bytes", "split_lines", "Lines"]
