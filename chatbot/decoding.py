"""Reply decoding shared by the chat engine, the server's batcher and the evaluation: :func:`decode`
(:func:`generate` is its shorthand for prompts sharing one set of settings).

For each prompt it samples ``candidates`` replies in one batch and keeps the one with the best
context-aware score, maximum-mutual-information reranking (Li et al. 2016, "A Diversity-Promoting
Objective Function for Neural Conversation Models")::

    score = (log p(reply | context) - mmi_lambda * log p(reply | no context)) / tokens
            + backward_weight * log p(message | reply) / message tokens

``log p(reply | context)`` is read from the model's raw logits while sampling (no second pass);
``log p(reply | no context)`` comes from one batched forward of the same instruction with no
conversation. A reply that fits any message ("ㅋㅋ", "응") is likely with or without the context and
loses; one that answers this message gains. ``mmi_lambda`` 0.5: Li et al. keep lambda below 1
because at 1 the score rewards replies the plain model finds improbable, ungrammatical ones
included; the candidates here are samples of p(reply | context), so they are fluent, and 0.5 is
their middle setting. ``log p(message | reply)`` is the backward model's (bidirectional MMI, Li et al.;
DialoGPT's reranker): a LoRA trained on general dialogue turned around (``core.models.BACKWARD_DIR``),
attached beside the persona adapters as :data:`core.models.BACKWARD_ADAPTER`, scoring the user's message
with the candidate as the only turn before it. It needs no p(reply) at all, and it is the same for every
persona, so a persona adapter's own skew cannot enter it. It is used where the model has that adapter and
the prompt names its message (:attr:`Prompt.message`). Candidates that are empty, echo the message or the
persona's previous reply, or loop, or answer in 존댓말 for a persona who writes 반말 (definitions in
:mod:`core.reply_shape`) are ranked after every acceptable one.

In every mode, greedy included, a logits processor (:class:`ReplyShaper`) bans each token after
which the reply would be empty-and-ended or contain a loop by that same definition (a character
run longer than the persona's real data shows, a block repeated three times, a repeated word
4-gram, more lines than the persona sends in one burst). Generation stops at ``<|eot|>``, at the
base's own end tokens, and when the model opens another turn (``<|user|>``, ``<|system|>``,
``<|bot|>``, ``<|sep|>``).

A batch may mix jobs (:class:`Job`): each has its own settings (greedy or sampled, temperature,
top-k, top-p, repetition penalty, token limit) and its own seeded ``torch.Generator``, and each
:class:`Prompt` may name its PEFT adapter (rows routed by :mod:`chatbot.routing`). Every step is
computed per row, so a job's reply is the same in any batch as alone, same seed (up to float
rounding of batched matrix products, none seen on the CPU).
"""
from __future__ import annotations

import copy
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from functools import lru_cache
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

from chatbot.routing import BASE_ADAPTER

from core.reply_shape import ReplyLimits, bubbles, foreign_swearing, new_loop, problem
from core import chat_format
from core.models import BACKWARD_ADAPTER, cache_name

