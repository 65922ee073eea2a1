"""The order of work for ``python -m pipeline.evaluate``: tasks -> base systems -> each adapter -> files.

The base model is loaded once and runs the base and few-shot systems for every
persona (and, with several adapters, scores every held-out reply in each adapter's
prompt: the attribution reference); each adapter is then loaded onto a fresh base (so
adapters of different methods never mix), runs its system, scores every persona's
held-out replies for speaker attribution, and is freed before the next. Where the extended base has a
backward model (``core.models.find_backward``) it scores every selection item's candidates once, on the
base, and every system's selection gets those scores (``pmi_bidi``). With ``--memory`` the
adapter also ranks the selection items with the persona's memory in its prompt (system
``adapter_memory``: the same model, items and no-context scores, only the memory added).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from chatbot.decoding import SamplingParams
from core.memory import Memory
from core.models import BACKWARD_ADAPTER, find_backward
from data_prep.chatbot_data import load_qa
from pipeline.evaluation import attribution, charts, report, selection
from pipeline.evaluation.generation import SamplingConfig
from pipeline.evaluation.parallel import DEFAULT_TSV, ParallelIndex
from pipeline.evaluation.runner import (SystemOutput, attach, instruction_for, load_adapter, load_base_for,
                                        max_length_for, run_system, work_units)
from pipeline.evaluation.scoring import Example, ReplyScore
from pipeline.evaluation.tasks import DEFAULT_CHATBOT_CSV, PersonaTask, build_task, general_examples
from pipeline.extension import extended_for

log = logging.getLogger(__name__)


def build_tasks(cfg) -> list[PersonaTask]:
    """One task per --adapter (no model loaded yet); the SmileStyle index when it applies."""
    index = None
    tsv = cfg.smilestyle or (DEFAULT_TSV if DEFAULT_TSV.is_file() else None)
    if tsv is not None and not cfg.no_identification:
        index = ParallelIndex.load(tsv)
    data = cfg.data if len(cfg.data) == len(cfg.adapters) else cfg.data * len(cfg.adapters)
    tasks = [build_task(a, d, index, cfg.max_examples, cfg.shots, cfg.seed) for a, d in zip(cfg.adapters, data)]
    specs = {t.manifest.get("base_model") for t in tasks}
    if len(specs) > 1:
        from core.errors import UserError

        raise UserError(f"--adapter: the adapters were trained on different base models {sorted(map(str, specs))}; "
                        "evaluate them separately")
    for t in tasks:
        m = t.style_match
        log.info("%s: %d held-out replies%s", t.persona, len(t.held_out),
                 f", SmileStyle style {m.style} ({m.matched}/{m.total} matched)" if m else "")
    return tasks


def _general(cfg, task: PersonaTask) -> tuple[list[Example], str]:
    user = task.manifest.get("user_speaker") or "친구"
    return general_examples(cfg.general, cfg.general_lines, cfg.seed, task.persona, user)


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", leave=False, dynamic_ncols=True)


def _run(model, tok, cfg, task: PersonaTask, general: list[Example], system: str,
         backward: Path | None) -> SystemOutput:
    sampling = SamplingConfig(replace(SamplingParams(), max_new_tokens=cfg.max_new_tokens), seed=cfg.seed)
    with _bar(work_units(task, general, cfg.generate), f"{task.persona}: {system}") as bar:
        return run_system(model, tok, task, system, general, sampling, cfg.generate, progress=bar, backward=backward)


Items = dict[str, list[selection.SelectionItem]]  # item set ("persona", "qa", "switch") -> items
Selections = dict[str, dict[str, list[selection.Selected | None]]]  # system -> item set -> scored items


def selection_items(cfg, task: PersonaTask) -> Items:
    """The task's next-reply selection items: its own held-out replies, and held-out general Q/A when found,
    as single questions and (``switch_items``) as changes of topic."""
    if not cfg.selection_items and not cfg.switch_items:
        return {}
    n, seed = cfg.selection_items, cfg.seed
    items = {"persona": selection.persona_items(task.data, task.persona, task.manifest["instruction"], n, seed,
                                                marginal=cfg.persona_marginal_contexts)} if n else {}
    qa = cfg.qa or (DEFAULT_CHATBOT_CSV if DEFAULT_CHATBOT_CSV.is_file() else None)
    if qa is not None:
        user = task.manifest.get("user_speaker") or "친구"
        rows = load_qa(qa, split="heldout")
        if n:
            items["qa"] = selection.qa_items(rows, n, seed, task.persona, user, marginal=cfg.marginal_contexts)
        if cfg.switch_items:
            items["switch"] = selection.switch_items(rows, cfg.switch_items, seed, task.persona, user)
    return items


Memories = dict[str, list[list]]  # item set -> per item, the exchanges the memory recalls


def _select(model, tok, task: PersonaTask, items: Items, system: str, caches: tuple[dict, dict] | None = None,
            memories: Memories | None = None, plain: dict | None = None) -> dict[str, list[selection.Selected | None]]:
    """Every item set scored by one system, in that system's prompt (instruction and max_length);
    ``memories``: the adapter_memory system's recalled exchanges, shown after the instruction, and
    ``plain``: the same system's scores without them (kept for the items that recall nothing)."""
    instruction, max_len = instruction_for(task, system), max_length_for(tok, task, system)
    name = "adapter_memory" if memories is not None else system
    bare, marginal = ({}, {}) if caches is None else caches  # no-context and marginal scores: same model, instruction
    with _bar(sum(map(len, items.values())), f"{task.persona}: {name} selection") as bar:
        return {n: selection.score_items(model, tok, its, instruction, max_len, progress=bar, bare=bare,
                                         marginal=marginal,
                                         memories=None if memories is None else memories[n],
                                         without_memory=None if plain is None else plain[n])
                for n, its in items.items()}


