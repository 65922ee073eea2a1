"""Find and check the persona adapters under ``--adapters`` (no torch here: only files and JSON).

Each subdirectory is one adapter written by ``python -m pipeline.train`` (its format:
:mod:`core.adapter_format`).
Problems with one adapter never stop the others: the adapter is listed as unavailable
with the reason. Only a missing/empty ``--adapters`` directory is a :class:`UserError`.

Safety: names are plain words (no dots, slashes or ``..``), a directory or file whose
real path (symlinks resolved) leaves ``--adapters`` is refused, and weights are read
only from safetensors (an adapter shipping ``.bin`` pickles is refused).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from core.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, PICKLE_WEIGHTS, lora_problem, read_manifest
from core.errors import UserError
from core.files import read_json
from core.reply_shape import ReplyLimits, read_limits

NAME_RE = re.compile(r"[\w-]{1,64}")  # \w includes Hangul; no '.', so no '..' and no PEFT module-path clash
# only LoRA adapters can live side by side in one PeftModel and be switched with set_adapter
SHAREABLE_METHODS = ("lora",)


@dataclass(frozen=True)
class PersonaInfo:
    """One adapter directory as the chat sees it; ``reason`` is set when it cannot be used."""

    name: str  # directory name = PEFT adapter name
    path: Path
    persona: str = ""  # the speaker the adapter imitates
    method: str = ""
    base_model: str | None = None  # spec string; None = the default base model
    fingerprint: str = ""  # the extended base it was trained on
    dialogue: bool = False  # that base had the dialogue stage merged (pipeline.dialogue_stage)
    instruction: str = ""
    user_speaker: str = ""
    max_length: int | None = None
    steps: int | None = None
    val_ppl: float | None = None
    limits: ReplyLimits = ReplyLimits()  # from persona.yaml; defaults for an adapter without them
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def label(self) -> str:
        """Dropdown text: name, persona, base model, training steps, validation perplexity."""
        base = self.base_model or "default"
        steps = "?" if self.steps is None else str(self.steps)
        ppl = "?" if self.val_ppl is None else f"{self.val_ppl:.2f}"
        return f"{self.name} ({self.persona}) · base {base} · {steps} steps · val ppl {ppl}"


def _inside(root: Path, p: Path) -> bool:
    return p.resolve().is_relative_to(root)


def _problem_in_files(root: Path, d: Path) -> str | None:
    """Why this directory's files cannot be loaded safely, or None."""
    for bad in PICKLE_WEIGHTS:
        if (d / bad).exists():
            return f"{bad} found: only safetensors weights are loaded (pickle files can run code)"
    for f in d.iterdir():
        if not _inside(root, f):
            return f"{f.name} links outside {root}"
    for need in (MANIFEST, ADAPTER_CONFIG):
        if not (d / need).is_file():
            return f"{need} missing (not an adapter written by pipeline.train?)"
    return None


def _from_manifest(name: str, d: Path, m: dict) -> PersonaInfo:
    metrics = m.get("metrics") or {}
    ppl = metrics.get("val_ppl")
    return PersonaInfo(
        name=name, path=d, persona=str(m["persona"]), method=str(m["method"]),
        base_model=m.get("base_model"), fingerprint=str(m["extended_fingerprint"]),
        dialogue=bool(m.get("dialogue", False)),
        instruction=str(m["instruction"]), user_speaker=str(m["user_speaker"]),
        max_length=m.get("max_length"), steps=metrics.get("steps"),
        val_ppl=None if ppl is None else float(ppl),
    )


def inspect_adapter(root: Path, d: Path) -> PersonaInfo:
    """Read one adapter directory; never raises, problems go to ``reason``."""
    name = d.name
    if not NAME_RE.fullmatch(name):
        return PersonaInfo(name, d, reason="name must be letters, digits, '_' or '-' (at most 64)")
    if not _inside(root, d):
        return PersonaInfo(name, d, reason=f"links outside {root}")
    problem = _problem_in_files(root, d)
    if problem:
        return PersonaInfo(name, d, reason=problem)
    try:
        info = _from_manifest(name, d, read_manifest(d))
        peft_type = read_json(d / ADAPTER_CONFIG, "a PEFT adapter config", "retrain the adapter").get("peft_type")
    except UserError as e:
        return PersonaInfo(name, d, reason=str(e))
    if info.method not in SHAREABLE_METHODS or str(peft_type).upper() != "LORA":
        return replace(info, reason=f"method {info.method!r} (peft_type {peft_type}): only LoRA "
                                    "adapters can share one model with the others")
    if not (d / ADAPTER_WEIGHTS).is_file():
        return replace(info, reason=f"{ADAPTER_WEIGHTS} missing")
    problem = lora_problem(d / ADAPTER_WEIGHTS)
    return replace(info, reason=problem) if problem else replace(info, limits=read_limits(d / "persona.yaml"))


def discover(adapters_dir: str | Path) -> list[PersonaInfo]:
    """Every adapter subdirectory of ``adapters_dir``, sorted by name, usable or not."""
    root = Path(adapters_dir)
    if not root.is_dir():
        raise UserError(f"--adapters {adapters_dir}: no such directory (train one: python -m pipeline.train)")
    root = root.resolve()
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise UserError(f"--adapters {adapters_dir}: no adapter directories inside")
    return [inspect_adapter(root, d) for d in dirs]


def choose_base(infos: list[PersonaInfo], requested: str | None) -> str | None:
    """The base model spec to load: ``--base-model`` if given, else the most common among adapters."""
    if requested is not None:
        return requested
    specs = Counter(i.base_model for i in infos if i.available)
    return specs.most_common(1)[0][0] if specs else None


def choose_dialogue(infos: list[PersonaInfo], spec: str | None) -> bool:
    """Whether to load ``spec``'s extended base with the dialogue stage: as most of its adapters were trained."""
    flags = Counter(i.dialogue for i in infos if i.available and i.base_model == spec)
    return flags.most_common(1)[0][0] if flags else False


def check_base(infos: list[PersonaInfo], spec: str | None, fingerprint: str) -> list[PersonaInfo]:
    """Mark adapters trained on another base (spec or extended fingerprint) unavailable."""
    out = []
    for i in infos:
        if i.available and i.fingerprint != fingerprint:
            why = f"trained on extended base {i.fingerprint[:12]}, loaded base is {fingerprint[:12]}"
            if i.base_model != spec:
                why = f"trained on base {i.base_model or 'default'}, loaded base is {spec or 'default'}"
            i = replace(i, reason=why)
        out.append(i)
    return out