MAX_NEW_TOKENS_CAP = 512  # hard cap whatever the caller asks for
MAX_CANDIDATES = 16
_RANK = {None: 0, "echo": 1, "unfinished": 1, "register": 1, "profanity": 3, "empty": 3}  # loops rank 2: see _rank
LAGGARD_FACTOR = 1.5  # a row this many times longer than a finished sibling (+ LAGGARD_SLACK tokens) is cut
LAGGARD_SLACK = 4
CONTINUATION_SEED = 0x5DEECE66D  # times the bubble number, xor-ed into a job's seed for the bubbles after the first
NARROW_POSITIONS = 8  # up to this many positions needing logits, the output layer runs as W @ h.T (CPU)
PREFIX_CACHE_SIZE = 8  # no-context prefixes (a persona's instruction alone) kept per model; ~3 MB each on the default
_PREFIX_CACHES: "weakref.WeakKeyDictionary[Any, OrderedDict]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class SamplingParams:
    """How replies are sampled and chosen, the same for the chat and the evaluation."""

    temperature: float = 0.8  # 0 = greedy (one candidate)
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    max_new_tokens: int = 128
    candidates: int = 4  # sampled in one batch, one is kept (1 = plain sampling, streamed)
    mmi_lambda: float = 0.5  # weight of log p(reply | no context) in the score; 0 = likelihood only
    backward_weight: float = 3.0  # weight of log p(message | reply) per message token; 0 = off

    def clamped(self) -> "SamplingParams":
        return SamplingParams(
            temperature=min(max(float(self.temperature), 0.0), 2.0),
            top_p=min(max(float(self.top_p), 0.05), 1.0),
            top_k=min(max(int(self.top_k), 0), 1000),
            repetition_penalty=min(max(float(self.repetition_penalty), 1.0), 2.0),
            max_new_tokens=min(max(int(self.max_new_tokens), 1), MAX_NEW_TOKENS_CAP),
            candidates=min(max(int(self.candidates), 1), MAX_CANDIDATES),
            mmi_lambda=min(max(float(self.mmi_lambda), 0.0), 1.0),
            backward_weight=min(max(float(self.backward_weight), 0.0), 4.0),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def rows(self) -> int:
        """Candidates actually sampled per prompt (greedy gives one)."""
        return 1 if self.greedy else self.candidates


@dataclass(frozen=True)
class Prompt:
    """One reply to decode: its prompt ids, the same instruction without conversation, and checks."""

    ids: Sequence[int]
    no_context_ids: Sequence[int]  # chat_format.render(instruction, [], persona): the MMI baseline
    sources: tuple[str, ...] = ()  # texts the reply must not echo (the message, the persona's last reply)
    limits: ReplyLimits = ReplyLimits()
    adapter: str | None = None  # PEFT adapter for this row in a mixed batch (None: whatever is active)
    reply_prefix: tuple[int, ...] = ()  # reply tokens already chosen (a first bubble): the reply goes on from them
    message: tuple[str, str] | None = None  # (speaker, text) the reply answers: the backward score's; None: none


@dataclass(frozen=True)
class Candidate:
    text: str
    tokens: int  # scored tokens (the reply and its stop token)
    ids: tuple[int, ...]  # those token ids
    logp: float  # log p(reply | context), summed
    logp_no_context: float | None
    score: float
    problem: str | None  # empty, echo, loop:<reason>, or None
    ended: bool = True  # ended with a stop token (False: cut at the token limit or as a laggard)
    bubble: bool = False  # stopped at the end of its first bubble, the reply not finished (first-bubble reranking)


@dataclass(frozen=True)
class Reply:
    """The chosen reply and every candidate it was chosen from."""

    text: str
    candidates: tuple[Candidate, ...] = field(default=())
    picked: int | None = None  # index of the chosen candidate (None: the best ranked)

    @property
    def chosen(self) -> Candidate | None:
        """The candidate whose text this is (None when there were none)."""
        if self.picked is not None:
            return self.candidates[self.picked]
        return min(self.candidates, key=_rank) if self.candidates else None

    @property
    def bubbles(self) -> list[str]:
        return bubbles(self.text)


def stop_token_ids(tokenizer) -> list[int]:
    """End of turn (and the base's own ends), plus every token that opens another turn."""
    special = chat_format.special_ids(tokenizer)
    others = [special[t] for t in (chat_format.USER, chat_format.SYSTEM, chat_format.BOT, chat_format.SEP)]
    return list(dict.fromkeys(chat_format.stop_ids(tokenizer) + others))


def token_bytes(tokenizer) -> list[bytes]:
    """The UTF-8 bytes each token id adds to a reply (b"" for special tokens); cached on the tokenizer.

    Built from ``convert_ids_to_tokens`` (0.6 s for Gemma's 262k tokens, ten times faster than
    decoding each id): SentencePiece pieces with ``▁`` as a space and ``<0xNN>`` byte fallback,
    or byte-level BPE pieces mapped back to bytes, so partial characters join exactly.
    """
    n = len(tokenizer)
    cached = getattr(tokenizer, "_decoding_token_bytes", None)
    if cached is not None and len(cached) == n:
        return cached
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(tokenizer.all_special_ids) | set(chat_format.special_ids(tokenizer).values())
    byte_level = "ByteLevel" in repr(getattr(tokenizer.backend_tokenizer, "decoder", ""))
    to_byte = _byte_decoder() if byte_level else None
    out = [b"" if i in special or p is None else _piece_bytes(p, to_byte) for i, p in enumerate(pieces)]
    setattr(tokenizer, "_decoding_token_bytes", out)
    return out


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable character -> byte table (printable bytes map to themselves, the rest to 256+)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(rest)}}


def _piece_bytes(piece: str, to_byte: dict[str, int] | None) -> bytes:
    if to_byte is not None:
        return bytes(to_byte[c] for c in piece if c in to_byte)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("▁", " ").encode("utf-8")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="ignore").lstrip()


class _LogProbs:
    """Records log p(token | context) of each generated token from the raw logits (placed first)."""

    def __init__(self) -> None:
        self.prev = None
        self.picked: list[Any] = []

    def __call__(self, input_ids, scores):
        import torch

        if self.prev is not None:
            self.picked.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens):
        """Per-step log-probs, shape (rows, steps), once generation has returned."""
        import torch

        if self.prev is not None:
            self.picked.append(self.prev.gather(1, last_tokens[:, None]).squeeze(1))
            self.prev = None
        return torch.stack(self.picked, dim=1) if self.picked else None


class ReplyShaper:
    """Bans, row by row, each of the likeliest tokens after which the reply would loop, end empty or swear in a
    way the persona never does (:func:`core.reply_shape.foreign_swearing`).

    Only the ``check`` likeliest tokens of a row are tested (decoding the reply with each one
    appended and asking :func:`core.reply_shape.new_loop`), which covers top-k sampling and
    greedy decoding; a rarer token that slips through is caught by the candidate rejection.
    """

    def __init__(self, tokenizer, starts: Sequence[int], limits: Sequence[ReplyLimits], stops: Sequence[int],
                 check: Sequence[int]):
        """``starts``: per row, the column where its reply begins (its reply prefix included)."""
        import torch

        self.table = token_bytes(tokenizer)
        self.starts = list(starts)
        self.limits = list(limits)
        self.stops = torch.tensor(list(stops))
        self.ended = set(stops) | {chat_format.pad_id(tokenizer)}  # padding follows a row that was cut
        self.check = list(check)  # per row

    def __call__(self, input_ids, scores):
        gen = [row[s:] for row, s in zip(input_ids.tolist(), self.starts)]
        for r, ids in enumerate(gen):
            if any(i in self.ended for i in ids):
                continue  # this row has ended; its tokens are padding now
            self._shape_row(r, b"".join(self.table[i] for i in ids), scores)
        return scores

    def _shape_row(self, r: int, raw: bytes, scores) -> None:
        old = _text(raw)
        if not old.strip():
            scores[r, self.stops.to(scores.device)] = float("-inf")  # no empty reply
        k = min(self.check[r], scores.shape[1])
        swore = foreign_swearing(old, self.limits[r], pending=True)
        for tok in scores[r].topk(k).indices.tolist():
            piece = self.table[tok]
            if not piece:
                continue
            new = _text(raw + piece)
            if new_loop(old, new, self.limits[r]) or (not swore and foreign_swearing(new, self.limits[r], True)):
                scores[r, tok] = float("-inf")


