"""Next-reply selection, adapter vs adapter + memory only (the persona's held-out items).

    python bench/memory_selection.py --adapter runs/민수/adapters/민수 --data runs/민수/data --items 50

The same computation as the "adapter" and "adapter + memory" rows of
``python -m pipeline.evaluate --memory`` (pipeline.evaluation.selection: persona_items, recall_all,
score_items), without the base and few-shot systems and the Q/A set, for a machine with no time for
them. Items that recall something are scored first and printed one by one as JSON lines (true reply,
recalled replies, rank and hit under each score for both systems), then the Hits@1 summary of both.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluation import orchestrate, selection  # noqa: E402
from pipeline.evaluation.runner import instruction_for, load_adapter, max_length_for  # noqa: E402
from pipeline.evaluation.tasks import build_task  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", type=Path, required=True, help="adapter folder (pipeline.train)")
    p.add_argument("--data", type=Path, required=True, help="its prepared data folder (the memory: train.jsonl)")
    p.add_argument("--items", type=int, default=50, help="held-out items at most (default 50)")
    p.add_argument("--seed", type=int, default=0, help="item and distractor choice (default 0, as evaluate)")
    a = p.parse_args(argv)
    task = build_task(a.adapter, a.data, None, 1, 0, a.seed)
    items = selection.persona_items(a.data, task.persona, task.manifest["instruction"], a.items, a.seed)
    mem = orchestrate.recall_items(task, {"persona": items})["persona"]
    print(json.dumps(selection.memory_overlap(items, mem)), flush=True)
    model, tok = load_adapter(task)
    instruction, max_len = instruction_for(task, "adapter"), max_length_for(tok, task, "adapter")
    bare: dict = {}
    plain, remembered = {}, {}
    for i in sorted(range(len(items)), key=lambda i: not mem[i]):
        plain[i] = selection.score_items(model, tok, [items[i]], instruction, max_len, bare=bare)[0]
        remembered[i] = selection.score_items(model, tok, [items[i]], instruction, max_len, bare=bare,
                                              memories=[mem[i]], without_memory=[plain[i]])[0]
        if plain[i] is None or remembered[i] is None:
            continue
        scores = [s for s in selection.SCORES if plain[i].has(s)]  # no marginal PMI here
        print(json.dumps({"item": i, "truth": items[i].candidates[0], "recalled": [[r.reply, r.score] for r in mem[i]],
                          **{f"{s}_rank": [plain[i].rank(s), remembered[i].rank(s)] for s in scores},
                          **{f"{s}_hit": [plain[i].hit(s), remembered[i].hit(s)] for s in scores}},
                         ensure_ascii=False), flush=True)
    print(json.dumps({"adapter": selection.summarize(list(plain.values())),
                      "adapter_memory": selection.summarize(list(remembered.values()))}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
