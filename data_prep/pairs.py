"""Instruction pairs: context turns -> the persona's turn; de-duplication; split by conversation.

Splitting happens on conversation ids (seeded), never on pairs: overlapping
context windows of one conversation would otherwise leak validation text into
training.
"""
from __future__ import annotations

import json
import operator
import random
from collections import Counter
from itertools import compress
from operator import attrgetter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

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
    return build_all_pairs(convs, {persona: instruction}, context_turns, sources)


def build_all_pairs(
    convs: list[Conversation], instructions: Mapping[str, str], context_turns: int,
    sources: Mapping[str, str] | None = None,
) -> list[Pair]:
    """:func:`build_pairs` for every persona of ``instructions`` (persona -> instruction) in one pass.

    The same pairs in the same order (persona by persona), but each
    conversation's context turns are built once and shared by every persona's
    windows (no per-pair or per-persona copies).
    """
    sources = sources or {}
    by_persona: dict[str, list[Pair]] = {name: [] for name in instructions}
    new_turn = tuple.__new__  # ContextTurn(...) minus the NamedTuple's Python-level __new__
    for conv in convs:
        turns = conv.turns
        ctx_turns = None
        for i in range(1, len(turns)):
            turn = turns[i]
            pairs = by_persona.get(turn.speaker)
            if pairs is None:
                continue
            if ctx_turns is None:
                ctx_turns = [new_turn(ContextTurn, (t.speaker, t.text)) for t in turns]
            src = sources.get(turn.source, turn.source)
            pairs.append(Pair(turn.speaker, instructions[turn.speaker], tuple(ctx_turns[max(0, i - context_turns):i]),
                              turn.text, conv.id, src))
    return [p for name in instructions for p in by_persona[name]]


def dedupe(pairs: list[Pair]) -> tuple[list[Pair], int]:
    """Stage: drop exact repeats of (persona, context, response); keeps the first. Returns (kept, removed)."""
    seen: set = set()
    kept = []
    for p in pairs:
        key = (p.persona, p.response, p.context)  # tuples of str: hashed and compared in C
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
    ids = list(map(attrgetter("conversation_id"), pairs))  # C-level loops: this runs on every pair
    held = validation_conversations(ids, val_ratio, seed)
    is_held = list(map(held.__contains__, ids))
    train = list(compress(pairs, map(operator.not_, is_held)))
    val = list(compress(pairs, is_held))
    return train, val


def count_by_persona(train: list[Pair], val: list[Pair]) -> dict[str, dict[str, int]]:
    """{persona: {"train": n, "validation": n}} for stats.json."""
    persona = attrgetter("persona")
    tr, va = Counter(map(persona, train)), Counter(map(persona, val))
    return {name: {"train": tr[name], "validation": va[name]} for name in sorted(set(tr) | set(va))}


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def alpaca(p: Pair) -> dict[str, str]:
    """Alpaca shape: the context as "speaker: text" lines in ``input``."""
    return {"instruction": p.instruction, "input": "\n".join(f"{t.speaker}: {t.text}" for t in p.context),
            "output": p.response}


def chat_messages(p: Pair) -> dict[str, Any]:
    from core.chat_format import to_messages

    return {"messages": to_messages(p.instruction, p.context, p.persona, p.response)}


class _JSONCache(dict):
    """value -> its UTF-8 JSON, computed on first lookup (``__missing__``): hits stay in C."""

    def __init__(self, encode: Callable[[Any], bytes]) -> None:
        super().__init__()
        self._encode = encode

    def __missing__(self, key: Any) -> bytes:
        out = self[key] = self._encode(key)
        return out


def _json_str(s: str) -> bytes:
    return json.encoder.encode_basestring(s).encode("utf-8")  # what json.dumps(ensure_ascii=False) writes


class PairEncoder:
    """``Pair.dumps()`` byte for byte (UTF-8, one line per pair), each distinct context turn encoded once.

    Every pair repeats up to ``context_turns`` turns of its conversation, so the
    JSON of each turn is cached (ContextTurn is a tuple: hashed in C) and a
    pair's context is a ``map`` over that cache plus a bytes join, both in C.
    """

    def __init__(self) -> None:
        self._strings = _JSONCache(_json_str)  # personas, sources, conversation ids repeat across pairs
        self._turns = _JSONCache(self._encode_turn)
        self._heads = _JSONCache(lambda key: b'{"persona": %s, "instruction": %s, "context": [' % (
            _json_str(key[0]), _json_str(key[1])))

    def _encode_turn(self, t: ContextTurn) -> bytes:
        return b'{"speaker": %s, "text": %s}' % (self._strings[t.speaker], _json_str(t.text))

    def chunk(self, pairs: Iterable[Pair]) -> bytes:
        """The JSONL lines of ``pairs``, UTF-8."""
        out: list[bytes] = []
        add, turn, head = out.extend, self._turns.__getitem__, self._heads.__getitem__
        string = self._strings.__getitem__
        for p in pairs:
            add((head((p.persona, p.instruction)), b", ".join(map(turn, p.context)), b'], "response": ',
                 _json_str(p.response), b', "conversation_id": ', string(p.conversation_id),
                 b', "source": ', string(p.source), b"}\n"))
        return b"".join(out)

    def line(self, p: Pair) -> str:
        """One pair's line (with its newline) as text."""
        return self.chunk((p,)).decode("utf-8")


CHUNK_PAIRS = 16_384  # pairs per block of a JSONL split handed to ``on_chunk``


