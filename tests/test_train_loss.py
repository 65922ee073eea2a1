"""The supervised-only loss equals the model's own loss, through PEFT, and trains the new rows."""
from __future__ import annotations

import pytest
import torch

from core import chat_format
from pipeline.training.data import collate, render_pairs
from pipeline.training.loss import SupervisedLoss, causal_lm, project
from pipeline.training.methods import MethodSettings, apply_method
from tests.test_train_helpers import extended, persona_pairs, train_cache  # noqa: F401 (fixture)


def _lora_model(base_dir, cache):
    model, tok, manifest, _ = extended(base_dir, cache)
    torch.manual_seed(0)
    peft_model = apply_method(model, MethodSettings(new_token_ids=tuple(manifest["new_token_ids"])))
    with torch.no_grad():  # a freshly initialised LoRA is the identity: make it count
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.add_(torch.randn_like(p) * 0.05)
    return peft_model.eval(), tok, manifest


def _batch(tok, n=6, max_length=96):
    examples, _ = render_pairs(persona_pairs(limit=n), tok, max_length)
    return collate(examples, chat_format.pad_id(tok))


@pytest.mark.parametrize("base", ["tiny_gpt2_dir", "tiny_gemma_dir", "tiny_gemma_untied_dir"])
def test_loss_equals_model_loss_with_lora(base, request, train_cache):
    model, tok, _ = _lora_model(request.getfixturevalue(base), train_cache)
    batch = _batch(tok)
    reference = model(**batch).loss
    total, n = SupervisedLoss(model)(**batch)
    assert n == int((batch["labels"][:, 1:] != -100).sum()) > 0
    assert torch.allclose(total / n, reference, rtol=1e-5, atol=1e-5), (float(total / n), float(reference))


def test_softcap_is_applied(tiny_gemma_dir, train_cache):
    model, tok, _ = _lora_model(tiny_gemma_dir, train_cache)
    lm = causal_lm(model)
    assert lm.config.final_logit_softcapping == 30.0
    h = torch.randn(4, lm.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 200
    logits = project(lm, h)
    assert logits.abs().max() < 30.0  # capped, while the raw projection is far beyond
    assert (lm.get_output_embeddings()(h)).abs().max() > 30.0


def test_tied_projection_uses_trained_token_rows(tiny_gemma_dir, train_cache):
    model, tok, manifest = _lora_model(tiny_gemma_dir, train_cache)
    lm, new_ids = causal_lm(model), manifest["new_token_ids"]
    delta = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    h = torch.randn(3, lm.config.hidden_size)
    raw = lm.get_output_embeddings()(h)
    assert torch.allclose(raw[:, new_ids], h @ delta.T, atol=1e-5)  # the adapter's rows, not the base's
    project(lm, h.requires_grad_(False))[:, new_ids].sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0  # the output path alone trains them


def test_gradient_reaches_new_rows_and_lora(tiny_gemma_untied_dir, train_cache):
    model, tok, _ = _lora_model(tiny_gemma_untied_dir, train_cache)
    model.train()
    total, n = SupervisedLoss(model)(**_batch(tok))
    (total / n).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    deltas = [g for name, g in grads.items() if "trainable_tokens_delta" in name]
    assert len(deltas) == 2  # untied: input rows and output rows are both trained
    assert all(g is not None and g.abs().sum() > 0 for g in deltas)
    assert any("lora_A" in name and g is not None and g.abs().sum() > 0 for name, g in grads.items())


def test_gradient_checkpointing_still_trains_lora(tiny_gemma_dir, train_cache):
    from pipeline.training.config import TrainConfig
    from pipeline.training.run import prepare_model

    model, tok, manifest, _ = extended(tiny_gemma_dir, train_cache)
    cfg = TrainConfig("d", "o", gradient_checkpointing=True)
    peft_model = prepare_model(cfg, model, manifest["new_token_ids"])
    assert causal_lm(peft_model).is_gradient_checkpointing and not causal_lm(peft_model).config.use_cache
    peft_model.train()
    total, n = SupervisedLoss(peft_model)(**_batch(tok))
    (total / n).backward()
    lora_b = [p.grad for name, p in peft_model.named_parameters() if "lora_B" in name]  # lora_A's is 0 at init
    assert lora_b and all(g is not None and g.abs().sum() > 0 for g in lora_b)


def test_chunked_loss_equals_unchunked(tiny_gemma_dir, train_cache, monkeypatch):
    from pipeline.training import loss as loss_mod

    model, tok, _ = _lora_model(tiny_gemma_dir, train_cache)
    monkeypatch.setattr(loss_mod, "_frozen_head", lambda lm: None)  # the path of a trained output layer
    batch = _batch(tok)
    whole, n = SupervisedLoss(model)(**batch)
    grads = torch.autograd.grad(whole, [p for p in model.parameters() if p.requires_grad])
    monkeypatch.setattr(loss_mod, "MAX_LOGITS", 7 * len(tok))  # chunks of 7 rows
    chunked, _ = SupervisedLoss(model)(**batch)
    grads_chunked = torch.autograd.grad(chunked, [p for p in model.parameters() if p.requires_grad])
    assert n > 7 and torch.allclose(chunked, whole, rtol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, grads_chunked))


