"""Remove personal data: typed placeholders for numbers/addresses, pseudonyms for names.

* What :mod:`data_prep.pii_patterns` finds (phone, e-mail, RRN, passport, driver
  licence, card, account, IP, car plate, address, URL, SNS/KakaoTalk ID) becomes
  its placeholder (``<전화번호>``, ``<주소>``...), behind a cheap test most
  messages fail. Numbers split over several messages of one speaker (010 /
  1234 / 5678 sent one by one) are found in the joined text and hidden in
  each piece.
* Every speaker who is not a persona gets a consistent pseudonym (친구1, 친구2...,
  most active first), in the speaker field and wherever the name appears in text:
  the full name and, for three/four-syllable Korean names, the given name alone
  (김영희 -> 영희), so 영희야/영희가/영희씨 become 친구1야/친구1가/친구1씨; Hangul
  names also in Latin letters (Younghee Kim). Hangul names are replaced wherever
  they occur (privacy before precision: a name inside a longer word is replaced
  too); Latin names only as whole words.
* People who are not speakers (서준이가, 하은아, 박서준) become 사람1, 사람2...
  (:mod:`data_prep.names`), the same person the same pseudonym everywhere.
* The user's own terms (``--redact-list``: their real name, a nickname, a school)
  become ``<이름>`` everywhere.
"""
from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from data_prep.names import Classifier, PersonNames, latin_pattern
from data_prep.pii_patterns import LISTED, PLACEHOLDERS, find, may_hold, replace
from data_prep.records import Message

__all__ = ["PLACEHOLDERS", "PIIConfig", "Pseudonymizer", "redact_text", "remove_pii", "scrub", "name_variants"]
_HANGUL = re.compile(r"[가-힣]+")
_SYMBOLS = re.compile(r"[^\w\s]+")
_may_hold_pii = may_hold  # whether redact_text could change a text: a superset, never less
_LATIN = re.compile(r"[A-Za-z]{2}").search  # a Latin name has two letters at least


@dataclass(frozen=True)
class PIIConfig:
    """``enabled`` False (``--keep-pii``) keeps everything, names included."""

    enabled: bool = True
    pseudonym_prefix: str = "친구"  # other speakers become 친구1, 친구2...
    person_prefix: str = "사람"  # people who are not speakers become 사람1, 사람2...
    person_names: bool = True  # look for non-speakers' names in text (kiwipiepy)

    def validate(self) -> list[str]:
        problems = [] if self.pseudonym_prefix.strip() else ["--pseudonym-prefix: must not be empty"]
        if self.person_prefix == self.pseudonym_prefix:
            problems.append("--pseudonym-prefix: must differ from the prefix of non-speakers (사람)")
        return problems


def redact_text(text: str, counts: Counter) -> str:
    """Replace every kind of :mod:`data_prep.pii_patterns` in ``text``; adds to ``counts`` per kind."""
    spans = find(text)
    if not spans:
        return text
    for _, _, kind in spans:
        counts[kind] += 1
    return replace(text, spans)


def read_redact_list(path: str) -> tuple[str, ...]:
    """Terms of a ``--redact-list`` file: one a line, blank lines and ``#`` comments skipped."""
    with open(path, encoding="utf-8-sig") as f:
        terms = (line.strip() for line in f)
        return tuple(dict.fromkeys(t for t in terms if t and not t.startswith("#")))


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
    """Maps non-persona speakers to 친구N and hides their names (and the user's own terms) inside text."""

    def __init__(self, speakers: list[str], personas: set[str], prefix: str = "친구", keep: set[str] = frozenset(),
                 redact: Sequence[str] = ()):
        """``speakers`` most active first (pseudonym order); ``keep``: names never hidden in text;
        ``redact``: the user's own terms (``--redact-list``), each replaced by ``<이름>``."""
        others = [s for s in speakers if s and s not in personas]
        # skip pseudonyms someone already uses as a real name (a speaker called 친구1)
        free = (f"{prefix}{i}" for i in itertools.count(1) if f"{prefix}{i}" not in set(speakers))
        self.mapping = dict(zip(others, free))
        protected = self.protected = set(personas) | set(keep)
        variants: dict[str, str] = {t: PLACEHOLDERS[LISTED] for t in redact}
        for s in others:
            for v in name_variants(s):
                if v not in protected and v not in variants:
                    variants[v] = self.mapping[s]
        self._variants = variants
        self._pattern = self._compile(variants)
        latin = [(latin_pattern(v), self.mapping[s]) for s in others for v in name_variants(s)[:2]
                 if v not in protected]
        latin = [(src, p) for src, p in dict(latin).items() if src]
        self._latin_names = [p for _, p in latin]
        # one lookbehind in front: positions inside a word fail before any alternative is tried
        alts = "|".join(f"(?P<n{i}>{src})(?![A-Za-z])" for i, (src, _) in enumerate(latin))
        self._latin = re.compile(f"(?<![A-Za-z])(?=[A-Za-z]{{2}})(?:{alts})", re.IGNORECASE) if latin else None
        # whether text() could change a text: a Hangul spelling (case-sensitive literals: the
        # cheapest search), or a Latin letter when some spelling has one
        hangul = [re.escape(v) for v in sorted(variants, key=len, reverse=True) if _HANGUL.search(v)]
        hangul_search = re.compile("|".join(hangul)).search if hangul else (lambda _: None)
        if latin or len(hangul) < len(variants):
            self.may_name = lambda text: hangul_search(text) or _LATIN(text)
        else:
            self.may_name = hangul_search

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
        """Replace every hidden name in ``text``; counts them as ``name`` (``listed`` for the user's terms)."""
        if self._pattern is not None and self._pattern.search(text):
            def sub(m: re.Match) -> str:
                value = self._variants.get(m.group()) or self._lookup(m.group())
                counts[LISTED if value == PLACEHOLDERS[LISTED] else "name"] += 1
                return value
            text = self._pattern.sub(sub, text)
        if self._latin is not None and _LATIN(text):
            text, n = self._latin.subn(lambda m: self._latin_names[int(m.lastgroup[1:])], text)
            counts["name"] += n
        return text

    def _lookup(self, matched: str) -> str:  # case-insensitive Latin match
        return next(p for v, p in self._variants.items() if v.lower() == matched.lower())


