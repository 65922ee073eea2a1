"""Conversation bench: do the SmileStyle persona adapters pick the reply that answers the message?

    python bench/conversation_bench.py                                   # train 4 adapters (as persona_fidelity), then measure
    python bench/conversation_bench.py --adapters runs/bench_fidelity/adapters   # reuse trained adapters (no training)
    python bench/conversation_bench.py --base-only --selection-items 100         # the base model on held-out Q/A only
    python bench/conversation_bench.py --base-only --dialogue                    # the base with the dialogue stage
    python bench/conversation_bench.py --adapters runs/bench_fidelity/adapters --qa-only --selection-items 100
                                                          # adapters and their base on held-out Q/A only
    python bench/conversation_bench.py --adapters runs/민수/adapters --switch-only --selection-items 100
                                                          # the same on changes of topic (previous message answered?)
    python bench/conversation_bench.py --tiny                            # quick check on a tiny random model

Next-reply selection, Hits@1 of 20 (chance 0.05), for each persona and each system
(base, few-shot, adapter), on the persona's own held-out replies (distractors: its
replies from other conversations) and on general Korean Q/A that no stage trained on
(ChatbotData's fixed held-out split), under two scores: mean log-prob per token of the
reply given the context and PMI = log p(reply | context) - log p(reply | no context); with
``--marginal-contexts K`` also marginal PMI, whose p(reply) is the mean of p(reply | message)
over K other held-out questions; and, where the extended base has the backward model (the default
one has), PMI + backward = PMI + log p(message | reply) by that model (pipeline.evaluation.selection).
A third item set, **switch**, is a change of topic: a held-out exchange (its answer as the persona's turn),
then another held-out question; the first distractor answers the question before, and ``previous first``
is the share of items where the chat's score ranks it first (the persona answering the previous message).
Prints ONE table, then speaker attribution across the adapters (which adapter explains
each held-out reply best; chance 1/4). The exports and adapters are those of
bench/persona_fidelity.py (same personas, same run folder by default), so an adapter
trained by either bench is reused by the other with ``--adapters``.

Targets (issue #13): adapter Hits@1 on held-out Q/A >= 0.5; on its own replies well above
base and above few-shot. ``--base-only`` measures the base model alone on held-out Q/A
(empty instruction, the question as the user's turn): the baseline every stage is
compared with.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.persona_fidelity import STYLES, write_exports  # noqa: E402
from data_prep import smilestyle  # noqa: E402
from pipeline.evaluation.selection import MARGINAL_CONTEXTS, SCORES, paired, summarize  # noqa: E402

COLUMNS = (("persona", "mean"), ("persona", "pmi"), ("persona", "pmi_marginal"), ("persona", "pmi_bidi"),
           ("qa", "mean"), ("qa", "pmi"), ("qa", "pmi_marginal"), ("qa", "pmi_bidi"), ("switch", "mmi"))
LABELS = {"mean": "mean", "pmi": "PMI", "pmi_marginal": "PMI marg.", "pmi_bidi": "PMI+bwd", "mmi": "chat's"}
SET_LABELS = {"persona": "own", "qa": "Q/A", "switch": "switch"}
SYSTEMS = ("base", "few_shot", "adapter")
QA_TARGET = 0.5

# Hook for the generated-reply statistics (share of empty replies, echoes, loops; length vs the persona's
# real length): a function of one persona's eval.json entry returning {column name: value}; its columns are
# printed after the selection table. None: no generated-reply statistics yet.
REPLY_STATS: Callable[[dict], dict[str, float]] | None = None


def train_adapters(out: Path, a) -> tuple[list[Path], Path]:
    """SmileStyle exports -> pipeline.run (prepare, extend, train; no evaluation); returns (adapters, data)."""
    from pipeline.run import main as run_main

    exports = write_exports(out / "exports", STYLES, a.limit)
    names = [smilestyle.PERSONA_NAMES[s] for s in STYLES]
    argv = [*map(str, exports), *[x for n in names for x in ("--persona", n)], "--out", str(out), "--no-eval"]
    argv += base_args(out, a) + (["--max-steps", str(a.max_steps)] if a.max_steps else [])
    argv += ["--dialogue" if a.dialogue else "--no-dialogue"]
    argv += ["--threads", str(a.threads)] if a.threads else []
    print("python -m pipeline.run " + " ".join(argv), flush=True)
    if run_main(argv):
        raise SystemExit("pipeline.run failed")
    return [out / "adapters" / n for n in names], out / "data"


def base_args(out: Path, a) -> list[str]:
    """--base-model / --cache-dir for pipeline.run (the tiny model with --tiny)."""
    if a.tiny:
        from tests.tiny_models import make_tiny_gemma

        base = out / "tiny-base"
        if not (base / "config.json").is_file():
            make_tiny_gemma(base)
        return ["--base-model", str(base), "--cache-dir", str(out / "cache")]
    return ["--base-model", a.base_model] if a.base_model else []


def reuse_adapters(folder: Path) -> list[Path]:
    """The bench personas' adapter folders under ``folder`` (those that exist)."""
    found = [folder / smilestyle.PERSONA_NAMES[s] for s in STYLES]
    found = [p for p in found if (p / "manifest.json").is_file()]
    if not found:
        raise SystemExit(f"--adapters {folder}: no adapter of {[smilestyle.PERSONA_NAMES[s] for s in STYLES]}")
    return found


