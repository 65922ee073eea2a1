"""Mixed-persona batching: concurrent replies for different personas in one forward pass per token.

    batcher = Batcher(engine)                      # one worker thread, shares the engine's model
    stream = batcher.submit(history, "minji", GenerationParams(), seed=7)
    for text in stream:                            # the growing reply, like Engine.generate
        ...
    stream.finish_reason, stream.completion_tokens

Requests that arrive while a batch runs (or within ``window_s`` of the first one) are served
together: one ``generate`` call over a left-padded batch whose rows carry their own persona.
LoRA rows are routed by PEFT's per-sample ``adapter_names``; the personas' new-token rows
(PEFT TrainableTokens, input embedding and tied output layer) are written per row by forward
hooks, since PEFT's own mixed-batch path for them rebuilds the whole embedding matrix per
adapter and forward pass.

Sampling is done per row by :class:`RowSampler` with the row's own seeded ``torch.Generator``
(repetition penalty, temperature, top-k, top-p as in ``transformers``), then handed to
``generate`` as a one-hot choice: each row draws exactly one number per token from its own
generator, so a reply does not depend on what else is in the batch (same seed, same reply as
alone, up to float rounding differences of batched matrix products, none on the CPU tests).
"""
from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterator, Sequence

from chatbot.engine import Engine, GenerationParams

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # PEFT's adapter_names entry for "no adapter"
_END = object()  # end of a row's token stream


@dataclass
class _Row:
    """One reply being generated: its prompt, settings, RNG and the tokens chosen so far."""

    ids: list[int]
    persona: str | None
    params: GenerationParams
    seed: int
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (end-of-turn token), "length", "cancelled"
    error: BaseException | None = None
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def end(self, reason: str) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
            self.events.put(_END)


class Stream:
    """The reply to one submitted request; iterate for the growing text (cumulative, like the engine)."""

    def __init__(self, row: _Row, tokenizer: Any, stop_ids: Sequence[int]):
        self._row, self._tok, self._stop = row, tokenizer, set(stop_ids)

    @property
    def prompt_tokens(self) -> int:
        return len(self._row.ids)

    @property
    def completion_tokens(self) -> int:
        """Generated tokens, the end-of-turn token included."""
        return len(self._row.tokens)

    @property
    def finish_reason(self) -> str | None:
        return self._row.finish_reason

    @property
    def token_ids(self) -> list[int]:
        return list(self._row.tokens)

    def cancel(self) -> None:
        """Stop generating this row (the client went away); the others go on."""
        self._row.cancelled.set()

    def __iter__(self) -> Iterator[str]:
        text = ""
        try:
            while True:
                item = self._row.events.get()
                if item is _END:
                    break
                new = self._tok.decode([t for t in self._row.tokens if t not in self._stop],
                                       skip_special_tokens=True)
                # a byte-fallback character split over tokens decodes as U+FFFD until complete
                if new != text and not new.endswith("\ufffd") and new.strip():
                    text = new
                    yield text.lstrip()  # SentencePiece may open the reply with a space
        finally:
            self.cancel()
        if self._row.error is not None:
            raise self._row.error
        final = self._tok.decode([t for t in self._row.tokens if t not in self._stop], skip_special_tokens=True)
        if final != text and final.strip():
            yield final.lstrip()

    def text(self) -> str:
        """The whole reply at once."""
        out = ""
        for out in self:
            pass
        return out


