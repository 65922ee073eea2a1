"""What a reply may look like: the persona's limits measured from real turns, and one definition of
an empty reply, an echo and a loop, shared by prepare (the limits), decoding (rejection and the
logits processor) and evaluation (the generated-reply statistics).

Pure text, no model. Definitions:

- **empty**: nothing left once whitespace is stripped, or a bubble that is one stray mark (``.``, ``,``,
  ``-``, ``*`` or ``·`` alone: :data:`STRAY_MARKS`; "?", "..." and "ㅋ" say something);
- **echo**: the reply copies a source (the message it answers, or the persona's own previous
  reply): after :func:`normalise` (NFC, case-folded, whitespace and ``.,!?~…`` removed) it equals
  the source, or it has at least :data:`ECHO_MIN_CHARS` characters and a ``difflib`` ratio of at
  least :data:`ECHO_RATIO` with it (so "민수야 뭐해? ㅋㅋ" echoes "민수야 뭐해", "뭐해?" does not);
  or a bubble after its first copies a source or a bubble before it (:func:`echoed_bubbles`);
- **loop** (:func:`loop_reason`), any of:
  ``run``: one character repeated more times in a row than the persona ever did (``max_runs``);
  ``repeat``: a block of 2-40 characters (not a single repeated character) three times back to
  back ("ㅋㅋ ㅋㅋ ㅋㅋ", "배고파배고파배고파");
  ``ngram``: a word :data:`NGRAM`-gram that occurs twice;
  ``lines``: more lines (bubbles) than the persona ever sent in one burst.
  A text loops when any prefix of it ends in one of these: that is what lets the logits
  processor ban, token by token, exactly what the final check would reject.
- **register**: the reply is polite (존댓말: a sentence ends in -요, -죠, -(스)ㅂ니다/-ㅂ니까 or
  -시오, or in the polite answer words 네 / 예 / 넵 / 아뇨 as a word of their own, :func:`is_polite`) while the persona's real turns almost never are (``polite_share`` below
  :data:`POLITE_RARE`): a friend who writes 반말 does not answer "맛있게 드세요!";
- **profanity**: the reply swears or curses in a way the persona's real turns never do: a word family of
  :data:`PROFANITY` (씨발, 병신, 개새끼, 좆, 니애미, 미친놈, 존나, 지랄, threats such as 쳐죽여) that is not
  among the families its turns use (``profanity``, measured by prepare; none on a card from before it, and for
  the bare base model). A small model picks such words up in pretraining, not from the chat: a persona swears
  only as its person does. While a reply is written, a word the next character may still make innocent (시발
  before 점) waits for that character (``pending``).
"""
from __future__ import annotations

import re
import statistics
import unicodedata
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Iterable, Mapping, Sequence

