"""The order of work for ``python -m pipeline.evaluate``: tasks -> base systems -> each adapter -> files.

The base model is loaded once and runs the base and few-shot systems for every
persona; each adapter is then loaded onto a fresh base (so adapters of different
methods never mix) and freed before the next.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from pipeline.evaluation import charts, report
from pipeline.evaluation.generation import SamplingConfig
from pipeline.evaluation.parallel import DEFAULT_TSV, ParallelIndex
from pipeline.evaluation.runner import SystemOutput, load_adapter, load_base, run_system, work_units
from pipeline.evaluation.scoring import Example
from pipeline.evaluation.tasks import PersonaTask, build_task, general_examples

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
        from data_prep.errors import UserError

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
         share_prefix: bool = True) -> SystemOutput:
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    with _bar(work_units(task, general, cfg.generate), f"{task.persona}: {system}") as bar:
        return run_system(model, tok, task, system, general, sampling, cfg.generate, share_prefix, bar)


def run_all(cfg, tasks: Sequence[PersonaTask]) -> dict[str, Any]:
    """Every system on every task; returns the eval.json data (without config)."""
    outputs: list[dict[str, SystemOutput]] = [{} for _ in tasks]
    general = [_general(cfg, t) for t in tasks]
    model, tok, _ = load_base(tasks[0].manifest, cfg.cache_dir)
    for task, out, (gen, _) in zip(tasks, outputs, general):
        for system in ("base", "few_shot"):
            out[system] = _run(model, tok, cfg, task, gen, system)
    del model
    for task, out, (gen, _) in zip(tasks, outputs, general):
        model, tok, share = load_adapter(task, cfg.cache_dir)
        out["adapter"] = _run(model, tok, cfg, task, gen, "adapter", share)
        del model
    personas = {t.persona: report.persona_results(t, o, cfg.samples, source)
                for t, o, (_, source) in zip(tasks, outputs, general)}
    return {"personas": personas, "confusion": report.confusion_block(tasks, outputs)}


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
    if len(names) == 1:
        files[names[0]].update(shared)
    else:
        files[""] = shared
    (out / "eval.md").write_text(report.render_markdown(data, files), encoding="utf-8")
    return files
