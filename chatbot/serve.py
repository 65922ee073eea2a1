"""An OpenAI-compatible server for the persona adapters (chat completions, streaming, several personas at once).

    python -m chatbot.serve --adapters adapters/                       # http://127.0.0.1:8000/v1
    python -m chatbot.serve --adapters adapters/ --api-key-file key.txt --host 0.0.0.0
    python -m chatbot.serve --adapters runs/민수/adapters --memory runs/민수/data  # with the persona's memory

    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "minji", "messages": [{"role": "user", "content": "뭐해?"}]}'

``GET /v1/models`` lists the personas (one adapter each) and ``base`` (the model without
adapter); ``POST /v1/chat/completions`` answers as the persona named by ``model``.
``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed`` and ``n`` are honoured (clamped
like the web chat); ``stream: true`` streams server-sent events. A ``user`` message's ``name``
is the speaker the persona talks to (default: the adapter's own chat partner); ``system``
messages are ignored (the persona's instruction is its system turn).

Replies are the web chat's (the same engine and :mod:`chatbot.decoding`: candidates, reranking,
reply shaping; same settings and seed, same reply). Concurrent requests are generated together,
one forward pass over a mixed-persona batch (chatbot.batching). Listens on 127.0.0.1 by default; any other address needs an API key
(--api-key, --api-key-file or $KAKAO_PERSONA_API_KEY), sent by clients as
``Authorization: Bearer KEY``. No Gradio here: the server drives the chat engine directly.
"""
from __future__ import annotations

import json
import logging
import secrets
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here

from core.errors import UserError
from core.memory import add_memory_flag, load_memory
from chatbot.access import is_loopback, read_secret
from core.cli import parser, run_cli, setup_logging

log = logging.getLogger(__name__)

API_KEY_ENV = "KAKAO_PERSONA_API_KEY"
BASE_MODEL_ID = "base"  # the model id of the bare base model (adapters off)
MAX_N = 8  # choices per request, like the batch size: more are clamped
MAX_STOP = 4  # stop strings per request (OpenAI's limit)


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """A validated ``/v1/chat/completions`` body."""

    model: str
    history: list[dict]
    params: Any  # GenerationParams, clamped
    seed: int | None
    n: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


