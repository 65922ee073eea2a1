"""Terminal chat with the persona adapters (for SSH sessions without a browser).

    python -m chatbot.cli --adapters adapters/ --persona minji
    python -m chatbot.cli --adapters adapters/ --persona base --temperature 0.7 --max-new-tokens 64
    python -m chatbot.cli --adapters runs/민수/adapters --memory runs/민수/data   # with the persona's memory

Commands while chatting:
    /personas        list the personas (and adapters that cannot be used, with the reason)
    /persona NAME    switch persona (NAME "base" = the base model without adapter); the chat goes on
    /reset           forget the conversation
    /quit            leave (Ctrl-D too)
Replies stream as they are generated.
"""
from __future__ import annotations

import sys
from typing import Sequence, TextIO

from core.cli import parser, run_cli, setup_logging
from core.errors import UserError
from core.memory import add_memory_flag, load_memory
from core.reply_shape import bubbles

BASE = "base"


def _args(argv: Sequence[str] | None):
    from chatbot.engine import GenerationParams

    d = GenerationParams()
    p = parser("python -m chatbot.cli", __doc__)
    p.add_argument("--adapters", required=True, help="directory holding one subdirectory per persona adapter")
    p.add_argument("--persona", default=None, help="persona to start with (default: the first one; 'base' = none)")
    p.add_argument("--base-model", default=None, help="base model spec (default: the adapters' own)")
    p.add_argument("--cache-dir", default=None, help="cache of extended base models (default $KAKAO_PERSONA_CACHE)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling mass")
    p.add_argument("--top-k", type=int, default=d.top_k, help="sample among the k likeliest tokens (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty, help="penalty for repeats")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="reply length cap (tokens)")
    p.add_argument("--candidates", type=int, default=d.candidates,
                   help=f"replies sampled per message, the one that best answers it is kept (default {d.candidates}; "
                        "1 = no reranking, the reply streams as it is generated)")
    p.add_argument("--backward-weight", type=float, default=d.backward_weight,
                   help="weight of the backward model's log p(message | reply) in the reranking, where the base has "
                        f"that model (default {d.backward_weight:g}; 0 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed every reply (reproducible answers)")
    add_memory_flag(p)
    return p.parse_args(argv)


class TerminalChat:
    """The chat loop, reading lines from ``inp`` and streaming replies to ``out``."""

    def __init__(self, engine, persona: str | None, params, seed: int | None, out: TextIO):
        self.engine, self.persona, self.params, self.seed, self.out = engine, persona, params, seed, out
        self.history: list[dict] = []

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run(self, inp: TextIO) -> None:
        self.say(f"[{self._name()}] /personas, /persona NAME, /reset, /quit")
        for line in inp:
            line = line.strip()
            if line == "/quit":
                break
            if line.startswith("/"):
                self.command(line)
            elif line:
                self.send(line)

    def command(self, line: str) -> None:
        cmd, _, arg = line.partition(" ")
        if cmd == "/personas":
            for p in self.engine.personas:
                self.say(f"  {p.label}" if p.available else f"  ({p.name}: unavailable: {p.reason})")
            self.say(f"  {BASE}: base model, no persona")
        elif cmd == "/persona":
            self.switch(arg.strip())
        elif cmd == "/reset":
            self.history = []
            self.say("(conversation cleared)")
        else:
            self.say(f"unknown command {cmd}: /personas, /persona NAME, /reset, /quit")

    def switch(self, name: str) -> None:
        try:
            self.persona = resolve_persona(self.engine, name)
        except UserError as e:
            self.say(str(e))
            return
        self.say(f"(persona: {self._name()})")

    def send(self, text: str) -> None:
        from chatbot.engine import MessageTooLong

        history = self.history + [{"role": "user", "content": text}]
        lines = BubbleLines(f"{self._name()}> ", self.out)
        reply = ""
        try:
            for reply in self.engine.generate(history, self.persona, self.params, seed=self.seed):
                lines.show(reply)
        except MessageTooLong as e:
            self.say(f"\n(refused: {e})")
            return
        lines.close()
        self.history = history + [{"role": "assistant", "content": reply}]

    def _name(self) -> str:
        return self.persona or BASE


class BubbleLines:
    """Prints a growing reply as it streams, one ``name> `` line per bubble (line of a burst)."""

    def __init__(self, prompt: str, out: TextIO):
        self.prompt, self.out, self.shown = prompt, out, ""
        self._print(prompt)

    def show(self, reply: str) -> None:
        """Print what ``reply`` (the whole reply so far) adds to what is on screen."""
        text = "\n".join(bubbles(reply))
        if not text.startswith(self.shown):  # not a continuation of what is on screen: a fresh line
            self._print("\n" + self.prompt)
            self.shown = ""
        self._print(text[len(self.shown):].replace("\n", "\n" + self.prompt))
        self.shown = text

    def close(self) -> None:
        self._print("\n")

    def _print(self, s: str) -> None:
        print(s, end="", file=self.out, flush=True)


def resolve_persona(engine, name: str | None, what: str = "persona") -> str | None:
    """A usable persona name (None for the base model); UserError naming the choices otherwise."""
    usable = [p.name for p in engine.personas if p.available]
    if name is None:
        return usable[0]
    if name == BASE:
        return None
    if name not in usable:
        raise UserError(f"{what} {name}: not a usable persona (choose from {', '.join(usable + [BASE])})")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    setup_logging()
    from chatbot.engine import Engine, GenerationParams

    params = GenerationParams(args.temperature, args.top_p, args.top_k, args.repetition_penalty,
                              args.max_new_tokens, args.candidates,
                              backward_weight=args.backward_weight).clamped()
    engine = Engine.from_adapters_dir(args.adapters, base_model=args.base_model, cache_dir=args.cache_dir,
                                      memory=load_memory(args.memory))
    chat = TerminalChat(engine, resolve_persona(engine, args.persona, "--persona"), params, args.seed, sys.stdout)
    chat.run(sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
