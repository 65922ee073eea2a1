"""Instruction pairs: context turns -> the persona's turn; de-duplication; split by conversation; JSONL.

Splitting happens on conversation ids (seeded), never on pairs: overlapping
context windows of one conversation would otherwise leak validation text into
training.
"""
from __future__ import annotations

import json
import operator
import random
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate, chain, compress
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from data_prep.records import Conversation, Message, Pair

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


def _json_str(s: str) -> bytes:
    return json.encoder.encode_basestring(s).encode("utf-8")  # what json.dumps(ensure_ascii=False) writes


_RESPONSE = b'], "response": '


@dataclass
class PairLines:
    """Pairs as their JSONL lines (``Pair.dumps()`` byte for byte), a column per field prepare uses.

    Pair ``k``'s line is ``heads[personas[k]] + bodies[k] + tails[k]``: the head
    (persona, instruction, up to the context's ``[``) is one per persona, the
    body (context turns and response) is what de-duplication compares, the tail
    (conversation id, source) is one object per conversation.
    """

    heads: dict[str, bytes] = field(default_factory=dict)  # set by :meth:`instruct`
    personas: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    tails: list[bytes] = field(default_factory=list)
    conversation_ids: list[str] = field(default_factory=list)
    response_chars: list[int] = field(default_factory=list)  # len(response), for the report
    duplicates: int = 0  # exact repeats dropped while building

    def __len__(self) -> int:
        return len(self.bodies)

    def instruct(self, instructions: Mapping[str, str]) -> None:
        """Set each persona's instruction (the line heads); needed before :meth:`encode`."""
        self.heads = {name: b'{"persona": %s, "instruction": %s, "context": [' % (_json_str(name), _json_str(text))
                      for name, text in instructions.items()}

    def _columns(self) -> tuple[list, ...]:
        return self.personas, self.bodies, self.tails, self.conversation_ids, self.response_chars

    def select(self, keep: Iterable[bool]) -> "PairLines":
        """The pairs where ``keep`` is true, in order."""
        keep = list(keep)
        return PairLines(self.heads, *(list(compress(column, keep)) for column in self._columns()))

    def split(self, val_ratio: float, seed: int) -> tuple["PairLines", "PairLines"]:
        """Stage: (train, validation) with every conversation wholly on one side."""
        held = validation_conversations(self.conversation_ids, val_ratio, seed)
        is_held = list(map(held.__contains__, self.conversation_ids))  # C-level loops: this runs on every pair
        return self.select(map(operator.not_, is_held)), self.select(is_held)

    def encode(self, start: int = 0, stop: int | None = None) -> bytes:
        """The JSONL lines of pairs ``start:stop``, UTF-8 (one join in C)."""
        part = slice(start, stop)
        heads = map(self.heads.__getitem__, self.personas[part])
        return b"".join(chain.from_iterable(zip(heads, self.bodies[part], self.tails[part])))

    def pairs(self) -> list[Pair]:
        """The pairs as :class:`Pair` objects (parsed back from their lines)."""
        return [Pair.from_json(json.loads(self.encode(k, k + 1))) for k in range(len(self))]


