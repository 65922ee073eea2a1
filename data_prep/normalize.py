"""Normalise message text: NFC, invisible characters, laughter runs, special-token strings.

Why each step:

* NFC, never NFKC: macOS exports may hold NFD Hangul (separate jamo); NFKC would
  turn ㅋㅋ/ㅎㅎ/ㅠㅠ into conjoining jamo (ᄏᄏ) and the model would answer in them.
* Zero-width characters and NBSP are invisible but become odd tokens.
* Runs like ㅋㅋㅋㅋㅋㅋㅋㅋ carry one signal ("laughing"); capping them keeps the
  habit and stops the model from learning 40-character runs. Only characters
  whose runs are habits are capped (jamo, laughter syllables, punctuation,
  emoji: :data:`REPEATABLE`); digits and ordinary letters never are.
* Special-token-like strings (``<|eot|>``, ``<usr>``, ``</s>``...) are stripped so
  chat text cannot inject control tokens into training or serving.

The exporting user appears as 회원님/You/you; :func:`canonical_speaker` maps
them to one alias so ``--persona 나`` picks that user.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from data_prep.records import Message

SELF_NAMES = frozenset({"회원님", "You", "you", "나"})
DEFAULT_SELF_ALIAS = "나"

# zero-width space/joiners, word joiner, BOM, soft hyphen -> removed; NBSP/narrow NBSP -> space
_INVISIBLE = {c: None for c in (0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, 0x00AD)}
_INVISIBLE.update({0x00A0: " ", 0x202F: " "})
_HAS_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad\u00a0\u202f]").search

# <|anything|>, <s>, </s>, <bos>, <usr>, <unused12>, <start_of_turn>, [CLS]-style BERT tokens
_SPECIAL = re.compile(
    r"<\|[^<>|\n]{0,40}\|>"
    r"|</?(?:s|bos|eos|usr|sys|pad|unk|mask|sep|cls|unused\d+|start_of_turn|end_of_turn"
    r"|start_of_image|end_of_image|im_start|im_end|endoftext|bot|user|system|assistant)>"
    r"|\[(?:CLS|SEP|PAD|MASK|UNK|INST|/INST)\]",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class NormalizeConfig:
    """How text is cleaned. ``cap_repeats`` = 0 disables run capping."""

    cap_repeats: int = 4  # longest run of one repeated (non-digit, non-space) character kept
    self_alias: str = DEFAULT_SELF_ALIAS  # name given to the exporting user (회원님/You)

    def validate(self) -> list[str]:
        problems = []
        if self.cap_repeats < 0 or 0 < self.cap_repeats < 2:
            problems.append("--cap-laughter: must be 0 (off) or at least 2")
        if not self.self_alias.strip():
            problems.append("--self-alias: must not be empty")
        return problems


# Characters whose long runs are habits, not content: jamo (ㅋ ㅎ ㅠ ㅜ ㄷ ㅇ...), laughter
# syllables, punctuation and emoji/hearts. A fixed set lets the regex engine skip ahead
# with a charset test (~4x faster than "(.)\1{n,}", which tries a group at every position).
REPEATABLE = "ㄱ-ㅣ하헤히호후흐크키캬푸킄큐햐ㅡ!?.~^;,*=_♡♥❤★☆\\-\U0001F300-\U0001FAFF\u2600-\u27BF"


def _run_pattern(cap: int) -> re.Pattern:
    return re.compile(r"([%s])\1{%d,}" % (REPEATABLE, cap))


def _capper(cap: int):
    def cap_run(m: re.Match) -> str:
        ch = m.group(1)
        return m.group() if ch.isdigit() or ch.isspace() else ch * cap
    return cap_run


def strip_special_tokens(text: str) -> tuple[str, int]:
    """Remove special-token-like strings until none is left; returns (text, how many removed)."""
    removed = 0
    while True:
        text, n = _SPECIAL.subn("", text)
        if not n:
            return text, removed
        removed += n


def canonical_speaker(name: str, self_alias: str = DEFAULT_SELF_ALIAS) -> str:
    """NFC, trimmed speaker name; the exporting user's labels become ``self_alias``."""
    name = strip_special_tokens(unicodedata.normalize("NFC", name).translate(_INVISIBLE))[0].strip()
    return self_alias if name in SELF_NAMES else name


def normalize_text(text: str, cap_repeats: int = 4, _runs: tuple | None = None) -> str:
    """NFC + invisible characters removed + repeated-character runs capped (no token stripping)."""
    if not text.isascii():
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        if _HAS_INVISIBLE(text):
            text = text.translate(_INVISIBLE)
    if cap_repeats:
        pattern, cap_run = _runs or (_run_pattern(cap_repeats), _capper(cap_repeats))
        text = pattern.sub(cap_run, text)
    return text.strip()


def normalize(messages: list[Message], cfg: NormalizeConfig) -> tuple[list[Message], Counter]:
    """Stage: clean every message; counts the ``special_tokens`` stripped.

    The steps of :func:`normalize_text` are inlined behind cheap tests (this runs
    on every message), and a new Message is built only when something changed.
    """
    counts: Counter = Counter()
    runs = _run_pattern(cfg.cap_repeats).search if cfg.cap_repeats else None
    cap_run = _capper(cfg.cap_repeats)
    is_nfc, has_invisible = unicodedata.is_normalized, _HAS_INVISIBLE
    speakers: dict[str, str] = {}
    out = []
    for m in messages:
        text = m.text
        if not text.isascii():
            if not is_nfc("NFC", text):
                text = unicodedata.normalize("NFC", text)
            if has_invisible(text):
                text = text.translate(_INVISIBLE)
        if runs is not None and (found := runs(text)):
            text = found.re.sub(cap_run, text)
        if "<" in text or "[" in text:
            text, n = strip_special_tokens(text)
            counts["special_tokens"] += n
        if text and (text[0].isspace() or text[-1].isspace()):
            text = text.strip()
        speaker = speakers.get(m.speaker)
        if speaker is None:
            speaker = speakers[m.speaker] = canonical_speaker(m.speaker, cfg.self_alias) if m.speaker else ""
        if text is not m.text or speaker != m.speaker:
            m = Message(m.ts, speaker, text, m.source, m.line)
        out.append(m)
    return out, counts
