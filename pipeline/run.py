"""One command from chat exports to a persona chatbot: prepare -> extend (cached) -> train -> evaluate.

    python -m pipeline.run examples/kakao_example.txt --persona 민수
    python -m pipeline.run chat1.txt chat2.txt --persona 민수 --persona 지은 --max-steps 300 --chat
    python -m pipeline.run chat.txt --persona 민수 --base-model ~/models/kogpt2 --out runs/kogpt2

After prepare, python -m pipeline.audit checks the prepared folder; anything personal left
stops the run (--keep-pii: no redaction and no stop).

Layout (OUT defaults to runs/NAME, NAME = the first --persona):
  OUT/data                      prepare output (train.jsonl, validation.jsonl, stats.json, personas/)
  OUT/adapters/PERSONA          one adapter per persona (--adapters-dir to put them elsewhere)
  OUT/adapters/PERSONA/eval.md  evaluation (several personas: OUT/adapters/eval/eval.md)
  OUT/run_state.json            stage fingerprints

Each stage has a fingerprint: a hash of its input files, its flags and the previous stage's
fingerprint. Re-running skips a stage whose fingerprint is unchanged and whose outputs exist;
a changed input or flag reruns that stage and every stage after it (--force reruns all).
The stages run in this process through their own main(argv); at the end the command that
opens the chat is printed (--chat starts it as its own process).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from core.adapter_format import ADAPTER_WEIGHTS, MANIFEST
from core.cli import parser as make_parser
from core.cli import run_cli, setup_logging
from core.errors import UserError
from core.files import atomic_write, read_json_or_empty, sha256_of
from pipeline.dialogue_stage import DEFAULT as DIALOGUE_DEFAULT

STATE_FILE = "run_state.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class RunConfig:
    """Flags of ``python -m pipeline.run``; stage flags are passed through unchanged."""

    inputs: tuple[Path, ...]  # chat exports
    personas: tuple[str, ...]  # --persona (repeatable)
    out: Path  # --out (default runs/NAME)
    adapters_dir: Path  # --adapters-dir (default OUT/adapters)
    base_model: str | None = None  # --base-model
    cache_dir: Path | None = None  # --cache-dir
    prepare_args: tuple[str, ...] = ()  # prepare flags given to run
    train_args: tuple[str, ...] = ()  # train flags given to run
    eval_args: tuple[str, ...] = ()  # evaluate flags given to run
    evaluate: bool = True  # --no-eval turns it off
    chat: bool = False  # --chat: open the chat at the end
    force: bool = False  # --force: ignore the state file
    keep_pii: bool = False  # --keep-pii: prepare keeps personal data, and the audit does not stop the run
    redact_list: Path | None = None  # --redact-list: the user's own terms (prepare replaces, the audit checks)
    dialogue: bool = DIALOGUE_DEFAULT  # --dialogue/--no-dialogue: the extended base's dialogue stage

    def validate(self) -> None:
        problems = [f"{p}: no such file" for p in self.inputs if not p.is_file()]
        if self.redact_list and not self.redact_list.is_file():
            problems.append(f"--redact-list {self.redact_list}: no such file")
        if not self.personas:
            problems.append("--persona is required (python -m pipeline.prepare FILES --list-speakers lists them)")
        bad = [p for p in self.personas if not p.strip() or "/" in p or p in (".", "..")]
        problems += [f"--persona {p!r}: not usable as a folder name" for p in bad]
        if problems:
            raise UserError("; ".join(problems))

    def adapter(self, persona: str) -> Path:
        return self.adapters_dir / persona

    def eval_dir(self) -> Path:
        return self.adapter(self.personas[0]) if len(self.personas) == 1 else self.adapters_dir / "eval"


@dataclass(frozen=True)
class Stage:
    """One step: its fingerprint inputs, the files that prove it ran, and what runs it."""

    name: str
    argv: tuple[str, ...]  # flags (part of the fingerprint)
    inputs: tuple[Path, ...]  # files whose content is part of the fingerprint
    outputs: tuple[Path, ...]  # must all exist to skip
    action: Callable[[], object]
    extra: dict = field(default_factory=dict)  # more fingerprint material (e.g. the extended base)


def fingerprint(stage: Stage, previous: str) -> str:
    """Hash of the stage's flags, input file contents, extra material and the previous fingerprint."""
    material = {"stage": stage.name, "argv": list(stage.argv), "previous": previous, "extra": stage.extra,
                "inputs": {str(p): sha256_of(p) if p.is_file() else None for p in stage.inputs}}
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def load_state(path: Path) -> dict[str, str]:
    data = read_json_or_empty(path)
    return data.get("stages", {}) if data.get("version") == STATE_VERSION else {}


