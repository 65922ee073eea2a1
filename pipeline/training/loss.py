"""The training loss, with the vocabulary projection only where a token is supervised.

A causal LM's own forward projects every position onto the vocabulary (262k
columns for Gemma 3) and then ignores most of them: context tokens carry label
-100. :class:`SupervisedLoss` runs the decoder body for the hidden states of all
positions, keeps the positions whose *next* token is supervised, and applies the
output layer (and whatever the model does after it, e.g. Gemma's
``final_logit_softcapping``) only there, one tile of the vocabulary at a time (:class:`_TiledCrossEntropy`: no
rows x 262k logits are ever alive). It goes through the modules PEFT wrapped,
so LoRA and the trainable rows of new tokens (``trainable_token_indices``, shared
by a tied output layer) are part of the result. A test holds it equal to
``model(input_ids, labels=labels).loss``.

A model whose logits go through post-processing this module does not reproduce
(:func:`supports_fast_loss`) falls back to the model's own forward: slower on a
large vocabulary, same value.
"""
from __future__ import annotations

import torch
from torch import nn

from core.chat_format import IGNORE_INDEX

# config attributes a causal LM applies to its logits after the output layer; anything
# listed here but not handled below would make the fast loss differ from the model's own
_UNHANDLED_LOGIT_POSTPROCESSING = ("logit_scale", "logits_scaling", "output_multiplier_scale")
# A trained output layer (full fine-tuning, LoRA on the head) is projected through its module:
# logits (rows x vocabulary) kept alive at once: 24M floats = 96 MB, ~90 rows of Gemma's 262k
# vocabulary; bigger batches are chunked and recomputed in the backward (a few % of a step)
MAX_LOGITS = 24_000_000


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers ``*ForCausalLM`` inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def supports_fast_loss(model: nn.Module) -> bool:
    """Whether the body + gathered-head path reproduces this model's forward exactly."""
    peft_cfg = getattr(model, "active_peft_config", None)
    if peft_cfg is not None and peft_cfg.is_prompt_learning:  # virtual tokens change the sequence
        return False
    lm = causal_lm(model)
    cfg = lm.config
    if any(getattr(cfg, name, None) not in (None, 1, 1.0) for name in _UNHANDLED_LOGIT_POSTPROCESSING):
        return False
    return lm.get_output_embeddings() is not None and lm.get_decoder() is not lm


def _token_layer(module: nn.Module):
    """PEFT's trainable-token layer inside ``module`` when it is active (else None)."""
    layer = getattr(module, "token_adapter", None)
    if layer is None or layer.merged or layer.disable_adapters:
        return None
    return layer


