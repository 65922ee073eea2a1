"""The Gradio web chat: layout and callbacks only; the model work is in :mod:`chatbot.engine`.

Started by ``python -m chatbot --adapters adapters/`` (see :mod:`chatbot.__main__`).
Each browser session keeps its own persona (the dropdown's value) and its own history
(``gr.State``: the plain turns fed to the engine; the chat display may also hold notices
such as "message too long" that are never sent to the model). The history is capped
(MAX_HISTORY), a session gets one reply at a time (a second send while one is streaming
is refused, so one client cannot fill the queue), and every message is shown as plain
text: Gradio's Chatbot inserts messages as (sanitised) HTML even with render_markdown=False,
so a reply holding <img src=...> or a link would render; it is HTML-escaped for display.
"""
from __future__ import annotations

import html
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from chatbot.engine import MAX_MESSAGE_CHARS, MAX_NEW_TOKENS_CAP, Engine, GenerationParams, MessageTooLong
from core.reply_shape import bubbles

log = logging.getLogger(__name__)

BASE_CHOICE = "__base__"  # dropdown value for the bare base model
BASE_LABEL = "기본 모델 (페르소나 없음) · base model, no persona"
TOO_LONG = f"⚠️ 메시지가 너무 깁니다 (최대 {MAX_MESSAGE_CHARS}자). Message too long."
FAILED = "⚠️ 답변을 만들지 못했습니다 (generation failed): "
BUSY = "⚠️ 이전 답장을 만드는 중입니다 (one reply at a time per session)."
DEFAULTS = GenerationParams()
MAX_HISTORY = 40  # messages (user + assistant) a session keeps; older ones are dropped


def persona_choices(engine: Engine) -> list[tuple[str, str]]:
    """(label, value) pairs for the dropdown: every usable persona, then the base model."""
    return [(p.label, p.name) for p in engine.personas if p.available] + [(BASE_LABEL, BASE_CHOICE)]


def unavailable_note(engine: Engine) -> str:
    """Markdown listing the adapters that could not be loaded, with the reason."""
    bad = [p for p in engine.personas if not p.available]
    if not bad:
        return ""
    lines = [f"- `{p.name}`: {p.reason}" for p in bad]
    return "**사용할 수 없는 어댑터 (unavailable adapters)**\n" + "\n".join(lines)


@dataclass
class Callbacks:
    """The event handlers; plain methods so tests call them without a browser."""

    engine: Engine
    seed: int | None = None  # fixed seed for every reply (tests); None = random
    _busy: set = field(default_factory=set)  # sessions with a reply streaming now
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def respond(self, message: str, history: list, chat: list, persona: str, *knobs,
                session: str | None = None) -> Iterator[tuple]:
        """Send ``message``; yields (textbox, chat display, history) as the reply streams.
        ``session``: the browser session (one reply at a time each)."""
        message = (message or "").strip()
        if not message:
            yield "", chat, history
            return
        chat = _capped(list(chat or [])) + [{"role": "user", "content": shown(message)}]
        if len(message) > MAX_MESSAGE_CHARS:
            yield "", chat + [{"role": "assistant", "content": TOO_LONG}], history
            return
        before = _capped(list(history or []))
        yield from self._one_at_a_time(session, before + [{"role": "user", "content": message}], chat, persona,
                                       knobs, before)

    def regenerate(self, history: list, chat: list, persona: str, *knobs,
                   session: str | None = None) -> Iterator[tuple]:
        """Replace the last reply with a new one (from the current persona and settings)."""
        before = list(history or [])
        history = before[:-1] if before and before[-1]["role"] == "assistant" else before
        if not history:
            yield "", chat, history
            return
        yield from self._one_at_a_time(session, history, _display(history), persona, knobs, before)

    def _one_at_a_time(self, session: str | None, history: list, chat: list, persona: str,
                       knobs: tuple, before: list) -> Iterator[tuple]:
        """Stream a reply unless ``session`` has one streaming already (then a notice; the history
        stays ``before``)."""
        with self._lock:
            busy = session is not None and session in self._busy
            if not busy and session is not None:
                self._busy.add(session)
        if busy:
            yield "", chat + [{"role": "assistant", "content": BUSY}], before
            return
        try:
            yield from self._stream(history, chat, persona, knobs)
        finally:
            with self._lock:
                self._busy.discard(session)

    @staticmethod
    def clear() -> tuple[str, list, list]:
        return "", [], []

    def _stream(self, history: list, chat: list, persona: str, knobs: tuple) -> Iterator[tuple]:
        name = None if persona in (None, "", BASE_CHOICE) else persona
        bot = lambda text: chat + reply_bubbles(text)  # noqa: E731 (a fresh list per yield)
        reply = ""
        yield "", bot(""), history
        try:
            for reply in self.engine.generate(history, name, params_from(*knobs), seed=self.seed):
                yield "", bot(reply), history
        except MessageTooLong:
            yield "", bot(TOO_LONG), history[:-1]
            return
        except Exception as e:  # never crash mid-chat: show it, log it, keep the session
            log.exception("reply failed")
            yield "", bot(FAILED + (str(e).splitlines() or [type(e).__name__])[0][:200]), history[:-1]
            return
        yield "", bot(reply), history + [{"role": "assistant", "content": reply}]