RUN_CLASSES = ("ㅋ", "ㅎ", "ㅠ", "ㅜ", "!", "?", ".", "~")  # characters whose runs are measured one by one
OTHER = "other"  # every other non-space character
# caps when a persona card has no measured limits (the base model, an adapter from before them)
DEFAULT_RUNS = {"ㅋ": 10, "ㅎ": 10, "ㅠ": 6, "ㅜ": 6, "!": 3, "?": 3, ".": 6, "~": 4, OTHER: 3}
DEFAULT_MAX_LINES = 4
MIN_RUN_CAP = 2  # a doubled character ("ㅇㅇ", "!!") is never a loop, even if the data never shows it
ECHO_MIN_CHARS = 4
ECHO_RATIO = 0.8
NGRAM = 4
MAX_BLOCK = 40
_STRIP = re.compile(r"[\s.,!?~…]+")
STRAY_MARKS = frozenset(".,-*·")  # a bubble of one of these alone says nothing
POLITE_RARE = 0.1  # a persona polite in fewer of its turns than this writes 반말: a polite reply is off-register
# what may follow a sentence's last syllable: laughter, crying, emoji, emoticon parts, punctuation
TRAILING = re.compile(r"[\s.!?~…,ㅋㅎㅠㅜ^;:)(_\-\u2600-\u27BF\U0001F000-\U0001FAFF]+$")
_SENTENCES = re.compile(r"[.!?\n]+")
_B_FINAL = 17  # ㅂ as a Hangul syllable's final consonant: 합니다, 입니까, 습니다
# a sentence's last word that is a polite "yes" / "no" ("예.", "아 네"); 반말 says 응 / 어 / ㅇㅇ / 아니.
# Only as a word of its own: the casual ending -네 ("좋네", "맞네") is part of its word.
POLITE_WORDS = frozenset({"네", "예", "넵", "넹", "네네", "예예", "아뇨", "아니오"})
# swearing and cursing, by word family (the family's name is what a persona card lists). Each pattern leaves out
# the innocent words that contain it: 시발점 / 시발역 (a starting point, a terminus), 좇다 (to follow), 뒤지다 (to
# rummage: only the threats 뒤질래 / 뒤져라 count), 새끼 alone (a young animal), 시바견, 병신년 (a year's name),
# 졸라서 (pestered).
PROFANITY = {
    "씨발": r"씨발|씨빨|씨팔|시발(?![점역])|시팔|ㅅㅂ|ㅆㅂ|ㅆ발",
    "병신": r"병신(?!년)|븅신|ㅂㅅ",
    "개새끼": r"개\s?새[끼기]|개색[기히끼]|개세끼",
    "좆": r"좆|ㅈ같|ㅈ까",
    "니애미": r"니\s?[애에]미|느금|[애에]미\s?(?:뒤|없|리스)|엠창|니미럴|니기미",
    "미친놈": r"미친\s?(?:놈|년|새끼)",
    "존나": r"존나|졸라(?![서도요])|존내|ㅈㄴ",
    "지랄": r"지랄",
    "쳐죽여": r"쳐\s?죽|죽여\s?버리|뒤질래|뒤져라",
}
_PROFANITY = re.compile("|".join(f"(?P<f{i}>{pat})" for i, pat in enumerate(PROFANITY.values())))
_FAMILY = {f"f{i}": name for i, name in enumerate(PROFANITY)}
# the characters that make a word innocent when they follow it (the patterns' negative lookaheads: 점, 역, 년, 서...)
_INNOCENT_NEXT = "".join(sorted(set("".join(re.findall(r"\(\?!\[?([^\])]+)\]?\)", "".join(PROFANITY.values()))))))


@dataclass(frozen=True)
class ReplyLimits:
    """How far a persona's real turns go: longest run per character class, lines, length."""

    max_runs: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_RUNS), hash=False)
    max_lines: int = DEFAULT_MAX_LINES
    median_chars: int = 0  # 0 = unknown
    p90_chars: int = 0
    burst_share: float = 0.0  # share of turns sent as several messages (lines)
    polite_share: float | None = None  # share of turns in 존댓말 (None: unknown, the register is not checked)
    profanity: frozenset[str] = frozenset()  # PROFANITY families the persona uses (unknown: none)

    def cap(self, ch: str) -> int:
        """The longest run of ``ch`` allowed (whitespace is never capped)."""
        if ch.isspace():
            return 1 << 30
        n = self.max_runs.get(ch, self.max_runs.get(OTHER, DEFAULT_RUNS[OTHER]))
        return max(int(n), MIN_RUN_CAP)

    @classmethod
    def from_card(cls, card: Mapping | None) -> "ReplyLimits":
        """Limits from a persona card's fields (a dict from its YAML); defaults for missing ones."""
        card = card or {}
        runs = card.get("max_runs") or {}
        if not isinstance(runs, Mapping) or not runs:
            runs = DEFAULT_RUNS
        lines = card.get("max_lines") or DEFAULT_MAX_LINES
        return cls(
            max_runs={str(k): int(v) for k, v in runs.items()}, max_lines=max(int(lines), 1),
            median_chars=int(card.get("median_reply_chars") or 0), p90_chars=int(card.get("p90_reply_chars") or 0),
            burst_share=float(card.get("burst_share") or 0.0),
            polite_share=None if card.get("polite_share") is None else float(card["polite_share"]),
            profanity=frozenset(map(str, card.get("profanity") or ())),
        )

    @property
    def casual(self) -> bool:
        """Whether the persona writes 반말 (polite in fewer than :data:`POLITE_RARE` of its turns)."""
        return self.polite_share is not None and self.polite_share < POLITE_RARE


