"""Training data: persona pairs and rehearsal text -> rendered examples -> padded batches.

Every example goes through :func:`core.chat_format.render` (the one prompt
builder shared with serving), so the labels are -100 everywhere but the reply and
its closing ``<|eot|>``. Batches are length-bucketed (sorted inside chunks of a
shuffled order) to cut padding, and the order is a pure function of
``(seed, epoch)`` so a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import csv
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from core import chat_format
from core.chat_format import IGNORE_INDEX, Rendered
from core.errors import UserError
from core.memory import MemoryIndex, answered
from data_prep.chatbot_data import hash_bucket, is_heldout
from data_prep.records import ContextTurn, Pair

log = logging.getLogger(__name__)

# The instruction rehearsal examples are rendered with: no persona, just a helpful reply.
NEUTRAL_INSTRUCTION = "상대의 말에 자연스럽고 친절하게 답하세요."
REHEARSAL_PERSONA = "assistant"
BUCKET_BATCHES = 16  # batches per sorted chunk: big enough to cut padding, small enough to stay random
DEFAULT_USER = "사용자"
CONTRAST_NEGATIVES = ("next", "similar")  # the contrastive term's distractor prompts (TrainConfig.contrast_negatives)
NEAR_COPY = 0.8  # cosine from which another message is taken to ask the same thing: not a distractor
SIMILAR_CANDIDATES = 16  # nearest messages looked at per pair


@dataclass(frozen=True)
class RenderStats:
    """How many pairs became examples and how many were dropped, by reason."""

    kept: int
    dropped_too_long: int  # instruction + reply alone do not fit max_length (the reply is never cut)


def render_pairs(pairs: Sequence[Pair], tokenizer, max_length: int) -> tuple[list[Rendered], RenderStats]:
    """Render each pair with its instruction and context; context is trimmed from the left to fit."""
    out, _, stats = render_with_distractors(pairs, [None] * len(pairs), tokenizer, max_length)
    return out, stats


def persona_instruction(pairs: Sequence[Pair]) -> str:
    """The instruction used for the persona (the most common one; prepare writes one per persona)."""
    return Counter(p.instruction for p in pairs).most_common(1)[0][0] if pairs else ""


def user_speaker(pairs: Sequence[Pair]) -> str:
    """The most frequent non-persona speaker in the contexts: who the chat user speaks as."""
    counts = Counter(t.speaker for p in pairs for t in p.context if t.speaker != p.persona)
    return counts.most_common(1)[0][0] if counts else DEFAULT_USER


def _qa_pair(q: str, a: str, speaker: str, source: str) -> Pair | None:
    q, a = q.strip(), a.strip()
    if not a:
        return None
    ctx = (ContextTurn(speaker, q),) if q else ()
    return Pair(REHEARSAL_PERSONA, NEUTRAL_INSTRUCTION, ctx, a, "", source)


def _json_row(d: dict, speaker: str, source: str) -> Pair | None:
    low = {str(k).lower(): v for k, v in d.items()}
    if "response" in low and "context" in low:  # a prepared Pair: keep its context, neutral instruction
        p = Pair.from_json(d)
        return Pair(p.persona, NEUTRAL_INSTRUCTION, p.context, p.response, p.conversation_id, source)
    q = low.get("q", low.get("question", low.get("instruction", low.get("input", ""))))
    a = low.get("a", low.get("answer", low.get("output", low.get("text", ""))))
    return _qa_pair(str(q or ""), str(a or ""), speaker, source)


def without_context(pairs: Sequence[Pair], share: float) -> list[Pair]:
    """Copies of ``share`` of ``pairs`` (those with a context; chosen by a hash of the reply, so the same
    ones every run) with no turn before the reply: the condition dropout of classifier-free guidance."""
    picked = [p for p in pairs if p.context and hash_bucket(p.response, "no-context", 1000) < share * 1000]
    return [replace(p, context=()) for p in picked]


def read_rehearsal(path: str | Path, speaker: str = DEFAULT_USER) -> list[Pair]:
    """General Korean dialogue to rehearse, so the persona adapter does not forget how to talk.

    Formats: ``.csv`` with ``Q`` and ``A`` columns (Q becomes a user turn by
    ``speaker``, A the reply); ``.jsonl`` with ``q``/``a`` (or question/answer,
    instruction/output, or a prepared pair); anything else as plain text, one
    reply per line with no context. All use :data:`NEUTRAL_INSTRUCTION`.

    Rows whose reply falls in the fixed held-out split of :func:`data_prep.chatbot_data.is_heldout`
    are left out, in every format: next-reply selection (``pipeline.evaluate --qa``) measures on
    that split of any Q/A file, so a file holding the same answers (as Q/A rows or as plain lines)
    must not train on what is measured.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--rehearsal {path}: no such file")
    src = path.name
    try:
        if path.suffix.lower() == ".csv":
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f)
                cols = {c.strip().lower(): c for c in reader.fieldnames or []}
                if "q" not in cols or "a" not in cols:
                    raise UserError(f"--rehearsal {path}: a CSV needs Q and A columns, found {reader.fieldnames}")
                rows = [_qa_pair(r[cols["q"]] or "", r[cols["a"]] or "", speaker, src) for r in reader]
        elif path.suffix.lower() in (".jsonl", ".json"):
            with open(path, encoding="utf-8-sig") as f:
                rows = [_json_row(json.loads(line), speaker, src) for line in f if line.strip()]
        else:
            with open(path, encoding="utf-8-sig") as f:
                rows = [_qa_pair("", line, speaker, src) for line in f]
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise UserError(f"--rehearsal {path}: cannot read ({e})") from e
    pairs = [p for p in rows if p is not None]
    kept = [p for p in pairs if not is_heldout(p.response)]
    if len(kept) < len(pairs):
        log.info("--rehearsal %s: %d of %d rows left out, their replies are in the held-out split that "
                 "next-reply selection measures on", path, len(pairs) - len(kept), len(pairs))
    pairs = kept
    if not pairs:
        raise UserError(f"--rehearsal {path}: no usable examples")
    return pairs


