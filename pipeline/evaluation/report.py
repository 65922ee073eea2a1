"""``eval.json`` and ``eval.md``: the numbers, and a page that answers "does it sound like them?".

:func:`persona_results` turns one task's system outputs into plain JSON-able data;
:func:`render_markdown` writes the page from that data only (so ``eval.md`` can be
rebuilt from ``eval.json``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.evaluation import selection
from pipeline.evaluation.attribution import SCORES as ATTRIBUTION_SCORES
from pipeline.evaluation.identification import confusion, summarize
from pipeline.evaluation.reply_stats import example_sources, reply_stats
from pipeline.evaluation.runner import SYSTEMS, SystemOutput
from pipeline.evaluation.scoring import perplexity
from pipeline.evaluation.style import mean_distance, style_distances, style_stats
from pipeline.evaluation.tasks import PersonaTask

SYSTEM_LABELS = {"base": "base", "few_shot": "few-shot (prompted)", "adapter": "adapter (fine-tuned)",
                 "adapter_memory": "adapter + memory (retrieved past replies)"}


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _context_tail(task: PersonaTask, i: int, turns: int = 2) -> list[dict[str, str]]:
    return [{"speaker": t.speaker, "text": t.text} for t in task.held_out[i].context[-turns:]]


def persona_results(task: PersonaTask, out: Mapping[str, SystemOutput], samples: int,
                    general_source: str, selected: Mapping[str, Mapping[str, Sequence]] | None = None,
                    memory: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, Any]:
    """Everything measured for one persona, as JSON-able data (``selected``: system -> item set -> scored items;
    ``memory``: item set -> how the memory met the selection items, :func:`selection.memory_overlap`)."""
    real = style_stats(task.real_replies)
    style = {s: style_stats([g for g in o.generated if g]) for s, o in out.items()}
    dist = {s: style_distances(real, st) for s, st in style.items()}
    skipped = {s: sum(x is None for x in o.heldout) for s, o in out.items()}
    return {
        "adapter": str(task.adapter), "data": str(task.data), "method": task.manifest.get("method"),
        "base_model": task.manifest.get("base_model"), "held_out": len(task.held_out),
        "held_out_available": len(task.real_replies), "skipped_too_long": skipped,
        "perplexity": {s: _r(perplexity(o.heldout)) for s, o in out.items()},
        "forgetting": _forgetting(out, general_source),
        "smilestyle": None if task.style_match is None else {
            "style": task.style_match.style, "matched": task.style_match.matched,
            "total": task.style_match.total},
        "identification": {s: _summary(o) for s, o in out.items()} if task.id_items else None,
        "selection": _selection(selected or {}),
        "selection_vs": _selection_paired(selected or {}),
        "selection_memory": dict(memory) if memory else None,
        "style": {"real": real, **style},
        "style_distance": dist,
        "style_mean_distance": {s: round(mean_distance(d), 4) for s, d in dist.items()},
        "replies": _reply_block(task, out),
        "shots": list(task.shots),
        "samples": [
            {"context": _context_tail(task, i), "real": task.held_out[i].response,
             **{s: o.generated[i] for s, o in out.items() if i < len(o.generated)}}
            for i in range(min(samples, len(task.held_out)))
        ],
    }


def _reply_block(task: PersonaTask, out: Mapping[str, SystemOutput]) -> dict[str, Any]:
    """Empty / echo / loop shares and lengths of each system's replies; ``real``: the persona's own
    held-out replies in the same contexts (how often the definitions flag a real reply)."""
    sources = example_sources([e.context for e in task.held_out], task.persona)
    real = [e.response for e in task.held_out]
    block = {"real": reply_stats(real, sources, task.limits, task.real_replies)}
    block.update({s: reply_stats(o.generated, sources, task.limits, task.real_replies) for s, o in out.items()})
    return block


def _summary(o: SystemOutput) -> dict[str, Any]:
    return _rounded(summarize(o.rankings))


def _rounded(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _rounded(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_rounded(v) for v in d]
    return _r(d) if isinstance(d, float) else d


def _selection(selected: Mapping[str, Mapping[str, Sequence]]) -> dict[str, Any] | None:
    """Item set -> system -> Hits@1 (and its 95% interval) / mean rank under each score (None when selection
    was skipped)."""
    sets = {name for per in selected.values() for name in per}
    if not sets:
        return None
    return {name: {system: _rounded(selection.summarize(per[name])) for system, per in selected.items() if name in per}
            for name in sorted(sets)}


def _selection_paired(selected: Mapping[str, Mapping[str, Sequence]]) -> dict[str, Any] | None:
    """Item set -> system the adapter is compared with (base, few-shot) -> score -> the adapter's Hits@1
    difference from it on the same items, with its 95% interval and the items each one alone ranks right
    (:func:`selection.paired`)."""
    adapter = selected.get("adapter") or {}
    out: dict[str, Any] = {}
    for name in sorted(adapter):
        per = {other: {k: _rounded(v) for k in selection.SCORES
                       if (v := selection.paired(adapter[name], selected[other][name], k)) is not None}
               for other in PAIRED_WITH if name in (selected.get(other) or {})}
        if per:
            out[name] = per
    return out or None


PAIRED_WITH = ("base", "few_shot")  # the systems the adapter's selection is paired with


def _forgetting(out: Mapping[str, SystemOutput], source: str) -> dict[str, Any]:
    ppl = {s: _r(perplexity(o.general)) for s, o in out.items() if o.general is not None}
    ratio = ppl["adapter"] / ppl["base"] if ppl.get("adapter") and ppl.get("base") else None
    n = len(next(iter(out.values())).general or [])
    return {"source": source, "n": n, "perplexity": ppl, "adapter_over_base": _r(ratio)}


def confusion_block(tasks: Sequence[PersonaTask], outputs: Sequence[Mapping[str, SystemOutput]]) -> dict | None:
    """Persona x predicted-style matrices per system, for the personas that have parallel data."""
    rows = [(t, o) for t, o in zip(tasks, outputs) if t.style_match is not None and t.id_items]
    if not rows:
        return None
    styles = sorted({s for t, _ in rows for item in t.id_items for s in item.variants})
    block: dict[str, Any] = {"styles": styles, "personas": [t.persona for t, _ in rows],
                             "truth": [t.style_match.style for t, _ in rows]}  # type: ignore[union-attr]
    for system in SYSTEMS:
        per = {t.persona: o[system].rankings for t, o in rows if system in o}
        if per:
            block[system] = [[round(x, 3) for x in row] for row in confusion(per, styles)]
    return block


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]


def _persona_md(name: str, r: dict[str, Any], charts: Mapping[str, str]) -> list[str]:
    systems = list(r["perplexity"])
    md = [f"## {name}", "", f"adapter `{r['adapter']}` ({r['method']}), data `{r['data']}`, "
          f"{r['held_out']} of {r['held_out_available']} held-out replies.", "",
          "### Perplexity of held-out replies (lower = the persona's real replies are less surprising)", ""]
    md += _table(["system", "held-out ppl", "general Korean ppl"],
                 [[SYSTEM_LABELS[s], r["perplexity"][s], r["forgetting"]["perplexity"].get(s)] for s in systems])
    f = r["forgetting"]
    md += ["", f"Forgetting: general Korean ({f['n']} replies from `{Path(f['source']).name}`) perplexity "
           f"adapter / base = **{_fmt(f['adapter_over_base'])}** (1.0 = nothing forgotten).", ""]
    if r["identification"]:
        st = r["smilestyle"]
        md += ["### Persona identification (SmileStyle parallel replies)", "",
               f"Persona style `{st['style']}` ({st['matched']}/{st['total']} held-out replies matched). "
               "For each reply, all style variants are ranked by mean log-prob per token in the same context.", ""]
        md += _table(["system", "top-1", "mean rank", "chance", "n"],
                     [[SYSTEM_LABELS[s], v["top1"], v["mean_rank"], v["chance"], v["n"]]
                      for s, v in r["identification"].items()])
        md.append("")
    if r.get("selection"):
        md += _selection_md(r["selection"], r.get("selection_memory"), r.get("selection_vs"))
    md += ["### Style of generated replies vs the persona's real replies (distance; 0 = same)", ""]
    stats = list(r["style_distance"][systems[0]])
    md += _table(["statistic", "real"] + [SYSTEM_LABELS[s] for s in systems],
                 [[k, _style_value(r["style"]["real"][k])] +
                  [f"{_style_value(r['style'][s][k])} (d={r['style_distance'][s][k]:.2f})" for s in systems]
                  for k in stats])
    md += ["", "Mean distance: " + ", ".join(f"{SYSTEM_LABELS[s]} {v:.3f}" for s, v in
                                            r["style_mean_distance"].items()), ""]
    md += _replies_md(r.get("replies"))
    md += [f"![{k}]({v})" for k, v in charts.items()] + [""]
    md += ["### Samples (same context, same seed)", ""]
    for i, s in enumerate(r["samples"], 1):
        ctx = " / ".join(f"{t['speaker']}: {t['text']}" for t in s["context"])
        md += [f"{i}. context: {ctx}", f"   - real: {s['real']}"]
        md += [f"   - {SYSTEM_LABELS[k]}: {s.get(k, '')}" for k in systems]
    return md + [""]


SELECTION_SETS = {"persona": "own held-out replies (distractors: the persona's replies in other conversations)",
                  "qa": "general Korean Q/A not trained on (ChatbotData held-out split)",
                  "switch": "a change of topic: a held-out exchange, then another held-out question (the first "
                            "distractor answers the question before)"}
SCORE_LABELS = {"mean": "mean log-prob", "pmi": "PMI", "pmi_mean": "PMI per token", "mmi": "chat's MMI",
                "pmi_marginal": "PMI, marginal p(reply)", "pmi_bidi": "PMI + backward"}


def read_score(per_system: Mapping[str, Any]) -> str:
    """The selection score to read (docs/conversation.md): PMI + backward where the items have it, else PMI."""
    has_bidi = any(v.get("pmi_bidi", {}).get("hits1") is not None for v in per_system.values())
    return "pmi_bidi" if has_bidi else "pmi"


def _interval(ci: Sequence[float] | None, sign: str = "") -> str:
    return "–" if ci is None else f"[{ci[0]:{sign}.2f}, {ci[1]:{sign}.2f}]"


def _selection_md(sel: Mapping[str, Any], memory: Mapping[str, Any] | None = None,
                  paired: Mapping[str, Any] | None = None) -> list[str]:
    md = ["### Next-reply selection (Hits@1: the true reply ranked first among the candidates)", ""]
    for name, per in sel.items():
        first = next(iter(per.values()))
        md += [f"**{SELECTION_SETS.get(name, name)}**: {first['n']} items, chance {_fmt(first['chance'])}", ""]
        scores = [k for k in selection.SCORES if any(v[k]["hits1"] is not None for v in per.values())]
        md += _table(["system"] + [f"Hits@1 {SCORE_LABELS[k]}" for k in scores] + ["mean rank (PMI)"],
                     [[SYSTEM_LABELS[s]] + [v[k]["hits1"] for k in scores] + [v["pmi"]["mean_rank"]]
                      for s, v in per.items()])
        key = read_score(per)
        md += ["", f"95% intervals of Hits@1 {SCORE_LABELS[key]} (bootstrap over the items): " + ", ".join(
            f"{SYSTEM_LABELS[s]} {_interval(v[key].get('hits1_ci95'))}" for s, v in per.items()) + "."]
        if "previous_first" in first.get("mmi", {}):
            md += ["", "The answer to the previous message ranked first (chat's MMI): " + ", ".join(
                f"{SYSTEM_LABELS[s]} {_fmt(v['mmi']['previous_first'])}" for s, v in per.items()) + "."]
        for other, per_score in (paired or {}).get(name, {}).items():
            d = per_score.get(key)
            if d:
                who = SYSTEM_LABELS[other].split(" (")[0]
                md += ["", f"Adapter - {who} on the same items: {d['diff']:+.2f} {_interval(d['ci95'], '+')}; items only "
                       f"the adapter ranks right: {d['a_only']}, only the {who}: {d['b_only']}."]
        m = (memory or {}).get(name)
        if m:
            md += ["", f"Memory: {m['with_memory']} of {m['items']} items recalled a past exchange ({m['shown']} "
                   f"shown); a shown reply was the true reply in {m['truth_shown']} and a distractor in "
                   f"{m['distractor_shown']} of them."]
        md.append("")
    return md


def attribution_md(block: Mapping[str, Any], chart: str | None) -> list[str]:
    """The speaker-attribution section: accuracy per score, chance, the confusion matrix of the primary score."""
    personas, primary = block["personas"], block["primary"]
    md = ["## Speaker attribution (each held-out reply given to the adapter that explains it best)", "",
          f"Chance 1/{len(personas)} = {_fmt(1 / len(personas))}. Replies per speaker: "
          + ", ".join(f"{p} {block['n'][p]}" for p in personas) + ".", ""]
    md += _table(["score", "accuracy", "n"], [[k + (" (primary)" if k == primary else ""), block[k]["accuracy"],
                                                block[k]["n"]] for k in ATTRIBUTION_SCORES])
    md += ["", f"Confusion ({primary}; rows: true speaker, columns: adapter chosen, share of the row's replies):", ""]
    md += _table(["speaker"] + personas, [[p] + row for p, row in zip(personas, block[primary]["matrix"])])
    return md + ([""] + [f"![attribution]({chart})"] if chart else []) + [""]


def _replies_md(block: Mapping[str, Any] | None) -> list[str]:
    if not block:
        return []
    md = ["### Generated replies: empty, echoes, loops, length, register, swearing (the chat's own decoding)", ""]
    rows = [[SYSTEM_LABELS.get(s, "real (held-out)"), v["n"], v["empty"], v["echo"], v["loop"],
             ", ".join(f"{k} {n}" for k, n in v["loop_reasons"].items()) or "–", v["mean_chars"],
             v.get("length_ratio"), v["multi_line"], v.get("polite"), v.get("real_polite"), v.get("profanity")]
            for s, v in block.items()]
    md += _table(["replies", "n", "empty", "echo", "loop", "loop kinds", "mean chars", "/ real mean", "bursts",
                  "polite (존댓말)", "real polite", "swearing not theirs"], rows)
    return md + [""]


def _style_value(v: Any) -> str:
    if isinstance(v, dict):  # ending distribution: the top three classes
        top = sorted(v.items(), key=lambda kv: -kv[1])[:3]
        return " ".join(f"{k} {x:.0%}" for k, x in top if x)
    return f"{v:.2f}"


def render_markdown(data: dict[str, Any], charts: Mapping[str, Mapping[str, str]]) -> str:
    """The eval.md page from the eval.json data and chart file names per persona ("" key: shared)."""
    md = ["# Persona evaluation", "", _headline(data), ""]
    for name, r in data["personas"].items():
        md += _persona_md(name, r, charts.get(name, {}))
    conf = data.get("confusion")
    if conf and len(conf["personas"]) > 1:
        md += ["## Persona identification matrix (rows: persona adapter and its data; columns: style ranked first)", ""]
        for system in SYSTEMS:
            if system in conf:
                md += [f"**{SYSTEM_LABELS[system]}**", ""]
                md += _table(["persona (style)"] + conf["styles"],
                             [[f"{p} ({t})"] + row for p, t, row in zip(conf["personas"], conf["truth"], conf[system])])
                md.append("")
        md += [f"![{k}]({v})" for k, v in charts.get("", {}).items() if k != "attribution"]
    if data.get("attribution"):
        md += attribution_md(data["attribution"], charts.get("", {}).get("attribution"))
    md += ["", "## How these numbers are made", "", METHOD_NOTES]
    return "\n".join(md) + "\n"


def _headline(data: dict[str, Any]) -> str:
    parts = []
    for name, r in data["personas"].items():
        p = r["perplexity"]
        bit = f"**{name}**: held-out ppl base {_fmt(p.get('base'))} -> adapter {_fmt(p.get('adapter'))}"
        if r["identification"]:
            bit += f", identification top-1 {_fmt(r['identification']['adapter']['top1'])}"
        bit += f", general Korean ppl x{_fmt(r['forgetting']['adapter_over_base'])}"
        if r.get("selection") and "qa" in r["selection"]:
            qa = r["selection"]["qa"]
            key = read_score(qa)
            bit += (f", Q/A Hits@1 ({SCORE_LABELS[key]}) base {_fmt(qa['base'][key]['hits1'])} -> adapter "
                    f"{_fmt(qa['adapter'][key]['hits1'])}")
        parts.append(bit)
    return "; ".join(parts) + "."


METHOD_NOTES = """\
- Every score goes through `core.chat_format.render`, like training and the chat: the log-prob of a
  reply is summed over the tokens `render` labels (the reply and its `<|eot|>`), in the held-out context
  (trimmed from the oldest turn to the adapter's `max_length`).
- Perplexity = exp(-sum log-prob / number of labelled tokens) over the held-out replies.
- Identification ranks the style variants of one reply by **mean** log-prob per token: variants differ a
  lot in length, and a sum would prefer the shortest one whatever its style. Chance = 1/number of variants.
- Next-reply selection ranks the true held-out reply among 19 others (the persona's own replies from other
  conversations; or other held-out Q/A answers) in the same context, by six scores: mean log-prob per token
  given the context; PMI = log p(reply | context) - log p(reply | same instruction, no context); PMI per
  token; the chat's MMI, (log p(reply | context) - 0.5 log p(reply | no context)) / tokens, what the chat
  picks its reply by among its candidates (with the backward term below where there is one); marginal PMI,
  log p(reply | context) - log p(reply) with p(reply) the mean of p(reply | m) over other held-out messages m
  (`--marginal-contexts`, where given); and PMI + backward, PMI + log p(message | reply) by the backward model
  (trained on dialogue turned around; where the extended base has one), a second estimate of the same PMI that
  needs no p(reply).
  Read PMI + backward where it is reported, else PMI: mean log-prob prefers short, generic replies that fit
  any message, while PMI keeps only what the message adds, and the backward estimate's errors differ from the
  forward one's (on 100 held-out Q/A it raised every system, docs/conversation.md); the marginal measures
  p(reply) after real messages rather than after a prompt with none, and ranks the true reply better on
  average, but first no more often than PMI. Chance = 1/20. Ties
  at the top count as a fair draw. The change-of-topic items put a held-out exchange before the question (its
  answer as the persona's turn); their first distractor answers the question before, and "ranked first" is how
  often that answer wins: a persona that answers the previous message instead of the last one.
- Speaker attribution (several adapters): each held-out reply is scored by every adapter as its persona's reply
  (its instruction, its turns as the bot's) and given to the highest log-prob (the same reply tokens for every
  adapter, so sum and mean agree); "gain" subtracts the base model's score in the same prompt. Chance = 1/N.
- Few-shot = the base model with the persona instruction followed by real train replies (no training).
- Forgetting = perplexity of general Korean replies (not in training) with an empty instruction, in the chat
  format. The base never saw the chat tokens, so its number is inflated: a ratio below 1 means no forgetting
  was detected (the adapter learned the format), not that its Korean improved; above 1 is the warning sign.
- Generated replies come from the chat's own decoding (`chatbot.decoding.generate`: 4 candidates, MMI
  reranking, loop/echo rejection, 존댓말 ranked last for a persona who writes 반말, swearing the persona never
  does banned token by token and ranked last). Echo = a reply equal,
  after normalising, to the message it answers or to the persona's previous reply, or at least 80% similar
  (difflib) with 4+ characters; loop = a character run longer than the persona's real data shows, a block
  repeated 3 times, a repeated word 4-gram, or more lines than the persona sends in one burst; polite = a
  sentence ending in -요, -죠, -ㅂ니다/-ㅂ니까 or -시오; swearing not theirs = a swear word family
  (씨발, 병신, 개새끼, 니애미, 존나, 쳐죽여...) the persona's real turns never use. The `real` row applies the same
  definitions to the real replies.
- Style statistics compare sampled replies (same seed for every system) with all held-out real replies:
  shares of replies with ㅋ/ㅎ/ㅠㅜ, emoji, emoticons, ?, !, ellipsis; mean length (relative difference);
  sentence endings (total variation distance); distinct-1/2 over words.
"""
