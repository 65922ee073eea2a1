"""Remove personal data: typed placeholders for numbers/addresses, pseudonyms for names.

* Phone numbers (mobile, landline, +82), e-mail addresses, resident registration
  numbers, card numbers, bank account numbers and URLs become ``<전화번호>``,
  ``<이메일>``, ``<주민번호>``, ``<카드번호>``, ``<계좌번호>``, ``<URL>``.
  Each kind runs only behind a cheap test (``@``, ``http``/``www``, a run of 8+ digits).
* Every speaker who is not a persona gets a consistent pseudonym (친구1, 친구2...,
  most active first), in the speaker field and wherever the name appears in text:
  the full name and, for three/four-syllable Korean names, the given name alone
  (김영희 -> 영희), so 영희야/영희가/영희씨 become 친구1야/친구1가/친구1씨.
  Hangul names are replaced wherever they occur (privacy before precision: a
  name inside a longer word is replaced too); Latin names only as whole words.
"""
from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass

from data_prep.records import Message

PLACEHOLDERS = {
    "url": "<URL>", "email": "<이메일>", "rrn": "<주민번호>", "card": "<카드번호>",
    "phone": "<전화번호>", "account": "<계좌번호>",
}
_D = r"(?<![\d-])"  # no digit (or digit group) right before
_E = r"(?![\d])"  # no digit right after
_SEP = r"(?:[-. ]|\) ?)?"
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# a run of digits and separators: the only places a number-like PII can be
_NUMBER_RUN = re.compile(r"\+?\d[\d\-. ()]*\d")
# inside such a run; order matters (earlier alternatives win at the same position)
_NUMBERS = re.compile(
    rf"(?P<rrn>{_D}\d{{6}}[- ]?[1-8]\d{{6}}{_E})"
    rf"|(?P<card>{_D}(?:\d{{4}}[- ]){{3}}\d{{4}}{_E}|{_D}\d{{4}}[- ]\d{{6}}[- ]\d{{5}}{_E}|{_D}\d{{16}}{_E})"
    rf"|(?P<phone>(?:\+82[- ]?\(?0?\)?[- ]?(?:1[016789]|[2-6]\d?|70)|{_D}0(?:1[016789]|2|[3-6][1-5]|70|50\d?))"
    rf"{_SEP}\d{{3,4}}{_SEP}\d{{4}}{_E}|{_D}1[568][0-9]{{2}}-\d{{4}}{_E})"
    rf"|(?P<account>{_D}\d{{2,6}}-\d{{2,6}}-\d{{2,7}}(?:-\d{{1,3}})?{_E}|{_D}\d{{10,14}}{_E})"
)
_HAS_DIGIT = re.compile(r"\d").search
_HANGUL = re.compile(r"[가-힣]+")
_SYMBOLS = re.compile(r"[^\w\s]+")
_MIN_DIGITS = 8  # the shortest number kept as PII (1588-1234); shorter runs are never looked at
_MIN_DIGITS_ACCOUNT = 10  # fewer digits in a hyphenated run is a date or a code, not an account
# Whether redact_text could change a text: its URL/e-mail substring tests, or a digit run
# long enough for _number_run to look at (>= _MIN_DIGITS characters). A superset, never less.
_may_hold_pii = re.compile(rf"http|www|HTTP|WWW|@|\d[\d\-. ()]{{{_MIN_DIGITS - 2},}}\d").search


@dataclass(frozen=True)
class PIIConfig:
    """``enabled`` False (``--keep-pii``) keeps everything, names included."""

    enabled: bool = True
    pseudonym_prefix: str = "친구"  # other speakers become 친구1, 친구2...

    def validate(self) -> list[str]:
        return [] if self.pseudonym_prefix.strip() else ["--pseudonym-prefix: must not be empty"]


def _number(m: re.Match, counts: Counter) -> str:
    kind = m.lastgroup
    if kind == "account" and sum(c.isdigit() for c in m.group()) < _MIN_DIGITS_ACCOUNT:
        return m.group()
    counts[kind] += 1
    return PLACEHOLDERS[kind]


def _number_run(m: re.Match, counts: Counter) -> str:
    run = m.group()
    if len(run) < _MIN_DIGITS or sum(c.isdigit() for c in run) < _MIN_DIGITS:
        return run
    return _NUMBERS.sub(lambda n: _number(n, counts), run)


def _typed(pattern: re.Pattern, kind: str, text: str, counts: Counter) -> str:
    text, n = pattern.subn(PLACEHOLDERS[kind], text)
    if n:
        counts[kind] += n
    return text


