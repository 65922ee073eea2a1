"""Speed of the persona memory (core.memory): index build for 10k pairs and one lookup.

    python bench/memory_bench.py            # ChatbotData's first 10,000 Q/A pairs as (message, reply)
    python bench/memory_bench.py --pairs 2000

Targets: the index of 10k pairs builds well under a second and a lookup takes milliseconds
(the chat builds it once at start, then looks up before every reply). Timings on a busy
machine are inflated, so each is also printed as a ratio to a baseline measured in the same
run: parsing the same pairs as JSON lines, what reading ``train.jsonl`` costs anyway.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.memory import MemoryIndex  # noqa: E402

CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "chatbot_data" / "ChatbotData.csv"


def best_of(fn, repeat: int) -> float:
    """The fastest of ``repeat`` runs, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=10_000, help="pairs indexed (default 10000)")
    p.add_argument("--repeat", type=int, default=3, help="runs per timing, the fastest kept (default 3)")
    a = p.parse_args(argv)
    with open(CSV, encoding="utf-8", newline="") as f:
        pairs = [(r["Q"], r["A"]) for r in csv.DictReader(f)][:a.pairs]
    lines = [json.dumps({"context": [{"speaker": "친구", "text": q}], "response": r}, ensure_ascii=False)
             for q, r in pairs]
    parse = best_of(lambda: [json.loads(x) for x in lines], a.repeat)
    build = best_of(lambda: MemoryIndex.build(pairs), a.repeat)
    index = MemoryIndex.build(pairs)
    queries = [q for q, _ in pairs[::max(1, len(pairs) // 200)]]
    per = [best_of(lambda q=q: index.search(q), 1) for q in queries]
    print(f"{len(index)} pairs: build {build:.3f} s ({build / parse:.1f}x parsing them as JSON, {parse:.3f} s); "
          f"lookup median {statistics.median(per) * 1e3:.2f} ms, max {max(per) * 1e3:.2f} ms "
          f"({statistics.median(per) / (parse / len(lines)):.0f}x parsing one pair)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