def evaluate(adapters: list[Path], data: Path, out: Path, a, extra: list[str]) -> dict:
    """pipeline.evaluate on every adapter together; returns its eval.json."""
    from pipeline.evaluate import main as evaluate_main

    argv = [x for p in adapters for x in ("--adapter", str(p))] + [
        "--data", str(data), "--out", str(out), "--selection-items", str(a.selection_items),
        "--switch-items", str(a.selection_items),
        "--marginal-contexts", str(a.marginal_contexts), "--persona-marginal-contexts", str(a.persona_marginal),
        "--max-examples", str(a.max_examples), "--generate", str(a.generate), "--samples", "0",
        "--general-lines", "0", "--no-identification", "--seed", str(a.seed), *extra]
    print("python -m pipeline.evaluate " + " ".join(argv), flush=True)
    if evaluate_main(argv):
        raise SystemExit("pipeline.evaluate failed")
    return json.loads((out / "eval.json").read_text(encoding="utf-8"))


def print_table(result: dict) -> None:
    """One row per persona: base / few-shot / adapter Hits@1 per item set and score (+ the hook's columns)."""
    sels = [r["selection"] or {} for r in result["personas"].values()]
    columns = [(s, k) for s, k in COLUMNS  # marginal PMI only where it was computed
               if any(x.get(s, {}).get(y, {}).get(k, {}).get("hits1") is not None for x in sels for y in SYSTEMS)]
    head = [f"{SET_LABELS[s]} {LABELS[k]}" for s, k in columns]
    print("\nnext-reply selection, Hits@1 of 20 (chance 0.05); each cell: base / few-shot / adapter")
    print(f"{'persona':10s}{'n':>4s}" + "".join(f"{h:>22s}" for h in head))
    for name, r in result["personas"].items():
        sel = r["selection"] or {}
        cells = []
        for item_set, score in columns:
            per = sel.get(item_set) or {}
            vals = [per.get(s, {}).get(score, {}).get("hits1") for s in SYSTEMS]
            cells.append(" / ".join("  – " if v is None else f"{v:.2f}" for v in vals))
        n = (sel.get("qa") or sel.get("persona") or {}).get("adapter", {}).get("n", 0)
        extra = REPLY_STATS(r) if REPLY_STATS else {}
        print(f"{name:10s}{n:4d}" + "".join(f"{c:>22s}" for c in cells)
              + "".join(f"  {k} {v:.2f}" for k, v in extra.items()))
    for score in ("pmi", "pmi_marginal", "pmi_bidi"):
        qa = [x["qa"]["adapter"].get(score, {}).get("hits1") for x in sels if "qa" in x]
        if qa and None not in qa:
            met = all(v >= QA_TARGET for v in qa)
            cis = [(name, x["qa"]["adapter"][score].get("hits1_ci95"))
                   for name, x in zip(result["personas"], sels) if "qa" in x]
            print(f"target adapter Q/A Hits@1 ({LABELS[score]}) >= {QA_TARGET} on every persona: "
                  f"{'MET' if met else 'NOT MET'} (95% intervals: "
                  + ", ".join(f"{name} [{ci[0]:.2f}, {ci[1]:.2f}]" for name, ci in cis if ci) + ")")
    for name, r in result["personas"].items():
        per = (r["selection"] or {}).get("switch") or {}
        firsts = [per.get(s, {}).get("mmi", {}).get("previous_first") for s in SYSTEMS]
        if any(v is not None for v in firsts):
            print(f"{name}: after a change of topic, the answer to the previous message ranked first (chat's score), "
                  "base / few-shot / adapter: " + " / ".join("–" if v is None else f"{v:.2f}" for v in firsts))
    att = result.get("attribution")
    if att:
        p = att["primary"]
        print(f"speaker attribution across {len(att['personas'])} adapters: accuracy {att[p]['accuracy']:.2f} ({p}), "
              f"{att['gain']['accuracy']:.2f} (gain over base); chance {1 / len(att['personas']):.2f}")


