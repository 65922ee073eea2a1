"""The persona card: how a person writes, measured from their turns, rendered as the instruction.

Written to ``DIR/personas/NAME.yaml`` so the user can read and edit it. The file
starts with ``# generated-sha256: <hash of the rest>``; on a re-run a file whose
content still matches its hash is regenerated from the data, and a file the user
changed (hash mismatch or no hash line) is kept and used as is.
"""
from __future__ import annotations

import hashlib
import re
import statistics
from bisect import bisect_right
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from pathlib import Path

from core.errors import UserError
from core.reply_shape import TRAILING, measure_limits

_HASH_PREFIX = "# generated-sha256: "
_EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF\U0001F000-\U0001F2FF]")
_EMOTICON = re.compile(r"\^\^|\^_\^|:\)|:-\)|:D|;\)|T_T|ㅜ_ㅜ|ㅠ_ㅠ|-_-|>_<|o_o")
MARKS = {"ㅋ": "ㅋ", "ㅎ": "ㅎ", "ㅠ": "ㅠㅜ"}


@dataclass(frozen=True)
class PersonaCard:
    """What the instruction says about one persona; every field is user-editable in the YAML."""

    name: str
    turns: int = 0
    median_reply_chars: int = 0
    marks: dict[str, float] = field(default_factory=dict)  # share of turns using ㅋ/ㅎ/ㅠ
    emoji_share: float = 0.0  # share of turns with an emoji
    top_emoji: list[str] = field(default_factory=list)
    emoticon_share: float = 0.0  # share of turns with ^^, :) ...
    endings: list[str] = field(default_factory=list)  # most frequent last syllables, e.g. 요, 어, 지
    # limits the chat's decoding keeps to (core.reply_shape): longest run of ㅋ/ㅎ/ㅠ/ㅜ/!/?/./~
    # and of any other character, most lines in one burst, 90th-percentile length, share of bursts,
    # share of polite turns, the swear word families used (core.reply_shape.PROFANITY)
    max_runs: dict[str, int] = field(default_factory=dict)
    max_lines: int = 0
    p90_reply_chars: int = 0
    burst_share: float = 0.0
    polite_share: float | None = None  # share of turns in 존댓말 (-요, -ㅂ니다...): the register replies keep to
    profanity: list[str] | None = None  # swear word families the turns use: the only ones a reply may use
    instruction: str = ""  # what the model sees; clear it to re-render from the fields


# sentence_ending of every sentence of a text at once: a syllable followed only by trailing
# characters up to the end of its sentence ([.!?\n]) or text
_ENDING = re.compile(r"([가-힣])(?:[^\S\n]|[~…,ㅋㅎㅠㅜ^;:)(_\-\u2600-\u27BF\U0001F000-\U0001FAFF])*(?=[.!?\n]|\Z)")


def _share(pattern: re.Pattern, joined: str, starts: list[int]) -> int:
    """How many of the texts in ``joined`` (text k starts at ``starts[k]``) ``pattern`` matches in: one
    regex pass, only matches reach Python (no pattern here matches a newline, so none spans two texts)."""
    return len({bisect_right(starts, m.start()) for m in pattern.finditer(joined)})


def sentence_ending(sentence: str) -> str | None:
    """Last Hangul syllable of a sentence once laughter, emoji and punctuation are stripped."""
    core = TRAILING.sub("", sentence)
    return core[-1] if core and "가" <= core[-1] <= "힣" else None


CARD_SAMPLE = 20_000  # turns a card's habits are measured on (an evenly spaced sample above this)


