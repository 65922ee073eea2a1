"""The chat engine: one extended base, every persona adapter loaded into one PeftModel, streamed replies.

No Gradio here (the web app and the terminal chat both drive this)::

    engine = Engine.from_adapters_dir("adapters/")          # loads the base once, all adapters once
    for text in engine.generate(history, "minji", GenerationParams(), seed=0):
        print(text)                                          # the growing reply (cumulative, not deltas)

Prompts are built by :func:`core.chat_format.render`, the same builder training used:
the adapter manifest's ``instruction`` as the system turn, the chat user's turns spoken as
the manifest's ``user_speaker``, the bot's earlier replies as the persona's own turns; the
oldest turns are dropped to fit the context budget. With a :class:`core.memory.Memory` (opt-in,
``--memory DATA_DIR``) the persona's own past replies to messages like the latest one go into the
system turn through the same builder (``render(memory=...)``); the MMI baseline keeps the bare
instruction, so a reply that follows what the persona really said before is not penalised for it.
Replies come from
:func:`chatbot.decoding.decode` (the evaluation and the server call it too): several candidates sampled in
one batch and reranked, loops and echoes rejected, the persona's limits from its ``persona.yaml``.

Switching persona is ``set_adapter`` plus writing the adapter's new-token embedding rows
into the base matrix in place (see :func:`_pin_token_rows`); ``set_adapter`` is global, so
a lock is held from the swap to the end of each streamed generation: concurrent sessions
take turns, and each gets exactly the reply its persona gives alone. The model is loaded, swapped
and run on one thread (:mod:`chatbot.model_thread`), whichever thread asks for a reply.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import wait
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from chatbot import decoding, model_thread
from chatbot.adapters import PersonaInfo, check_base, choose_base, choose_dialogue, discover
from chatbot.decoding import MAX_NEW_TOKENS_CAP, Prompt, SamplingParams  # noqa: F401 (re-exported)
from chatbot.routing import BASE_ADAPTER
from core import chat_format
from core.errors import UserError
from core.memory import Memory, Recalled
from core.models import BACKWARD_ADAPTER, default_device, find_backward, find_extended, load_adapter, load_extended
from core.reply_shape import ReplyLimits, echo_sources

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1000  # longer chat messages are refused (by the app/CLI, and by generate)
BASE_USER_SPEAKER = "나"  # who the user is when chatting with the bare base model
_BOT = "\x00bot"  # speaker id for the bot's own turns; cannot collide with a real name


GenerationParams = SamplingParams  # the engine's historical name for the one set of sampling settings


class MessageTooLong(ValueError):
    """A chat message over :data:`MAX_MESSAGE_CHARS`."""


def _token_layers(model) -> list:
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    return [m for m in model.modules() if isinstance(m, TrainableTokensLayer)]


def _pin_token_rows(layers: list, name: str) -> None:
    """Write adapter ``name``'s new-token rows into the embedding in place and mark them merged.

    PEFT's unmerged TrainableTokens forward rebuilds the whole embedding matrix with
    ``index_copy`` on every forward pass (670 MB per step for Gemma's 262k x 640 fp32
    matrix), and its ``merge()`` copies the matrix once more. Writing the few rows in
    place costs microseconds; PEFT's own in-place ``unmerge()`` restores the originals,
    also when ``disable_adapter()`` runs a forward. Tied output layers share the matrix.
    """
    import torch

    for layer in layers:
        if layer.merged:
            layer.unmerge()
    for layer in layers:
        if name not in layer.token_indices:
            continue
        w = layer.base_layer.weight
        idx = torch.tensor(layer.token_indices[name], device=w.device)
        with torch.no_grad():
            w.data.index_copy_(0, idx, layer.trainable_tokens_delta[name].to(w))
        layer.merged_adapters.append(name)


class Engine:
    """Model, tokenizer and persona adapters; thread-safe :meth:`generate`."""

    def __init__(self, model: Any, tokenizer: Any, personas: Sequence[PersonaInfo], memory: Memory | None = None):
        """``model``: a PeftModel holding every available persona (see :meth:`from_loaded`);
        ``memory``: past exchanges to recall per persona (None: none, the prompt is the plain one)."""
        self.model = model
        self.memory = memory
        self.tokenizer = tokenizer
        self.personas: list[PersonaInfo] = list(personas)
        self._by_name = {p.name: p for p in self.personas if p.available}
        self._token_layers = _token_layers(model)
        self._lock = threading.Lock()
        self._active: str | None = "\x00unset"
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.max_positions = int(getattr(cfg, "max_position_embeddings", None) or 2048)
        self.stop_ids = chat_format.stop_ids(tokenizer)
        self.pad_id = chat_format.pad_id(tokenizer)
        decoding.token_bytes(tokenizer)  # built once here (0.6 s for 262k tokens), not in the first reply

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_adapters_dir(
        cls, adapters_dir: str | Path, base_model: str | None = None, cache_dir: str | Path | None = None,
        device: str | None = None, memory: Memory | None = None,
    ) -> "Engine":
        """Discover adapters, load their extended base once, load every adapter.

        The extended base is the cached one the adapters were trained on (found by its
        fingerprint); when the cache lacks it, ``python -m pipeline.extend`` builds it in
        its own process. ``device``: by default the GPU when torch sees one (bf16 there),
        else the CPU (fp32). ``memory``: see :class:`Engine`."""
        infos = discover(adapters_dir)
        if memory is not None:  # before the model loads: a memory for no persona here fails fast
            memory.check([i.persona for i in infos if i.available])
        spec = choose_base(infos, base_model)
        path = find_extended(_fingerprint_of(infos, spec), cache_dir) or build_extended(
            spec, cache_dir, dialogue=choose_dialogue(infos, spec))
        model, tokenizer, manifest = model_thread.run(load_extended, path, device=device or default_device())
        return cls.from_loaded(model, tokenizer, manifest, infos, spec, memory, find_backward(path))

    @classmethod
    def from_loaded(
        cls, base: Any, tokenizer: Any, extended_manifest: dict, infos: Sequence[PersonaInfo],
        spec: str | None = None, memory: Memory | None = None, backward: str | Path | None = None,
    ) -> "Engine":
        """Wrap an already loaded extended base with the adapters whose fingerprint matches it, and the
        backward model that reranks replies (``backward``: its folder, installed in that extended base)."""
        infos = check_base(list(infos), spec, str(extended_manifest.get("fingerprint", "")))
        base.eval()
        model, infos = model_thread.run(_load_adapters, base, infos)
        if model is None:
            reasons = "; ".join(f"{i.name}: {i.reason}" for i in infos)
            raise UserError(f"no usable adapter ({reasons})")
        if backward is not None:
            model_thread.run(_load_backward, model, backward)
        elif extended_manifest.get("dialogue"):
            log.info("no backward model in this extended base: replies are reranked without it "
                     "(python -m pipeline.extend installs it)")
        decoding.keep_prefixes(model)  # the adapters are loaded: the weights no longer change
        return cls(model.eval(), tokenizer, infos, memory)

    # ---- persona switching ----------------------------------------------------------------
    def persona(self, name: str | None) -> PersonaInfo | None:
        """The persona called ``name`` (None = the bare base model); KeyError if not usable."""
        if name is None:
            return None
        if name not in self._by_name:
            raise KeyError(f"unknown or unavailable persona {name!r}")
        return self._by_name[name]

    def swap(self, name: str | None) -> float:
        """Make ``name`` the active adapter (None: adapters off); returns the seconds it took."""
        self.persona(name)
        with self._lock:
            return model_thread.run(self._timed_activate, name)

    def _timed_activate(self, name: str | None) -> float:
        t0 = time.perf_counter()
        self._activate(name)
        return time.perf_counter() - t0

    def _activate(self, name: str | None) -> None:
        # caller holds the lock; on the model thread
        if name == self._active:
            return
        for layer in self._token_layers:
            if layer.merged:
                layer.unmerge()
        if name is not None:
            self.model.set_adapter(name)
            _pin_token_rows(self._token_layers, name)
        self._active = name

    # ---- prompts ----------------------------------------------------------------------------
    def prompt_ids(self, history: Sequence[dict], persona: str | None, max_new_tokens: int) -> list[int]:
        """Token ids for the reply to ``history`` (ends with a user turn), oldest turns trimmed."""
        info = self.persona(persona)
        instruction = info.instruction if info else ""
        context = self._context(history, info)
        budget = self._context_budget(info, max_new_tokens)
        memory = self.recall(history, persona)
        rendered = chat_format.render(self.tokenizer, instruction, context, _BOT, None, budget, memory)
        if memory and rendered is not None and len(rendered.input_ids) + max_new_tokens > self.max_positions:
            rendered = chat_format.render(self.tokenizer, instruction, context, _BOT, None, budget)
        if rendered is None or (context and rendered.context_turns == 0):
            raise MessageTooLong("the message does not fit in the model's context")
        return rendered.input_ids

    def recall(self, history: Sequence[dict], persona: str | None) -> list[Recalled]:
        """The persona's past exchanges like the message ``history`` ends with ([] without a memory)."""
        info = self.persona(persona)
        if self.memory is None or info is None or not history:
            return []
        return self.memory.recall(info.persona, self._context(history, info), _BOT)

    @staticmethod
    def _context(history: Sequence[dict], info: PersonaInfo | None) -> list[dict]:
        user = (info.user_speaker if info else "") or BASE_USER_SPEAKER
        # a user turn may name its speaker (the server's OpenAI ``name``); else the adapter's user
        return [{"speaker": _BOT if m["role"] == "assistant" else (m.get("name") or user), "text": str(m["content"])}
                for m in history]

    def prompt(self, history: Sequence[dict], persona: str | None, max_new_tokens: int,
               adapter: str | None = None) -> Prompt:
        """The :class:`chatbot.decoding.Prompt` for the reply to ``history``: ids, the instruction
        alone (the reranking baseline), what the reply must not echo, the persona's limits.
        ``adapter``: name it for a per-row adapter in a mixed batch (default: the active adapter)."""
        info = self.persona(persona)
        backward = decoding.has_backward(self.model)
        if persona is None and adapter is None:
            # the bare base's rows are routed past every adapter (the backward model's rows keep theirs); a batch
            # of only such rows runs with the adapters switched off (chatbot.routing)
            adapter = BASE_ADAPTER
        return Prompt(
            ids=self.prompt_ids(history, persona, max_new_tokens),
            no_context_ids=self.prompt_ids([], persona, max_new_tokens),
            sources=echo_sources((m["role"] == "assistant", str(m["content"])) for m in history),
            limits=info.limits if info else ReplyLimits(), adapter=adapter,
            message=self._message(history, info) if backward else None,
        )

    def _message(self, history: Sequence[dict], info: PersonaInfo | None) -> tuple[str, str] | None:
        """(speaker, text) of the user's last turn, the backward score's message (None: no user turn last)."""
        if not history or history[-1]["role"] == "assistant":
            return None
        turn = self._context(history[-1:], info)[0]
        return turn["speaker"], turn["text"]

    def _context_budget(self, info: PersonaInfo | None, max_new_tokens: int) -> int:
        # the adapter saw at most max_length tokens in training; never pass the model's positions
        soft = (info.max_length if info and info.max_length else None) or self.max_positions
        soft = min(soft, self.max_positions)
        return min(self.max_positions - max_new_tokens, max(soft - max_new_tokens, soft // 2))

    # ---- generation ------------------------------------------------------------------------
    def generate(
        self, history: Sequence[dict], persona: str | None, params: SamplingParams | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Stream the reply to ``history`` ([{role: user|assistant, content}], last one the user's).

        Yields the growing reply text (each item is the whole reply so far, not a delta); with
        several candidates (the default) each bubble comes in one piece once the candidates for it
        are reranked. A multi-line reply is a burst: one bubble per line
        (:func:`core.reply_shape.bubbles`). ``persona`` None = the base model with adapters
        disabled. Raises KeyError for an unknown persona, :class:`MessageTooLong` for a message
        over the limit.
        """
        params = self.checked(history, params)
        yield from self._stream(self.prompt(history, persona, params.max_new_tokens), persona, params, seed)

    def checked(self, history: Sequence[dict], params: GenerationParams | None = None) -> GenerationParams:
        """Clamped ``params`` with max_new_tokens fitted to the context; MessageTooLong for an over-long message."""
        params = (params or GenerationParams()).clamped()
        if history and len(str(history[-1].get("content", ""))) > MAX_MESSAGE_CHARS:
            raise MessageTooLong(f"message longer than {MAX_MESSAGE_CHARS} characters")
        return replace(params, max_new_tokens=min(params.max_new_tokens, self.max_positions // 2))

    @property
    def token_layers(self) -> list:
        """PEFT's TrainableTokens layers (the new-token rows of every adapter)."""
        return self._token_layers

    def exclusive(self) -> threading.Lock:
        """The lock :meth:`generate` holds from persona swap to the end of a reply (``with engine.exclusive():``)."""
        return self._lock

    def _stream(self, prompt: Prompt, persona: str | None, params: SamplingParams, seed: int | None):
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_special_tokens=True, timeout=600)
        cancel = threading.Event()
        job = decoding.Job(prompt, params, seed, streamer, cancel.is_set)
        self._lock.acquire()  # released by the model thread when the reply is done
        try:
            done = model_thread.submit(self._generate, job, persona)
        except BaseException:
            self._lock.release()
            raise
        done.add_done_callback(lambda _: self._lock.release())
        text = shown = ""
        try:
            for piece in streamer:
                if piece:
                    text += piece
                    if text.strip():
                        shown = text.lstrip()  # SentencePiece may open the reply with a space
                        yield shown
        finally:
            cancel.set()  # the consumer stopped early (closed tab): free the lock soon
            wait([done])
        final = done.result()  # raises the generation's error here, in the consumer's thread
        if final.text != shown:  # the chosen reply as decoded whole (no trailing space)
            yield final.text

    def _generate(self, job: decoding.Job, persona: str | None) -> decoding.Reply:
        """On the model thread, the caller holding the lock: swap to ``persona`` and decode ``job``."""
        try:
            self._activate(persona)
            return decoding.decode(self.model, self.tokenizer, [job])[0]
        except BaseException:
            log.exception("generation failed")
            raise
        finally:
            job.streamer.end()  # a no-op for the consumer when decode already ended it

    def reply(self, history: Sequence[dict], persona: str | None, params: GenerationParams | None = None,
              seed: int | None = None) -> str:
        """The whole reply at once (tests, evaluation)."""
        text = ""
        for text in self.generate(history, persona, params, seed):
            pass
        return text


def _fingerprint_of(infos: Sequence[PersonaInfo], spec: str | None) -> str:
    """The extended base most usable adapters trained on ``spec`` were trained on ("" if none)."""
    found = Counter(i.fingerprint for i in infos if i.available and i.base_model == spec)
    return found.most_common(1)[0][0] if found else ""


def build_extended(spec: str | None, cache_dir: str | Path | None, dialogue: bool = False) -> Path:
    """``python -m pipeline.extend`` in its own process; returns the folder it prints.

    ``dialogue``: build the base with the dialogue stage merged (``--dialogue``), as adapters trained
    on such a base need. Its progress goes to our stderr; its one-line error becomes our :class:`UserError`."""
    argv = [sys.executable, "-m", "pipeline.extend", *(["--base-model", spec] if spec else []),
            *(["--cache-dir", str(cache_dir)] if cache_dir else []), "--dialogue" if dialogue else "--no-dialogue"]
    log.info("preparing the extended base for %s (python -m pipeline.extend) ...", spec or "the default model")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    error = ""
    for line in proc.stderr:
        if line.startswith("error: "):
            error = line.removeprefix("error: ").strip()
        else:
            sys.stderr.write(line)
    printed = proc.stdout.read().strip().splitlines()
    if proc.wait() != 0 or not printed:
        raise UserError(error or f"--base-model {spec or 'default'}: cannot prepare the extended base "
                                 f"(python -m pipeline.extend exited with {proc.returncode})")
    return Path(printed[-1])


def _load_backward(model: Any, path: str | Path) -> None:
    """The backward model into the PeftModel beside the personas (a broken one is logged, never fatal)."""
    try:
        load_adapter(None, path, BACKWARD_ADAPTER, into=model)
    except Exception as e:
        log.warning("backward model %s unusable, replies are reranked without it: %s", path, e)
        if BACKWARD_ADAPTER in model.peft_config:
            model.delete_adapter(BACKWARD_ADAPTER)


def _load_adapters(base: Any, infos: list[PersonaInfo]) -> tuple[Any, list[PersonaInfo]]:
    """Every usable adapter into one PeftModel (a broken one is listed, never fatal)."""
    model, out = None, []
    for info in infos:
        if info.available:
            try:
                model = load_adapter(base, info.path, info.name, into=model)
            except Exception as e:  # a broken adapter is listed, never fatal
                log.warning("adapter %s unusable: %s", info.name, e)
                if model is not None and info.name in model.peft_config:
                    model.delete_adapter(info.name)
                info = replace(info, reason=f"failed to load: {str(e).splitlines()[0][:200]}")
        out.append(info)
    return model, out