def _backward(model, tok, items: Sequence[Items], path: Path | None) -> list[dict[str, list]]:
    """Per task and item set, the backward model's (at ``path``) log p(message | candidate) of every item
    (all None without one). Attaches that LoRA to ``model`` (in place)."""
    if path is None or not any(items):
        return [{n: [None] * len(its) for n, its in task_items.items()} for task_items in items]
    scorer = attach(model, path, BACKWARD_ADAPTER).eval()
    with _bar(sum(len(its) for task_items in items for its in task_items.values()), "backward model") as bar:
        return [{n: selection.backward_scores(scorer, tok, its, progress=bar) for n, its in task_items.items()}
                for task_items in items]


def recall_items(task: PersonaTask, items: Items) -> Memories:
    """What the persona's memory (its train pairs in the task's data folder) recalls for every item."""
    memory = Memory.load([task.data])
    memory.check([task.persona])
    return {name: selection.recall_all(memory, its) for name, its in items.items()}


def _attribution_scores(model, tok, tasks: Sequence[PersonaTask],
                        speakers: Sequence[PersonaTask]) -> dict[str, list[ReplyScore | None]]:
    """Every task's held-out replies scored as each of ``speakers``' personas would say them."""
    replies = [e for t in tasks for e in t.held_out]
    with _bar(len(replies) * len(speakers), "attribution") as bar:
        return {s.persona: attribution.score_as(model, tok, replies, s.persona, s.manifest["instruction"],
                                                s.max_length, progress=bar) for s in speakers}


def _attributes(tasks: Sequence[PersonaTask]) -> bool:
    """Speaker attribution needs several adapters of distinct personas."""
    return len(tasks) > 1 and len({t.persona for t in tasks}) == len(tasks)