def _left_pad(rows: Sequence[Sequence[int]], pad: int):
    import torch

    width = max(len(p) for p in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, p in enumerate(rows):
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


@dataclass(frozen=True)
class Job:
    """One prompt of a batch with its own settings and random stream; a batch may mix them freely.

    ``seed`` seeds the job's own ``torch.Generator`` (None: drawn from torch's global RNG), from
    which the job draws one number per candidate and step, so its reply does not depend on the
    other jobs in the batch. ``streamer`` (``put(token ids)``, ``end()``, like transformers'
    streamers) gets the tokens as they are chosen when the job has a single row, and with several
    the chosen first bubble at once, then the rest of the reply token by token; ``cancelled``
    returning True ends the job's rows (its consumer went away), the others go on."""

    prompt: Prompt
    params: SamplingParams = SamplingParams()
    seed: int | None = None
    streamer: Any = None
    cancelled: Callable[[], bool] | None = None


def generate(model, tokenizer, prompts: Sequence[Prompt], params: SamplingParams | None = None, *,
             seed: int | None = None) -> list[Reply]:
    """One :class:`Reply` per prompt, all with the same ``params``; prompt i uses seed ``seed + i``
    (None: seeds from torch's global RNG, so ``torch.manual_seed`` before a run reproduces it)."""
    params = params or SamplingParams()
    return decode(model, tokenizer, [Job(p, params, None if seed is None else seed + i)
                                     for i, p in enumerate(prompts)])


def decode(model, tokenizer, jobs: Sequence[Job], *, by_bubble: bool = True) -> list[Reply]:
    """One :class:`Reply` per job: ``params.rows`` candidates each, all jobs' rows in one batched
    ``generate`` (rows of different adapters routed per row), then reranked per job.

    ``by_bubble`` (bubble-by-bubble reranking): the candidates of a job are sampled only until each has
    ended its first bubble (a line, see :func:`core.reply_shape.bubbles`) or the reply; they are scored
    and checked there, one is chosen, and its bubble goes to the job's streamer at once. Then the next
    bubble is sampled the same way after the chosen one. Whether there is one is the job's first row's own
    draw (:func:`_as_drawn`, :func:`_went_on`), and which one is chosen among the candidates that add one,
    checked with the bubbles before and reranked; a later bubble is shown only when one of its candidates
    passes the checks (else the reply ends before it). A one-bubble reply is chosen exactly as by the
    whole-reply reranking (False). With one row (greedy, ``candidates`` 1) the reply streams token by
    token, in one piece."""
    jobs = [replace(j, params=j.params.clamped()) for j in jobs]
    try:
        out = _decode_rows(model, tokenizer, jobs, by_bubble)
        if by_bubble:
            newline = tuple(tokenizer("\n", add_special_tokens=False)["input_ids"])
            out = [_as_drawn(r, newline) if j.params.rows > 1 else r for j, r in zip(jobs, out)]
        shown = [0] * len(jobs)  # reply tokens of each job already streamed
        going, turn = list(range(len(jobs))), 0
        while going:  # each turn adds a token at least, and a bubble ends only below the token limit
            for i in going:
                shown[i] = _stream(jobs[i], out[i].chosen, shown[i])
            going = [i for i in going if out[i].chosen is not None and out[i].chosen.bubble]
            if going:
                turn += 1
                rest = _decode_rows(model, tokenizer, [_continued(jobs[i], out[i].chosen, turn) for i in going],
                                    by_bubble)
                for i, r in zip(going, rest):
                    out[i] = _went_on(out[i], r)
    finally:
        for j in jobs:
            if j.streamer is not None:
                j.streamer.end()
    return out


def _tensor(ids: Sequence[int]):
    import torch

    return torch.tensor(list(ids), dtype=torch.long)


def _stream(job: Job, chosen: Candidate | None, shown: int) -> int:
    """Put the chosen candidate's reply tokens after the first ``shown`` to ``job``'s streamer (its stop token
    left out) where its rows were reranked (one row streams token by token); the count shown after."""
    if job.streamer is None or job.params.rows == 1 or chosen is None:
        return shown
    ids = chosen.ids[:-1] if chosen.ended else chosen.ids
    if len(ids) > shown:
        job.streamer.put(_tensor(ids[shown:]))
    return max(shown, len(ids))


def _continued(job: Job, so_far: Candidate, turn: int) -> Job:
    """``job`` going on after the bubbles chosen so far (``so_far``'s ids), with a random stream of its own
    for each ``turn``."""
    seed = None if job.seed is None else (int(job.seed) ^ (CONTINUATION_SEED * turn)) & (2**63 - 1)
    return replace(job, prompt=replace(job.prompt, reply_prefix=tuple(so_far.ids)), seed=seed)


def _as_drawn(reply: Reply, newline: tuple[int, ...]) -> Reply:
    """``reply`` (reranked on first bubbles) going on after its first bubble or not as the job's first row
    drew it, whichever candidate was chosen: the reranking picks what the bubble says, not how many bubbles
    the persona sends (it would favour one kind of ending). A chosen candidate that ended its reply where
    the first row went on gets a line break instead of its stop token; a first row cut before either
    leaves the choice as it is."""
    chosen, first = reply.chosen, reply.candidates[0] if reply.candidates else None
    if chosen is None or first is None or chosen.bubble == first.bubble or not (first.bubble or first.ended):
        return reply
    if first.bubble and not chosen.ended:
        return reply  # cut at its token limit: nothing can follow
    after = replace(chosen, bubble=False) if not first.bubble else \
        replace(chosen, ids=tuple(chosen.ids[:-1]) + newline, ended=False, bubble=True)
    return Reply(chosen.text, _swapped(reply, after), picked=reply.candidates.index(chosen))


def _went_on(so_far: Reply, after: Reply) -> Reply:
    """``so_far`` followed by the bubble chosen among ``after``'s candidates (sampled after it), or ended
    there. Whether the reply goes on is the model's own draw: the job's first row, which alone would have
    gone on (a reranked "end here", one token against a bubble's many, would change how often the persona
    sends several messages). Which bubble: the best ranked of the candidates that add one; none (or none
    that passes the checks, where the bubbles before did) ends the reply too."""
    before = so_far.chosen
    more = [c for c in after.candidates if c.text != before.text]
    best = min(more, key=_rank) if more else None
    if best is None or after.candidates[0].text == before.text or (best.problem and not before.problem):
        return Reply(before.text, _swapped(so_far, replace(before, bubble=False)),
                     picked=so_far.candidates.index(before))
    return _joined(so_far, best)


def _joined(first: Reply, rest: Candidate) -> Reply:
    """``first``'s chosen bubbles followed by ``rest`` (what was chosen after them): the reply keeps the score
    its first bubble was chosen by."""
    bubble = first.chosen
    whole = replace(rest, logp=bubble.logp + rest.logp, logp_no_context=bubble.logp_no_context, score=bubble.score)
    return Reply(whole.text, _swapped(first, whole), picked=first.candidates.index(bubble))


def _swapped(reply: Reply, chosen: Candidate) -> tuple[Candidate, ...]:
    """``reply``'s candidates with ``chosen`` in place of its chosen one."""
    at = reply.candidates.index(reply.chosen)
    return reply.candidates[:at] + (chosen,) + reply.candidates[at + 1:]


def _decode_rows(model, tokenizer, jobs: Sequence[Job], by_bubble: bool) -> list[Reply]:
    """One batched ``generate`` of every job's rows, then reranked per job (see :func:`decode`)."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    groups = [g for g, j in enumerate(jobs) for _ in range(j.params.rows)]  # each row's job
    rows = [(j, k) for j in jobs for k in range(j.params.rows)]
    stops = stop_token_ids(tokenizer)
    pad = chat_format.pad_id(tokenizer)
    ids, mask = _left_pad([list(j.prompt.ids) + list(j.prompt.reply_prefix) for j, _ in rows], pad)
    starts = [ids.shape[1] - len(j.prompt.reply_prefix) for j, _ in rows]  # where each row's reply begins
    recorder = _LogProbs()
    batch = _Rows(jobs, rows, groups, ids.shape[1], stops, pad, token_bytes(tokenizer) if by_bubble else None)
    processors = [recorder, batch.penalise,
                  ReplyShaper(tokenizer, starts, [j.prompt.limits for j, _ in rows], stops, batch.check),
                  batch.choose]
    kw = dict(
        input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
        max_new_tokens=max(j.params.max_new_tokens - len(j.prompt.reply_prefix) for j in jobs), do_sample=False, top_k=None, top_p=None,
        temperature=None, repetition_penalty=1.0, eos_token_id=stops, pad_token_id=pad,
        logits_processor=LogitsProcessorList(processors), stopping_criteria=StoppingCriteriaList([batch.done]),
    )
    with torch.inference_mode(), narrow_output_layer(model):
        with _routed(model, _adapter_names([j.prompt for j in jobs])):
            cache = shared_prefill(model, ids, mask, groups)
        with _routed(model, _adapter_names([j.prompt for j, _ in rows])):
            seqs = model.generate(**kw, **({} if cache is None else {cache_name(model): cache}))
    gen = seqs[:, ids.shape[1]:].cpu()
    logps = recorder.finish(seqs[:, -1])
    cands = _candidates(model, tokenizer, rows, gen, logps, stops, batch.bubble)
    out, at = [], 0
    for j in jobs:
        out.append(_choose(cands[at:at + j.params.rows]))
        at += j.params.rows
    return out


def _output_linear(model):
    """The ``nn.Linear`` that computes the logits, or None.

    PEFT wraps it: a LoRA layer keeps it as ``base_layer``; the tied new-token rows of an adapter
    (``TrainableTokensWrapper``) as ``token_adapter.base_layer``, which their forward calls while the
    rows are merged in place (what the chat engine does)."""
    import torch

    head = model.get_output_embeddings()
    while head is not None and not isinstance(head, torch.nn.Linear):
        head = getattr(head, "token_adapter", None) or getattr(head, "base_layer", None)
    return head


@contextmanager
def narrow_output_layer(model, max_positions: int = NARROW_POSITIONS) -> Iterator[None]:
    """On the CPU, compute the output layer as ``W @ h.T`` while at most ``max_positions`` positions
    need logits (a decoding step: one per row).

    ``F.linear`` (``h @ W.T``) with a few rows and Gemma's 262k x 640 matrix takes a slow matrix
    product path (2 threads: 82 ms for 4 rows, 42 ms for one), while ``W @ h.T`` reads the matrix once
    for all rows (17 ms for 4). One row is computed as two equal columns: a matrix-vector product takes
    a single-threaded path (42 ms), two columns the matrix-matrix one (16 ms). The sums are the same up
    to float rounding."""
    head = _output_linear(model)
    if head is None or head.weight.device.type != "cpu":
        yield
        return
    plain = head.__dict__.get("forward")

    def forward(x):
        flat = x.reshape(-1, x.shape[-1])
        n = flat.shape[0]
        if n > max_positions:
            return (plain or type(head).forward.__get__(head))(x)
        out = (head.weight @ (flat.repeat(2, 1) if n == 1 else flat).T).T[:n]
        out = out + head.bias if head.bias is not None else out.contiguous()
        return out.reshape(*x.shape[:-1], out.shape[-1])

    head.forward = forward
    try:
        yield
    finally:
        if plain is None:
            del head.forward
        else:
            head.forward = plain


def shared_prefill(model, ids, mask, groups: Sequence[int]):
    """The KV cache of every row's prompt but its last token (``generate`` feeds that one), computed
    once per job and repeated to the job's rows: a job's candidates share one prompt, so prefilling
    them as identical rows would repeat the same work ``candidates`` times. None for one-token prompts.

    ``ids``/``mask``: the batch's left-padded prompts (a job's rows adjacent); ``groups``: each row's
    job. Positions follow the attention mask as ``generate`` numbers them (left padding excluded)."""
    import torch

    if ids.shape[1] < 2:
        return None
    first = [list(groups).index(g) for g in sorted(set(groups))]  # one row per job
    u_ids, u_mask = ids[first, :-1], mask[first, :-1]
    pos = _positions(u_mask)
    dev = model.device
    out = model(input_ids=u_ids.to(dev), attention_mask=u_mask.to(dev), position_ids=pos.to(dev), use_cache=True,
                logits_to_keep=1)
    cache = out[cache_name(model)]
    cache.batch_select_indices(torch.tensor(list(groups), device=dev))
    return cache


def _routed(model, names: list[str] | None):
    from contextlib import nullcontext

    from chatbot.routing import per_row_adapters

    return nullcontext() if names is None else per_row_adapters(model, names)


class _Rows:
    """Per-row settings of a (mixed) batch: repetition penalty, token choice, stopping, streaming.

    Every operation is per row (elementwise or on the row alone), and each job draws from its
    own generator, so a row's tokens are the same in any batch as alone."""

    def __init__(self, jobs: Sequence[Job], rows: Sequence[tuple[Job, int]], groups: Sequence[int], width: int,
                 stops: Sequence[int], pad: int, table: Sequence[bytes] | None = None):
        """``table`` (:func:`token_bytes`): stop the rows of a job with several candidates at the end of
        their first bubble (None: at the end of the reply)."""
        import torch

        self.rows, self.width, self.stops, self.pad = list(rows), width, set(stops), pad
        self.groups = list(groups)
        self.gens = [torch.Generator().manual_seed(_seed(j.seed)) for j in jobs]
        self.jobs = list(jobs)
        self.check = [8 if j.params.greedy else (j.params.top_k or 48) + 16 for j, _ in rows]
        self.penalty = torch.tensor([[j.params.repetition_penalty] for j, _ in rows])
        self.first = torch.tensor([[j.prompt.ids[0]] for j, _ in rows])
        self.real = _left_pad([[1] * (len(j.prompt.ids) + len(j.prompt.reply_prefix)) for j, _ in rows],
                              0)[0].bool()  # not left padding
        self.laggards = Laggards(self.groups)
        self.ended = [False] * len(rows)
        self.finished: list[int | None] = [None] * len(rows)  # the step a row ended its reply or first bubble
        self.table = table
        self.said = [b""] * len(rows)  # each row's reply so far, while it may end at a bubble
        self.bubble = [False] * len(rows)  # the row stopped at the end of its first bubble
        self.before = [len(j.prompt.reply_prefix) for j, _ in rows]  # reply tokens chosen before this batch

    def penalise(self, input_ids, scores):
        """transformers' repetition penalty per row, over the row's own tokens (its padding excluded)."""
        import torch

        real = torch.cat([self.real, torch.ones_like(input_ids[:, self.width:], dtype=torch.bool).cpu()], 1)
        seen = torch.where(real.to(input_ids.device), input_ids, self.first.to(input_ids.device))
        picked = scores.gather(1, seen)
        pen = self.penalty.to(scores)
        return scores.scatter_(1, seen, torch.where(picked < 0, picked * pen, picked / pen))  # generate's copy

    def choose(self, input_ids, scores):
        """Each row's next token (greedy, or one draw from its job's generator) as a one-hot score."""
        import torch

        draws = [torch.rand(j.params.rows, generator=g) for j, g in zip(self.jobs, self.gens)]
        chosen = []
        for r, (job, k) in enumerate(self.rows):
            p = job.params
            if self.ended[r]:
                chosen.append(self.pad)
            elif p.greedy:
                chosen.append(int(scores[r].argmax()))
            else:
                idx, probs = row_distribution(scores[r], p.temperature, p.top_k, p.top_p)
                at = int(torch.searchsorted(probs.cumsum(0), float(draws[self.groups[r]][k])))  # inverse CDF
                chosen.append(int(idx[min(at, len(idx) - 1)]))
            if job.streamer is not None and p.rows == 1 and not self.ended[r]:
                job.streamer.put(torch.tensor([chosen[-1]]))
        scores.fill_(float("-inf"))  # in place: generate's own copy of the logits
        scores[torch.arange(len(chosen)), torch.tensor(chosen)] = 0.0
        return scores

    def done(self, input_ids, scores, **kwargs):
        """StoppingCriteria: per row, a stop token, its own token limit, a laggard, or a cancelled job."""
        import torch

        gen = input_ids[:, self.width:]
        step = gen.shape[1]
        last = gen[:, -1].tolist()
        for r, (job, _) in enumerate(self.rows):
            full = step + self.before[r] >= job.params.max_new_tokens
            if not self.ended[r] and self.table is not None and job.params.rows > 1:
                self.bubble[r] = self._bubble_ends(r, last[r]) and not full and last[r] not in self.stops
            if self.finished[r] is None and (self.bubble[r] or last[r] in self.stops):
                self.finished[r] = step
            self.ended[r] = self.ended[r] or self.finished[r] is not None or full or \
                bool(job.cancelled and job.cancelled())
        lag = self.laggards(step, self.finished)
        self.ended = [e or g for e, g in zip(self.ended, lag)]
        return torch.tensor(self.ended, device=input_ids.device)

    def _bubble_ends(self, r: int, token: int) -> bool:
        """Whether ``token`` ends row ``r``'s first bubble: a line break after some text."""
        piece = self.table[token]
        done = b"\n" in piece and bool((self.said[r] + piece.split(b"\n")[0]).strip())
        self.said[r] += piece
        return done