def write_pairs(directory: Path, split: str, pairs: list[Pair], exports: Iterable[str] = (),
                on_chunk: Callable[[Path, int, int], None] | None = None) -> None:
    """``SPLIT.jsonl`` (one Pair.dumps() per line) and ``SPLIT_alpaca.jsonl``/``SPLIT_messages.jsonl``, streamed.

    ``on_chunk(path, start, end)`` is called after each block of :data:`CHUNK_PAIRS`
    lines is on disk (byte offsets), so a worker can parse it while the next block
    is encoded (:func:`parse_jsonl_chunk`).
    """
    path = directory / f"{split}.jsonl"
    enc, start = PairEncoder(), 0
    with open(path, "wb") as f:
        for i in range(0, len(pairs), CHUNK_PAIRS):
            data = enc.chunk(pairs[i:i + CHUNK_PAIRS])
            f.write(data)
            if on_chunk is not None:
                f.flush()
                on_chunk(path, start, start + len(data))
            start += len(data)
    if "alpaca" in exports:
        _write_jsonl(directory / f"{split}_alpaca.jsonl", (alpaca(p) for p in pairs))
    if "messages" in exports:
        _write_jsonl(directory / f"{split}_messages.jsonl", (chat_messages(p) for p in pairs))


# Tables parsed from blocks of a JSONL file in the process that parsed them (the
# background writer's worker): path -> [(start, end, table)]; write_dataset takes them.
_PARSED: dict[str, list[tuple[int, int, Any]]] = {}


def _pair_schema():
    import pyarrow as pa

    turn = pa.struct([("speaker", pa.string()), ("text", pa.string())])
    return pa.schema([("persona", pa.string()), ("instruction", pa.string()), ("context", pa.list_(turn)),
                      ("response", pa.string()), ("conversation_id", pa.string()), ("source", pa.string())])


def _read_json(open_source: Callable[[], Any], size: int):
    """pyarrow's JSON reader (C++, no per-pair Python dicts) with the pair schema."""
    import pyarrow as pa
    import pyarrow.json as pj

    opts = pj.ParseOptions(explicit_schema=_pair_schema(), unexpected_field_behavior="error")
    try:  # 4 MB blocks: 0.35 s on 100 MB of pairs in a fresh process, 0.8 s with 16 MB blocks
        return pj.read_json(open_source(), parse_options=opts, read_options=pj.ReadOptions(block_size=1 << 22))
    except pa.ArrowInvalid:  # a line longer than a block (or bad JSON: then this raises it again)
        return pj.read_json(open_source(), parse_options=opts, read_options=pj.ReadOptions(block_size=size + 1))


def parse_jsonl_chunk(path: Path, start: int, end: int) -> None:
    """Parse bytes ``start:end`` (whole lines) of a pairs JSONL into a table kept for write_dataset."""
    import pyarrow as pa

    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    _PARSED.setdefault(str(path), []).append((start, end, _read_json(lambda: pa.BufferReader(data), len(data))))


# What ``datasets.Dataset.save_to_disk`` writes beside each split's Arrow file; written here
# so prepare never imports ``datasets`` (half a CPU-second). ``features`` None: load_from_disk
# takes them from the Arrow schema (persona, instruction, context: list of {speaker, text}, ...).
_ARROW_FILE = "data-00000-of-00001.arrow"
_INFO = {"citation": "", "description": "", "features": None, "homepage": "", "license": ""}


def _state(fingerprint: str) -> dict[str, Any]:
    return {"_data_files": [{"filename": _ARROW_FILE}], "_fingerprint": fingerprint, "_format_columns": None,
            "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}


def write_dataset(path: Path, jsonl: dict[str, Path]) -> None:
    """The JSONL splits as a ``datasets.DatasetDict`` folder (``datasets.load_from_disk(path)`` reads it).

    The layout ``save_to_disk`` writes (dataset_dict.json; per split one Arrow
    stream file, dataset_info.json and state.json), written with pyarrow
    alone. A split whose blocks :func:`parse_jsonl_chunk` parsed in this
    process (all of the file, in order) is assembled from them; any other is read now.
    """
    import os

    import pyarrow as pa

    def table(file: Path) -> pa.Table:
        size = file.stat().st_size
        blocks = sorted(_PARSED.pop(str(file), []), key=lambda b: b[0])
        if blocks and blocks[0][0] == 0 and blocks[-1][1] == size and all(
                a[1] == b[0] for a, b in zip(blocks, blocks[1:])):
            return pa.concat_tables([b[2] for b in blocks])
        if size == 0:
            return _pair_schema().empty_table()
        return _read_json(lambda: str(file), size)

    try:
        for split, file in jsonl.items():
            folder = path / split
            folder.mkdir(parents=True, exist_ok=True)
            data = table(file)
            with pa.OSFile(str(folder / _ARROW_FILE), "wb") as sink, pa.ipc.new_stream(sink, data.schema) as writer:
                writer.write_table(data)
            (folder / "dataset_info.json").write_text(json.dumps(_INFO, indent=2) + "\n", encoding="utf-8")
            # a random fingerprint, as datasets gives data it has not hashed (keys its map() cache)
            (folder / "state.json").write_text(json.dumps(_state(os.urandom(8).hex()), indent=2) + "\n",
                                               encoding="utf-8")
        (path / "dataset_dict.json").write_text(json.dumps({"splits": list(jsonl)}), encoding="utf-8")
    finally:
        _PARSED.clear()  # one prepare run at a time per process: no table outlives it