class RowSampler:
    """A ``generate`` logits processor choosing each row's next token with the row's own generator.

    Returns scores that are -inf except at the chosen token, so greedy ``generate`` takes it.
    Also the stopping criterion: a row is done at an end-of-turn token, its own token limit,
    or when cancelled.
    """

    def __init__(self, rows: Sequence[_Row], stop_ids: Sequence[int], pad_id: int):
        import torch

        self.rows, self.stop_ids, self.pad_id = list(rows), set(stop_ids), pad_id
        self.gens = [torch.Generator().manual_seed(r.seed) for r in rows]
        self.penalty = torch.tensor([[r.params.repetition_penalty] for r in rows])
        self.seen = None  # [rows, vocab] bool: prompt and reply tokens, penalised as in transformers

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.float()
        if self.seen is None:
            self.seen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
            for i, row in enumerate(self.rows):
                self.seen[i, row.ids] = True
            self.penalty = self.penalty.to(scores.device)
        # elementwise and per-row operations only, so a row's numbers do not depend on the batch
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        scores = torch.where(self.seen, penalised, scores)
        choice = torch.argmax(scores, dim=-1)
        out = torch.full_like(scores, float("-inf"))
        for i, row in enumerate(self.rows):
            if row.finish_reason is not None:
                out[i, self.pad_id] = 0.0
                continue
            tok = int(choice[i]) if row.params.temperature <= 0 else self._sample(i, scores[i], row.params)
            out[i, tok] = 0.0
            self.seen[i, tok] = True
            self._record(row, tok)
        return out

    def _sample(self, i: int, logits, p: GenerationParams) -> int:
        """Temperature, then top-k, then top-p (nucleus), then one draw from the row's generator."""
        import torch

        logits = logits / p.temperature
        if 0 < p.top_k < logits.numel():
            vals, idx = torch.topk(logits, p.top_k)  # sorted, descending
        else:
            vals, idx = torch.sort(logits, descending=True)
        if p.top_p < 1.0:
            probs = vals.softmax(-1)
            keep = (probs.cumsum(-1) - probs) < p.top_p  # the likeliest tokens until top_p of the mass
            vals = vals.masked_fill(~keep, float("-inf"))
        k = torch.multinomial(vals.softmax(-1).cpu(), 1, generator=self.gens[i])
        return int(idx[int(k)])

    def _record(self, row: _Row, tok: int) -> None:
        row.tokens.append(tok)
        row.events.put(tok)
        if tok in self.stop_ids:
            row.end("stop")
        elif len(row.tokens) >= row.params.max_new_tokens:
            row.end("length")

    def done(self, input_ids, scores, **kwargs):
        """StoppingCriteria: per-row finished flags (cancelled rows end here too)."""
        import torch

        for row in self.rows:
            if row.cancelled.is_set():
                row.end("cancelled")
        return torch.tensor([r.finish_reason is not None for r in self.rows], device=input_ids.device)


def _route_lora(model, adapter_names: list[str]) -> list:
    """Pre-forward hooks giving every LoRA layer the per-row ``adapter_names`` (PEFT's mixed batch)."""
    from peft.tuners.lora import LoraLayer

    def inject(module, args, kwargs):
        kwargs["adapter_names"] = adapter_names
        return args, kwargs

    return [m.register_forward_pre_hook(inject, with_kwargs=True) for m in model.modules() if isinstance(m, LoraLayer)]


def _row_values(layer: Any, adapter_names: list[str]):
    """(new-token ids, per-row values [rows, ids, width]) of a TrainableTokens layer for this batch."""
    import torch

    names = [n for n in layer.token_indices]
    ids = layer.token_indices[names[0]]
    if any(layer.token_indices[n] != ids for n in names):
        raise ValueError("persona adapters with different new-token ids cannot share a batch")
    table = {BASE_ADAPTER: layer.trainable_tokens_original[names[0]]}
    table.update({n: layer.trainable_tokens_delta[n] for n in names})
    return ids, torch.stack([table[n] for n in adapter_names])