def longest_runs(text: str) -> dict[str, int]:
    """Longest run of each non-space character in ``text``."""
    out: dict[str, int] = {}
    for m in re.finditer(r"(\S)\1*", text):
        ch, n = m.group(1), len(m.group(0))
        if n > out.get(ch, 0):
            out[ch] = n
    return out


def bubbles(text: str) -> list[str]:
    """The messages a (burst) reply is sent as: its non-empty lines, stripped."""
    return [ln.strip() for ln in text.split("\n") if ln.strip()]


_OTHER_CHAR = re.compile(f"[^\\s{re.escape(''.join(RUN_CLASSES))}]")
_OTHER_REPEAT = re.compile(f"({_OTHER_CHAR.pattern})\\1+")  # two or more of one other character


def _longest_run_of(ch: str, text: str) -> int:
    """Longest run of ``ch`` in ``text``: doubling then bisecting on ``ch * n in text`` (C substring search)."""
    if ch not in text:
        return 0
    have, lack = 1, 2
    while ch * lack in text:
        have, lack = lack, lack * 2
    while lack - have > 1:
        mid = (have + lack) // 2
        have, lack = (mid, lack) if ch * mid in text else (have, mid)
    return have


def longest_class_runs(texts: Sequence[str]) -> dict[str, int]:
    """Longest run of each :data:`RUN_CLASSES` character and of any :data:`OTHER` character over ``texts``.

    :func:`longest_runs` of every text, merged, but as substring searches and
    one regex pass over the texts joined by newlines (whitespace ends a run, so
    none crosses two texts): only runs of two or more other characters reach Python.
    """
    joined = "\n".join(texts)
    runs = {ch: _longest_run_of(ch, joined) for ch in RUN_CLASSES}
    repeats = [len(m.group()) for m in _OTHER_REPEAT.finditer(joined)]
    runs[OTHER] = max(repeats) if repeats else 1 if _OTHER_CHAR.search(joined) else 0
    return runs


def _polite_end(sentence: str) -> bool:
    core = TRAILING.sub("", sentence)
    words = core.split()
    if core.endswith(("요", "죠", "시오")) or (words and words[-1] in POLITE_WORDS):
        return True
    # -ㅂ니다 / -ㅂ니까 (합니다, 입니까), not the casual -니까 of "배고프니까"
    return len(core) >= 3 and core[-2] == "니" and core[-1] in "다까" and "가" <= core[-3] <= "힣" \
        and (ord(core[-3]) - 0xAC00) % 28 == _B_FINAL


def swear_families(text: str, pending: bool = False) -> set[str]:
    """The :data:`PROFANITY` families ``text`` uses. ``pending``: ``text`` is still being written, so a match at
    its very end is left out when the next character may make it innocent (시발 before 점, 졸라 before 서)."""
    return {_FAMILY[m.lastgroup] for m in _PROFANITY.finditer(text)
            if not (pending and m.end() == len(text)
                    and any(_PROFANITY.match(text + c, m.start()) is None for c in _INNOCENT_NEXT))}


def is_polite(text: str) -> bool:
    """Whether a sentence of ``text`` ends in a polite form (see the module docstring)."""
    return any(_polite_end(s) for s in _SENTENCES.split(text))


def measure_limits(texts: Sequence[str]) -> dict[str, object]:
    """Card fields measured on real turns: ``max_runs`` per class (+ other), ``max_lines``,
    ``p90_reply_chars``, ``burst_share``, ``polite_share``, ``profanity`` (the swear families used)."""
    # a text without a newline is one bubble: only the others are split
    lines = [len(bubbles(t)) or 1 if "\n" in t else 1 for t in texts]
    lengths = list(map(len, texts))
    n = max(len(lines), 1)
    return {
        "max_runs": longest_class_runs(texts),
        "max_lines": max(lines, default=DEFAULT_MAX_LINES),
        "p90_reply_chars": int(statistics.quantiles(lengths, n=10)[-1]) if len(lengths) > 1 else sum(lengths),
        "burst_share": round(sum(1 for x in lines if x > 1) / n, 3),
        "polite_share": round(sum(map(is_polite, texts)) / n, 3),
        "profanity": sorted(swear_families("\n".join(texts))),
    }


def normalise(text: str) -> str:
    """NFC, case-folded, without whitespace and ``.,!?~…``: what echo comparison sees."""
    return _STRIP.sub("", unicodedata.normalize("NFC", text).casefold())