def run_all(cfg, tasks: Sequence[PersonaTask]) -> dict[str, Any]:
    """Every system on every task; returns the eval.json data (without config)."""
    outputs: list[dict[str, SystemOutput]] = [{} for _ in tasks]
    selections: list[Selections] = [{} for _ in tasks]
    general = [_general(cfg, t) for t in tasks]
    items = [selection_items(cfg, t) for t in tasks]
    memories = [recall_items(t, its) if cfg.memory and its else None for t, its in zip(tasks, items)]
    attributing = _attributes(tasks)
    reference: dict[str, list[ReplyScore | None]] = {}  # the base model in each adapter's prompt
    adapted: dict[str, list[ReplyScore | None]] = {}
    model, tok, _ = load_base_for(tasks[0].manifest, cfg.cache_dir)
    backward_path = find_backward(extended_for(tasks[0].manifest, cfg.cache_dir))  # the chat's reranker, if any
    for task, out, sel, its, (gen, _) in zip(tasks, outputs, selections, items, general):
        for system in ("base", "few_shot"):
            out[system] = _run(model, tok, cfg, task, gen, system, backward_path)
            sel[system] = _select(model, tok, task, its, system)
    if attributing:
        reference = _attribution_scores(model, tok, tasks, tasks)
    backward = _backward(model, tok, items, backward_path)  # last: it adds the backward LoRA to ``model``
    del model
    for task, out, sel, its, mem, (gen, _) in zip(tasks, outputs, selections, items, memories, general):
        model, tok = load_adapter(task, cfg.cache_dir)
        out["adapter"] = _run(model, tok, cfg, task, gen, "adapter", backward_path)
        caches: tuple[dict, dict] = ({}, {})
        sel["adapter"] = _select(model, tok, task, its, "adapter", caches)
        if mem is not None:
            sel["adapter_memory"] = _select(model, tok, task, its, "adapter", caches, mem, sel["adapter"])
        if attributing:
            adapted.update(_attribution_scores(model, tok, tasks, [task]))
        del model
    for sel, back in zip(selections, backward):
        for system, sets in sel.items():
            sel[system] = {n: selection.with_backward(v, back[n]) for n, v in sets.items()}
    personas = {t.persona: report.persona_results(t, o, cfg.samples, source, s, _overlap(its, mem))
                for t, o, s, its, mem, (_, source) in zip(tasks, outputs, selections, items, memories, general)}
    truths = [t.persona for t in tasks for _ in t.held_out]
    return {"personas": personas, "confusion": report.confusion_block(tasks, outputs),
            "attribution": attribution.results(truths, adapted, reference) if attributing else None}


def _overlap(items: Items, memories: Memories | None) -> dict[str, dict[str, int]] | None:
    return None if memories is None else {n: selection.memory_overlap(its, memories[n]) for n, its in items.items()}


def write_outputs(out: Path, data: dict[str, Any]) -> dict[str, dict[str, str]]:
    """eval.json, the charts and eval.md in ``out``; returns chart file names per persona."""
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "eval.json", data)
    files: dict[str, dict[str, str]] = {}
    names = list(data["personas"])
    for i, (name, r) in enumerate(data["personas"].items(), 1):
        tag = charts.label(name, i)
        slug = f"_{tag}" if len(names) > 1 else ""
        files[name] = {
            "perplexity": charts.perplexity_chart(out / f"perplexity{slug}.png", tag, r).name,
            "style": charts.style_chart(out / f"style{slug}.png", tag, r).name,
        }
    with_id = [(charts.label(n, i), r) for i, (n, r) in enumerate(data["personas"].items(), 1) if r["identification"]]
    shared: dict[str, str] = {}
    if with_id:
        shared["identification"] = charts.identification_chart(
            out / "identification.png", [n for n, _ in with_id], [r for _, r in with_id]).name
    conf = data.get("confusion")
    if conf and len(conf["personas"]) > 1:
        for system in ("base", "adapter"):
            if system in conf:
                shared[f"confusion {system}"] = charts.confusion_chart(out / f"confusion_{system}.png", conf, system).name
    if data.get("attribution"):
        shared["attribution"] = charts.attribution_chart(out / "attribution.png", data["attribution"]).name
    if len(names) == 1:
        files[names[0]].update(shared)
    else:
        files[""] = shared
    (out / "eval.md").write_text(report.render_markdown(data, files), encoding="utf-8")
    return files
