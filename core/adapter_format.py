"""The adapter folder's format: the one place that writes, reads and checks it.

``python -m pipeline.train`` writes one folder per persona; the chat and the
evaluation read it::

    OUT/adapter_config.json, adapter_model.safetensors   # PEFT LoRA (safetensors only)
    OUT/tokenizer files, OUT/persona.yaml (copy of the card), OUT/manifest.json,
    OUT/metrics.jsonl, OUT/loss.png

``manifest.json`` holds at least :data:`REQUIRED_KEYS`, and the sha256 of the weights
(:data:`WEIGHTS_SHA256`): :func:`read_manifest` refuses a folder whose weights are not
the ones its manifest was written with (one copied together by hand, or a half-written
one). :func:`write_adapter` writes the whole folder beside ``OUT`` and swaps it in, so a
kill at any point leaves the complete old adapter or the complete new one; the files of
the training run (:data:`RUN_FILES`) are carried over into the new folder. PEFT is always called with
``save_embedding_layers=False``: the new token rows travel as the small
``trainable_tokens_delta`` and never as a copy of the whole embedding (which PEFT's
``"auto"`` would write for a resized vocabulary).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from core.errors import UserError
from core.files import atomic_dir, read_json, sha256_of

MANIFEST = "manifest.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PERSONA_CARD = "persona.yaml"
PICKLE_WEIGHTS = ("adapter_model.bin", "pytorch_model.bin")  # never loaded: unpickling can run code
WEIGHTS_SHA256 = "weights_sha256"  # manifest key: sha256 of ADAPTER_WEIGHTS (adapters written before it lack it)
RUN_FILES = ("checkpoints", "metrics.jsonl", "loss.png")  # the training run's files, kept when the adapter is replaced
REQUIRED_KEYS = ("persona", "method", "extended_fingerprint", "instruction", "user_speaker")
MAX_ADAPTER_FRACTION = 0.01  # a LoRA adapter above 1% of the base is carrying an embedding copy
LARGE_BASE_BYTES = 100_000_000  # below this (tiny test models) LoRA itself is a big fraction: allow half
_EMBEDDING_KEYS = ("embed_tokens.weight", "wte.weight", "lm_head.weight")


def write_adapter(model, tokenizer, out: Path, manifest: dict[str, Any], persona_card: Path | None,
                  extra: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Write weights, tokenizer, the persona card copy and ``manifest.json`` (with the weights'
    sha256) into a temp folder, run ``extra(folder)`` there (checks, plots: raising keeps the
    old adapter), then swap it in for ``out``. Returns the manifest as written."""
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    assert not missing, f"adapter manifest lacks {missing}"
    with atomic_dir(out, carry=RUN_FILES) as tmp:
        model.save_pretrained(tmp, save_embedding_layers=False)
        tokenizer.save_pretrained(tmp)
        if persona_card is not None and persona_card.is_file():
            shutil.copyfile(persona_card, tmp / PERSONA_CARD)
        manifest = {**manifest, WEIGHTS_SHA256: sha256_of(tmp / ADAPTER_WEIGHTS)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        if extra is not None:
            extra(tmp)
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The adapter's ``manifest.json``, checked for :data:`REQUIRED_KEYS` and against the weights' sha256;
    UserError (one line) when it is not one."""
    path = Path(directory) / MANIFEST
    m = read_json(path, "a trained adapter", "train one with python -m pipeline.train")
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise UserError(f"{path}: manifest.json lacks {', '.join(missing)}")
    problem = weights_mismatch(Path(directory), m)
    if problem:
        raise UserError(problem)
    return m


def weights_mismatch(directory: Path, manifest: dict[str, Any]) -> str | None:
    """Why the weights beside ``manifest`` are not the ones it was written with, or None."""
    expected = manifest.get(WEIGHTS_SHA256)
    weights = directory / ADAPTER_WEIGHTS
    if not expected or not weights.is_file():  # older adapters; a missing file is reported by its readers
        return None
    if sha256_of(weights) != expected:
        return (f"{weights}: not the weights its manifest.json was written with (a mixed or damaged adapter "
                "folder); train it again with python -m pipeline.train")
    return None


def weight_names(path: str | Path) -> list[str]:
    """Tensor names in a safetensors file (its header only: no tensor is read); ValueError if not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:  # keys only: no torch needed
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types for a garbled header
        raise ValueError(f"{Path(path).name} is not a safetensors file") from e


def lora_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a LoRA safetensors file, or None. Checked before loading: a failed
    ``PeftModel.from_pretrained`` leaves its layers injected into the shared base model."""
    try:
        names = weight_names(path)
    except ValueError as e:
        return str(e)
    return None if any("lora_" in k for k in names) else f"{Path(path).name} holds no LoRA weights"


def check_weights(out: Path, expect_token_delta: bool, base_dir: Path | None = None) -> list[str]:
    """Problems with a saved adapter ([] means OK): files, expected keys, non-zero lora_B, size."""
    problems = [f"{out}: missing {name}" for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST)
                if not (out / name).is_file()]
    if problems:
        return problems
    mismatch = weights_mismatch(out, read_json(out / MANIFEST, "a trained adapter", "train it again"))
    if mismatch:
        return [mismatch]
    from safetensors.torch import load_file

    tensors = load_file(out / ADAPTER_WEIGHTS)
    keys = list(tensors)
    lora_b = [k for k in keys if "lora_B" in k]
    if not lora_b or not any("lora_A" in k for k in keys):
        problems.append(f"{out}: no lora_A/lora_B weights saved")
    elif all(float(tensors[k].abs().max()) == 0.0 for k in lora_b):
        problems.append(f"{out}: every lora_B is zero (the adapter did not train or was not saved)")
    if expect_token_delta and not any("trainable_tokens_delta" in k for k in keys):
        problems.append(f"{out}: no trainable_tokens_delta for the new chat tokens")
    if any(e in k for k in keys for e in _EMBEDDING_KEYS):
        problems.append(f"{out}: the adapter carries a full embedding copy")
    if base_dir is not None:
        size, base = (out / ADAPTER_WEIGHTS).stat().st_size, _weights_size(base_dir)
        limit = MAX_ADAPTER_FRACTION if base >= LARGE_BASE_BYTES else 0.5
        if base and size > limit * base:
            problems.append(f"{out}: adapter is {size / base:.1%} of the base model (limit {limit:.0%})")
    return problems


def _weights_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))
