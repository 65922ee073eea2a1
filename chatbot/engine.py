"""The chat engine: one extended base, every persona adapter loaded into one PeftModel, streamed replies.

No Gradio here (the web app and the terminal chat both drive this)::

    engine = Engine.from_adapters_dir("adapters/")          # loads the base once, all adapters once
    for text in engine.generate(history, "minji", GenerationParams(), seed=0):
        print(text)                                          # the growing reply (cumulative, not deltas)

Prompts are built by :func:`pipeline.chat_format.render`, the same builder training used:
the adapter manifest's ``instruction`` as the system turn, the chat user's turns spoken as
the manifest's ``user_speaker``, the bot's earlier replies as the persona's own turns; the
oldest turns are dropped to fit the context budget. Generation stops at ``<|eot|>``.

Switching persona is ``set_adapter`` plus writing the adapter's new-token embedding rows
into the base matrix in place (see :func:`_pin_token_rows`); ``set_adapter`` is global, so
a lock is held from the swap to the end of each streamed generation: concurrent sessions
take turns, and each gets exactly the reply its persona gives alone.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from chatbot.adapters import PersonaInfo, check_base, choose_base, choose_dialogue, discover
from data_prep.errors import UserError
from pipeline import chat_format

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1000  # longer chat messages are refused (by the app/CLI, and by generate)
MAX_NEW_TOKENS_CAP = 512  # hard cap whatever the caller asks for
BASE_USER_SPEAKER = "나"  # who the user is when chatting with the bare base model
_BOT = "\x00bot"  # speaker id for the bot's own turns; cannot collide with a real name


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings; :meth:`clamped` keeps them in safe ranges."""

    temperature: float = 0.8  # 0 = greedy
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    max_new_tokens: int = 128

    def clamped(self) -> "GenerationParams":
        return GenerationParams(
            temperature=min(max(float(self.temperature), 0.0), 2.0),
            top_p=min(max(float(self.top_p), 0.05), 1.0),
            top_k=min(max(int(self.top_k), 0), 1000),
            repetition_penalty=min(max(float(self.repetition_penalty), 1.0), 2.0),
            max_new_tokens=min(max(int(self.max_new_tokens), 1), MAX_NEW_TOKENS_CAP),
        )


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