# ---- request parsing ----------------------------------------------------------------------------
def _text_of(content: Any, i: int) -> str:
    """A message's text: a string or a list of text parts (OpenAI's content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts",
                   param=f"messages[{i}].content")


def _clean_name(name: Any, i: int) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise ApiError(400, f"messages[{i}].name must be a string", param=f"messages[{i}].name")
    name = "".join(c for c in name if c.isprintable()).strip()[:64]  # no control characters in a speaker
    return name or None


def parse_messages(messages: Any) -> list[dict]:
    """OpenAI messages -> the engine's history ([{role, content, name?}], ending with a user turn)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    history = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant", param=f"messages[{i}].role")
        text = _text_of(m.get("content") or "", i)
        if m["role"] == "user":
            history.append({"role": "user", "content": text, "name": _clean_name(m.get("name"), i)})
        elif m["role"] == "assistant":
            history.append({"role": "assistant", "content": text})
    if not history or history[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    return history


def _number(body: dict, key: str, kind: type, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ApiError(400, f"{key} must be {'an integer' if kind is int else 'a number'}", param=key)
    return kind(value)


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP:
        raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOP} strings", param="stop")
    return tuple(s for s in stops if s)


def parse_request(body: Any) -> ChatRequest:
    """Validate a chat-completions body (unknown fields are ignored, as OpenAI-compatible servers do)."""
    from chatbot.engine import GenerationParams

    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required (a persona name from /v1/models)", param="model")
    d = GenerationParams()
    max_tokens = _number(body, "max_completion_tokens", int, None)
    max_tokens = _number(body, "max_tokens", int, d.max_new_tokens) if max_tokens is None else max_tokens
    params = GenerationParams(
        temperature=_number(body, "temperature", float, d.temperature),
        top_p=_number(body, "top_p", float, d.top_p),
        top_k=d.top_k, repetition_penalty=d.repetition_penalty, max_new_tokens=max_tokens,
    ).clamped()
    options = body.get("stream_options") or {}
    return ChatRequest(
        model=model, history=parse_messages(body.get("messages")), params=params,
        seed=_number(body, "seed", int, None), n=min(max(_number(body, "n", int, 1), 1), MAX_N),
        stop=_stops(body.get("stop")), stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
    )


# ---- stop strings -------------------------------------------------------------------------------
def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(text up to the first stop string, whether one was found)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def _safe_prefix(text: str, stops: Sequence[str]) -> str:
    """``text`` minus a tail that could still grow into a stop string (not sent while streaming)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[:len(text) - hold]


class Choice:
    """One choice's reply: drives a batcher stream, applies stop strings, yields text deltas."""

    def __init__(self, stream: Any, stops: Sequence[str]):
        self.stream, self.stops = stream, stops
        self.text, self.hit_stop = "", False

    def deltas(self) -> Iterator[str]:
        sent = ""
        try:
            for text in self.stream:
                text, self.hit_stop = cut_at_stop(text, self.stops)
                safe = text if self.hit_stop else _safe_prefix(text, self.stops)
                self.text = text
                if safe.startswith(sent) and len(safe) > len(sent):
                    yield safe[len(sent):]
                    sent = safe
                if self.hit_stop:
                    break
        finally:
            self.stream.cancel()
        if self.text.startswith(sent) and len(self.text) > len(sent):
            yield self.text[len(sent):]

    @property
    def finish_reason(self) -> str:
        return "length" if self.stream.finish_reason == "length" and not self.hit_stop else "stop"

    def complete(self) -> str:
        for _ in self.deltas():
            pass
        return self.text


# ---- the app ----------------------------------------------------------------------------------
class PersonaService:
    """What the HTTP layer calls: model list and completions over an engine and its batcher."""

    def __init__(self, engine: Any, batcher: Any, api_key: str | None = None):
        self.engine, self.batcher, self.api_key = engine, batcher, api_key
        self.created = int(time.time())

    def check_key(self, authorization: str | None) -> None:
        if self.api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                           code="invalid_api_key")

    def models(self) -> dict:
        ids = [p.name for p in self.engine.personas if p.available] + [BASE_MODEL_ID]
        return {"object": "list", "data": [
            {"id": i, "object": "model", "created": self.created, "owned_by": "kakao-persona"} for i in ids
        ]}

    def persona_of(self, model: str) -> str | None:
        if model == BASE_MODEL_ID:
            return None
        try:
            self.engine.persona(model)
        except KeyError:
            raise ApiError(404, f"the model {model!r} does not exist (see /v1/models)", code="model_not_found",
                           param="model") from None
        return model

    def start(self, req: ChatRequest) -> list[Choice]:
        """Queue the request's ``n`` choices (seeds seed, seed+1, ...: one batch, distinct replies)."""
        from chatbot.engine import MessageTooLong

        persona = self.persona_of(req.model)
        base_seed = secrets.randbits(62) if req.seed is None else req.seed
        try:
            streams = [self.batcher.submit(req.history, persona, req.params, seed=base_seed + i) for i in range(req.n)]
        except MessageTooLong as e:
            raise ApiError(400, str(e), code="context_length_exceeded", param="messages") from None
        return [Choice(s, req.stop) for s in streams]

    @staticmethod
    def usage(choices: Sequence[Choice]) -> dict:
        prompt = choices[0].stream.prompt_tokens
        completion = sum(c.stream.completion_tokens for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def complete(self, req: ChatRequest) -> dict:
        choices = self.start(req)
        texts = [c.complete() for c in choices]
        return {
            "id": _completion_id(), "object": "chat.completion", "created": int(time.time()), "model": req.model,
            "system_fingerprint": None,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                         "finish_reason": c.finish_reason} for i, (c, t) in enumerate(zip(choices, texts))],
            "usage": self.usage(choices),
        }

    def stream(self, req: ChatRequest) -> Iterator[str]:
        """Server-sent events: a role chunk, content deltas, a finish chunk per choice, then [DONE].

        The request is queued (and its errors raised) here, before the first event."""
        return self._events(req, self.start(req))

    def _events(self, req: ChatRequest, choices: list[Choice]) -> Iterator[str]:
        cid, created = _completion_id(), int(time.time())

        def chunk(i: int, delta: dict, finish: str | None = None) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "system_fingerprint": None,
                    "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return _sse(body)

        try:
            for i, c in enumerate(choices):
                yield chunk(i, {"role": "assistant", "content": ""})
                for piece in c.deltas():
                    yield chunk(i, {"content": piece})
                yield chunk(i, {}, c.finish_reason)
            if req.include_usage:
                yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                            "choices": [], "usage": self.usage(choices)})
            yield "data: [DONE]\n\n"
        finally:
            for c in choices:  # a client that hung up frees its batch rows
                c.stream.cancel()


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def create_app(service: PersonaService):
    """The FastAPI app: /v1/models, /v1/chat/completions, OpenAI-shaped errors."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    app = FastAPI(title="kakao-persona", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        code = "not_found" if e.status_code == 404 else None
        return JSONResponse(ApiError(e.status_code, str(e.detail), code=code).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        log.exception("request failed")
        body = ApiError(500, f"generation failed: {type(e).__name__}", kind="server_error").body()
        return JSONResponse(body, status_code=500)

    @app.get("/v1/models")
    async def models(request: Request):
        service.check_key(request.headers.get("authorization"))
        return service.models()

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        service.check_key(request.headers.get("authorization"))
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "the body is not valid JSON") from None
        req = parse_request(body)
        if req.stream:
            events = await run_in_threadpool(service.stream, req)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await run_in_threadpool(service.complete, req)

    return app


def serve_in_thread(app: Any, host: str, port: int):
    """Run ``app`` with uvicorn in a daemon thread (tests, benches); returns the uvicorn Server (``should_exit``)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    return server