def scrub(text: str, pseudo: Pseudonymizer, counts: Counter) -> str:
    """Everything personal out of free text (unparsed-line samples, file names, logs)."""
    return pseudo.text(redact_text(text, counts), counts)


def remove_pii(messages: list[Message], pseudo: Pseudonymizer, cfg: PIIConfig,
               classify: Classifier = None) -> tuple[list[Message], Counter]:
    """Stage: typed placeholders for numbers/addresses and pseudonyms for names; counts per kind.
    ``classify``: runs :func:`data_prep.names.classify_words` (default: here)."""
    counts: Counter = Counter()
    if not cfg.enabled:
        return messages, counts
    # this loop runs on every message: lookups bound once, and the cheap tests that
    # redact_text and pseudo.text would make first are made here, so most
    # messages (no digit, no Latin letter, no name) cost no function call
    get, names, may_hold_pii, may_name = pseudo.mapping.get, pseudo.text, _may_hold_pii, pseudo.may_name
    new, out = tuple.__new__, []  # Message(...) without the NamedTuple's Python-level __new__
    append = out.append
    for m in messages:
        text = m.text
        if may_hold_pii(text):
            text = redact_text(text, counts)
        if may_name(text):
            text = names(text, counts)
        speaker = get(m.speaker, m.speaker)
        if text is not m.text or speaker is not m.speaker:
            m = new(Message, (m.ts, speaker, text, m.source, m.line))
        append(m)
    _redact_bursts(out, counts)
    if cfg.person_names:
        out = _person_names(out, pseudo, cfg, counts, classify)
    return out, counts


_NUMERIC_EDGE = set("0123456789０１２３４５６７８９공영일이삼사오육륙칠팔구-.–—/ ()")


def _redact_bursts(messages: list[Message], counts: Counter) -> None:
    """Numbers typed over consecutive messages of one speaker (010 / 1234 / 5678): found in the
    joined text, hidden in every piece (in place). Only chains whose pieces end and start with a
    digit or a separator are joined."""
    edge = _NUMERIC_EDGE
    links = [i for i, (a, b) in enumerate(zip(messages, messages[1:]))
             if a.text[-1:] in edge and b.text[:1] in edge and a.speaker == b.speaker and a.source == b.source]
    start = None
    for i, nxt in itertools.zip_longest(links, links[1:]):
        start = i if start is None else start
        if nxt != i + 1:  # the chain start..i+1 ends here
            _redact_chain(messages, start, i + 1, counts)
            start = None


def _redact_chain(messages: list[Message], i: int, j: int, counts: Counter) -> None:
    texts = [m.text for m in messages[i:j + 1]]
    starts = list(itertools.accumulate((len(t) + 1 for t in texts), initial=0))
    pieces: list[list[tuple[int, int, str]]] = [[] for _ in texts]
    for start, end, kind in find("\n".join(texts)):
        touched = [k for k in range(len(texts)) if start < starts[k] + len(texts[k]) and starts[k] < end]
        if len(touched) < 2:
            continue  # inside one message: already redacted there
        counts[kind] += 1
        for k in touched:
            pieces[k].append((max(start, starts[k]) - starts[k], min(end, starts[k] + len(texts[k])) - starts[k], kind))
    for k, spans in enumerate(pieces):
        if spans:
            m = messages[i + k]
            messages[i + k] = m.with_text(replace(m.text, spans))


def _person_names(messages: list[Message], pseudo: Pseudonymizer, cfg: PIIConfig, counts: Counter,
                  classify: Classifier) -> list[Message]:
    """Non-speakers' names -> 사람N (data_prep.names), consistently over all messages; the personas'
    and the exporter's names are never taken for one."""
    keep = {v for p in pseudo.protected for v in name_variants(p)} | set(pseudo.mapping.values())
    people = PersonNames(keep, cfg.person_prefix)
    people.learn((m.text for m in messages), classify)
    if not people.mapping:
        return messages
    out, search = [], people.search
    for m in messages:
        if search(m.text):
            text, n = people.replace(m.text)
            counts["person"] += n
            m = m.with_text(text)
        out.append(m)
    return out