def save_state(path: Path, stages: dict[str, str]) -> None:
    atomic_write(path, {"version": STATE_VERSION, "stages": stages})


def _cache(cfg: RunConfig) -> list[str]:
    return ["--cache-dir", str(cfg.cache_dir)] if cfg.cache_dir else []


def _base(cfg: RunConfig) -> list[str]:
    return ["--base-model", cfg.base_model] if cfg.base_model else []


def _dialogue(cfg: RunConfig) -> list[str]:
    return [] if cfg.dialogue == DIALOGUE_DEFAULT else ["--dialogue" if cfg.dialogue else "--no-dialogue"]


def prepare_stage(cfg: RunConfig) -> Stage:
    from pipeline import prepare

    data = cfg.out / "data"
    argv = [*map(str, cfg.inputs), "--out", str(data), *[a for p in cfg.personas for a in ("--persona", p)],
            *cfg.prepare_args]
    outputs = (data / "train.jsonl", data / "validation.jsonl")
    inputs = cfg.inputs + ((cfg.redact_list,) if cfg.redact_list else ())

    def action() -> None:
        _call(prepare.main, argv)
        audit_prepared(cfg)

    return Stage("prepare", tuple(argv), inputs, outputs, action, {"card": card_fields()})


def card_fields() -> list[str]:
    """The persona card's fields: part of the prepare stage's fingerprint, so that a new version of the
    project that measures more about a persona (the chat reads it from the card) prepares again."""
    from dataclasses import fields

    from data_prep.persona_card import PersonaCard

    return [f.name for f in fields(PersonaCard)]


def audit_prepared(cfg: RunConfig, log: Callable[[str], None] = print) -> None:
    """python -m pipeline.audit on the prepared folder: a finding stops the run unless --keep-pii."""
    from data_prep.pii import read_redact_list
    from pipeline.audit import audit

    data = cfg.out / "data"
    if cfg.keep_pii:
        log("audit: skipped (--keep-pii)")
        return
    found = audit(data, read_redact_list(str(cfg.redact_list)) if cfg.redact_list else ())
    if found:
        kinds = ", ".join(sorted({k for _, _, k in found}))
        raise UserError(f"audit: {len(found)} possible personal data item(s) left in {data} ({kinds}); "
                        f"python -m pipeline.audit {data} lists them; add terms to --redact-list, "
                        "or pass --keep-pii to train on them anyway")
    log(f"audit: {data} clean")


def extend_stage(cfg: RunConfig) -> Stage:
    """ensure_extended is its own cache (keyed by base weights); the stage only records its fingerprint."""
    from core.models import read_extended_manifest
    from pipeline.extension import ensure_extended

    def action():
        return read_extended_manifest(ensure_extended(cfg.base_model, cfg.cache_dir, dialogue=cfg.dialogue))[
            "fingerprint"]

    return Stage("extend", tuple(_base(cfg) + _cache(cfg) + _dialogue(cfg)), (), (), action)


def train_defaults() -> dict:
    """pipeline.train's defaults: part of the train stage's fingerprint, so that a new version of the
    project whose defaults changed retrains instead of keeping an adapter trained the old way."""
    from dataclasses import asdict

    from pipeline.training.config import TrainConfig

    # dialogue: its effect is the extended base's fingerprint, already part of the train stage's
    return {k: v for k, v in asdict(TrainConfig("", "")).items() if k not in ("data", "out", "dialogue")}


def train_stage(cfg: RunConfig, persona: str, extended: str) -> Stage:
    from pipeline import train

    data, out = cfg.out / "data", cfg.adapter(persona)
    argv = ["--data", str(data), "--persona", persona, "--out", str(out), *_base(cfg), *_cache(cfg),
            *_dialogue(cfg), *cfg.train_args]
    inputs = (data / "train.jsonl", data / "validation.jsonl", data / "personas" / f"{persona}.yaml")
    return Stage(f"train:{persona}", tuple(argv), inputs, (out / MANIFEST,),
                 lambda: _call(train.main, argv), {"extended": extended, "defaults": train_defaults()})


