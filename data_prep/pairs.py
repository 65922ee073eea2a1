"""Instruction pairs: context turns -> the persona's turn; de-duplication; split by conversation.

Splitting happens on conversation ids (seeded), never on pairs: overlapping
context windows of one conversation would otherwise leak validation text into
training (docs/PITFALLS.md).
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from data_prep.records import ContextTurn, Conversation, Pair


EXPORTS = ("alpaca", "messages")  # extra shapes --export can write beside the native JSONL


@dataclass(frozen=True)
class PairConfig:
    context_turns: int = 8  # previous turns kept as context (any speakers)
    val_ratio: float = 0.1  # share of conversations held out for validation
    seed: int = 0  # seeds the conversation split

    def validate(self) -> list[str]:
        problems = []
        if self.context_turns < 1:
            problems.append("--context-turns: must be at least 1")
        if not 0.0 <= self.val_ratio < 1.0:
            problems.append("--val-ratio: must be in [0, 1)")
        return problems


def build_pairs(
    convs: list[Conversation], persona: str, instruction: str, context_turns: int,
    sources: Mapping[str, str] | None = None,
) -> list[Pair]:
    """Stage: one pair per persona turn that has at least one earlier turn in its conversation.

    ``sources`` maps a message's source path to the label written in ``Pair.source``
    (the file name may hold a person's name, so the caller passes a scrubbed one).
    """
    sources = sources or {}
    pairs = []
    for conv in convs:
        turns = conv.turns
        if not any(t.speaker == persona for t in turns[1:]):
            continue
        # one ContextTurn per turn, shared by every window that holds it (no per-pair churn)
        ctx_turns = [ContextTurn(t.speaker, t.text) for t in turns]
        for i in range(1, len(turns)):
            if turns[i].speaker == persona:
                src = turns[i].source
                ctx = tuple(ctx_turns[max(0, i - context_turns):i])
                pairs.append(Pair(persona, instruction, ctx, turns[i].text, conv.id, sources.get(src, src)))
    return pairs


def dedupe(pairs: list[Pair]) -> tuple[list[Pair], int]:
    """Stage: drop exact repeats of (persona, context, response); keeps the first. Returns (kept, removed)."""
    seen: set = set()
    kept = []
    for p in pairs:
        # a joined string hashes far faster than a tuple of dataclasses
        key = "\x1f".join((p.persona, p.response, *(f"{t.speaker}\x1e{t.text}" for t in p.context)))
        if key in seen:
            continue
        seen.add(key)
        kept.append(p)
    return kept, len(pairs) - len(kept)


def validation_conversations(conv_ids: list[str], val_ratio: float, seed: int) -> set[str]:
    """Seeded choice of held-out conversations; at least one when there are two or more and ratio > 0."""
    ids = sorted(set(conv_ids))
    if val_ratio <= 0 or len(ids) < 2:
        return set()
    random.Random(seed).shuffle(ids)
    n = min(len(ids) - 1, max(1, round(len(ids) * val_ratio)))
    return set(ids[:n])


def split_by_conversation(pairs: list[Pair], val_ratio: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Stage: (train, validation) with every conversation wholly on one side."""
    held = validation_conversations([p.conversation_id for p in pairs], val_ratio, seed)
    train = [p for p in pairs if p.conversation_id not in held]
    val = [p for p in pairs if p.conversation_id in held]
    return train, val


def count_by_persona(train: list[Pair], val: list[Pair]) -> dict[str, dict[str, int]]:
    """{persona: {"train": n, "validation": n}} for stats.json."""
    tr, va = Counter(p.persona for p in train), Counter(p.persona for p in val)
    return {name: {"train": tr[name], "validation": va[name]} for name in sorted(set(tr) | set(va))}


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def alpaca(p: Pair) -> dict[str, str]:
    """Alpaca shape: the context as "speaker: text" lines in ``input``."""
    return {"instruction": p.instruction, "input": "\n".join(f"{t.speaker}: {t.text}" for t in p.context),
            "output": p.response}


def chat_messages(p: Pair) -> dict[str, Any]:
    from pipeline.chat_format import to_messages

    return {"messages": to_messages(p.instruction, p.context, p.persona, p.response)}


class PairEncoder:
    """``Pair.dumps()`` byte for byte, but each context turn and instruction is encoded once.

    Consecutive windows share up to ``context_turns`` turn objects (see
    :func:`build_pairs`), so caching their JSON by object id saves most of the
    encoding work. The pairs must stay alive while encoding (ids are reused after death).
    """

    def __init__(self) -> None:
        self._enc = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses for str
        self._turns: dict[int, str] = {}
        self._strings: dict[str, str] = {}

    def _string(self, s: str) -> str:  # instructions, personas, sources repeat across pairs
        out = self._strings.get(s)
        if out is None:
            out = self._strings[s] = self._enc(s)
        return out

    def _turn(self, t: ContextTurn) -> str:
        out = self._turns.get(id(t))
        if out is None:
            out = self._turns[id(t)] = f'{{"speaker": {self._string(t.speaker)}, "text": {self._enc(t.text)}}}'
        return out

    def line(self, p: Pair) -> str:
        ctx = ", ".join(self._turn(t) for t in p.context)
        return (f'{{"persona": {self._string(p.persona)}, "instruction": {self._string(p.instruction)}, '
                f'"context": [{ctx}], "response": {self._enc(p.response)}, '
                f'"conversation_id": {self._enc(p.conversation_id)}, "source": {self._string(p.source)}}}\n')

    def lines(self, pairs: Iterable[Pair]) -> Iterable[str]:
        return (self.line(p) for p in pairs)


def write_pairs(directory: Path, split: str, pairs: list[Pair], exports: Iterable[str] = ()) -> None:
    """``SPLIT.jsonl`` (one Pair.dumps() per line) and ``SPLIT_alpaca.jsonl``/``SPLIT_messages.jsonl``, streamed."""
    with open(directory / f"{split}.jsonl", "w", encoding="utf-8") as f:
        f.writelines(PairEncoder().lines(pairs))
    if "alpaca" in exports:
        _write_jsonl(directory / f"{split}_alpaca.jsonl", (alpaca(p) for p in pairs))
    if "messages" in exports:
        _write_jsonl(directory / f"{split}_messages.jsonl", (chat_messages(p) for p in pairs))


def write_dataset(path: Path, jsonl: dict[str, Path]) -> None:
    """The JSONL splits as a ``datasets.DatasetDict`` saved with ``save_to_disk``.

    pyarrow's JSON reader builds the tables in C++ (no per-pair Python dicts);
    datasets is imported only here because it is slow to import.
    """
    import pyarrow as pa
    import pyarrow.json as pj
    from datasets import Dataset, DatasetDict
    from datasets.table import InMemoryTable

    turn = pa.struct([("speaker", pa.string()), ("text", pa.string())])
    schema = pa.schema([("persona", pa.string()), ("instruction", pa.string()), ("context", pa.list_(turn)),
                        ("response", pa.string()), ("conversation_id", pa.string()), ("source", pa.string())])

    def table(file: Path) -> pa.Table:
        if file.stat().st_size == 0:
            return schema.empty_table()
        opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
        try:  # 4 MB blocks: 0.35 s on 100 MB of pairs in a fresh process, 0.8 s with 16 MB blocks
            return pj.read_json(file, parse_options=opts, read_options=pj.ReadOptions(block_size=1 << 22))
        except pa.ArrowInvalid:  # a line longer than a block (or bad JSON: then this raises it again)
            return pj.read_json(file, parse_options=opts, read_options=pj.ReadOptions(block_size=file.stat().st_size + 1))

    DatasetDict({split: Dataset(InMemoryTable(table(f))) for split, f in jsonl.items()}).save_to_disk(str(path))
