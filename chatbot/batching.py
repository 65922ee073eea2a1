"""Mixed-persona batching: concurrent replies for different personas in one forward pass per token.

    batcher = Batcher(engine)                      # one worker thread, shares the engine's model
    stream = batcher.submit(history, "minji", GenerationParams(), seed=7)
    for text in stream:                            # the growing reply, like Engine.generate
        ...
    stream.finish_reason, stream.completion_tokens

Requests that arrive while a batch runs (or within ``window_s`` of the first one) are served
together: one :func:`chatbot.decoding.decode` call, the chat's own decoding (candidates,
reranking, loop and echo rejection), whose rows carry their own persona (routed per row by
:mod:`chatbot.routing`), settings and seeded generator. So a reply is the web chat's reply
(``Engine.reply``) for the same settings and seed, in any batch.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Iterator, Sequence

from chatbot import decoding, model_thread
from chatbot.engine import Engine, GenerationParams
from chatbot.routing import BASE_ADAPTER

log = logging.getLogger(__name__)

_END = object()  # end of a request's token stream


class _Request:
    """One reply being generated: its decoding job, the tokens streamed so far, the final reply.

    Also the job's streamer (``put``/``end``): a single-candidate job's tokens arrive as chosen."""

    def __init__(self, prompt: decoding.Prompt, params: GenerationParams, seed: int | None):
        self.cancelled = threading.Event()
        self.job = decoding.Job(prompt, params, seed, self, self.cancelled.is_set)
        self.tokens: list[int] = []
        self.reply: decoding.Reply | None = None
        self.error: BaseException | None = None
        self.events: queue.Queue = queue.Queue()

    def put(self, value) -> None:
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())
        self.events.put(None)

    def end(self) -> None:
        """Called by decode; the request ends in :meth:`finish`, once its reply is chosen."""

    def finish(self, reply: decoding.Reply | None, error: BaseException | None = None) -> None:
        self.reply, self.error = reply, error
        self.events.put(_END)


class Stream:
    """The reply to one submitted request; iterate for the growing text (cumulative, like the engine)."""

    def __init__(self, request: _Request, tokenizer: Any, stop_ids: Sequence[int]):
        self._req, self._tok, self._stop = request, tokenizer, set(stop_ids)

    @property
    def prompt_tokens(self) -> int:
        return len(self._req.job.prompt.ids)

    @property
    def token_ids(self) -> list[int]:
        """The chosen reply's tokens, its stop token included (the streamed ones until it is chosen)."""
        chosen = self._req.reply.chosen if self._req.reply else None
        return list(chosen.ids) if chosen else list(self._req.tokens)

    @property
    def completion_tokens(self) -> int:
        """Generated tokens of the chosen reply, the end-of-turn token included."""
        return len(self.token_ids)

    @property
    def finish_reason(self) -> str | None:
        """"stop" (a stop token), "length" (the token limit), "error", or None while generating."""
        if self._req.error is not None:
            return "error"
        chosen = self._req.reply.chosen if self._req.reply else None
        return None if chosen is None else "stop" if chosen.ended else "length"

    def cancel(self) -> None:
        """Stop generating this request (the client went away); the others go on."""
        self._req.cancelled.set()

    def __iter__(self) -> Iterator[str]:
        text = ""
        try:
            while self._req.events.get() is not _END:
                new = self._tok.decode([t for t in self._req.tokens if t not in self._stop],
                                       skip_special_tokens=True).strip()
                # a byte-fallback character split over tokens decodes as U+FFFD until complete
                if new != text and not new.endswith("\ufffd") and new:
                    text = new
                    yield text
        finally:
            self.cancel()
        if self._req.error is not None:
            raise self._req.error
        if self._req.reply is not None and self._req.reply.text != text and self._req.reply.text:
            yield self._req.reply.text

    def text(self) -> str:
        """The whole reply at once."""
        out = ""
        for out in self:
            pass
        return out


class Batcher:
    """A request queue and one worker thread running mixed-persona batched decoding calls."""

    def __init__(self, engine: Engine, max_batch: int = 8, window_s: float = 0.05):
        self.engine, self.max_batch, self.window_s = engine, max(1, int(max_batch)), window_s
        self.batch_sizes: list[int] = []  # requests per decode call, for tests and benches
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._worker.start()

    def submit(self, history: Sequence[dict], persona: str | None, params: GenerationParams | None = None,
               seed: int | None = None) -> Stream:
        """Queue a reply; raises like :meth:`Engine.generate` (KeyError, MessageTooLong) before queueing."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        params = self.engine.checked(history, params)
        prompt = self.engine.prompt(history, persona, params.max_new_tokens, adapter=persona or BASE_ADAPTER)
        request = _Request(prompt, params, seed)
        self._queue.put(request)
        return Stream(request, self.engine.tokenizer, self.engine.stop_ids)

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
            batch = [first]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        self.batch_sizes.append(len(batch))
        try:
            self._ensure_rows_pinned(batch)
            with self.engine.exclusive():
                replies = model_thread.run(decoding.decode, self.engine.model, self.engine.tokenizer,
                                           [r.job for r in batch])
        except BaseException as e:  # surfaced in every waiting consumer
            log.exception("batched generation failed")
            for r in batch:
                r.finish(None, e)
            return
        for r, reply in zip(batch, replies):
            r.finish(reply)

    def _ensure_rows_pinned(self, batch: list[_Request]) -> None:
        # the token layers are fast only with some persona's rows written in place (see Engine.swap);
        # which persona does not matter: the routing hooks overwrite every row's new tokens
        if any(not layer.merged for layer in self.engine.token_layers):
            first = next((r.job.prompt.adapter for r in batch if r.job.prompt.adapter != BASE_ADAPTER), None)
            self.engine.swap(first or self.engine.personas[0].name)
