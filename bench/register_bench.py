"""Does a persona who writes 반말 answer in 반말? Replies with and without the register check.

    python bench/register_bench.py --adapters runs/민수/adapters            # 30 messages, the first persona
    python bench/register_bench.py --adapters runs/민수/adapters --messages 60 --persona 민수

A persona adapter trained on the dialogue base (docs/dialogue.md) learned general answers from
ChatbotData, most of them polite (존댓말), and a persona with little data of its own sometimes answers
"맛있게 드세요!" where the real person would write "맛있게 먹어!". The chat ranks a polite candidate
after every acceptable one when the persona's card says its turns are almost never polite
(``polite_share`` < ``core.reply_shape.POLITE_RARE``; measured by ``pipeline.prepare``).

The messages are the first N held-out questions of ChatbotData (``../shared/data``, read there,
never copied; no training stage saw them). Each message gets the chat's reply (4 candidates,
MMI reranking, same seed) twice: with the persona's card as it is (register checked) and with its
polite share unknown (the check off, the baseline of the same run). Prints the share of polite
replies of each, the persona's real polite share, the mean seconds per reply, and the replies
that differ.
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
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of every reply")
    args = ap.parse_args(argv)

    from chatbot import decoding, model_thread
    from chatbot.decoding import SamplingParams
    from chatbot.engine import Engine
    from core.errors import UserError
    from core.reply_shape import is_polite
    from data_prep.chatbot_data import load_qa

    engine = Engine.from_adapters_dir(args.adapters)
    name = args.persona or next(p.name for p in engine.personas if p.available)
    limits = engine.persona(name).limits
    if limits.polite_share is None:
        raise UserError(f"{name}'s persona.yaml has no polite_share: prepare and train it again")
    questions = [qa.question for qa in load_qa(split="heldout")[: args.messages]]
    engine.swap(name)
    replies: dict[str, list[str]] = {"checked": [], "unchecked": []}
    seconds: dict[str, list[float]] = {"checked": [], "unchecked": []}
    for q in questions:
        prompt = engine.prompt([{"role": "user", "content": q}], name, SamplingParams().max_new_tokens)
        for label, lim in (("checked", limits), ("unchecked", replace(limits, polite_share=None))):
            job = decoding.Job(replace(prompt, limits=lim), SamplingParams(), args.seed)
            t0 = time.perf_counter()
            reply = model_thread.run(decoding.decode, engine.model, engine.tokenizer, [job])[0]
            seconds[label].append(time.perf_counter() - t0)
            replies[label].append(reply.text)
    print(f"{name}: real turns polite {limits.polite_share:.3f} (register checked below "
          f"{'yes' if limits.casual else 'no: the persona is not casual'}); {len(questions)} held-out ChatbotData "
          f"questions, seed {args.seed}")
    for label in ("unchecked", "checked"):
        share = sum(map(is_polite, replies[label])) / len(questions)
        print(f"  register {label:9s}: polite replies {share:.3f}, {statistics.fmean(seconds[label]):.2f} s per reply")
    for q, a, b in zip(questions, replies["unchecked"], replies["checked"]):
        if a != b:
            print(f"  {q!r}: {a!r} -> {b!r}")


if __name__ == "__main__":
    from core.cli import run_cli

    sys.exit(run_cli(main))