# ---- command line -----------------------------------------------------------------------------
def _args(argv: Sequence[str] | None):
    p = parser("python -m chatbot.serve", __doc__)
    p.add_argument("--adapters", required=True, help="directory holding one subdirectory per persona adapter")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; others need an API key)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--api-key", default=None, help=f"bearer token clients must send (or set ${API_KEY_ENV})")
    p.add_argument("--api-key-file", default=None, help="read the bearer token from this file (first line)")
    p.add_argument("--base-model", default=None, help="base model spec (default: the adapters' own)")
    p.add_argument("--cache-dir", default=None, help="cache of extended base models (default $KAKAO_PERSONA_CACHE)")
    p.add_argument("--max-batch", type=int, default=8, help="replies generated together in one batch (default 8)")
    add_memory_flag(p)
    return p.parse_args(argv)


def resolve_api_key(key: str | None, key_file: str | None, env: dict | None = None) -> str | None:
    """The API key from --api-key, else --api-key-file, else $KAKAO_PERSONA_API_KEY; None if none is set."""
    value, _ = read_secret(key, "--api-key", key_file, API_KEY_ENV, env)
    return value.strip() or None if value is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    setup_logging()
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: must be 1..65535")
    if args.max_batch < 1:
        raise UserError(f"--max-batch {args.max_batch}: must be at least 1")
    api_key = resolve_api_key(args.api_key, args.api_key_file)
    if api_key is None and not is_loopback(args.host):
        raise UserError(f"--host {args.host} is reachable from the network: set an API key "
                        f"(--api-key, --api-key-file or ${API_KEY_ENV})")
    import uvicorn

    from chatbot.batching import Batcher
    from chatbot.engine import Engine

    engine = Engine.from_adapters_dir(args.adapters, base_model=args.base_model, cache_dir=args.cache_dir,
                                      memory=load_memory(args.memory))
    for p in engine.personas:
        print(f"{'ok  ' if p.available else 'SKIP'} {p.name}: {p.label if p.available else p.reason}",
              file=sys.stderr)
    service = PersonaService(engine, Batcher(engine, max_batch=args.max_batch), api_key)
    print(f"OpenAI-compatible API on http://{args.host}:{args.port}/v1 "
          f"({'key required' if api_key else 'no key'})", file=sys.stderr)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
