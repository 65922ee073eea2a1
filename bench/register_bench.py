"""Does a persona answer in its own register? Replies with and without the register or swearing check.

    python bench/register_bench.py --adapters runs/민수/adapters            # 30 messages, the first persona
    python bench/register_bench.py --adapters runs/민수/adapters --messages 60 --persona 민수
    python bench/register_bench.py --adapters runs/민수/adapters --check profanity --messages 120 --turns 4

``--check register`` (default): a persona adapter trained on the dialogue base (docs/dialogue.md) learned
general answers from ChatbotData, most of them polite (존댓말), and a persona with little data of its own
sometimes answers "맛있게 드세요!" where the real person would write "맛있게 먹어!". The chat ranks a polite
candidate after every acceptable one when the persona's card says its turns are almost never polite
(``polite_share`` < ``core.reply_shape.POLITE_RARE``; measured by ``pipeline.prepare``).

``--check profanity``: a small model has seen curses in pretraining ("애미뒤진", "쳐 죽여"); the chat bans the
swear word families the persona's turns never use (``profanity`` on the card, ``core.reply_shape.PROFANITY``).

The messages are the first N held-out questions of ChatbotData (``../shared/data``, read there,
never copied; no training stage saw them), sent in conversations of ``--turns`` messages (each arm keeps its
own replies in the history; a new topic at every message, as when someone tries the bot). Each message gets
the chat's reply (4 candidates, MMI reranking, the seed + the message's number) twice: with the persona's card
as it is (checked) and with the check off (polite share unknown, or every swear family allowed: the baseline of
the same run).
Prints the share of off-register replies of each (polite, or swearing as the persona never does), the
persona's real share, the mean seconds per reply, and the replies that differ.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", required=True, help="trained adapters dir (python -m pipeline.train's --out)")
    ap.add_argument("--persona", default=None, help="persona to ask (default: the first usable one)")
    ap.add_argument("--messages", type=int, default=30, help="held-out ChatbotData questions to send")
    ap.add_argument("--turns", type=int, default=1, help="messages per conversation (default 1: each alone)")
    ap.add_argument("--check", choices=("register", "profanity"), default="register",
                    help="which check to measure (default register)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of the first message (+1 for each next)")
    args = ap.parse_args(argv)

    from chatbot import decoding, model_thread
    from chatbot.decoding import SamplingParams
    from chatbot.engine import Engine
    from core.errors import UserError
    from core.reply_shape import PROFANITY, foreign_swearing, is_polite
    from data_prep.chatbot_data import load_qa

    if args.messages < 1 or args.turns < 1:
        raise UserError("--messages and --turns must be at least 1")
    engine = Engine.from_adapters_dir(args.adapters)
    name = args.persona or next(p.name for p in engine.personas if p.available)
    limits = engine.persona(name).limits
    if args.check == "register":
        if limits.polite_share is None:
            raise UserError(f"{name}'s persona.yaml has no polite_share: prepare and train it again")
        off, flagged, real = replace(limits, polite_share=None), is_polite, limits.polite_share
        checked = f"checked {'yes' if limits.casual else 'no: the persona is not casual'}"
    else:
        off, real = replace(limits, profanity=frozenset(PROFANITY)), None
        flagged = lambda text: foreign_swearing(text, limits)  # noqa: E731
        checked = f"families the persona uses: {', '.join(sorted(limits.profanity)) or 'none'}"
    questions = [qa.question for qa in load_qa(split="heldout")[: args.messages]]
    engine.swap(name)
    arms = {"unchecked": off, "checked": limits}
    replies: dict[str, list[str]] = {a: [] for a in arms}
    seconds: dict[str, list[float]] = {a: [] for a in arms}
    history: dict[str, list[dict]] = {a: [] for a in arms}
    for i, q in enumerate(questions):
        for label, lim in arms.items():
            if i % args.turns == 0:
                history[label] = []
            history[label].append({"role": "user", "content": q})
            prompt = engine.prompt(history[label], name, SamplingParams().max_new_tokens)
            job = decoding.Job(replace(prompt, limits=lim), SamplingParams(), args.seed + i)
            t0 = time.perf_counter()
            reply = model_thread.run(decoding.decode, engine.model, engine.tokenizer, [job])[0]
            seconds[label].append(time.perf_counter() - t0)
            replies[label].append(reply.text)
            history[label].append({"role": "assistant", "content": reply.text})
    print(f"{name}: {args.check} ({checked}"
          + (f"; real turns polite {real:.3f}" if real is not None else "") + f"); {len(questions)} held-out "
          f"ChatbotData questions in conversations of {args.turns}, seed {args.seed}")
    for label in ("unchecked", "checked"):
        share = sum(map(flagged, replies[label])) / len(questions)
        print(f"  {args.check} {label:9s}: {'polite' if args.check == 'register' else 'swearing not theirs'} "
              f"{share:.3f}, {statistics.fmean(seconds[label]):.2f} s per reply")
    for q, a, b in zip(questions, replies["unchecked"], replies["checked"]):
        if a != b:
            print(f"  {q!r}: {a!r} -> {b!r}")


if __name__ == "__main__":
    from core.cli import run_cli

    sys.exit(run_cli(main))