def redact_text(text: str, counts: Counter) -> str:
    """Replace URL/e-mail/RRN/card/phone/account in ``text``; adds to ``counts`` per kind.

    Each kind runs only when a cheap substring test says it could be there; the
    number patterns run only inside digit runs of at least 8 digits.
    """
    if "http" in text or "www" in text or "HTTP" in text or "WWW" in text:
        text = _typed(_URL, "url", text, counts)
    if "@" in text:
        text = _typed(_EMAIL, "email", text, counts)
    if _HAS_DIGIT(text):
        text = _NUMBER_RUN.sub(lambda m: _number_run(m, counts), text)
    return text


def name_variants(name: str) -> list[str]:
    """Spellings of ``name`` to hide in text.

    The name itself; its letters without emoji/symbols (지은🌸 -> 지은); the given
    name of a Korean full name (김영희 -> 영희, 남궁민수 -> 민수); each word of a
    multi-word name. One-letter spellings are skipped (they would hit ordinary words).
    """
    core = _SYMBOLS.sub("", name).strip()
    out = [name, core]
    if _HANGUL.fullmatch(core) and len(core) in (3, 4):
        out += [core[1:], core[2:]] if len(core) == 4 else [core[1:]]
    out += core.split()
    return [v for v in dict.fromkeys(out) if len(v) >= 2]


class Pseudonymizer:
    """Maps non-persona speakers to 친구N and hides their names inside text."""

    def __init__(self, speakers: list[str], personas: set[str], prefix: str = "친구", keep: set[str] = frozenset()):
        """``speakers`` most active first (pseudonym order); ``keep``: names never hidden in text."""
        others = [s for s in speakers if s and s not in personas]
        # skip pseudonyms someone already uses as a real name (a speaker called 친구1)
        free = (f"{prefix}{i}" for i in itertools.count(1) if f"{prefix}{i}" not in set(speakers))
        self.mapping = dict(zip(others, free))
        protected = set(personas) | set(keep)
        variants: dict[str, str] = {}
        for s in others:
            for v in name_variants(s):
                if v not in protected and v not in variants:
                    variants[v] = self.mapping[s]
        self._variants = variants
        self._pattern = self._compile(variants)

    @staticmethod
    def _compile(variants: dict[str, str]) -> re.Pattern | None:
        if not variants:
            return None
        alts = []
        for v in sorted(variants, key=len, reverse=True):
            esc = re.escape(v)
            alts.append(esc if _HANGUL.search(v) else rf"(?<![A-Za-z0-9]){esc}(?![A-Za-z0-9])")
        return re.compile("|".join(alts), re.IGNORECASE)

    def speaker(self, name: str) -> str:
        return self.mapping.get(name, name)

    def text(self, text: str, counts: Counter) -> str:
        """Replace every hidden name in ``text``; counts them as ``name``."""
        if self._pattern is None:
            return text
        if not self._pattern.search(text):  # the common case: no new string, no Message rebuilt
            return text
        new, n = self._pattern.subn(lambda m: self._variants.get(m.group()) or self._lookup(m.group()), text)
        counts["name"] += n
        return new

    def _lookup(self, matched: str) -> str:  # case-insensitive Latin match
        return next(p for v, p in self._variants.items() if v.lower() == matched.lower())


def scrub(text: str, pseudo: Pseudonymizer, counts: Counter) -> str:
    """Everything personal out of free text (unparsed-line samples, file names, logs)."""
    return pseudo.text(redact_text(text, counts), counts)


def remove_pii(messages: list[Message], pseudo: Pseudonymizer, cfg: PIIConfig) -> tuple[list[Message], Counter]:
    """Stage: typed placeholders for numbers/addresses and pseudonyms for names; counts per kind."""
    counts: Counter = Counter()
    if not cfg.enabled:
        return messages, counts
    # this loop runs on every message: lookups bound once, and the tests that
    # redact_text and pseudo.text would make first are made here, so most
    # messages (no digits run, no @, no URL, no name) cost no function call
    get, names, may_hold = pseudo.mapping.get, pseudo.text, _may_hold_pii
    name_search = pseudo._pattern.search if pseudo._pattern is not None else None
    new, out = tuple.__new__, []  # Message(...) without the NamedTuple's Python-level __new__
    append = out.append
    for m in messages:
        text = m.text
        if may_hold(text):
            text = redact_text(text, counts)
        if name_search is not None and name_search(text):
            text = names(text, counts)
        speaker = get(m.speaker, m.speaker)
        if text is not m.text or speaker is not m.speaker:
            m = new(Message, (m.ts, speaker, text, m.source, m.line))
        append(m)
    return out, counts
