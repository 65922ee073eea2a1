"""Web chat with instant persona swapping.

    python -m chatbot --adapters adapters/                      # http://127.0.0.1:7860
    python -m chatbot --adapters adapters/ --port 8080 --auth me:secret
    KAKAO_PERSONA_AUTH=me:secret python -m chatbot --adapters adapters/ --host 0.0.0.0   # reachable from the LAN
    python -m chatbot --adapters adapters/ --share --auth-file ~/.chat-login              # public link
    python -m chatbot --adapters runs/민수/adapters --memory runs/민수/data                # with the persona's memory

The page shows replies learnt from private chats: listening beyond this machine (--host
other than loopback, or --share) needs a login (--auth USER:PASSWORD, or the same in the
environment variable KAKAO_PERSONA_AUTH or in the first line of --auth-file, which keep it
out of the process list and the shell history); --no-auth opens it to anyone on purpose.

Loads the extended base once and every LoRA adapter under --adapters into one model;
the persona dropdown switches between them (and the bare base model) without reloading.
Adapters that cannot be used are listed in the page with the reason.
Terminal chat instead (over SSH): python -m chatbot.cli --adapters adapters/ --persona NAME
"""
from __future__ import annotations

import sys
from typing import Sequence

from core.cli import parser, run_cli, setup_logging
from core.errors import UserError
from core.memory import add_memory_flag, load_memory
from chatbot.access import is_loopback, read_secret

AUTH_ENV = "KAKAO_PERSONA_AUTH"  # USER:PASSWORD, read when neither --auth nor --auth-file is given


def _args(argv: Sequence[str] | None):
    p = parser("python -m chatbot", __doc__)
    p.add_argument("--adapters", required=True, help="directory holding one subdirectory per persona adapter")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 = every interface)")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                   help=f"require this login for the page (or ${AUTH_ENV}, or --auth-file)")
    p.add_argument("--auth-file", default=None, metavar="FILE", help="read USER:PASSWORD from the first line of FILE")
    p.add_argument("--no-auth", action="store_true",
                   help="allow --host (non-loopback) or --share without a login: anyone who reaches it can chat")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (asks Gradio's servers)")
    p.add_argument("--base-model", default=None,
                   help="base model spec (default: the one the adapters were trained on)")
    p.add_argument("--cache-dir", default=None, help="cache of extended base models (default $KAKAO_PERSONA_CACHE)")
    p.add_argument("--concurrency", type=int, default=4, help="sessions served at once (replies take turns)")
    add_memory_flag(p)
    return p.parse_args(argv)


def resolve_auth(flag: str | None, auth_file: str | None, env: dict | None = None) -> tuple[str, str] | None:
    """The login from --auth, else --auth-file's first line, else $KAKAO_PERSONA_AUTH; None when none."""
    value, where = read_secret(flag, "--auth", auth_file, AUTH_ENV, env)
    return parse_auth(value, where)


def check_exposure(host: str, share: bool, auth: tuple[str, str] | None, no_auth: bool) -> None:
    """UserError when the chat would be reachable from other machines without a login (and no --no-auth)."""
    if auth is not None or no_auth:
        return
    if share:
        raise UserError("--share makes a public link: add --auth USER:PASSWORD (or $KAKAO_PERSONA_AUTH, "
                        "--auth-file), or --no-auth to let anyone with the link chat")
    if not is_loopback(host):
        raise UserError(f"--host {host} opens the chat to the network: add --auth USER:PASSWORD "
                        "(or $KAKAO_PERSONA_AUTH, --auth-file), or --no-auth to let anyone who reaches it chat")


def parse_auth(value: str | None, where: str = "--auth") -> tuple[str, str] | None:
    """``user:password`` -> (user, password); UserError (naming ``where`` it came from) if malformed."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise UserError(f"{where} must be USER:PASSWORD (both non-empty)")
    return user, password


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    setup_logging()
    auth = resolve_auth(args.auth, args.auth_file)
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: must be 1..65535")
    check_exposure(args.host, args.share, auth, args.no_auth)
    if auth is None and (args.share or not is_loopback(args.host)):
        print("warning: --no-auth: anyone who reaches the page can chat", file=sys.stderr)
    from chatbot.app import launch
    from chatbot.engine import Engine

    engine = Engine.from_adapters_dir(args.adapters, base_model=args.base_model, cache_dir=args.cache_dir,
                                      memory=load_memory(args.memory))
    for p in engine.personas:
        print(f"{'ok  ' if p.available else 'SKIP'} {p.name}: {p.label if p.available else p.reason}",
              file=sys.stderr)
    launch(engine, host=args.host, port=args.port, auth=auth, share=args.share, concurrency=args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
