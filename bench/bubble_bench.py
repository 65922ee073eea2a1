"""Bursts: how many bubbles the chat's replies have, and whether each later bubble is one the checks pass.

    python bench/bubble_bench.py --adapters runs/민수/adapters                 # 40 messages, the first persona
    python bench/bubble_bench.py --adapters runs/민수/adapters --messages 80 --persona 민수

A persona who sends several messages in a row answers with several lines, shown as separate bubbles
(docs/conversation.md, "Bursts"). The chat reranks bubble by bubble: the first bubble among its
candidates, then each later one among candidates sampled after the bubbles before, each checked
(loops, echoes, 존댓말 for a 반말 persona, a stray mark alone). The baseline of the same run is the
whole-reply reranking (``decode(..., by_bubble=False)``): whole replies sampled, checked and
reranked as one, nothing shown before the reply is done; and one candidate (no reranking, streamed
token by token), where the number of bubbles is the model's own draw.

The messages are the first N held-out questions of ChatbotData (``../shared/data``, read there,
never copied; no training stage saw them), one seed per message, the same in every arm. Prints, per
arm: the share of replies with several bubbles (against the persona's real ``burst_share``), the mean
bubble count, polite replies, later bubbles that are polite, copy the message or a bubble before them
or are a stray mark, echoes, loops, the mean seconds to the first text shown and to the whole reply; then
the replies that differ.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _FirstPut:
    """A streamer noting when the first text (a bubble, or a token with one candidate) arrives."""

    def __init__(self) -> None:
        self.start, self.first = time.perf_counter(), None

    def put(self, value) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.start

    def end(self) -> None:
        pass


def bad_later(text: str, message: str, limits) -> int:
    """Bubbles after the first that are polite (for a 반말 persona), a stray mark, or copy the message or
    a bubble before them."""
    from core.reply_shape import STRAY_MARKS, bubbles, echoed_bubbles, is_polite

    echoed = echoed_bubbles(text, [message])
    return sum(1 for k, b in enumerate(bubbles(text)[1:], 1)
               if (limits.casual and is_polite(b)) or b in STRAY_MARKS or k in echoed)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", required=True, help="trained adapters dir (python -m pipeline.train's --out)")
    ap.add_argument("--persona", default=None, help="persona to ask (default: the first usable one)")
    ap.add_argument("--messages", type=int, default=40, help="held-out ChatbotData questions to send")
    args = ap.parse_args(argv)

    from chatbot import decoding, model_thread
    from chatbot.decoding import SamplingParams
    from chatbot.engine import Engine
    from core.reply_shape import bubbles, is_echo, is_polite, loop_reason
    from data_prep.chatbot_data import load_qa

    engine = Engine.from_adapters_dir(args.adapters)
    name = args.persona or next(p.name for p in engine.personas if p.available)
    limits = engine.persona(name).limits
    questions = [qa.question for qa in load_qa(split="heldout")[: args.messages]]
    engine.swap(name)
    arms = {"whole-reply": (False, 4), "bubble by bubble": (True, 4), "one candidate": (True, 1)}
    replies: dict[str, list[str]] = {a: [] for a in arms}
    first: dict[str, list[float]] = {a: [] for a in arms}
    whole: dict[str, list[float]] = {a: [] for a in arms}
    for seed, q in enumerate(questions):
        prompt = engine.prompt([{"role": "user", "content": q}], name, SamplingParams().max_new_tokens)
        for arm, (by_bubble, candidates) in arms.items():
            clock = _FirstPut()
            job = decoding.Job(prompt, SamplingParams(candidates=candidates), seed, clock)
            reply = model_thread.run(decoding.decode, engine.model, engine.tokenizer, [job], by_bubble=by_bubble)[0]
            whole[arm].append(time.perf_counter() - clock.start)
            first[arm].append(clock.first if clock.first is not None else whole[arm][-1])
            replies[arm].append(reply.text)
    n = len(questions)
    print(f"{name}: real burst share {limits.burst_share}, at most {limits.max_lines} lines; {n} held-out ChatbotData "
          "questions, seed = question index")
    for arm in arms:
        texts = replies[arm]
        counts = [len(bubbles(t)) for t in texts]
        print(f"  {arm:16s}: several bubbles {sum(c > 1 for c in counts) / n:.3f}, mean bubbles "
              f"{statistics.fmean(counts):.2f}, polite {sum(map(is_polite, texts)) / n:.3f}, bad later bubbles "
              f"{sum(bad_later(t, q, limits) for t, q in zip(texts, questions))}, echoes "
              f"{sum(is_echo(t, [q]) for t, q in zip(texts, questions))}, loops "
              f"{sum(bool(loop_reason(t, limits)) for t in texts)}; first text shown "
              f"{statistics.fmean(first[arm]):.2f} s, whole reply {statistics.fmean(whole[arm]):.2f} s")
    print("  replies that differ (whole-reply | bubble by bubble):")
    for q, a, b in zip(questions, replies["whole-reply"], replies["bubble by bubble"]):
        if a != b:
            print(f"  {q!r}: {a!r} | {b!r}")


if __name__ == "__main__":
    from core.cli import run_cli

    sys.exit(run_cli(main))
