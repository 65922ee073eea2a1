"""The adapter directory: save it, check it, load it back onto the extended base.

Layout (the contract shared with the chatbot and the evaluation)::

    OUT/adapter_config.json, adapter_model.safetensors   # PEFT (method "full": a whole model instead)
    OUT/tokenizer files, OUT/persona.yaml (copy of the card), OUT/manifest.json,
    OUT/metrics.jsonl, OUT/loss.png

PEFT is always called with ``save_embedding_layers=False``: the new token rows
travel as the small ``trainable_tokens_delta`` and never as a copy of the whole
embedding (which PEFT's ``"auto"`` would write for a resized vocabulary).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.cli import read_manifest_json

MANIFEST = "manifest.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
MAX_ADAPTER_FRACTION = 0.01  # a LoRA adapter above 1% of the base is carrying an embedding copy
LARGE_BASE_BYTES = 100_000_000  # below this (tiny test models) LoRA itself is a big fraction: allow half


def save_adapter(model, tokenizer, out: Path, manifest: dict[str, Any], persona_card: Path | None) -> None:
    """Write weights, tokenizer, the persona card copy and ``manifest.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if manifest["method"] == "full":
        model.save_pretrained(out)
    else:
        model.save_pretrained(out, save_embedding_layers=False)
    tokenizer.save_pretrained(out)
    if persona_card is not None and persona_card.is_file():
        shutil.copyfile(persona_card, out / "persona.yaml")
    (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _weights_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def check_adapter(out: Path, method: str, expect_token_delta: bool, base_dir: Path | None = None) -> list[str]:
    """Problems with a saved adapter ([] means OK): files, expected keys, non-zero lora_B, size."""
    if method == "full":
        return [] if any(out.glob("*.safetensors")) else [f"{out}: no model weights saved"]
    problems = [f"{out}: missing {name}" for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST)
                if not (out / name).is_file()]
    if problems:
        return problems
    from safetensors.torch import load_file

    tensors = load_file(out / ADAPTER_WEIGHTS)
    keys = list(tensors)
    if method == "lora":
        lora_b = [k for k in keys if "lora_B" in k]
        if not lora_b or not any("lora_A" in k for k in keys):
            problems.append(f"{out}: no lora_A/lora_B weights saved")
        elif all(float(tensors[k].abs().max()) == 0.0 for k in lora_b):
            problems.append(f"{out}: every lora_B is zero (the adapter did not train or was not saved)")
        if expect_token_delta and not any("trainable_tokens_delta" in k for k in keys):
            problems.append(f"{out}: no trainable_tokens_delta for the new chat tokens")
    if any("embed_tokens.weight" in k or "wte.weight" in k or "lm_head.weight" in k for k in keys):
        problems.append(f"{out}: the adapter carries a full embedding copy")
    if base_dir is not None and method == "lora":
        size, base = (out / ADAPTER_WEIGHTS).stat().st_size, _weights_size(base_dir)
        limit = MAX_ADAPTER_FRACTION if base >= LARGE_BASE_BYTES else 0.5
        if base and size > limit * base:
            problems.append(f"{out}: adapter is {size / base:.1%} of the base model (limit {limit:.0%})")
    return problems


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The adapter's ``manifest.json``; UserError when the directory is not an adapter."""
    return read_manifest_json(Path(directory) / MANIFEST, "a trained adapter",
                              "train one with python -m pipeline.train")


def load_trained(directory: str | Path, cache_dir: str | Path | None = None, device: str = "cpu", dtype=None):
    """(model, tokenizer, manifest) for an adapter directory, as the chatbot loads it.

    The extended base is the one named by the manifest (built into the cache if
    needed); the adapter is attached under the persona's name.
    """
    from pipeline.extend import extended_for, load_extended

    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest["method"] == "full":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or "float32").to(device)
        return model.eval(), AutoTokenizer.from_pretrained(directory), manifest
    from peft import PeftModel

    base, tokenizer, _ = load_extended(extended_for(manifest, cache_dir), device=device, dtype=dtype)
    model = PeftModel.from_pretrained(base, directory, adapter_name=manifest["persona"])
    return model.eval(), tokenizer, manifest