def rehearsal_split(
    pairs: Sequence[Pair], n_persona_train: int, ratio: float, seed: int, max_val: int = 64,
) -> tuple[list[Pair], list[Pair]]:
    """Pick rehearsal pairs for training (``ratio`` of the mixed set) and a disjoint held-out set."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    n_val = min(max_val, max(1, len(order) // 10))
    val, rest = order[:n_val], order[n_val:]
    want = round(n_persona_train * ratio / (1.0 - ratio)) if ratio < 1 else len(rest)
    return rest[:want], val


def plan_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of example indices for one epoch: shuffled, sorted by length within chunks."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def swap_contexts(examples: Sequence[Rendered], max_length: int) -> list[Rendered | None]:
    """For each example, its reply and closing ``<|eot|>`` after the *next* example's prompt (a rotation
    of the batch): the distractor the contrastive term compares it with. None where that prompt is the
    example's own (the same question twice in a batch), the batch has one example, or the result would
    exceed ``max_length``."""
    out: list[Rendered | None] = []
    n = len(examples)
    for i, e in enumerate(examples):
        other = examples[(i + 1) % n]
        a, b = e.reply_start, other.reply_start
        prompt, tail = other.input_ids[:b], e.input_ids[a:]
        if n < 2 or prompt == e.input_ids[:a] or len(prompt) + len(tail) > max_length:
            out.append(None)
            continue
        out.append(Rendered(prompt + tail, [IGNORE_INDEX] * b + e.labels[a:], other.context_turns))
    return out


def similar_contexts(pairs: Sequence[Pair]) -> list[int | None]:
    """For each pair, the index of the pair whose message (:func:`core.memory.answered`) is most like its own
    by the memory's TF-IDF cosine, among pairs of *another* conversation with another reply and a message that
    is not a near copy (cosine below :data:`NEAR_COPY`, so the reply may well not fit it); None where no pair
    qualifies. The hard distractors of the contrastive term (``--contrast-negatives similar``): a reply
    must be likelier after its own message than after the nearest one that asks something else.
    Deterministic: ties keep the pairs' order."""
    messages = [answered(p.context, p.persona) for p in pairs]
    # the index keys each message by its pair's position (a unique "reply"), so no two pairs merge
    index = MemoryIndex.build((m, str(i)) for i, m in enumerate(messages))
    out: list[int | None] = []
    for i, (p, m) in enumerate(zip(pairs, messages)):
        pick = None
        for hit in index.search(m, k=SIMILAR_CANDIDATES, min_similarity=0.0) if m else []:
            j = int(hit.reply)
            q = pairs[j]
            if (j != i and hit.score < NEAR_COPY and q.context and q.response != p.response
                    and (not p.conversation_id or q.conversation_id != p.conversation_id)):
                pick = j
                break
        out.append(pick)
    return out


def render_with_distractors(pairs: Sequence[Pair], others: Sequence[int | None], tokenizer, max_length: int,
                            ) -> tuple[list[Rendered], list[Rendered | None], RenderStats]:
    """:func:`render_pairs`, and beside each example its reply after the context of ``pairs[others[i]]`` (same
    instruction; None where ``others[i]`` is None or that does not fit ``max_length``)."""
    out, distractors, too_long = [], [], 0
    for p, j in zip(pairs, others):
        r = chat_format.render(tokenizer, p.instruction, p.context, p.persona, p.response, max_length)
        if r is None:
            too_long += 1
            continue
        out.append(r)  # render always supervises at least the closing EOT
        d = None if j is None else chat_format.render(tokenizer, p.instruction, pairs[j].context, p.persona,
                                                       p.response, max_length)
        distractors.append(d if d is not None and d.input_ids[:d.reply_start] != r.input_ids[:r.reply_start]
                           else None)
    return out, distractors, RenderStats(len(out), too_long)


def collate(examples: Sequence[Rendered], pad: int) -> dict:
    """Right-pad to the longest example with ``pad`` (never EOS); labels are -100 on padding."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
