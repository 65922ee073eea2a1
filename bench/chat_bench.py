"""Benchmark the chat engine on the default base model (CPU): persona swap, first token, tokens/s.

    .venv/bin/python bench/chat_bench.py                       # quick random LoRA adapters made here
    .venv/bin/python bench/chat_bench.py --adapters adapters/  # your trained adapters

Without ``--adapters`` it builds ``--n-adapters`` LoRA adapters on the extended default
base (``ensure_extended(None)``) with random ``lora_B`` and new-token rows (so each
persona differs), in the adapter-directory layout ``pipeline.train`` writes. Then it
loads them all into one ``chatbot.engine.Engine`` and prints:

- time to the first bubble (first line of a reply, or the whole reply when it has one line) of a
  ~20-token reply with reranking (the default candidates), the same without the backward model's score,
  the same on the old decoding path (no
  shared prefill, plain output layer, whole-reply reranking: the baseline of the same run), with one candidate and greedy,
  and the load average it was measured under;
- swap latency (median / max over ``--swaps`` persona switches; target < 50 ms) against
  the time a full reload of the extended base takes (what switching would cost without
  one shared PeftModel), as a ratio;
- time to first token and tokens/s of a streamed reply, per persona and for the base
  model (adapters disabled);
- tokens/s of the same greedy generation with PEFT's own TrainableTokens forward (which
  rebuilds the embedding matrix every step) against the engine's in-place rows.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HISTORY = [{"role": "user", "content": "오늘 점심 뭐 먹었어? 나는 김치찌개 먹었는데 너무 맛있었어"}]


def make_adapters(ext_dir: Path, out: Path, n: int) -> None:
    from tests.chat_helpers import make_adapter

    for i in range(n):
        make_adapter(ext_dir, out / f"persona{i}", f"페르소나{i}", "친구", seed=i, base_spec=None, lora_std=0.02)


def time_reload(ext_dir: Path) -> float:
    from core.models import load_extended

    t0 = time.perf_counter()
    model, _, _ = load_extended(ext_dir)
    dt = time.perf_counter() - t0
    del model
    return dt


def time_swaps(engine, names: list, swaps: int) -> list[float]:
    cycle = names + [None]
    return [engine.swap(cycle[i % len(cycle)]) for i in range(swaps)]


def first_bubble(engine, persona, params, seed: int) -> tuple[float, float, str]:
    """(seconds until the first bubble is complete on screen, CPU seconds of this process by then,
    the whole reply). On a shared machine the CPU time is the steadier figure: divided by the
    threads it bounds the wall time of an idle machine from below."""
    t0, c0 = time.perf_counter(), time.process_time()
    first, text = None, ""
    for text in engine.generate(HISTORY, persona, params, seed=seed):
        if first is None and "\n" in text.lstrip():
            first = (time.perf_counter() - t0, time.process_time() - c0)  # a burst: line 1 ended, on screen
    wall, cpu = first or (time.perf_counter() - t0, time.process_time() - c0)
    return wall, cpu, text


def time_first_bubble(engine, persona, tokens: int, repeats: int) -> None:
    """Median first-bubble latency with reranking (the default candidates; with and without the backward model's
    score) and without (1 candidate)."""
    from chatbot import decoding
    from chatbot.decoding import SamplingParams

    default = SamplingParams(max_new_tokens=tokens)
    runs = {"reranked": default, "reranked, no backward model": replace(default, backward_weight=0.0),
            "reranked, old path": default,
            "1 candidate (no reranking)": replace(default, candidates=1), "greedy": replace(default, temperature=0)}
    med = {}
    for label, params in runs.items():
        with old_path(label.endswith("old path")):
            got = [first_bubble(engine, persona, params, seed) for seed in range(repeats)]
        med[label] = statistics.median(t for t, _, _ in got)
        cpu = statistics.median(c for _, c, _ in got)
        print(f"first bubble, {label} ({params.rows} rows, max {tokens} new tokens): median {med[label]:.2f} s "
              f"wall, {cpu:.2f} s CPU over {repeats} (target < 2 s wall); load {os.getloadavg()[0]:.1f}; "
              f"e.g. {got[0][2]!r}")
    print(f"reranking costs {med['reranked'] / med['1 candidate (no reranking)']:.2f}x the single-candidate time "
          f"({med['reranked'] / med['reranked, no backward model']:.2f}x the reranking without the backward model's "
          f"score{'' if decoding.has_backward(engine.model) else '; this base has none'}); "
          f"the old path takes {med['reranked, old path'] / med['reranked']:.2f}x the current one")


@contextmanager
def old_path(on: bool) -> Iterator[None]:
    """Decoding as it was before the shared prefill, the narrow output layer and the first-bubble
    reranking (the baseline)."""
    from chatbot import decoding

    if not on:
        yield
        return
    saved = decoding.shared_prefill, decoding.narrow_output_layer, decoding.decode
    decoding.shared_prefill, decoding.narrow_output_layer = (lambda *a: None), (lambda model: nullcontext())
    decoding.decode = partial(saved[2], by_bubble=False)
    try:
        yield
    finally:
        decoding.shared_prefill, decoding.narrow_output_layer, decoding.decode = saved


def time_stream(engine, persona, tokens: int) -> tuple[float, float, int]:
    """(seconds to first text, tokens/s over the whole reply, tokens generated)."""
    from chatbot.engine import GenerationParams

    params = GenerationParams(max_new_tokens=tokens, candidates=1)
    t0 = time.perf_counter()
    first, text = None, ""
    for text in engine.generate(HISTORY, persona, params, seed=0):
        first = first or time.perf_counter() - t0
    total = time.perf_counter() - t0
    n = len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + the closing <|eot|>
    return first or total, min(n, tokens) / total, min(n, tokens)


def greedy_tps(engine, name: str, tokens: int, peft_path: bool) -> float:
    """tokens/s of greedy generation of exactly ``tokens`` tokens, pinned rows or PEFT's forward."""
    import torch

    engine.swap(name)
    if peft_path:
        for layer in engine._token_layers:
            layer.unmerge()
    ids = torch.tensor([engine.prompt_ids(HISTORY, name, tokens)])
    with torch.inference_mode():
        t0 = time.perf_counter()
        engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                              min_new_tokens=tokens, do_sample=False, pad_token_id=engine.pad_id)
        dt = time.perf_counter() - t0
    engine.swap(None)  # resets the engine's idea of the active adapter
    return tokens / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", default=None, help="trained adapters dir (default: quick random ones)")
    ap.add_argument("--cache-dir", default=None, help="extended-base cache (default $KAKAO_PERSONA_CACHE)")
    ap.add_argument("--n-adapters", type=int, default=3, help="quick adapters to make")
    ap.add_argument("--swaps", type=int, default=40, help="persona switches to time")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per timed reply")
    ap.add_argument("--bubble-tokens", type=int, default=20, help="max new tokens of the first-bubble replies")
    ap.add_argument("--repeats", type=int, default=3, help="replies per first-bubble measurement (seeds 0..)")
    ap.add_argument("--only-bubble", action="store_true", help="only the first-bubble latency (skip the rest)")
    args = ap.parse_args()

    import torch

    from chatbot.engine import Engine
    from pipeline.extension import ensure_extended

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    ext = ensure_extended(None, cache_dir=args.cache_dir)
    reload_s = 0.0 if args.only_bubble else min(time_reload(ext) for _ in range(2))
    with tempfile.TemporaryDirectory() as tmp:
        adapters = Path(args.adapters) if args.adapters else Path(tmp)
        if not args.adapters:
            make_adapters(ext, adapters, args.n_adapters)
        t0 = time.perf_counter()
        engine = Engine.from_adapters_dir(adapters, cache_dir=args.cache_dir)
        start_s = time.perf_counter() - t0
        names = [p.name for p in engine.personas if p.available]
        print(f"load average before the replies: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        time_first_bubble(engine, names[0], args.bubble_tokens, args.repeats)
        if args.only_bubble:
            return
        swaps = time_swaps(engine, names, args.swaps)
        print(f"personas: {names}; engine start (base + {len(names)} adapters): {start_s:.2f} s")
        med = statistics.median(swaps)
        print(f"swap: median {med * 1e3:.2f} ms, max {max(swaps) * 1e3:.2f} ms over {len(swaps)} "
              f"(target < 50 ms)")
        print(f"full base reload: {reload_s:.2f} s  -> a swap is {reload_s / med:,.0f}x faster")
        for who in names[:2] + [None]:
            ttft, tps, n = time_stream(engine, who, args.tokens)
            print(f"{who or 'base (no persona)'}: first token {ttft * 1e3:.0f} ms, {tps:.1f} tokens/s ({n} tokens)")
        fast = greedy_tps(engine, names[0], args.tokens, peft_path=False)
        slow = greedy_tps(engine, names[0], args.tokens, peft_path=True)
        print(f"greedy {args.tokens} tokens: in-place token rows {fast:.1f} tok/s vs PEFT TrainableTokens "
              f"forward {slow:.1f} tok/s ({fast / slow:.2f}x)")


if __name__ == "__main__":
    main()
