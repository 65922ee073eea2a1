"""Tiny persona adapters for the chat tests: an extended tiny base plus LoRA adapters that differ.

The adapters follow the adapter folder's format (core.adapter_format: PEFT ``save_pretrained`` with
``save_embedding_layers=False``, new-token rows via ``trainable_token_indices``, a
``manifest.json``); their LoRA and new-token weights are random (seeded) instead of
trained, which is enough to make each persona answer differently and deterministically.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

PERSONAS = {"minji": ("민지", "철수"), "junho": ("준호", "영희")}  # adapter name: (persona, user_speaker)


def extend_tiny(base_dir: Path, cache_dir: Path) -> Path:
    """The extended tiny base, built by pipeline.extend exactly as training builds it."""
    from pipeline.extension import ensure_extended

    return ensure_extended(str(base_dir), cache_dir=cache_dir)


def load_extended(ext_dir: Path):
    """(model, tokenizer, manifest) of an extended base."""
    from core.models import load_extended as load

    return load(ext_dir)


def make_adapter(ext_dir: Path, out_dir: Path, persona: str, user_speaker: str, seed: int,
                 base_spec: str | None = None, lora_std: float = 0.3) -> Path:
    """Save a random-but-seeded LoRA adapter + manifest on the extended base in ``ext_dir``."""
    peft_model, tok, ext = random_lora(ext_dir, seed, lora_std)
    out = Path(out_dir)
    peft_model.save_pretrained(out, save_embedding_layers=False)
    tok.save_pretrained(out)
    manifest = adapter_manifest(ext, persona, user_speaker, seed, base_spec)
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    return out


def random_lora(ext_dir: Path, seed: int, lora_std: float = 0.3):
    """(PEFT model, tokenizer, extended manifest): LoRA and new-token weights random but seeded."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, tok, ext = load_extended(ext_dir)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "c_attn", "c_proj"],
        trainable_token_indices={"embed_tokens" if _has_embed_tokens(model) else "wte": ext["new_token_ids"]},
    )
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            # new-token rows stay near their init: large random rows would make <|eot|> likely at once
            std = lora_std if "lora_B" in name else 0.02 if "trainable_tokens_delta" in name else None
            if std is not None:
                p.add_(torch.randn(p.shape, generator=gen) * std)
    return peft_model, tok, ext


def adapter_manifest(ext: dict, persona: str, user_speaker: str, seed: int, base_spec: str | None = None) -> dict:
    """The manifest of a :func:`random_lora` adapter (``config.seed`` tells adapters apart)."""
    return {
        "persona": persona, "method": "lora", "base_model": base_spec,
        "extended_fingerprint": ext["fingerprint"], "data_hash": f"test-{seed}",
        "instruction": f"{persona}의 말투로 대화한다.", "user_speaker": user_speaker, "max_length": 256,
        "config": {"seed": seed}, "metrics": {"steps": 10 + seed, "best_step": 10, "val_loss": 2.5,
                                              "val_ppl": 12.18, "rehearsal_val_loss": None},
        "versions": {},
    }


def _has_embed_tokens(model) -> bool:
    return any(n.endswith("embed_tokens") for n, _ in model.named_modules())


def make_chat_fixture(base_dir: Path, root: Path) -> tuple[Path, Path]:
    """(extended base dir (cached under ``root/cache``), adapters dir with one adapter per :data:`PERSONAS` entry)."""
    ext = extend_tiny(base_dir, root / "cache")
    adapters = root / "adapters"
    for seed, (name, (persona, user)) in enumerate(PERSONAS.items(), start=1):
        make_adapter(ext, adapters / name, persona, user, seed, base_spec=str(base_dir))
    return ext, adapters


def add_broken_adapters(adapters: Path, good: Path) -> None:
    """Adapters the chat must list as unavailable, not crash on."""
    (adapters / "empty").mkdir()
    pickled = adapters / "pickled"
    shutil.copytree(good, pickled)
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    prompt = adapters / "prompt_tuned"
    shutil.copytree(good, prompt)
    m = json.loads((prompt / "manifest.json").read_text(encoding="utf-8"))
    (prompt / "manifest.json").write_text(json.dumps({**m, "method": "prompt"}), encoding="utf-8")
    other = adapters / "other_base"
    shutil.copytree(good, other)
    (other / "manifest.json").write_text(
        json.dumps({**m, "extended_fingerprint": "0" * 64, "base_model": "skt/kogpt2-base-v2"}),
        encoding="utf-8")
    garbled = adapters / "garbled"
    shutil.copytree(good, garbled)
    (garbled / "adapter_model.safetensors").write_bytes(b"\x00" * 100)


def load_engine(ext_dir: Path, adapters: Path):
    """An Engine loaded the way ``python -m chatbot`` loads it (the extended base comes from the cache)."""
    from chatbot.engine import Engine

    return Engine.from_adapters_dir(adapters, cache_dir=Path(ext_dir).parents[1])


_BUILT: dict[str, tuple[Path, Path]] = {}  # tiny base dir -> fixture dirs: built once per test session


@pytest.fixture(scope="module")
def chat_dirs(tiny_gemma_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(extended tiny base, adapters dir holding minji and junho); shared by every chat test module."""
    key = str(tiny_gemma_dir)
    if key not in _BUILT:
        _BUILT[key] = make_chat_fixture(Path(tiny_gemma_dir), tmp_path_factory.mktemp("chat"))
    return _BUILT[key]


_ENGINES: dict[tuple[Path, Path], object] = {}


@pytest.fixture(scope="module")
def engine(chat_dirs):
    """An Engine with the two tiny personas (one per session: it is thread-safe and read-only)."""
    if chat_dirs not in _ENGINES:
        _ENGINES[chat_dirs] = load_engine(*chat_dirs)
    return _ENGINES[chat_dirs]
