"""How much should the chat's reranking weigh the backward model? Measured on a dev set, not on the bench's items.

    python bench/rerank_weight_bench.py --adapters runs/bench_fidelity/adapters            # 4 personas, ~25 min
    python bench/rerank_weight_bench.py --adapters runs/bench_fidelity/adapters --personas 왕 --items 50 --chat-items 20

The chat keeps, of its sampled candidates, the one with the best

    (log p(reply | context) - 0.5 log p(reply | no context)) / tokens + w * log p(message | reply) / message tokens

(chatbot.decoding; ``w`` = ``SamplingParams.backward_weight``). This bench measures that choice for several ``w``
on dev items: held-out ChatbotData Q/A rows (no stage trained on them) that share no answer and no question
with the items bench/conversation_bench.py reports (``--test-items`` at its seed 0), so a weight picked here is
not picked on the figures it is judged by. Two measures, each for every persona of ``--adapters``:

1. ranking: the true answer among 20 given answers (as next-reply selection), Hits@1 of the chat's score at each
   ``w``, for the adapter and for its base under the persona's card; and of the selection's ``pmi_bidi``
   (PMI + mu * log p(message | reply), summed) at each ``mu``;
2. the chat's own choice: for ``--chat-items`` dev questions the persona samples its candidates once (the chat's
   settings and seed), the score's parts are kept and the choice is made again for each ``w``; reported: how
   many choices differ from the current default's, and the chosen reply's chrF (character 1-3-grams, beta 2)
   against the dev item's true answer, a rough measure of answering that no model of the project computes.

Needs the SmileStyle adapters of bench/persona_fidelity.py (or any adapters) on an extended base with the
backward model (the default one has), and ../shared/data/chatbot_data/ChatbotData.csv (not shipped).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)  # the chat's backward_weight (clamped to 0..4)
MUS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)  # the selection's pmi_bidi weight of the summed backward log-prob


def dev_items(heldout, n: int, test_items: int, persona: str, user: str, seed: int = 1):
    """``n`` Q/A items from the held-out rows that are not the conversation bench's ``test_items`` items at its
    seed 0, nor in their candidate pool; their distractors come from the remaining rows only."""
    from pipeline.evaluation import selection

    test = selection.qa_items(heldout, test_items, 0, persona, user)
    used = {c.strip() for it in test for c in it.candidates} | {it.example.context[-1].text.strip() for it in test}
    rest = [r for r in heldout if r.answer.strip() not in used and r.question.strip() not in used]
    items = selection.qa_items(rest, n, seed, persona, user)
    assert not {c.strip() for it in items for c in it.candidates} & used
    return items


def chrf(hyp: str, ref: str, beta: float = 2.0, order: int = 3) -> float:
    """Character n-gram F-score (n = 1..order, spaces removed; Popovic 2015), 0..1."""
    def grams(s: str, n: int) -> Counter:
        s = "".join(s.split())
        return Counter(s[i:i + n] for i in range(len(s) - n + 1))

    prec, rec = [], []
    for n in range(1, order + 1):
        h, r = grams(hyp, n), grams(ref, n)
        match = sum((h & r).values())
        if h:
            prec.append(match / sum(h.values()))
        if r:
            rec.append(match / sum(r.values()))
    p = sum(prec) / len(prec) if prec else 0.0
    r = sum(rec) / len(rec) if rec else 0.0
    return 0.0 if p + r == 0 else (1 + beta ** 2) * p * r / (beta ** 2 * p + r)


def ranking(a, folders) -> None:
    """Measure 1: Hits@1 on the dev items of the chat's score at each weight, adapter and base."""
    from bench.conversation_bench import base_and_adapter
    from core.adapter_format import read_manifest
    from data_prep.chatbot_data import load_qa

    heldout = load_qa(split="heldout")
    print(f"1. ranking 20 given answers, {a.items} dev Q/A items, Hits@1 (chance 0.05)", flush=True)
    print(f"{'':16s} the chat's score at w = {' '.join(f'{w:<4g}' for w in WEIGHTS)} | "
          f"PMI + mu * backward at mu = {' '.join(f'{m:<4g}' for m in MUS)}")
    table: dict[str, list[list[float]]] = {}
    for folder in folders:
        m = read_manifest(folder)
        items = dev_items(heldout, a.items, a.test_items, m["persona"], m["user_speaker"])
        for system, scored in base_and_adapter(folder, m, items):
            kept = [s for s in scored if s is not None and s.backward is not None]
            if not kept:
                raise SystemExit(f"{folder}: its extended base has no backward model; nothing to weigh")
            chat = [sum(s.hit("mmi", w) for s in kept) / len(kept) for w in WEIGHTS]
            bidi = [sum(s.hit("pmi_bidi", mu) for s in kept) / len(kept) for mu in MUS]
            table.setdefault(system, []).append(chat + bidi)
            print(f"{m['persona']:6s} {system:8s}  {' '.join(f'{x:.2f}' for x in chat)}  |  "
                  f"{' '.join(f'{x:.2f}' for x in bidi)}   (n={len(kept)})", flush=True)
    for system, rows in table.items():
        mean = [sum(col) / len(col) for col in zip(*rows)]
        print(f"{'mean':6s} {system:8s}  {' '.join(f'{x:.2f}' for x in mean[:len(WEIGHTS)])}  |  "
              f"{' '.join(f'{x:.2f}' for x in mean[len(WEIGHTS):])}")