def _seed(seed: int | None) -> int:
    """A job's generator seed: any int (masked into torch's range), or one drawn from the global RNG."""
    import torch

    return int(torch.randint(0, 2**62, ())) if seed is None else int(seed) & (2**63 - 1)


def row_distribution(logits, temperature: float, top_k: int, top_p: float):
    """(token ids, probabilities) a row samples from: temperature, then top-k, then top-p within
    the k (what transformers' three warpers keep), without sorting the whole vocabulary when top-k
    is set (262k entries for Gemma: 26 ms a row on a CPU, per step)."""
    import torch

    k = top_k if 0 < top_k < logits.numel() else logits.numel()
    vals, idx = logits.topk(k)  # sorted, highest first; a temperature keeps the order
    vals = vals.float() / temperature
    probs = torch.softmax(vals, dim=-1)
    drop = (probs.cumsum(-1) - probs) >= top_p  # the mass above a token already reaches top-p
    drop[0] = False
    probs = torch.softmax(vals.masked_fill(drop, float("-inf")), dim=-1)
    return idx, probs


class Laggards:
    """Per-row stop for a candidate that rambles on after a sibling (same job) has finished.

    The batch runs until its last row ends, so one long candidate holds back the reply (and, with
    first-bubble reranking, the first bubble): a row still going at ``LAGGARD_FACTOR`` times the length
    of its job's shortest finished candidate (its reply or its first bubble) plus ``LAGGARD_SLACK``
    tokens is cut (and ranked as ``unfinished``). A row that ended at its first token (after a bubble: "the
    reply ends here") sets no pace. ``groups``: the job index of each row."""

    def __init__(self, groups: Sequence[int]):
        self.groups = list(groups)

    def __call__(self, step: int, finished: Sequence[int | None]) -> list[bool]:
        """Which rows to cut at ``step`` tokens; ``finished``: the step each row ended at (None: going on)."""
        shortest: dict[int, int] = {}
        for g, f in zip(self.groups, finished):
            if f is not None and f > 1:
                shortest[g] = min(f, shortest.get(g, f))
        return [f is None and g in shortest and step >= shortest[g] * LAGGARD_FACTOR + LAGGARD_SLACK
                for g, f in zip(self.groups, finished)]


