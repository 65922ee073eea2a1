"""The persona's memory: its own past replies to similar messages, found at reply time (opt-in).

    memory = Memory.load(["runs/민수/data"])              # the prepared data folder(s)
    for m in memory.recall("민수", context, "민수"):     # context: turns with speaker/text, oldest first
        print(m.score, m.message, "->", m.reply)

The index holds the persona's *train* pairs of a prepared data folder (``DIR/train.jsonl``,
written by ``python -m pipeline.prepare``, already PII-redacted there); ``validation.jsonl``, the
held-out split the evaluation measures on, is never read. Each pair is keyed by the message(s) the
persona answered (the context turns after the persona's own last turn) and gives back the reply.

Similarity is the cosine of TF-IDF vectors of character 2- and 3-grams (sublinear term frequency,
smoothed IDF). Korean chat spaces words loosely ("뭐해" / "뭐 해") and a syllable carries most of a
word's meaning, so the text is NFC-normalised, lower-cased, stripped of whitespace, and runs of a
character ("ㅋㅋㅋㅋ") are cut to two before the n-grams are taken. Query n-grams unseen in the index
still count in the query's norm (at the highest IDF), so a message sharing one bigram with a stored
one is not scored as a near copy.

Pure Python, no model: a posting list per n-gram, so a lookup touches only the pairs that share an
n-gram with the query. Deterministic: pairs keep file order and ties are broken by it.
"""
from __future__ import annotations

import json
import logging
import math
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from core.chat_format import speaker_text
from core.errors import UserError

log = logging.getLogger(__name__)

TOP_K = 3  # past replies shown with each reply
MIN_SIMILARITY = 0.3  # cosine below which a stored message is not "similar"
ANSWERED_TURNS = 3  # at most this many trailing turns make the message a reply answers
NGRAMS = (2, 3)
TRAIN_FILE = "train.jsonl"  # the only split the memory reads (validation.jsonl is held out)

_RUN = re.compile(r"(.)\1{2,}")
_SPACE = re.compile(r"\s+")


class Recalled(NamedTuple):
    """One remembered exchange: what was said to the persona, its reply, and how similar it is."""

    message: str
    reply: str
    score: float


def normalize(text: str) -> str:
    """The text n-grams are taken from: NFC, lower case, no whitespace, character runs cut to two."""
    text = unicodedata.normalize("NFC", text).lower()
    return _RUN.sub(r"\1\1", _SPACE.sub("", text))


def ngrams(text: str) -> Counter:
    """Character 2- and 3-grams of the normalised text (the text itself when shorter than 2)."""
    t = normalize(text)
    if len(t) < min(NGRAMS):
        return Counter([t] if t else [])
    return Counter(t[i:i + n] for n in NGRAMS for i in range(len(t) - n + 1))


def answered(context: Sequence[Any], persona: str) -> str:
    """The message a reply answers: the texts of the turns after the persona's last turn (at most
    :data:`ANSWERED_TURNS`, one per line); the last turn's text when the persona spoke last."""
    turns = [speaker_text(t) for t in context]
    tail: list[str] = []
    for speaker, text in reversed(turns):
        if speaker == persona or len(tail) == ANSWERED_TURNS:
            break
        tail.append(text)
    if not tail and turns:
        tail = [turns[-1][1]]
    return "\n".join(reversed(tail)).strip()


def _weights(grams: Counter, idf: Mapping[str, float], unseen: float) -> tuple[dict[str, float], float]:
    """Sublinear TF-IDF weights of the known n-grams and the L2 norm over all of them."""
    w = {g: (1 + math.log(c)) * idf.get(g, unseen) for g, c in grams.items()}
    norm = math.sqrt(sum(x * x for x in w.values()))
    return {g: x for g, x in w.items() if g in idf}, norm


