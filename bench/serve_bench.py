"""Benchmark the persona server: concurrent clients on several personas, batched vs the serialised engine.

    .venv/bin/python bench/serve_bench.py --tiny          # tiny random Gemma-style model (seconds)
    .venv/bin/python bench/serve_bench.py                 # default base model, random LoRA adapters (minutes)
    .venv/bin/python bench/serve_bench.py --adapters adapters/

``--clients`` threads (default 8) each send ``--rounds`` chat requests, round-robin over
``--personas`` personas (default 4), all at once:

- serialised: each thread calls ``Engine.reply`` (what the web chat does): the engine's lock
  makes the replies take turns;
- batched: each thread is an ``openai`` client of ``chatbot.serve`` on 127.0.0.1 (the
  batcher generates concurrent requests together, one forward pass per token).

Greedy decoding, so both arms generate the same tokens (checked and printed); tokens/s is
the generated tokens (exact counts from the batcher) over the wall time of each arm. Also
prints each arm's per-request latency (median / max) and the batch sizes the server used.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MESSAGES = [
    "오늘 점심 뭐 먹었어?", "주말에 뭐 할 거야? 난 영화 보러 갈까 해", "요즘 잠을 잘 못 자겠어 ㅠㅠ",
    "내일 비 온대 우산 챙겨", "그 드라마 봤어? 결말 대박이던데 ㅋㅋ", "생일 선물 뭐 받고 싶어?",
    "회사 일 너무 많다 진짜", "다음 달에 여행 가자! 어디가 좋을까",
]


def build_adapters(root: Path, tiny: bool, n: int) -> tuple[Path, Path]:
    """(extended base dir, adapters dir with ``n`` random-but-seeded LoRA adapters)."""
    from pipeline.extension import ensure_extended
    from tests.chat_helpers import make_adapter
    from tests.tiny_models import make_tiny_gemma

    spec = str(make_tiny_gemma(root / "tiny-base")) if tiny else None
    ext = ensure_extended(spec, cache_dir=root / "cache" if tiny else None)
    for i in range(n):
        make_adapter(ext, root / "adapters" / f"persona{i}", f"페르소나{i}", "친구", seed=i + 1, base_spec=spec,
                     lora_std=0.3 if tiny else 0.02)
    return ext, root / "adapters"


def _jobs(names: list[str], clients: int, rounds: int) -> list[list[tuple[str, list[dict]]]]:
    return [[(names[(c + r) % len(names)], [{"role": "user", "content": MESSAGES[(c + r) % len(MESSAGES)]}])
             for r in range(rounds)] for c in range(clients)]


def _run_threads(work, jobs) -> tuple[float, list[float], list[list[str]]]:
    """Run ``work(persona, history)`` for each client's jobs in its own thread, all at once."""
    latencies: list[float] = []
    replies: list[list[str]] = [[] for _ in jobs]
    start = threading.Barrier(len(jobs) + 1)

    def client(i: int) -> None:
        start.wait()
        for persona, history in jobs[i]:
            t0 = time.perf_counter()
            replies[i].append(work(persona, history))
            latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies, replies


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random Gemma-style model instead of the default")
    ap.add_argument("--adapters", default=None, help="your adapters (default: random ones made here)")
    ap.add_argument("--personas", type=int, default=4, help="random personas to make (default 4)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client (default 2)")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per reply (default 32)")
    args = ap.parse_args(argv)

    import openai

    from chatbot.batching import Batcher
    from chatbot.engine import Engine, GenerationParams
    from chatbot.serve import PersonaService, create_app, serve_in_thread
    from tests.chat_helpers import load_engine

    tmp = tempfile.TemporaryDirectory()
    if args.adapters:
        engine = Engine.from_adapters_dir(args.adapters)
    else:
        engine = load_engine(*build_adapters(Path(tmp.name), args.tiny, args.personas))
    names = [p.name for p in engine.personas if p.available][:args.personas]
    jobs = _jobs(names, args.clients, args.rounds)
    greedy = GenerationParams(temperature=0, max_new_tokens=args.max_tokens)

    batcher = Batcher(engine, max_batch=args.clients)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve_in_thread(create_app(PersonaService(engine, batcher)), "127.0.0.1", port)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=3600)
    counts: list[int] = []

    def batched(persona, history):
        r = client.chat.completions.create(model=persona, messages=history, temperature=0, max_tokens=args.max_tokens)
        counts.append(r.usage.completion_tokens)
        return r.choices[0].message.content

    engine.reply(jobs[0][0][1], names[0], greedy)  # warm-up (first-call allocations)
    t_ser, lat_ser, rep_ser = _run_threads(lambda p, h: engine.reply(h, p, greedy), jobs)
    t_bat, lat_bat, rep_bat = _run_threads(batched, jobs)
    server.should_exit = True
    batcher.close()

    tokens = sum(counts)
    same = sum(a == b for ra, rb in zip(rep_ser, rep_bat) for a, b in zip(ra, rb))
    total = sum(len(r) for r in rep_ser)
    print(f"model: {'tiny' if args.tiny else args.adapters or 'default'}; {args.clients} clients x "
          f"{args.rounds} requests on {len(names)} personas, greedy, max {args.max_tokens} tokens; "
          f"{tokens} tokens generated per arm")
    for label, t, lat in (("serialised engine", t_ser, lat_ser), ("batched server", t_bat, lat_bat)):
        print(f"{label:18s}: {tokens / t:8.1f} tokens/s  wall {t:7.2f} s  "
              f"latency median {statistics.median(lat):6.2f} s  max {max(lat):6.2f} s")
    print(f"speed-up: {t_ser / t_bat:.2f}x (target >= 3x); same replies: {same}/{total}; "
          f"batch sizes: {sorted(batcher.batch_sizes, reverse=True)}")
    for c, (ra, rb) in enumerate(zip(rep_ser, rep_bat)):
        for r, (a, b) in enumerate(zip(ra, rb)):
            if a != b:
                print(f"  differs: client {c} request {r} ({jobs[c][r][0]}): serialised {a!r} / batched {b!r}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
