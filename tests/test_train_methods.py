"""LoRA trains a few steps, saves, and reloads onto the extended base with the same logits."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from core.models import read_extended_manifest
from pipeline.extension import ensure_extended, load_trained
from pipeline.training.config import TrainConfig
from pipeline.training.run import train
from tests.test_train_helpers import CHATBOT_CSV, extended, persona_data, train_cache  # noqa: F401

IDS = torch.tensor([[2, 10, 20, 30, 40, 50, 60, 70]])


def _train(base_dir, data, out, cache, **kw):
    settings = {"max_steps": 3, "batch_size": 4, "eval_every": 0, "save_every": 0, "log_every": 1, **kw}
    cfg = TrainConfig(str(data), str(out), persona="민수", base_model=str(base_dir), cache_dir=str(cache), **settings)
    cfg.validate()
    return train(cfg)


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS.to(model.device)).logits.float().cpu()


def test_lora_trains_saves_and_reloads(tiny_gpt2_dir, persona_data, train_cache, tmp_path):
    method = "lora"
    result = _train(tiny_gpt2_dir, persona_data, tmp_path / method, train_cache, method=method, lr=1e-2)
    manifest = json.loads((tmp_path / method / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["method"] == method and manifest["metrics"]["steps"] == 3
    expected = _logits(result.model.eval())
    device = result.model.device  # the GPU where there is one (bf16 base: looser tolerance)
    loaded, _, _ = load_trained(tmp_path / method, cache_dir=train_cache, device=str(device))
    reloaded = _logits(loaded)
    assert torch.allclose(reloaded, expected, atol=1e-5 if device.type == "cpu" else 1e-2)
    with loaded.disable_adapter():  # and the adapter does change the model, by more than reloading does
        off = (_logits(loaded) - expected).abs().max()
    assert off > 1e-4 and off > (reloaded - expected).abs().max()


def test_lora_adapter_contents_gemma_with_rehearsal(tiny_gemma_dir, persona_data, train_cache, tmp_path):
    _train(tiny_gemma_dir, persona_data, tmp_path / "a", train_cache, lr=1e-2, rehearsal=str(CHATBOT_CSV))
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text(encoding="utf-8"))
    metrics = manifest["metrics"]
    assert metrics["rehearsal_train_examples"] == 12  # 0.2 of the mix next to 48 persona examples
    assert isinstance(metrics["rehearsal_val_loss"], float) and isinstance(metrics["val_loss"], float)
    assert {"persona", "method", "base_model", "extended_fingerprint", "data_hash", "instruction", "user_speaker",
            "max_length", "config", "metrics", "versions"} <= manifest.keys()
    assert manifest["user_speaker"] == "지영" and manifest["config"]["rehearsal_ratio"] == 0.2
    assert {"persona.yaml", "loss.png", "metrics.jsonl", "tokenizer.json"} <= {p.name for p in (tmp_path / "a").iterdir()}
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    for module in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):  # all-linear
        assert any(f"{module}.lora_A" in k for k in tensors) and any(f"{module}.lora_B" in k for k in tensors)
    assert any(float(v.abs().max()) > 0 for k, v in tensors.items() if "lora_B" in k)
    [delta] = [v for k, v in tensors.items() if "trainable_tokens_delta" in k]
    assert delta.shape[0] == len(read_extended_manifest(ensure_extended(str(tiny_gemma_dir), train_cache))["new_token_ids"])
    assert not any(k.endswith("embed_tokens.weight") or k.endswith("lm_head.weight") for k in tensors)
    base_bytes = sum(p.stat().st_size for p in tiny_gemma_dir.glob("*.safetensors"))
    assert (tmp_path / "a" / "adapter_model.safetensors").stat().st_size < 0.25 * base_bytes
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert not config.get("modules_to_save") and config["trainable_token_indices"]


def test_a_small_chat_is_evaluated_every_epoch(tiny_gpt2_dir, persona_data, train_cache, tmp_path):
    """48 examples in batches of 4: an epoch is shorter than --eval-every 40, so each epoch is evaluated."""
    from pipeline.training.loop import eval_interval

    assert (eval_interval(40, 12), eval_interval(40, 206), eval_interval(0, 12)) == (12, 40, 0)
    _train(tiny_gpt2_dir, persona_data, tmp_path / "e", train_cache, max_steps=0, epochs=3, eval_every=40, lr=1e-2)
    records = [json.loads(x) for x in (tmp_path / "e" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evaluated = [r["step"] for r in records if "val_loss" in r]
    epoch = evaluated[0]
    assert 0 < epoch < 40 and evaluated == [epoch * (i + 1) for i in range(len(evaluated))]
    steps = json.loads((tmp_path / "e" / "manifest.json").read_text(encoding="utf-8"))["metrics"]["steps"]
    assert steps == evaluated[-1] and (steps == 3 * epoch or len(evaluated) >= 1 + 2)  # the end, or 2 bad evals
