"""The CUDA paths: bf16 LoRA, QLoRA (4-bit base), the chat engine and evaluation scoring on the GPU.

Skipped where torch sees no GPU (CI's machines); the rest of the suite runs the same code on the CPU,
and on a GPU machine ``python -m pytest -q`` runs the whole suite there (the code picks CUDA itself).
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from data_prep.records import ContextTurn
from pipeline.extension import load_trained
from tests.chat_helpers import chat_dirs, load_engine  # noqa: F401 (fixture)
from tests.test_engine import HELLO
from tests.test_train_helpers import persona_data, train_cache  # noqa: F401 (fixtures)
from tests.test_train_methods import _logits, _train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_lora_trains_in_bf16_on_the_gpu_and_reloads(tiny_gemma_dir, persona_data, train_cache, tmp_path):
    result = _train(tiny_gemma_dir, persona_data, tmp_path / "a", train_cache, lr=1e-2)
    model = result.model
    base_w = next(p for n, p in model.named_parameters() if "lora" not in n and "trainable_tokens" not in n)
    assert base_w.device.type == "cuda" and base_w.dtype == torch.bfloat16  # the frozen base in bf16
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 and p.device.type == "cuda" for p in lora)  # fp32 adapter
    metrics = json.loads((tmp_path / "a" / "manifest.json").read_text(encoding="utf-8"))["metrics"]
    assert math.isfinite(metrics["val_loss"]) and metrics["steps"] == 3
    trained = _logits(model.eval())
    on_gpu, _, _ = load_trained(tmp_path / "a", cache_dir=train_cache, device="cuda")
    assert torch.allclose(_logits(on_gpu), trained, atol=2e-2)
    on_cpu, _, _ = load_trained(tmp_path / "a", cache_dir=train_cache)  # the same adapter serves a CPU (fp32)
    assert torch.allclose(_logits(on_cpu), trained, atol=0.1)
    with on_cpu.disable_adapter():
        assert not torch.allclose(_logits(on_cpu), trained, atol=0.1)


def test_qlora_trains_lora_on_a_4bit_base(tiny_gemma_dir, persona_data, train_cache, tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    result = _train(tiny_gemma_dir, persona_data, tmp_path / "q", train_cache, lr=1e-2, qlora=True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules())
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["config"]["qlora"] and math.isfinite(manifest["metrics"]["val_loss"])
    # the adapter is an ordinary LoRA adapter: it loads onto the bf16 extended base for the chat
    loaded, _, _ = load_trained(tmp_path / "q", cache_dir=train_cache, device="cuda")
    with_adapter = _logits(loaded)
    with loaded.disable_adapter():
        assert not torch.allclose(_logits(loaded), with_adapter, atol=1e-3)


def test_chat_engine_runs_on_the_gpu_and_swaps(chat_dirs):
    from chatbot.engine import GenerationParams

    engine = load_engine(*chat_dirs)  # default device: the GPU
    assert engine.model.device.type == "cuda"
    params = GenerationParams(max_new_tokens=12)
    first = engine.reply(HELLO, "minji", params, seed=7)
    other = engine.reply(HELLO, "junho", params, seed=7)
    assert first and other and first != other
    assert engine.reply(HELLO, "minji", params, seed=7) == first


def test_scoring_on_the_gpu_matches_the_cpu(tiny_gemma_dir, train_cache):
    from core.models import load_extended
    from pipeline.evaluation.scoring import Example, score_examples
    from pipeline.extension import ensure_extended

    path = ensure_extended(str(tiny_gemma_dir), train_cache)
    examples = [Example("민수의 말투로 대화한다.", (ContextTurn("지영", "뭐 해?"),), "민수", reply)
                for reply in ("그냥 집에 있어", "밥 먹는 중 ㅋㅋ", "왜?")]
    scores = {}
    for device in ("cpu", "cuda"):
        model, tok, _ = load_extended(path, device=device)
        scores[device] = score_examples(model.eval(), tok, examples, 256)
    for cpu, gpu in zip(scores["cpu"], scores["cuda"]):
        assert cpu.tokens == gpu.tokens and abs(cpu.logprob - gpu.logprob) < 0.05 * abs(cpu.logprob) + 0.5