def sample_texts(texts: list[str], sample: int = CARD_SAMPLE) -> list[str]:
    """``texts``, or above ``sample`` of them an evenly spaced sample of at most that many
    (a sample is its own sample)."""
    return texts[:: -(-len(texts) // sample)] if sample and len(texts) > sample else texts


def build_card(name: str, texts: list[str], sample: int = CARD_SAMPLE, turns: int | None = None) -> PersonaCard:
    """Measure ``name``'s habits from their turn texts and render the instruction.

    Above ``sample`` turns the habits are measured on an evenly spaced sample of
    that many (shares and the median move by well under a percent; a
    million-message export saves most of a second); ``turns`` stays the full count.
    ``turns``: the full count when ``texts`` already is :func:`sample_texts` of the turns.
    """
    total = len(texts) if turns is None else turns
    texts = sample_texts(texts, sample)
    n = max(len(texts), 1)
    joined = "\n".join(texts)  # one regex pass over all turns instead of a Python loop per turn
    starts = list(accumulate([len(t) + 1 for t in texts], initial=0))
    card = PersonaCard(
        name=name,
        turns=total,
        median_reply_chars=int(statistics.median(map(len, texts))) if texts else 0,
        marks={k: round(_share(re.compile(f"[{chars}]+"), joined, starts) / n, 3) for k, chars in MARKS.items()},
        emoji_share=round(_share(_EMOJI, joined, starts) / n, 3),
        top_emoji=[e for e, _ in Counter(_EMOJI.findall(joined)).most_common(3)],
        emoticon_share=round(_share(_EMOTICON, joined, starts) / n, 3),
        endings=[e for e, _ in Counter(_ENDING.findall(joined)).most_common(5)],
        **(measure_limits(texts) if texts else {}),
    )
    return PersonaCard(**{**asdict(card), "instruction": render_instruction(card)})


def render_instruction(card: PersonaCard) -> str:
    """Korean instruction from the card, e.g. "너는 민수야. 민수처럼 답해. 답은 보통 12자 정도로 짧게 해. ..."."""
    name = card.name
    parts = [f"너는 {name}{_copula(name)}. {name}처럼 답해."]
    if card.median_reply_chars:
        size = "짧게" if card.median_reply_chars <= 20 else "길게" if card.median_reply_chars > 60 else "적당히"
        parts.append(f"답은 보통 {card.median_reply_chars}자 정도로 {size} 해.")
    used = [k for k, share in card.marks.items() if share >= 0.1]
    if used:
        parts.append(f"{', '.join(used)} 같은 표시를 자주 써.")
    if card.emoji_share >= 0.05 and card.top_emoji:
        parts.append(f"이모지({''.join(card.top_emoji)})를 가끔 써.")
    if card.emoticon_share >= 0.05:
        parts.append("^^ 같은 이모티콘을 써.")
    if card.endings:
        parts.append(f"말끝은 주로 {', '.join('-' + e for e in card.endings[:3])}로 끝내.")
    return " ".join(parts)


def _copula(name: str) -> str:
    last = name[-1]
    if "가" <= last <= "힣":
        return "이야" if (ord(last) - 0xAC00) % 28 else "야"
    return "야"


def _body(card: PersonaCard) -> str:
    import yaml  # lazy: only when writing cards

    note = "# Edit freely: an edited file is kept on re-runs. `instruction` is what the model sees;\n" \
           "# clear it ('') to re-render it from the fields below.\n"
    return note + yaml.safe_dump(asdict(card), allow_unicode=True, sort_keys=False)


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def card_path(directory: Path, name: str) -> Path:
    safe = re.sub(r"[\\/:*?\"<>|\x00-\x1f]", "_", name).strip(". ") or "persona"
    return directory / f"{safe}.yaml"


def is_user_edited(path: Path) -> bool:
    """True when ``path`` exists and no longer matches the hash written with it."""
    if not path.exists():
        return False
    text = path.read_text(encoding="utf-8")
    first, _, body = text.partition("\n")
    return not (first.startswith(_HASH_PREFIX) and first[len(_HASH_PREFIX):].strip() == _digest(body))


def load_card(path: Path) -> PersonaCard:
    """Read a (possibly user-edited) card; an empty ``instruction`` is re-rendered from the fields."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        known = {k: v for k, v in data.items() if k in PersonaCard.__dataclass_fields__}
        card = PersonaCard(**known)
    except (yaml.YAMLError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a valid persona card ({e.__class__.__name__}); fix or delete it") from e
    if not str(card.instruction).strip():
        card = PersonaCard(**{**asdict(card), "instruction": render_instruction(card)})
    return card


def write_card(path: Path, card: PersonaCard) -> None:
    body = _body(card)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{_HASH_PREFIX}{_digest(body)}\n{body}", encoding="utf-8")


def resolve_card(previous: Path, target: Path, generated: PersonaCard) -> tuple[PersonaCard, bool]:
    """The card to use, written to ``target``: the user's edited ``previous`` if any, else ``generated``.

    Returns (card, kept_user_edit).
    """
    if is_user_edited(previous):
        card = load_card(previous)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(previous.read_bytes())  # keep the user's file byte for byte
        return card, True
    write_card(target, generated)
    return generated, False