@pytest.mark.parametrize("base", ["tiny_gpt2_dir", "tiny_gemma_dir", "tiny_gemma_untied_dir"])
@pytest.mark.parametrize("block", [7, 1 << 20])  # new tokens straddle tiles of 7 columns; one tile
def test_tiled_cross_entropy_equals_full_logits(base, block, request, train_cache, monkeypatch):
    """Loss and gradients (hidden states, the new tokens' rows) of the vocabulary-tiled loss equal
    cross_entropy over the full logits, softcap included (tiny Gemma caps at 30)."""
    from pipeline.training import loss as loss_mod

    model, tok, manifest = _lora_model(request.getfixturevalue(base), train_cache)
    lm = causal_lm(model)
    assert loss_mod._frozen_head(lm) is not None
    monkeypatch.setattr(loss_mod, "VOCAB_BLOCK", block)
    gen = torch.Generator().manual_seed(0)
    hidden = (torch.randn(11, lm.config.hidden_size, generator=gen) * 40).requires_grad_()
    targets = torch.randint(0, len(tok), (11,), generator=gen)
    targets[:4] = torch.tensor(manifest["new_token_ids"][:4])  # some targets are new tokens
    head_rows = [rows for _, rows in loss_mod._token_rows(loss_mod._token_layer(lm.get_output_embeddings()), "cpu")]
    params = [hidden] + head_rows
    assert head_rows
    reference = torch.nn.functional.cross_entropy(project(lm, hidden).float(), targets, reduction="sum")
    tiled = loss_mod.chunked_loss(lm, hidden, targets)
    assert torch.allclose(tiled, reference, rtol=1e-5), (float(tiled), float(reference))
    for a, b in zip(torch.autograd.grad(reference, params), torch.autograd.grad(tiled, params)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max())), float((a - b).abs().max())
    with torch.no_grad():  # evaluation: no gradient work, same value
        assert torch.allclose(loss_mod.chunked_loss(lm, hidden, targets), reference, rtol=1e-5)


@pytest.mark.parametrize("base", ["tiny_gemma_dir", "tiny_gemma_untied_dir"])
def test_tiled_row_losses_take_per_row_weights(base, request, train_cache, monkeypatch):
    """The per-row losses' gradients under unequal upstream weights (what a loss on per-example sums
    sends back) equal those of cross_entropy over the full logits, the new tokens' rows included."""
    from pipeline.training import loss as loss_mod

    model, tok, manifest = _lora_model(request.getfixturevalue(base), train_cache)
    lm = causal_lm(model)
    monkeypatch.setattr(loss_mod, "VOCAB_BLOCK", 7)
    gen = torch.Generator().manual_seed(1)
    hidden = (torch.randn(9, lm.config.hidden_size, generator=gen) * 40).requires_grad_()
    targets = torch.randint(0, len(tok), (9,), generator=gen)
    targets[:3] = torch.tensor(manifest["new_token_ids"][:3])
    weights = torch.randn(9, generator=gen)
    head_rows = [rows for _, rows in loss_mod._token_rows(loss_mod._token_layer(lm.get_output_embeddings()), "cpu")]
    params = [hidden] + head_rows
    reference = torch.nn.functional.cross_entropy(project(lm, hidden).float(), targets, reduction="none")
    rows = loss_mod.token_losses(lm, hidden, targets)
    assert torch.allclose(rows, reference, rtol=1e-5)
    for a, b in zip(torch.autograd.grad((reference * weights).sum(), params),
                    torch.autograd.grad((rows * weights).sum(), params)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max())), float((a - b).abs().max())


@pytest.mark.parametrize("fast", [True, False])
def test_per_example_sums_are_each_rows_loss(fast, tiny_gemma_dir, train_cache):
    model, tok, _ = _lora_model(tiny_gemma_dir, train_cache)
    batch = _batch(tok)
    loss = SupervisedLoss(model)
    loss.supervised_only = fast  # the gathered-head path and the model's own forward
    sums, counts = loss(**batch, per_example=True)
    total, n = loss(**batch)
    assert sums.shape == (len(batch["input_ids"]),) and int(counts.sum()) == int(n)
    assert torch.allclose(sums.sum(), total, rtol=1e-5)
    for row in range(len(sums)):  # each row alone gives its own sum
        one = {k: v[row:row + 1] for k, v in batch.items()}
        alone, _ = loss(**one)
        assert torch.allclose(sums[row], alone, rtol=1e-4, atol=1e-4)