def build_pair_lines(
    convs: list[Conversation], personas: Iterable[str], context_turns: int, sources: Mapping[str, str] | None = None,
) -> PairLines:
    """Stage: one pair per persona turn that has at least one earlier turn in its conversation,
    exact repeats of (persona, context, response) dropped (the first is kept).

    Pairs come persona by persona (in the order of ``personas``), each in
    conversation order; :meth:`PairLines.instruct` adds the instructions. The context is the up to
    ``context_turns`` previous turns (any speakers). ``sources`` maps a message's
    source path to the label written as ``source`` (the file name may hold a
    person's name, so the caller passes a scrubbed one).

    Every pair repeats up to ``context_turns`` turns of its conversation, so each
    turn is encoded to JSON once, the conversation's turns are joined once, and a
    pair's context is one slice of that (contexts are consecutive turns).
    """
    sources = sources or {}
    rows: dict[str, list[tuple[bytes, bytes, str, int]]] = {name: [] for name in personas}
    seen: dict[str, set[bytes]] = {name: set() for name in rows}
    speakers: dict[str, bytes] = {}  # speaker -> the JSON of a context turn up to its text
    duplicates = 0
    for conv in convs:
        turns, texts = conv.turns, None
        for i in range(1, len(turns)):
            turn = turns[i]
            persona_rows = rows.get(turn.speaker)
            if persona_rows is None:
                continue
            if texts is None:  # the conversation's first pair: encode its turns
                texts, buf, starts = _encode_turns(turns, speakers)
                tails: dict[str, bytes] = {}
            body = b"".join((buf[starts[max(0, i - context_turns)]:starts[i] - 2], _RESPONSE, texts[i]))
            persona_seen = seen[turn.speaker]
            if body in persona_seen:
                duplicates += 1
                continue
            persona_seen.add(body)
            tail = tails.get(turn.source)
            if tail is None:
                tail = tails[turn.source] = b', "conversation_id": %s, "source": %s}\n' % (
                    _json_str(conv.id), _json_str(sources.get(turn.source, turn.source)))
            persona_rows.append((body, tail, conv.id, len(turn.text)))
    out = PairLines(duplicates=duplicates)
    for name, persona_rows in rows.items():
        out.personas += [name] * len(persona_rows)
        for column, values in zip(out._columns()[1:], zip(*persona_rows)):
            column += values
    return out


def _encode_turns(turns: Sequence[Message], speakers: dict[str, bytes]) -> tuple[list[bytes], bytes, list[int]]:
    """(each turn's text as JSON, the turns as context JSON joined by ", ", where each turn starts in it)."""
    texts = [_json_str(t.text) for t in turns]
    parts = []
    for t, text in zip(turns, texts):
        head = speakers.get(t.speaker)
        if head is None:
            head = speakers[t.speaker] = b'{"speaker": %s, "text": ' % _json_str(t.speaker)
        parts.append(b"%s%s}" % (head, text))
    return texts, b", ".join(parts), list(accumulate([len(p) + 2 for p in parts], initial=0))


def validation_conversations(conv_ids: list[str], val_ratio: float, seed: int) -> set[str]:
    """Seeded choice of held-out conversations; at least one when there are two or more and ratio > 0."""
    ids = sorted(set(conv_ids))
    if val_ratio <= 0 or len(ids) < 2:
        return set()
    random.Random(seed).shuffle(ids)
    n = min(len(ids) - 1, max(1, round(len(ids) * val_ratio)))
    return set(ids[:n])


def count_by_persona(train: PairLines, val: PairLines) -> dict[str, dict[str, int]]:
    """{persona: {"train": n, "validation": n}} for stats.json."""
    tr, va = Counter(train.personas), Counter(val.personas)
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


CHUNK_PAIRS = 16_384  # pairs per block of a JSONL split handed to ``on_chunk``


def write_pairs(directory: Path, split: str, lines: PairLines, exports: Iterable[str] = (),
                on_chunk: Callable[[Path, int, int], None] | None = None) -> None:
    """``SPLIT.jsonl`` (one Pair.dumps() per line) and ``SPLIT_alpaca.jsonl``/``SPLIT_messages.jsonl``, streamed.

    ``on_chunk(path, start, end)`` is called after each block of :data:`CHUNK_PAIRS`
    lines is on disk (byte offsets), so a worker can parse it while the next block
    is written (:func:`parse_jsonl_chunk`).
    """
    path = directory / f"{split}.jsonl"
    start = 0
    with open(path, "wb") as f:
        for i in range(0, len(lines), CHUNK_PAIRS):
            data = lines.encode(i, i + CHUNK_PAIRS)
            f.write(data)
            if on_chunk is not None:
                f.flush()
                on_chunk(path, start, start + len(data))
            start += len(data)
    pairs = lines.pairs() if exports else []
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