@dataclass
class MemoryIndex:
    """TF-IDF posting lists over one persona's (message, reply) pairs."""

    messages: list[str]
    replies: list[str]
    postings: dict[str, list[tuple[int, float]]]
    idf: dict[str, float]
    unseen_idf: float

    @classmethod
    def build(cls, pairs: Iterable[tuple[str, str]]) -> "MemoryIndex":
        """Index (message, reply) pairs; duplicates of an earlier pair are dropped, empty ones skipped."""
        kept = list(dict.fromkeys((m.strip(), r.strip()) for m, r in pairs if m.strip() and r.strip()))
        grams = [ngrams(m) for m, _ in kept]
        df = Counter(g for c in grams for g in c)
        n = len(kept)
        idf = {g: math.log((n + 1) / (d + 1)) + 1 for g, d in df.items()}
        postings: dict[str, list[tuple[int, float]]] = {g: [] for g in df}
        for doc, c in enumerate(grams):
            w = [(g, idf[g] if k == 1 else (1 + math.log(k)) * idf[g]) for g, k in c.items()]  # mostly k == 1
            norm = math.sqrt(sum(x * x for _, x in w))
            for g, x in w:
                postings[g].append((doc, x / norm))
        return cls([m for m, _ in kept], [r for _, r in kept], postings, idf, math.log(n + 1) + 1)

    def __len__(self) -> int:
        return len(self.messages)

    def search(self, message: str, k: int = TOP_K, min_similarity: float = MIN_SIMILARITY) -> list[Recalled]:
        """The ``k`` pairs whose message is most similar to ``message`` (cosine >= ``min_similarity``),
        best first, one per distinct reply; ties keep file order."""
        w, norm = _weights(ngrams(message), self.idf, self.unseen_idf)
        if not w or k <= 0:
            return []
        scores: dict[int, float] = defaultdict(float)
        for g, x in w.items():
            for doc, y in self.postings[g]:
                scores[doc] += x * y
        out: list[Recalled] = []
        seen: set[str] = set()
        for doc, s in sorted(scores.items(), key=lambda d: (-d[1], d[0])):
            if s / norm < min_similarity or len(out) == k:
                break
            if self.replies[doc] not in seen:
                seen.add(self.replies[doc])
                out.append(Recalled(self.messages[doc], self.replies[doc], round(s / norm, 6)))
        return out


def read_train_pairs(data: Path) -> dict[str, list[tuple[str, str]]]:
    """(answered message, reply) of every train pair in ``data/train.jsonl``, per persona."""
    path = Path(data) / TRAIN_FILE
    if not path.is_file():
        raise UserError(f"--memory {data}: no {TRAIN_FILE} (give the data folder python -m pipeline.prepare wrote)")
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                persona = str(d["persona"])
                out[persona].append((answered(d.get("context", []), persona), str(d["response"])))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"--memory {path}:{n}: not a prepared pair ({type(e).__name__}: {e})") from e
    return dict(out)


class Memory:
    """One :class:`MemoryIndex` per persona, from one or more prepared data folders."""

    def __init__(self, indexes: Mapping[str, MemoryIndex], k: int = TOP_K, min_similarity: float = MIN_SIMILARITY):
        self.indexes = dict(indexes)
        self.k, self.min_similarity = k, min_similarity

    @classmethod
    def load(cls, folders: Sequence[str | Path], k: int = TOP_K, min_similarity: float = MIN_SIMILARITY) -> "Memory":
        """Index the train pairs of every folder (a persona found in several gets all of them)."""
        pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for folder in folders:
            if not Path(folder).is_dir():
                raise UserError(f"--memory {folder}: not a directory")
            for persona, got in read_train_pairs(Path(folder)).items():
                pairs[persona].extend(got)
        return cls({p: MemoryIndex.build(v) for p, v in pairs.items()}, k, min_similarity)

    @property
    def personas(self) -> list[str]:
        return sorted(self.indexes)

    def recall(self, persona: str, context: Sequence[Any], speaker: str | None = None) -> list[Recalled]:
        """The persona's past replies to messages like the one ``context`` ends with ([] when it has
        none); ``speaker``: who the persona is in ``context`` (default ``persona``)."""
        index = self.indexes.get(persona)
        message = answered(context, persona if speaker is None else speaker)
        if index is None or not message:
            return []
        return index.search(message, self.k, self.min_similarity)

    def check(self, personas: Sequence[str]) -> None:
        """Log how many exchanges each of ``personas`` remembers; UserError when none of them has any."""
        personas = sorted(set(personas))
        have = [p for p in personas if self.indexes.get(p)]
        if personas and not have:
            raise UserError(f"--memory: no train pairs of {', '.join(personas)} in the memory folder(s) "
                            f"(personas there: {', '.join(self.personas) or 'none'})")
        for p in personas:
            if p in have:
                log.info("memory: %s remembers %d past exchanges", p, len(self.indexes[p]))
            else:
                log.warning("memory: no train pairs of %s; its replies are made without memory", p)


MEMORY_HELP = ("prepared data folder of the persona(s) (runs/NAME/data, written by python -m pipeline.prepare): "
               f"before each reply the persona's own past replies to the {TOP_K} most similar messages of its "
               "train.jsonl (never the held-out validation.jsonl) are shown to the model as examples; the pairs "
               "stay on this machine and are never written into an adapter; repeatable (default: no memory)")


def add_memory_flag(parser) -> None:
    """The chat commands' ``--memory DATA_DIR`` (repeatable): see :data:`MEMORY_HELP`."""
    parser.add_argument("--memory", action="append", default=[], metavar="DATA_DIR", help=MEMORY_HELP)


def load_memory(folders: Sequence[str | Path]) -> Memory | None:
    """``Memory.load(folders)``, None when no folder is given (the chat runs without memory)."""
    return Memory.load(folders) if folders else None