def base_only(a) -> None:
    """The base model alone on held-out Q/A: empty instruction, the question as the user's turn."""
    import torch

    from data_prep.chatbot_data import load_qa
    from pipeline.evaluation import selection
    from pipeline.evaluation.runner import attach_backward
    from pipeline.extension import ensure_extended, load_base

    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok, _ = load_base(a.base_model, dialogue=a.dialogue)
    items = selection.qa_items(load_qa(split="heldout"), a.selection_items, a.seed, "봇", "친구",
                               marginal=a.marginal_contexts)
    scored: list = []
    bare: dict = {}
    marginal: dict = {}
    for start in range(0, len(items), 10):  # a running figure every 10 items: long runs report as they go
        scored += selection.score_items(model, tok, items[start:start + 10], "", None, bare=bare, marginal=marginal)
        s = selection.summarize(scored)
        print(f"base model{' + dialogue stage' if a.dialogue else ''}, held-out ChatbotData Q/A, "
              f"Hits@1 of 20 (chance {s['chance']:.2f}), n={s['n']}: {figures(s, 3)}", flush=True)
    scorer = attach_backward(model, ensure_extended(a.base_model, dialogue=a.dialogue))  # changes ``model``: last
    if scorer is not None:
        s = selection.summarize(selection.with_backward(scored, selection.backward_scores(scorer, tok, items)))
        print(f"the same with the backward model (pmi_bidi, the chat's mmi): {figures(s, 3)}", flush=True)


def figures(summary: dict, digits: int) -> str:
    """Hits@1 and mean rank of each score a ``selection.summarize`` result has."""
    return ", ".join(f"{k} {summary[k]['hits1']:.{digits}f} (mean rank {summary[k]['mean_rank']:.1f})"
                     for k in SCORES if summary[k]["hits1"] is not None)


def held_out_only(a, item_set: str) -> None:
    """Each adapter of ``--adapters`` (any persona's, not only the bench's) and its base on one held-out Q/A
    item set only (``qa``: single questions, ``switch``: changes of topic), under the persona's card."""
    import torch

    from core.adapter_format import read_manifest
    from data_prep.chatbot_data import load_qa
    from pipeline.evaluation import selection

    if a.threads:
        torch.set_num_threads(a.threads)
    heldout = load_qa(split="heldout")
    what = "single questions" if item_set == "qa" else "changes of topic"
    print(f"held-out ChatbotData Q/A, {what}, Hits@1 of 20 (chance 0.05), {a.selection_items} items, under the "
          "persona's card", flush=True)
    for folder in sorted(p.parent for p in a.adapters.glob("*/manifest.json")) or reuse_adapters(a.adapters):
        m = read_manifest(folder)
        items = (selection.qa_items(heldout, a.selection_items, a.seed, m["persona"], m["user_speaker"],
                                    marginal=a.marginal_contexts) if item_set == "qa" else
                 selection.switch_items(heldout, a.selection_items, a.seed, m["persona"], m["user_speaker"]))
        runs, summaries = {}, {}
        for system, scored in base_and_adapter(folder, m, items):
            runs[system], summaries[system] = scored, summarize(scored)
            first = summaries[system]["mmi"].get("previous_first")
            print(f"{m['persona']:6s} {system:8s} n={summaries[system]['n']}: {figures(summaries[system], 2)}"
                  + ("" if first is None else f"; previous message's answer first (chat's mmi) {first:.2f}"),
                  flush=True)
        pairs = {k: d for k in ("pmi", "mmi", "pmi_bidi") if (d := paired(runs["adapter"], runs["base"], k))}
        print(f"{m['persona']:6s} 95% intervals (bootstrap over the items) and adapter - base on the same items: "
              + "; ".join(paired_line(summaries, k, d) for k, d in pairs.items()), flush=True)


def base_and_adapter(folder: Path, manifest: dict, items):
    """Yield ("base", scored items), then ("adapter", ...): ``items`` scored under the persona's card by the
    adapter's base and by the adapter, with the backward model's scores where its extended base has one (the
    same for both systems; None per item without one)."""
    from core.models import load_adapter
    from pipeline.evaluation import selection
    from pipeline.evaluation.runner import attach_backward
    from pipeline.extension import extended_for, load_base_for

    back = None
    for system in ("base", "adapter"):
        model, tok, _ = load_base_for(manifest)  # a fresh base each time: the adapter is merged into its weights
        if system == "adapter":
            model = load_adapter(model, folder).merge_and_unload().eval()
        scored = selection.score_items(model, tok, items, manifest["instruction"], manifest.get("max_length"),
                                       marginal={})
        if back is None:  # the backward model's scores, the same for both systems: on this base, last
            scorer = attach_backward(model, extended_for(manifest))
            back = selection.backward_scores(scorer, tok, items) if scorer is not None else [None] * len(items)
        yield system, selection.with_backward(scored, back)


