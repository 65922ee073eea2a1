"""Web chat with instant persona swapping.

    python -m chatbot --adapters adapters/                      # http://127.0.0.1:7860
    python -m chatbot --adapters adapters/ --port 8080 --auth me:secret
    python -m chatbot --adapters adapters/ --host 0.0.0.0 --auth me:secret   # reachable from the LAN

Loads the extended base once and every LoRA adapter under --adapters into one model;
the persona dropdown switches between them (and the bare base model) without reloading.
Adapters that cannot be used are listed in the page with the reason.
Terminal chat instead (over SSH): python -m chatbot.cli --adapters adapters/ --persona NAME
"""
from __future__ import annotations

import ipaddress
import sys
from typing import Sequence

from core.cli import parser, run_cli, setup_logging
from core.errors import UserError


def _args(argv: Sequence[str] | None):
    p = parser("python -m chatbot", __doc__)
    p.add_argument("--adapters", required=True, help="directory holding one subdirectory per persona adapter")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 = every interface)")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="require this login for the page")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (asks Gradio's servers)")
    p.add_argument("--base-model", default=None,
                   help="base model spec (default: the one the adapters were trained on)")
    p.add_argument("--cache-dir", default=None, help="cache of extended base models (default $KAKAO_PERSONA_CACHE)")
    p.add_argument("--concurrency", type=int, default=4, help="sessions served at once (replies take turns)")
    return p.parse_args(argv)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``user:password`` -> (user, password); UserError if malformed."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise UserError("--auth must be USER:PASSWORD (both non-empty)")
    return user, password


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    setup_logging()
    auth = parse_auth(args.auth)
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: must be 1..65535")
    if not is_loopback(args.host) and auth is None:
        print(f"warning: --host {args.host} exposes the chat to the network without --auth", file=sys.stderr)
    if args.share and auth is None:
        print("warning: --share makes a public link; anyone with it can chat (add --auth)", file=sys.stderr)
    from chatbot.app import launch
    from chatbot.engine import Engine

    engine = Engine.from_adapters_dir(args.adapters, base_model=args.base_model, cache_dir=args.cache_dir)
    for p in engine.personas:
        print(f"{'ok  ' if p.available else 'SKIP'} {p.name}: {p.label if p.available else p.reason}",
              file=sys.stderr)
    launch(engine, host=args.host, port=args.port, auth=auth, share=args.share, concurrency=args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