def params_from(temperature=None, top_p=None, top_k=None, repetition_penalty=None,
                max_new_tokens=None) -> GenerationParams:
    """Slider values -> clamped GenerationParams (missing ones keep the defaults)."""
    given = dict(temperature=temperature, top_p=top_p, top_k=top_k,
                 repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens)
    return GenerationParams(**{k: v for k, v in given.items() if v is not None}).clamped()


def shown(text: str) -> str:
    """``text`` as the chat display gets it: HTML-escaped, so that it shows as typed (no tag renders)."""
    return html.escape(text, quote=False)


def _capped(messages: list) -> list:
    """The last MAX_HISTORY - 1 messages (room for the one being added), starting at a user turn."""
    if len(messages) < MAX_HISTORY:
        return messages
    kept = messages[-(MAX_HISTORY - 1):]
    while kept and kept[0]["role"] != "user":
        kept = kept[1:]
    return kept


def reply_bubbles(text: str) -> list[dict]:
    """A reply as chat messages, escaped: one assistant bubble per line, like a KakaoTalk burst (the
    history keeps it as one turn, as training saw it); one empty bubble while nothing came yet."""
    return [{"role": "assistant", "content": shown(b)} for b in bubbles(text) or [text]]


def _display(history: list) -> list:
    out: list[dict] = []
    for m in history:
        out += reply_bubbles(m["content"]) if m["role"] == "assistant" else [{"role": "user", "content": shown(m["content"])}]
    return out


def build_app(engine: Engine, seed: int | None = None) -> Any:
    """The gr.Blocks app for ``engine`` (not launched; see :func:`launch`)."""
    import gradio as gr

    cb = Callbacks(engine, seed)
    choices = persona_choices(engine)
    # no telemetry: the page shows people's private chats
    with gr.Blocks(title="KakaoTalk persona chat", analytics_enabled=False) as demo:
        gr.Markdown("## 카카오톡 페르소나 챗봇 · persona chat\n페르소나를 바꾸면 다음 답장부터 적용됩니다. "
                    "(Switching persona applies from the next reply.)")
        persona = gr.Dropdown(choices, value=choices[0][1], label="페르소나 (persona)", elem_id="persona")
        gr.Markdown(unavailable_note(engine))
        chat = gr.Chatbot(label="대화 (conversation)", height=420, elem_id="chat", buttons=["copy"],
                          feedback_options=None, render_markdown=False)  # "좋아~~" is not strikethrough
        history = gr.State([])
        with gr.Row():
            box = gr.Textbox(placeholder="메시지를 입력하세요… (Enter to send)", show_label=False, scale=5,
                             max_lines=6, elem_id="message")
            send = gr.Button("보내기 Send", variant="primary", scale=1, elem_id="send")
        with gr.Row():
            regen = gr.Button("다시 생성 Regenerate", elem_id="regenerate")
            clear = gr.Button("지우기 Clear", elem_id="clear")
        with gr.Accordion("생성 설정 (generation settings)", open=False):
            knobs = [
                gr.Slider(0.0, 2.0, DEFAULTS.temperature, step=0.05, label="temperature (0 = greedy)"),
                gr.Slider(0.05, 1.0, DEFAULTS.top_p, step=0.05, label="top-p"),
                gr.Slider(0, 200, DEFAULTS.top_k, step=1, label="top-k (0 = off)"),
                gr.Slider(1.0, 2.0, DEFAULTS.repetition_penalty, step=0.05, label="repetition penalty"),
                gr.Slider(8, MAX_NEW_TOKENS_CAP, DEFAULTS.max_new_tokens, step=8, label="max new tokens"),
            ]
        outputs = [box, chat, history]

        def respond(request: gr.Request, *args):  # Gradio passes the request to a parameter so annotated
            yield from cb.respond(*args, session=request.session_hash if request else None)

        def regenerate(request: gr.Request, *args):
            yield from cb.regenerate(*args, session=request.session_hash if request else None)

        # this module's annotations are strings (__future__): give Gradio the class itself
        respond.__annotations__["request"] = regenerate.__annotations__["request"] = gr.Request
        for event in (box.submit, send.click):
            event(respond, [box, history, chat, persona, *knobs], outputs)
        regen.click(regenerate, [history, chat, persona, *knobs], outputs)
        clear.click(cb.clear, None, outputs)
    return demo


def launch(engine: Engine, host: str = "127.0.0.1", port: int | None = 7860,
           auth: tuple[str, str] | None = None, share: bool = False, concurrency: int = 4,
           block: bool = True, seed: int | None = None) -> Any:
    """Queue and launch the app. Generation is serialised by the engine's lock anyway;
    ``concurrency`` only lets waiting sessions hold a worker instead of a queue slot."""
    demo = build_app(engine, seed)
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    demo.launch(server_name=host, server_port=port, auth=auth, share=share,
                prevent_thread_lock=not block, show_error=False, footer_links=[], quiet=not block)
    return demo