def paired_line(summaries: dict, score: str, d: dict) -> str:
    """``score``'s Hits@1 interval for the base and the adapter, and their paired difference ``d``."""
    ci = {s: summaries[s][score]["hits1_ci95"] for s in ("base", "adapter")}
    return (f"{score} base [{ci['base'][0]:.2f}, {ci['base'][1]:.2f}], adapter [{ci['adapter'][0]:.2f}, "
            f"{ci['adapter'][1]:.2f}], difference {d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] "
            f"(items only the adapter ranks right: {d['a_only']}, only the base: {d['b_only']})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=Path, help="reuse trained adapters: a folder holding the bench personas' "
                    "adapter folders (e.g. runs/bench_fidelity/adapters); no training")
    ap.add_argument("--data", type=Path, help="prepare output of those adapters (default: ADAPTERS/../data)")
    ap.add_argument("--base-only", action="store_true", help="only the base model on held-out Q/A (no adapters)")
    ap.add_argument("--switch-only", action="store_true",
                    help="with --adapters: each adapter and its base on changes of topic only (a held-out exchange, "
                         "then another question; how often the answer to the previous question ranks first)")
    ap.add_argument("--qa-only", action="store_true",
                    help="with --adapters: each adapter and its base on held-out Q/A only, under the persona's card "
                         "(no own-reply selection, attribution or generation; about 2.3 min per system at 100 items)")
    ap.add_argument("--tiny", action="store_true", help="tiny random base model and 40 dialogues: a quick check")
    ap.add_argument("--selection-items", type=int, default=30, help="selection items per set and persona (default 30)")
    ap.add_argument("--marginal-contexts", type=int, default=0, metavar="K",
                    help=f"also rank Q/A by marginal PMI, p(reply) averaged over K other held-out questions (the "
                         f"docs' figures: {MARGINAL_CONTEXTS}; default 0: off)")
    ap.add_argument("--persona-marginal", type=int, default=0, metavar="K",
                    help="marginal PMI on the personas' own replies too, over K contexts (default 0: off; costly: "
                         "several minutes per system and persona with K 32)")
    ap.add_argument("--max-examples", type=int, default=30,
                    help="held-out replies per persona for speaker attribution (default 30)")
    ap.add_argument("--generate", type=int, default=12, help="replies sampled per system (default 12)")
    ap.add_argument("--max-steps", type=int, help="training steps per persona (default: pipeline.train's)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N SmileStyle dialogues (0: all)")
    ap.add_argument("--base-model", help="base model (default: the project's default model)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the item and distractor choice (default 0)")
    ap.add_argument("--threads", type=int, help="torch CPU threads for training and evaluation (default: torch's choice)")
    ap.add_argument("--out", type=Path, help="run folder (default: ADAPTERS/.. with --adapters, else runs/bench_fidelity, "
                    "or a temp dir with --tiny); the report goes to OUT/conversation_eval")
    from pipeline.dialogue_stage import add_flag

    add_flag(ap)  # the base of --base-only and of the adapters trained here
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    if a.base_only:
        base_only(a)
    elif a.qa_only or a.switch_only:
        if not a.adapters:
            ap.error(f"{'--qa-only' if a.qa_only else '--switch-only'} needs --adapters DIR")
        held_out_only(a, "qa" if a.qa_only else "switch")
    else:
        out = a.out or (a.adapters.parent if a.adapters else
                        Path(tempfile.mkdtemp(prefix="conversation-")) if a.tiny else ROOT / "runs" / "bench_fidelity")
        if a.tiny:
            a.limit, a.max_steps = a.limit or 40, a.max_steps or 20
        if a.adapters:
            adapters, data = reuse_adapters(a.adapters), a.data or a.adapters.parent / "data"
        else:
            adapters, data = train_adapters(out, a)
        extra = base_args(out, a)[2:] if a.tiny else []  # the tiny run's cache; the base comes from the manifests
        extra += ["--max-new-tokens", "8"] if a.tiny else []
        extra += ["--threads", str(a.threads)] if a.threads else []
        print_table(evaluate(adapters, data, out / "conversation_eval", a, extra))
        print(f"\nfull report: {out / 'conversation_eval' / 'eval.md'}")
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