def evaluate_stage(cfg: RunConfig) -> Stage:
    from pipeline import evaluate

    argv = [*[a for p in cfg.personas for a in ("--adapter", str(cfg.adapter(p)))], "--data", str(cfg.out / "data"),
            *_cache(cfg), *cfg.eval_args]
    if len(cfg.personas) > 1:
        argv += ["--out", str(cfg.eval_dir())]
    inputs = tuple(cfg.adapter(p) / n for p in cfg.personas for n in (MANIFEST, ADAPTER_WEIGHTS))
    return Stage("evaluate", tuple(argv), inputs, (cfg.eval_dir() / "eval.json",), lambda: _call(evaluate.main, argv))


def _call(main: Callable[[Sequence[str]], int | None], argv: Sequence[str]) -> None:
    code = main(list(argv))
    if code:
        raise UserError(f"{main.__module__} exited with code {code}")


def plan(cfg: RunConfig) -> list[Callable[[dict], Stage]]:
    """The stages in order; each is built when reached (train needs the extended base's fingerprint)."""
    steps: list[Callable[[dict], Stage]] = [lambda ctx: prepare_stage(cfg), lambda ctx: extend_stage(cfg)]
    steps += [lambda ctx, p=p: train_stage(cfg, p, ctx["extended"]) for p in cfg.personas]
    return steps + ([lambda ctx: evaluate_stage(cfg)] if cfg.evaluate else [])


def run(cfg: RunConfig, log: Callable[[str], None] = print) -> dict[str, str]:
    """Run (or skip) every stage in order; returns {stage name: "ran" | "skipped"}."""
    state_path = cfg.out / STATE_FILE
    old = {} if cfg.force else load_state(state_path)
    new: dict[str, str] = {}
    done: dict[str, str] = {}
    ctx: dict[str, str] = {}
    previous = ""
    steps = plan(cfg)
    for i, build in enumerate(steps, 1):
        stage = build(ctx)
        fp = fingerprint(stage, previous)
        skip = bool(stage.outputs) and old.get(stage.name) == fp and all(p.exists() for p in stage.outputs)
        log(f"[{i}/{len(steps)}] {stage.name}: " + ("unchanged, skipped" if skip else "running"))
        t0 = time.perf_counter()
        if not skip:
            result = stage.action()
            if stage.name == "extend":  # its output identity (fingerprint) is what later stages depend on
                ctx["extended"] = str(result)
                fp = fingerprint(replace(stage, extra={"extended": ctx["extended"]}), previous)
            log(f"[{i}/{len(steps)}] {stage.name}: done in {time.perf_counter() - t0:.0f} s")
        new[stage.name] = fp
        save_state(state_path, {**old, **new})
        done[stage.name] = "skipped" if skip else "ran"
        previous = fp
    return done


def chat_argv(cfg: RunConfig) -> list[str]:
    return ["--adapters", str(cfg.adapters_dir), *_base(cfg), *_cache(cfg)]


# the stage flags pipeline.run passes on; their types and choices come from the stages' own parsers
PREPARE_FLAGS = ("--context-turns", "--val-ratio", "--min-replies", "--self-alias", "--burst-gap", "--conversation-gap")
TRAIN_FLAGS = ("--method", "--max-steps", "--epochs", "--lr", "--lora-r", "--max-length", "--batch-size",
               "--eval-every", "--rehearsal", "--contrast", "--contrast-negatives", "--no-context")
EVAL_FLAGS = ("--max-examples", "--samples", "--max-new-tokens", "--general", "--selection-items", "--switch-items",
              "--marginal-contexts", "--persona-marginal-contexts")
# the extended base's flags: they reach the extend stage and every train stage (both build that base), so they
# are RunConfig fields rather than pass-through values (see _dialogue)
EXTEND_FLAGS = ("--dialogue",)


def _stage_flags() -> list[tuple[str, tuple[str, ...], argparse.ArgumentParser]]:
    from pipeline import evaluate, extend, prepare, train

    return [("prepare", PREPARE_FLAGS, prepare.build_parser()), ("extend and train", EXTEND_FLAGS,
                                                                   extend.build_parser()),
            ("train", TRAIN_FLAGS, train.build_parser()), ("evaluate", EVAL_FLAGS, evaluate.build_parser())]