def _adapter_names(rows: Sequence[Prompt]) -> list[str] | None:
    if all(p.adapter is None for p in rows):
        return None
    return [p.adapter or BASE_ADAPTER for p in rows]


def _reply_tokens(row, stops: Sequence[int], pad: int) -> tuple[list[int], int]:
    """(reply ids without the stop token, scored token count including it); padding follows a cut row."""
    ids = row.tolist()
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i], i + 1
        if t == pad:
            return ids[:i], i
    return ids, len(ids)


def _candidates(model, tokenizer, rows: Sequence[tuple[Job, int]], gen, logps, stops,
                bubble: Sequence[bool]) -> list[Candidate]:
    """Each row's candidate: its reply (after its job's reply prefix) scored, checked and ranked.

    ``log p(reply | no context)`` is computed only where it can change the choice: for a job's
    acceptable candidates (no problem) when it has two or more of them, once per distinct reply."""
    parts = [_reply_tokens(g, stops, chat_format.pad_id(tokenizer)) for g in gen]
    logp = [float(logps[i, :k].sum()) if logps is not None and k else 0.0 for i, (_, k) in enumerate(parts)]
    scored = [gen[i, :k].tolist() for i, (_, k) in enumerate(parts)]
    texts, why = [], []
    for (job, _), (ids, k), sc, bub in zip(rows, parts, scored, bubble):
        before = list(job.prompt.reply_prefix)
        texts.append(tokenizer.decode(before + ids, skip_special_tokens=True).strip())
        w = problem(texts[-1], job.prompt.sources, job.prompt.limits)
        if w is None and len(sc) == len(ids) and not bub and len(before) + len(ids) < job.params.max_new_tokens:
            w = "unfinished"  # cut by Laggards: no stop token, under its token limit
        why.append(w)
    need = _reranked(rows, why)
    base = _no_context(model, tokenizer, rows, scored, need)
    back = _backward(model, tokenizer, rows, texts, need)
    out = []
    for (job, _), (ids, k), lp, lb, bw, sc, bub, text, w in zip(rows, parts, logp, base, back, scored, bubble, texts,
                                                              why):
        before = list(job.prompt.reply_prefix)
        score = mmi_score(lp, lb or 0.0, k, job.params.mmi_lambda) + job.params.backward_weight * (bw or 0.0)
        out.append(Candidate(text, len(before) + k, tuple(before + sc), lp, lb, score, w, len(sc) > len(ids), bub))
    return out