def _token_rows(layer, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(token ids, their trained rows) for each active adapter; a tied layer shares its partner's."""
    rows = []
    for name in layer.active_adapters:
        if name in layer.token_indices:
            ids = torch.as_tensor(layer.token_indices[name], device=device)
            rows.append((ids, layer.trainable_tokens_delta[name]))
    return rows


def embed(lm: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Input embeddings with the adapter's rows for the new tokens.

    PEFT's layer builds a merged copy of the whole embedding matrix on every call
    (and, in the backward, a dense gradient of it): 670 MB each for a 262k x 640
    table. Here the frozen table is looked up as is and only the positions that
    hold a new token take the trained row; the result is identical.
    """
    module = lm.get_input_embeddings()
    layer = _token_layer(module)
    if layer is None:
        return module(input_ids)
    base = layer.base_layer
    out = base(input_ids)  # a scaled embedding (Gemma) applies its scale here
    scale = getattr(base, "embed_scale", None)
    for ids, delta in _token_rows(layer, input_ids.device):
        lookup = torch.full((base.num_embeddings,), -1, dtype=torch.long, device=input_ids.device)
        lookup[ids] = torch.arange(len(ids), device=input_ids.device)
        pos = lookup[input_ids]
        hit = pos >= 0
        new_rows = delta[pos[hit]].to(out.dtype)
        out = out.index_put((hit,), new_rows * scale.to(out.dtype) if scale is not None else new_rows)
    return out


def project(lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits for some hidden states, exactly as ``lm``'s forward computes them.

    With trainable token rows on the output layer (its own, or shared by tying),
    the frozen matrix projects everything and the new tokens' columns are then
    replaced by the trained rows: no merged copy of the matrix, no dense gradient for it.
    """
    head = lm.get_output_embeddings()
    layer = _token_layer(head)
    if layer is None:
        logits = head(hidden)
    else:
        base = layer.base_layer
        logits = nn.functional.linear(hidden, base.weight, base.bias)
        for ids, delta in _token_rows(layer, hidden.device):
            logits = logits.index_copy(-1, ids, hidden @ delta.to(hidden.dtype).T)
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


class SupervisedLoss(nn.Module):
    """``forward(input_ids, attention_mask, labels) -> (sum of token losses, supervised tokens)``.

    Returning the sum (not the mean) lets the loop normalise by the tokens of a
    whole accumulated step, across processes, so every supervised token weighs the same.
    With ``per_example=True`` both come per row of the batch (the contrastive term compares
    one reply's loss under two contexts). Wrapping the model in a module keeps DDP's forward
    hooks in the path.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.supervised_only = supports_fast_loss(model)

    def forward(self, input_ids, attention_mask, labels, per_example: bool = False):
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        if not self.supervised_only:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            losses = nn.functional.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="none")
        else:
            lm = causal_lm(self.model)
            embeds = embed(lm, input_ids)
            hidden = lm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)[0]
            losses = token_losses(lm, hidden[:, :-1][keep], targets[keep])
        if not per_example:
            return losses.sum(), keep.sum()
        row = keep.nonzero()[:, 0]
        return losses.new_zeros(len(input_ids)).index_add(0, row, losses), keep.sum(dim=1)


def _row_losses(lm: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(project(lm, hidden).float(), targets, reduction="none")


def _frozen_head(lm: nn.Module):
    """(weight, bias, softcap, new-token ids, their trained rows) when the output layer is a frozen
    linear map, possibly with PEFT's trainable token rows; None otherwise (LoRA on the head, full
    fine-tuning): then :func:`chunked_loss` projects through the modules."""
    head = lm.get_output_embeddings()
    layer = _token_layer(head)
    base = layer.base_layer if layer is not None else head
    if type(base) is not nn.Linear or base.weight.requires_grad:
        return None
    if base.bias is not None and base.bias.requires_grad:
        return None
    ids, rows = None, None
    if layer is not None:
        pairs = _token_rows(layer, base.weight.device)
        if pairs:
            ids = torch.cat([i for i, _ in pairs])
            rows = torch.cat([r.to(base.weight.dtype) for _, r in pairs])
    return base.weight, base.bias, getattr(lm.config, "final_logit_softcapping", None), ids, rows


class _TiledCrossEntropy(torch.autograd.Function):
    """Per row, cross_entropy(softcap(hidden @ W.T + b), target), one block of the vocabulary
    at a time, in a single pass (online log-sum-exp, as in flash attention / Cut Cross-Entropy).

    Alive at once: one block of logits (rows x VOCAB_BLOCK) instead of rows x 262k, and the
    gradient is accumulated in the same pass (the softmax-weighted sum of the rows of W,
    rescaled whenever the running maximum moves), so W is read once per step and no logits
    are kept for the backward. ``ids``/``rows``: trained rows that replace W's rows of new tokens.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, cap, targets, ids, rows, block):
        # logits come out of the matmul in the model's dtype (as in the model's own forward) and
        # everything after it is float32: max, sum of exponentials, gradient accumulator
        n, vocab, f32 = hidden.shape[0], weight.shape[0], torch.float32
        grad = ctx.needs_input_grad[0] or (rows is not None and ctx.needs_input_grad[6])
        m = torch.full((n,), float("-inf"), dtype=f32, device=hidden.device)
        s = torch.zeros(n, dtype=f32, device=hidden.device)
        acc = torch.zeros(hidden.shape, dtype=f32, device=hidden.device) if grad else None
        tgt = torch.zeros(n, dtype=f32, device=hidden.device)
        tgt_dz = torch.ones(n, dtype=f32, device=hidden.device)
        # each target's (effective) row of W, for the gradient only
        tgt_w = torch.zeros(hidden.shape, dtype=f32, device=hidden.device) if grad else None
        new_z = new_dz = None
        arange = torch.arange(n, device=hidden.device)
        for v0 in range(0, vocab, block):
            v1 = min(v0 + block, vocab)
            w = weight[v0:v1]
            extra = None
            if ids is not None:
                extra = ((ids >= v0) & (ids < v1)).nonzero().flatten()
                if len(extra):
                    w = w.clone()
                    w[ids[extra] - v0] = rows[extra].detach().to(w.dtype)
            z = hidden @ w.T
            if bias is not None:
                z = z + bias[v0:v1]
            z = z.to(f32)
            dz = None
            if cap is not None:
                t = torch.tanh(z / cap)
                z = t * cap
                dz = 1 - t * t
            m_new = torch.maximum(m, z.amax(dim=1))
            scale = torch.exp(m - m_new)
            e = torch.exp(z - m_new[:, None])
            s = s * scale + e.sum(dim=1)
            if grad:
                acc = acc * scale[:, None] + ((e if dz is None else e * dz).to(w.dtype) @ w).to(f32)
            m = m_new
            hit = (targets >= v0) & (targets < v1)
            if hit.any():
                cols = targets[hit] - v0
                tgt[hit] = z[arange[hit], cols]
                if grad:
                    tgt_w[hit] = w[cols].to(f32)
                if dz is not None:
                    tgt_dz[hit] = dz[arange[hit], cols]
            if extra is not None and len(extra):
                if new_z is None:
                    new_z = torch.zeros(n, len(ids), dtype=f32, device=hidden.device)
                    new_dz = torch.ones(n, len(ids), dtype=f32, device=hidden.device)
                new_z[:, extra] = z[:, ids[extra] - v0]
                if dz is not None:
                    new_dz[:, extra] = dz[:, ids[extra] - v0]
        lse = m + torch.log(s)
        grad_h = d_rows = None
        if grad:
            grad_h = (acc / s[:, None] - tgt_dz[:, None] * tgt_w).to(hidden.dtype)
            if rows is not None and new_z is not None:
                p = torch.exp(new_z - lse[:, None]) - (targets[:, None] == ids[None, :]).to(f32)
                d_rows = p * new_dz  # d loss_row / d (the new tokens' logits), rows x new tokens
        ctx.save_for_backward(grad_h, d_rows, hidden if d_rows is not None else None)
        ctx.rows_dtype = rows.dtype if rows is not None else None
        return lse - tgt

    @staticmethod
    def backward(ctx, g):
        # g: the upstream gradient of each row's loss (all ones for a plain sum; per-example weights
        # for a loss built on per-example sums, as the contrastive term is)
        grad_h, d_rows, hidden = ctx.saved_tensors
        g = g.to(torch.float32)
        gh = (grad_h * g[:, None].to(grad_h.dtype)) if grad_h is not None and ctx.needs_input_grad[0] else None
        gr = None
        if d_rows is not None and ctx.needs_input_grad[6]:
            gr = ((d_rows * g[:, None]).T @ hidden.to(torch.float32)).to(ctx.rows_dtype)
        return gh, None, None, None, None, None, gr, None


VOCAB_BLOCK = 8192  # columns of the vocabulary per tile: 5 MB of logits for 160 supervised rows


def chunked_loss(lm: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of token losses (:func:`token_losses`, summed)."""
    return token_losses(lm, hidden, targets).sum()


def token_losses(lm: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each row's token loss. A frozen output layer goes through :class:`_TiledCrossEntropy`
    (never more than a tile of logits); otherwise, above :data:`MAX_LOGITS` the rows go in chunks
    that are recomputed in the backward, so at most one chunk of logits is alive."""
    frozen = _frozen_head(lm)
    if frozen is not None:
        weight, bias, cap, ids, rows = frozen
        return _TiledCrossEntropy.apply(hidden, weight, bias, cap, targets, ids, rows, VOCAB_BLOCK)
    vocab = lm.config.get_text_config().vocab_size  # not .weight: PEFT's wrapper would build a merged copy
    rows = max(1, MAX_LOGITS // vocab)
    if hidden.shape[0] <= rows:
        return _row_losses(lm, hidden, targets)
    from torch.utils.checkpoint import checkpoint

    parts = []
    for i in range(0, hidden.shape[0], rows):
        h, t = hidden[i:i + rows], targets[i:i + rows]
        parts.append(checkpoint(_row_losses, lm, h, t, use_reentrant=False) if torch.is_grad_enabled()
                     else _row_losses(lm, h, t))
    return torch.cat(parts)