class _Cancel:
    """A StoppingCriteria that ends generation once the consumer has gone away."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.event.is_set()


class Engine:
    """Model, tokenizer and persona adapters; thread-safe :meth:`generate`."""

    def __init__(self, model: Any, tokenizer: Any, personas: Sequence[PersonaInfo]):
        """``model``: a PeftModel holding every available persona (see :meth:`from_loaded`)."""
        self.model = model
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

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_adapters_dir(
        cls, adapters_dir: str | Path, base_model: str | None = None, cache_dir: str | Path | None = None,
        device: str | None = None,
    ) -> "Engine":
        """Discover adapters, load their extended base once (pipeline.extend), load every adapter.

        ``device``: by default the GPU when torch sees one (bf16 there), else the CPU (fp32)."""
        from pipeline import extend

        infos = discover(adapters_dir)
        spec = choose_base(infos, base_model)
        try:
            path = extend.ensure_extended(spec, cache_dir=cache_dir, dialogue=choose_dialogue(infos, spec))
        except (OSError, ValueError) as e:
            raise UserError(f"--base-model {spec or 'default'}: cannot prepare the extended base: {e}") from e
        model, tokenizer, manifest = extend.load_extended(path, device=device or extend.default_device())
        return cls.from_loaded(model, tokenizer, manifest, infos, spec)

    @classmethod
    def from_loaded(
        cls, base: Any, tokenizer: Any, extended_manifest: dict, infos: Sequence[PersonaInfo],
        spec: str | None = None,
    ) -> "Engine":
        """Wrap an already loaded extended base with the adapters whose fingerprint matches it."""
        infos = check_base(list(infos), spec, str(extended_manifest.get("fingerprint", "")))
        base.eval()
        model, infos = _load_adapters(base, infos)
        if model is None:
            reasons = "; ".join(f"{i.name}: {i.reason}" for i in infos)
            raise UserError(f"no usable adapter ({reasons})")
        return cls(model.eval(), tokenizer, infos)

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
            t0 = time.perf_counter()
            self._activate(name)
            return time.perf_counter() - t0

    def _activate(self, name: str | None) -> None:
        # caller holds the lock
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
        user = (info.user_speaker if info else "") or BASE_USER_SPEAKER
        context = [
            {"speaker": _BOT if m["role"] == "assistant" else user, "text": str(m["content"])}
            for m in history
        ]
        rendered = chat_format.render(
            self.tokenizer, instruction, context, _BOT, response=None,
            max_length=self._context_budget(info, max_new_tokens),
        )
        if rendered is None or (context and rendered.context_turns == 0):
            raise MessageTooLong("the message does not fit in the model's context")
        return rendered.input_ids

    def _context_budget(self, info: PersonaInfo | None, max_new_tokens: int) -> int:
        # the adapter saw at most max_length tokens in training; never pass the model's positions
        soft = (info.max_length if info and info.max_length else None) or self.max_positions
        soft = min(soft, self.max_positions)
        return min(self.max_positions - max_new_tokens, max(soft - max_new_tokens, soft // 2))

    # ---- generation ------------------------------------------------------------------------
    def generate(
        self, history: Sequence[dict], persona: str | None, params: GenerationParams | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Stream the reply to ``history`` ([{role: user|assistant, content}], last one the user's).

        Yields the growing reply text (each item is the whole reply so far, not a delta).
        ``persona`` None = the base model with adapters disabled. Raises KeyError for an
        unknown persona, :class:`MessageTooLong` for a message over the limit.
        """
        params = (params or GenerationParams()).clamped()
        if history and len(str(history[-1].get("content", ""))) > MAX_MESSAGE_CHARS:
            raise MessageTooLong(f"message longer than {MAX_MESSAGE_CHARS} characters")
        max_new = min(params.max_new_tokens, self.max_positions // 2)
        ids = self.prompt_ids(history, persona, max_new)
        yield from self._stream(ids, persona, replace(params, max_new_tokens=max_new), seed)

    def _stream(self, ids: list[int], persona: str | None, params: GenerationParams, seed: int | None):
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        cancel = _Cancel()
        worker = threading.Thread(
            target=self._generate_locked, args=(ids, persona, params, seed, streamer, cancel), daemon=True,
        )
        worker.start()
        text = ""
        try:
            for piece in streamer:
                if piece:
                    text += piece
                    if text.strip():
                        yield text.lstrip()  # SentencePiece may open the reply with a space
        finally:
            cancel.event.set()  # the consumer stopped early (closed tab): free the lock soon
            worker.join()
        if getattr(worker, "error", None) is not None:
            raise worker.error

    def _generate_locked(self, ids, persona, params, seed, streamer, cancel) -> None:
        import contextlib

        import torch

        try:
            with self._lock:
                self._activate(persona)
                if seed is not None:
                    torch.manual_seed(seed)  # global RNG: seeded under the lock
                off = self.model.disable_adapter() if persona is None else contextlib.nullcontext()
                with off, torch.inference_mode():
                    self.model.generate(**self._generate_kwargs(ids, params, streamer, cancel))
        except BaseException as e:  # surfaced in the consumer thread
            threading.current_thread().error = e
            log.exception("generation failed")
            streamer.end()

    def _generate_kwargs(self, ids, params: GenerationParams, streamer, cancel) -> dict:
        import torch
        from transformers import StoppingCriteriaList

        sample = params.temperature > 0
        kw = dict(
            input_ids=torch.tensor([ids], device=self.model.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.model.device),
            max_new_tokens=params.max_new_tokens, do_sample=sample,
            repetition_penalty=params.repetition_penalty, eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id, streamer=streamer, stopping_criteria=StoppingCriteriaList([cancel]),
        )
        if sample:
            kw.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        return kw

    def reply(self, history: Sequence[dict], persona: str | None, params: GenerationParams | None = None,
              seed: int | None = None) -> str:
        """The whole reply at once (tests, evaluation)."""
        text = ""
        for text in self.generate(history, persona, params, seed):
            pass
        return text


def _load_adapters(base: Any, infos: list[PersonaInfo]) -> tuple[Any, list[PersonaInfo]]:
    """PeftModel.from_pretrained for the first usable adapter, load_adapter for the rest."""
    from peft import PeftModel

    model, out = None, []
    for info in infos:
        if info.available:
            try:
                if model is None:
                    model = PeftModel.from_pretrained(base, str(info.path), adapter_name=info.name)
                else:
                    model.load_adapter(str(info.path), adapter_name=info.name)
            except Exception as e:  # a broken adapter is listed, never fatal
                log.warning("adapter %s unusable: %s", info.name, e)
                if model is not None and info.name in model.peft_config:
                    model.delete_adapter(info.name)
                info = replace(info, reason=f"failed to load: {str(e).splitlines()[0][:200]}")
        out.append(info)
    return model, out
