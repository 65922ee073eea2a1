"""One command from chat exports to a persona chatbot: prepare -> extend (cached) -> train -> evaluate.

    python -m pipeline.run examples/kakao_example.txt --persona 민수
    python -m pipeline.run chat1.txt chat2.txt --persona 민수 --persona 지은 --max-steps 300 --chat
    python -m pipeline.run chat.txt --persona 민수 --base-model ~/models/kogpt2 --out runs/kogpt2

Layout (OUT defaults to runs/NAME, NAME = the first --persona):
  OUT/data                      prepare output (train.jsonl, validation.jsonl, stats.json, personas/)
  OUT/adapters/PERSONA          one adapter per persona (--adapters-dir to put them elsewhere)
  OUT/adapters/PERSONA/eval.md  evaluation (several personas: OUT/adapters/eval/eval.md)
  OUT/run_state.json            stage fingerprints

Each stage has a fingerprint: a hash of its input files, its flags and the previous stage's
fingerprint. Re-running skips a stage whose fingerprint is unchanged and whose outputs exist;
a changed input or flag reruns that stage and every stage after it (--force reruns all).
The stages run in this process through their own main(argv); at the end the command that
opens the chat is printed (--chat opens it).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from data_prep.errors import UserError
from pipeline.cli import parser as make_parser
from pipeline.cli import run_cli, setup_logging
from pipeline.dialogue import DEFAULT as DIALOGUE_DEFAULT
from pipeline.dialogue import add_flag as dialogue_flag

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
    dialogue: bool = DIALOGUE_DEFAULT  # --dialogue/--no-dialogue: the extended base's dialogue stage

    def validate(self) -> None:
        problems = [f"{p}: no such file" for p in self.inputs if not p.is_file()]
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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(stage: Stage, previous: str) -> str:
    """Hash of the stage's flags, input file contents, extra material and the previous fingerprint."""
    material = {"stage": stage.name, "argv": list(stage.argv), "previous": previous, "extra": stage.extra,
                "inputs": {str(p): file_sha256(p) if p.is_file() else None for p in stage.inputs}}
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def load_state(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("stages", {}) if data.get("version") == STATE_VERSION else {}


def save_state(path: Path, stages: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": STATE_VERSION, "stages": stages}, ensure_ascii=False, indent=1),
                   encoding="utf-8")
    tmp.replace(path)


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
    return Stage("prepare", tuple(argv), cfg.inputs, outputs, lambda: _call(prepare.main, argv))


def extend_stage(cfg: RunConfig) -> Stage:
    """ensure_extended is its own cache (keyed by base weights); the stage only records its fingerprint."""
    from pipeline.extend import ensure_extended, read_manifest

    def action():
        return read_manifest(ensure_extended(cfg.base_model, cfg.cache_dir, dialogue=cfg.dialogue))["fingerprint"]

    return Stage("extend", tuple(_base(cfg) + _cache(cfg) + _dialogue(cfg)), (), (), action)


def train_defaults() -> dict:
    """pipeline.train's defaults: part of the train stage's fingerprint, so that a new version of the
    project whose defaults changed retrains instead of keeping an adapter trained the old way."""
    from dataclasses import asdict

    from pipeline.train import TrainConfig

    # dialogue: its effect is the extended base's fingerprint, already part of the train stage's
    return {k: v for k, v in asdict(TrainConfig("", "")).items() if k not in ("data", "out", "dialogue")}


def train_stage(cfg: RunConfig, persona: str, extended: str) -> Stage:
    from pipeline import train

    data, out = cfg.out / "data", cfg.adapter(persona)
    argv = ["--data", str(data), "--persona", persona, "--out", str(out), *_base(cfg), *_cache(cfg),
            *_dialogue(cfg), *cfg.train_args]
    inputs = (data / "train.jsonl", data / "validation.jsonl", data / "personas" / f"{persona}.yaml")
    return Stage(f"train:{persona}", tuple(argv), inputs, (out / "manifest.json",),
                 lambda: _call(train.main, argv), {"extended": extended, "defaults": train_defaults()})


def evaluate_stage(cfg: RunConfig) -> Stage:
    from pipeline import evaluate

    argv = [*[a for p in cfg.personas for a in ("--adapter", str(cfg.adapter(p)))], "--data", str(cfg.out / "data"),
            *_cache(cfg), *cfg.eval_args]
    if len(cfg.personas) > 1:
        argv += ["--out", str(cfg.eval_dir())]
    inputs = tuple(cfg.adapter(p) / n for p in cfg.personas for n in ("manifest.json", "adapter_model.safetensors"))
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


PREPARE_FLAGS = {"--context-turns": int, "--val-ratio": float, "--min-replies": int, "--self-alias": str,
                 "--burst-gap": float, "--conversation-gap": float}
TRAIN_FLAGS = {"--method": str, "--max-steps": int, "--epochs": int, "--lr": float, "--lora-r": int,
               "--max-length": int, "--batch-size": int, "--eval-every": int, "--rehearsal": str}
EVAL_FLAGS = {"--max-examples": int, "--samples": int, "--max-new-tokens": int, "--general": str}


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
    p.add_argument("--keep-pii", action="store_true", help="prepare: keep phone numbers, e-mails, names")
    p.add_argument("--threads", type=int, help="torch CPU threads for train and evaluate (default: all CPUs)")
    for flags, stage in ((PREPARE_FLAGS, "prepare"), (TRAIN_FLAGS, "train"), (EVAL_FLAGS, "evaluate")):
        for flag, kind in flags.items():
            p.add_argument(flag, type=kind, help=f"passed to {stage} (see python -m pipeline.{stage} --help)")
    dialogue_flag(p)
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation stage")
    p.add_argument("--force", action="store_true", help="rerun every stage even if unchanged")
    p.add_argument("--chat", action="store_true", help="open the chat (python -m chatbot) at the end")
    return p


def _passed(a, flags: dict) -> tuple[str, ...]:
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
        prepare_args=_passed(a, PREPARE_FLAGS) + seed + (("--keep-pii",) if a.keep_pii else ()),
        train_args=_passed(a, TRAIN_FLAGS) + seed + threads, eval_args=_passed(a, EVAL_FLAGS) + seed + threads,
        evaluate=not a.no_eval, chat=a.chat, force=a.force, dialogue=a.dialogue,
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
    if cfg.chat:
        from chatbot.__main__ import main as chat_main

        return chat_main(chat)
    return 0


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


if __name__ == "__main__":
    sys.exit(run_cli(main))