def is_echo(reply: str, sources: Sequence[str]) -> bool:
    """True when ``reply`` copies one of ``sources`` (see the module docstring)."""
    r = normalise(reply)
    if not r:
        return False
    for s in sources:
        s = normalise(s or "")
        if not s:
            continue
        if r == s or (len(r) >= ECHO_MIN_CHARS and SequenceMatcher(None, r, s, autojunk=False).ratio() >= ECHO_RATIO):
            return True
    return False


def echoed_bubbles(text: str, sources: Sequence[str]) -> list[int]:
    """Indices of the bubbles after the first that copy one of ``sources`` or a bubble before them."""
    bs = bubbles(text)
    return [k for k in range(1, len(bs)) if is_echo(bs[k], (*sources, *bs[:k]))]


def _tail_loop(s: str, limits: ReplyLimits) -> str | None:
    """A loop that ends exactly at the end of ``s`` (see the module docstring), or None."""
    if not s:
        return None
    last = s[-1]
    run = len(s) - len(s.rstrip(last))
    if run > limits.cap(last):
        return "run"
    for t in (s, s + " ") if last != " " else (s,):
        for size in range(2, min(MAX_BLOCK, len(t) // 3) + 1):
            block = t[-size:]
            if t[-2 * size:-size] == block and t[-3 * size:-2 * size] == block and len(set(block)) > 1:
                return "repeat"
    if last == "\n" and len(bubbles(s)) >= limits.max_lines and s.strip():
        return "lines"  # one more line would open a bubble the persona never sends
    words = s.split()
    if len(words) >= 2 * NGRAM:
        tail = words[-NGRAM:]
        if any(words[i:i + NGRAM] == tail for i in range(len(words) - 2 * NGRAM + 1)):
            return "ngram"
    return None


def new_loop(old: str, new: str, limits: ReplyLimits) -> str | None:
    """A loop that ``new`` (= ``old`` + some characters) ends in and ``old`` did not, or None."""
    start = len(old) + 1 if new.startswith(old) else 1
    for end in range(start, len(new) + 1):
        why = _tail_loop(new[:end], limits)
        if why:
            return why
    return None


def loop_reason(text: str, limits: ReplyLimits | None = None) -> str | None:
    """Why ``text`` is a loop (``run``, ``repeat``, ``ngram``, ``lines``), or None."""
    return new_loop("", text.strip(), limits or ReplyLimits())


def problem(reply: str, sources: Sequence[str], limits: ReplyLimits | None = None) -> str | None:
    """``empty``, ``echo``, ``loop:<reason>``, ``profanity``, ``register`` or None: why a candidate reply is
    rejected."""
    if not reply.strip() or any(b in STRAY_MARKS for b in bubbles(reply)):
        return "empty"
    why = loop_reason(reply, limits)
    if why:
        return f"loop:{why}"
    if is_echo(reply, sources) or echoed_bubbles(reply, sources):
        return "echo"
    if limits is not None and foreign_swearing(reply, limits):
        return "profanity"
    return "register" if limits is not None and limits.casual and is_polite(reply) else None


def foreign_swearing(reply: str, limits: ReplyLimits, pending: bool = False) -> bool:
    """Whether ``reply`` swears in a family the persona never uses (``pending``: see :func:`swear_families`)."""
    return bool(swear_families(reply, pending) - limits.profanity)


def echo_sources(turns: Iterable[tuple[bool, str]]) -> tuple[str, ...]:
    """What a reply must not copy: the last message by someone else and the persona's last reply,
    from a conversation given as (said by the persona, text) turns, oldest first."""
    other = own = ""
    for mine, text in turns:
        if mine:
            own = text
        else:
            other = text
    return tuple(s for s in (other, own) if s)


def read_limits(card: str | Path) -> ReplyLimits:
    """The reply limits of a persona card (``persona.yaml``); defaults when it is missing or unreadable."""
    import yaml

    try:
        data = yaml.safe_load(Path(card).read_text(encoding="utf-8"))
        return ReplyLimits.from_card(data if isinstance(data, dict) else None)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError, ValueError):
        return ReplyLimits()  # an old or hand-broken card must not make the adapter unusable