def _reranked(rows: Sequence[tuple[Job, int]], why: Sequence[str | None]) -> list[int]:
    """The rows whose score can change the choice: a job's acceptable candidates (no problem) when it has two
    or more of them."""
    ok: dict[int, list[int]] = {}
    for i, (job, _) in enumerate(rows):
        if job.params.rows > 1 and why[i] is None:
            ok.setdefault(id(job), []).append(i)
    return [i for group in ok.values() if len(group) > 1 for i in group]


def has_backward(model) -> bool:
    """Whether ``model`` holds the backward adapter (:data:`core.models.BACKWARD_ADAPTER`)."""
    return BACKWARD_ADAPTER in (getattr(model, "peft_config", None) or {})


def _backward(model, tokenizer, rows: Sequence[tuple[Job, int]], texts: Sequence[str],
              need: Sequence[int]) -> list[float | None]:
    """log p(message | reply) per message token by the backward adapter, for the reranked rows (``need``)
    whose job weighs it and whose prompt names its message; None elsewhere (or without the adapter)."""
    out: list[float | None] = [None] * len(rows)
    todo = [i for i in need if rows[i][0].params.backward_weight > 0 and rows[i][0].prompt.message is not None]
    if not todo or not has_backward(model):
        return out
    key = {i: (*rows[i][0].prompt.message, texts[i]) for i in todo}  # (speaker, message, reply): scored once
    renders = {k: chat_format.render_backward(tokenizer, k[0], k[2], k[1]) for k in dict.fromkeys(key.values())}
    got = reply_logp(model, tokenizer, [r.input_ids[:r.reply_start] for r in renders.values()],
                     [r.input_ids[r.reply_start:] for r in renders.values()], [BACKWARD_ADAPTER] * len(renders))
    per_token = {k: lp / max(len(r.input_ids) - r.reply_start, 1) for (k, r), lp in zip(renders.items(), got)}
    for i in todo:
        out[i] = per_token[key[i]]
    return out