def _pass_on(p: argparse.ArgumentParser, stage: str, flag: str, source: argparse.ArgumentParser) -> None:
    """Add ``flag`` as ``source`` declares it (type, choices), without a default: only given flags go on."""
    action = next(a for a in source._actions if flag in a.option_strings)
    if isinstance(action, argparse.BooleanOptionalAction):  # an on/off switch keeps the stage's default
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=action.default,
                       help=f"passed to {stage}: {action.help}")
        return
    p.add_argument(flag, type=action.type, choices=action.choices, metavar=action.metavar or flag[2:].upper()
                   .replace("-", "_"), help=f"passed to {stage} (see python -m pipeline.{stage} --help)")


def build_parser():
    p = make_parser("python -m pipeline.run", __doc__)
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="chat exports (KakaoTalk txt/csv)")
    p.add_argument("--persona", action="append", default=[], help="speaker to imitate (required; repeatable)")
    p.add_argument("--out", type=Path, help="run folder (default runs/NAME, NAME = the first --persona)")
    p.add_argument("--adapters-dir", type=Path, help="where adapters go (default OUT/adapters)")
    p.add_argument("--base-model", help="base model: local HF folder, .gguf file or hub id (default Gemma 3 270M)")
    p.add_argument("--cache-dir", type=Path, help="extended-base cache (default $KAKAO_PERSONA_CACHE or "
                   "~/.cache/kakao-persona)")
    p.add_argument("--seed", type=int, help="seed of the split (prepare), training and evaluation")
    p.add_argument("--keep-pii", action="store_true",
                   help="prepare: keep phone numbers, e-mails, names...; the audit after prepare does not stop the run")
    p.add_argument("--redact-list", type=Path, metavar="FILE",
                   help="passed to prepare: your own terms to hide, one a line (the audit checks them too)")
    p.add_argument("--threads", type=int, help="torch CPU threads for train and evaluate (default: all CPUs)")
    for stage, flags, source in _stage_flags():
        for flag in flags:
            _pass_on(p, stage, flag, source)
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation stage")
    p.add_argument("--force", action="store_true", help="rerun every stage even if unchanged")
    p.add_argument("--chat", action="store_true", help="open the chat (python -m chatbot) at the end")
    return p


def _passed(a, flags: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for flag in flags:
        value = getattr(a, flag[2:].replace("-", "_"))
        if value is not None:
            out += [flag, str(value)]
    return tuple(out)


def config_from_args(a) -> RunConfig:
    out = a.out or Path("runs") / (a.persona[0] if a.persona else "run")
    seed = ("--seed", str(a.seed)) if a.seed is not None else ()
    threads = ("--threads", str(a.threads)) if a.threads else ()
    return RunConfig(
        inputs=tuple(a.inputs), personas=tuple(a.persona), out=out, adapters_dir=a.adapters_dir or out / "adapters",
        base_model=a.base_model, cache_dir=a.cache_dir,
        prepare_args=_passed(a, PREPARE_FLAGS) + seed + (("--keep-pii",) if a.keep_pii else ())
        + (("--redact-list", str(a.redact_list)) if a.redact_list else ()),
        train_args=_passed(a, TRAIN_FLAGS) + seed + threads, eval_args=_passed(a, EVAL_FLAGS) + seed + threads,
        evaluate=not a.no_eval, chat=a.chat, force=a.force, keep_pii=a.keep_pii, redact_list=a.redact_list,
        dialogue=a.dialogue,
    )


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    setup_logging()
    cfg = config_from_args(a)
    cfg.validate()
    run(cfg)
    chat = chat_argv(cfg)
    if cfg.evaluate:
        print(f"evaluation: {cfg.eval_dir() / 'eval.md'}")
    print("chat: python -m chatbot " + " ".join(_quote(x) for x in chat))
    return open_chat(chat) if cfg.chat else 0


def open_chat(argv: Sequence[str]) -> int:
    """``python -m chatbot ARGV`` as its own process (the chat's exit code is ours)."""
    return subprocess.call([sys.executable, "-m", "chatbot", *argv])


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


if __name__ == "__main__":
    sys.exit(run_cli(main))