def chat_choice(a, folders) -> None:
    """Measure 2: the chat's own choice among its sampled candidates, made again for each weight."""
    from chatbot import decoding, model_thread
    from chatbot.decoding import Job, SamplingParams, mmi_score
    from chatbot.engine import Engine
    from core.adapter_format import read_manifest
    from data_prep.chatbot_data import load_qa

    params = SamplingParams()
    if params.backward_weight <= 0:
        raise SystemExit("the default backward_weight is 0: the candidates' backward scores are not computed")
    engine = Engine.from_adapters_dir(a.adapters)
    heldout = load_qa(split="heldout")
    print(f"\n2. the chat's own choice among its {params.candidates} sampled candidates, {a.chat_items} dev questions "
          f"(sampled once, the default settings, backward_weight {params.backward_weight:g})", flush=True)
    print(f"{'':6s} choices  changed vs w={params.backward_weight:g} at w = {' '.join(f'{w:<4g}' for w in WEIGHTS)}"
          f" | chrF against the true answer at w = {' '.join(f'{w:<5g}' for w in WEIGHTS)}")
    totals = {"n": 0, "changed": [0] * len(WEIGHTS), "chrf": [0.0] * len(WEIGHTS)}
    for folder in folders:
        m = read_manifest(folder)
        items = dev_items(heldout, a.items, a.test_items, m["persona"], m["user_speaker"])[:a.chat_items]
        engine.swap(m["persona"])
        n, changed, score = 0, [0] * len(WEIGHTS), [0.0] * len(WEIGHTS)
        for i, item in enumerate(items):
            history = [{"role": "user", "content": item.example.context[-1].text}]
            p = engine.checked(history, params)
            job = Job(engine.prompt(history, m["persona"], p.max_new_tokens), p, a.seed + i)  # no streamer: no screen
            with engine.exclusive():
                reply = model_thread.run(decoding.decode, engine.model, engine.tokenizer, [job])[0]
            ok = [c for c in reply.candidates if c.problem is None]
            if len(ok) < 2:
                continue  # nothing to choose between: every weight gives the same reply
            fwd = [mmi_score(c.logp, c.logp_no_context or 0.0, c.tokens, p.mmi_lambda) for c in ok]
            bwd = [(c.score - f) / p.backward_weight for c, f in zip(ok, fwd)]
            pick = {w: max(range(len(ok)), key=lambda j: fwd[j] + w * bwd[j]) for w in WEIGHTS + (p.backward_weight,)}
            assert ok[pick[p.backward_weight]] is reply.chosen, "the recomputed choice differs from the chat's"
            n += 1
            for k, w in enumerate(WEIGHTS):
                changed[k] += pick[w] != pick[p.backward_weight]
                score[k] += chrf(ok[pick[w]].text, item.example.response)
        print(f"{m['persona']:6s} {n:7d}  {' '.join(f'{c:<4d}' for c in changed)} | "
              f"{' '.join(f'{s / max(n, 1):.3f}' for s in score)}", flush=True)
        totals["n"] += n
        totals["changed"] = [x + y for x, y in zip(totals["changed"], changed)]
        totals["chrf"] = [x + y for x, y in zip(totals["chrf"], score)]
    n = max(totals["n"], 1)
    print(f"{'all':6s} {totals['n']:7d}  {' '.join(f'{c:<4d}' for c in totals['changed'])} | "
          f"{' '.join(f'{s / n:.3f}' for s in totals['chrf'])}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=Path, required=True,
                    help="a folder of persona adapter folders (e.g. runs/bench_fidelity/adapters)")
    ap.add_argument("--personas", nargs="+", help="only these personas of --adapters (default: all)")
    ap.add_argument("--items", type=int, default=100, help="dev Q/A items per persona (default 100)")
    ap.add_argument("--chat-items", type=int, default=50,
                    help="dev questions the chat answers per persona, for measure 2 (default 50; 0 skips it)")
    ap.add_argument("--test-items", type=int, default=100,
                    help="the conversation bench's Q/A items left out of the dev set (default 100, its figures')")
    ap.add_argument("--seed", type=int, default=1000, help="sampling seed of the first question (default 1000)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args(argv)
    from bench.conversation_bench import reuse_adapters

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    folders = [f for f in reuse_adapters(a.adapters) if not a.personas or f.name in a.personas]
    if not folders:
        ap.error(f"no adapters{' named ' + ', '.join(a.personas) if a.personas else ''} in {a.adapters}")
    t0 = time.perf_counter()
    ranking(a, folders)
    if a.chat_items:
        chat_choice(a, folders)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