def mmi_score(logp: float, logp_no_context: float, tokens: int, mmi_lambda: float) -> float:
    """The reranking score (module docstring): ``(log p(reply | context) - mmi_lambda * log p(reply | no
    context)) / tokens``; the evaluation's next-reply selection reports it too."""
    return (logp - mmi_lambda * logp_no_context) / max(tokens, 1)


def _no_context(model, tokenizer, rows: Sequence[tuple[Job, int]], scored: Sequence[list[int]],
                reranked: Sequence[int]) -> list[float | None]:
    """log p(reply | no context) of the reranked rows (:func:`_reranked`) whose job weighs it."""
    need = [i for i in reranked if rows[i][0].params.mmi_lambda > 0]
    base: list[float | None] = [None] * len(rows)
    if need:
        first: dict[tuple, int] = {}  # (job, reply) -> the row scored for it
        for i in need:
            first.setdefault((id(rows[i][0]), tuple(scored[i])), i)
        uniq = list(first.values())
        got = dict(zip(uniq, no_context_logp(model, tokenizer, [rows[i][0].prompt for i in uniq],
                                             [scored[i] for i in uniq])))
        for i in need:
            base[i] = got[first[(id(rows[i][0]), tuple(scored[i]))]]
    return base


def no_context_logp(model, tokenizer, rows: Sequence[Prompt], replies: Sequence[Sequence[int]]) -> list[float]:
    """log p(reply | the instruction alone) of each row's reply ids (after its reply prefix, which is
    given in both), in one batched forward; the instruction's own forward is kept between replies for a model
    given to :func:`keep_prefixes`."""
    return reply_logp(model, tokenizer, [list(p.no_context_ids) + list(p.reply_prefix) for p in rows], replies,
                      _adapter_names(rows), reuse=True)