def _route_token_rows(layers: Sequence[Any], adapter_names: list[str]) -> list:
    """Forward hooks writing each row's persona's new-token rows (embedding) or columns (output layer)."""
    import torch

    def embedding_hook(ids_t, values, layer, args, output):
        hit = args[0].unsqueeze(-1) == ids_t  # [rows, positions, new ids]
        if bool(hit.any()):
            scale = layer._get_embed_scale()
            rows = torch.einsum("btk,bkh->bth", hit.to(values), values)
            rows = rows * scale.to(rows) if scale is not None else rows
            output = torch.where(hit.any(-1, keepdim=True), rows.to(output.dtype), output)
        return output

    def output_hook(ids_t, values, layer, args, output):
        output[..., ids_t] = torch.einsum("bth,bkh->btk", args[0], values.to(args[0])).to(output.dtype)
        return output

    hooks = []
    for layer in layers:
        ids, values = _row_values(layer, adapter_names)
        ids_t = torch.tensor(ids, device=values.device)
        if isinstance(layer.base_layer, torch.nn.Embedding):
            hooks.append(layer.register_forward_hook(partial(embedding_hook, ids_t, values)))
        elif isinstance(layer.base_layer, torch.nn.Linear):
            hooks.append(layer.register_forward_hook(partial(output_hook, ids_t, values)))
    return hooks


class Batcher:
    """A request queue and one worker thread running mixed-persona batched ``generate`` calls."""

    def __init__(self, engine: Engine, max_batch: int = 8, window_s: float = 0.05):
        self.engine, self.max_batch, self.window_s = engine, max(1, int(max_batch)), window_s
        self.batch_sizes: list[int] = []  # rows per generate call, for tests and benches
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._worker.start()

    def submit(self, history: Sequence[dict], persona: str | None, params: GenerationParams | None = None,
               seed: int | None = None) -> Stream:
        """Queue a reply; raises like :meth:`Engine.generate` (KeyError, MessageTooLong) before queueing."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        ids, params = self.engine.prepare(history, persona, params)
        # any int is a valid seed; masked into torch.Generator's range so one request cannot fail a batch
        row = _Row(ids, persona, params, secrets.randbits(63) if seed is None else int(seed) & (2**63 - 1))
        self._queue.put(row)
        return Stream(row, self.engine.tokenizer, self.engine.stop_ids)

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout=30)

    # ---- worker ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            rows = [first]
            deadline = time.monotonic() + self.window_s
            while len(rows) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                rows.append(nxt)
            self._run(rows)

    def _run(self, rows: list[_Row]) -> None:
        try:
            self.batch_sizes.append(len(rows))
            self._ensure_rows_pinned(rows)
            with self.engine.exclusive():
                self._generate(rows)
        except BaseException as e:  # surfaced in every waiting consumer
            log.exception("batched generation failed")
            for row in rows:
                row.error = e
        for row in rows:
            row.end("length" if row.error is None else "error")

    def _ensure_rows_pinned(self, rows: list[_Row]) -> None:
        # the token layers are fast only with some persona's rows written in place (see Engine.swap);
        # which persona does not matter: the hooks overwrite every row's new tokens
        if any(not layer.merged for layer in self.engine.token_layers):
            self.engine.swap(next((r.persona for r in rows if r.persona), None) or self.engine.personas[0].name)

    def _generate(self, rows: list[_Row]) -> None:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        eng = self.engine
        width = max(len(r.ids) for r in rows)
        dev = eng.model.device
        input_ids = torch.tensor([[eng.pad_id] * (width - len(r.ids)) + r.ids for r in rows], device=dev)
        mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in rows], device=dev)
        names = [r.persona or BASE_ADAPTER for r in rows]
        sampler = RowSampler(rows, eng.stop_ids, eng.pad_id)
        config = GenerationConfig(
            max_new_tokens=max(r.params.max_new_tokens for r in rows), do_sample=False,
            eos_token_id=eng.stop_ids, pad_token_id=eng.pad_id,
        )
        hooks = _route_lora(eng.model, names) + _route_token_rows(eng.token_layers, names)
        try:
            with torch.inference_mode():
                eng.model.generate(
                    input_ids=input_ids, attention_mask=mask, generation_config=config,
                    logits_processor=LogitsProcessorList([sampler]),
                    stopping_criteria=StoppingCriteriaList([sampler.done]),
                )
        finally:
            for h in hooks:
                h.remove()