def keep_prefixes(model) -> None:
    """Keep, for ``model``, the forward of each no-context prefix between replies (its KV cache and the logits
    after it, :data:`PREFIX_CACHE_SIZE` most recent): a persona's instruction alone is the same prefix for every
    first bubble it reranks, so it runs once (about 0.15 s of each reply on the default model, 2 CPU cores).
    Only for a model whose weights no longer change (the chat engine's, once its adapters are loaded)."""
    _PREFIX_CACHES.setdefault(model, OrderedDict())


def _active(model) -> tuple:
    """The adapters active on ``model`` (a PeftModel's property; a plain transformers model's method, which raises
    ValueError when none is loaded)."""
    active = getattr(model, "active_adapters", None)
    if callable(active):
        try:
            active = active()
        except ValueError:
            active = None
    return tuple(active or ())


def reply_logp(model, tokenizer, prefixes: Sequence[Sequence[int]], replies: Sequence[Sequence[int]],
               adapters: Sequence[str] | None = None, reuse: bool = False) -> list[float]:
    """Summed log p(reply ids | prefix ids) per row (0 for an empty reply); ``adapters``: each row's
    PEFT adapter in a mixed batch (None: whatever is active).

    Rows with the same prefix share its forward: each distinct prefix runs once (a left-padded
    batch) and its KV cache is repeated to its rows, then the replies run on top of it (right-padded),
    all but their last token (whose output predicts nothing scored). A reply's candidates share one
    instruction, so the instruction's ~50 tokens go through the model once instead of once per candidate.
    Logits are computed only at positions that predict a reply token: the output layer is most of the
    cost of a position with Gemma's 262k-token vocabulary. ``reuse``: where every row has one prefix and
    ``model`` was given to :func:`keep_prefixes`, that prefix's forward is taken from there (and kept)."""
    import torch

    out = [0.0] * len(replies)
    rows = [i for i, r in enumerate(replies) if len(r)]
    if not rows:
        return out
    index: dict[tuple, int] = {}  # (adapter, prefix) -> its row in the prefix batch
    sel = torch.tensor([index.setdefault((adapters and adapters[i], tuple(prefixes[i])), len(index)) for i in rows])
    pad, dev = chat_format.pad_id(tokenizer), model.device
    p_ids, p_mask = _left_pad([p for _, p in index], pad)
    reps = [list(replies[i]) for i in rows]
    name = cache_name(model)
    kept = _PREFIX_CACHES.get(model) if reuse and len(index) == 1 else None
    key = (next(iter(index)), adapters is None and _active(model)) if kept is not None else None
    with torch.inference_mode(), narrow_output_layer(model):
        if kept is not None and key in kept:
            kept.move_to_end(key)
            cache, head_logp = copy.deepcopy(kept[key][0]), kept[key][1]
        else:
            with _routed(model, adapters and [a for a, _ in index]):
                head = model(input_ids=p_ids.to(dev), attention_mask=p_mask.to(dev),
                             position_ids=_positions(p_mask).to(dev), use_cache=True, logits_to_keep=1)
            cache, head_logp = head[name], torch.log_softmax(head.logits[:, -1].float(), dim=-1)
            if kept is not None:
                kept[key] = (copy.deepcopy(cache), head_logp)
                while len(kept) > PREFIX_CACHE_SIZE:
                    kept.popitem(last=False)
        first = head_logp[sel.to(dev)]
        logp = first.gather(1, torch.tensor([[r[0]] for r in reps], device=dev))[:, 0].cpu()
        width = max(len(r) for r in reps) - 1
        if width > 0:
            t_ids = torch.full((len(reps), width), pad, dtype=torch.long)
            t_mask = torch.zeros((len(reps), width), dtype=torch.long)
            for b, r in enumerate(reps):
                t_ids[b, :len(r) - 1], t_mask[b, :len(r) - 1] = torch.tensor(r[:-1]), 1
            cache.batch_select_indices(sel.to(dev))
            mask = torch.cat([p_mask[sel], t_mask], dim=1)
            pos = p_mask.sum(1)[sel, None] + torch.arange(width)
            keep = t_mask.bool()
            packed = _packed_logits() and adapters is None  # per-row adapter routing needs (rows, positions)
            with _routed(model, adapters and [adapters[i] for i in rows]):
                logits = model(input_ids=t_ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                               logits_to_keep=keep.to(dev) if packed else 0, **{name: cache}).logits
            logits = logits if packed else logits[keep.to(dev)]  # (reply tokens but the first, vocab)
            target = torch.tensor([t for r in reps for t in r[1:]], device=dev)
            tail = torch.log_softmax(logits.float(), dim=-1).gather(1, target[:, None])[:, 0].cpu()
            logp.index_add_(0, keep.nonzero()[:, 0], tail)
    for i, lp in zip(rows, logp.tolist()):
        out[i] = lp
    return out


@lru_cache(maxsize=1)
def _packed_logits() -> bool:
    """Whether this transformers takes a boolean ``logits_to_keep`` mask (logits of the True positions
    only, flattened); older 5.x releases take an int or positions shared by every row. Asked on first
    use: importing this module stays free of torch and transformers."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    return True


def _positions(mask):
    """Position ids of a left-padded batch as ``generate`` numbers them (padding excluded)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _rank(c: Candidate) -> tuple[int, float]:
    kind = c.problem.split(":")[0] if c.problem else None
    return (_RANK.get(kind, 2), -c.score)


def _choose(cands: Sequence[Candidate]) -> Reply:
    best = min(cands, key=_rank)
    return Reply(best.text, tuple(cands))

