"""Per-row adapters in one batch: each row of a forward pass runs its own PEFT persona (or none).

    with per_row_adapters(model, ["minji", "__base__", "junho"]):
        model.generate(...)                       # row 0 as minji, row 1 without adapter, row 2 as junho

LoRA rows are routed by PEFT's per-sample ``adapter_names`` (given to every LoRA layer by a
pre-forward hook); the personas' new-token rows (PEFT TrainableTokens: input embedding and
tied output layer) are written per row by forward hooks, since PEFT's own mixed-batch path for
them rebuilds the whole embedding matrix per adapter and forward pass. The hooks overwrite
every row's new tokens, so whichever persona's rows are pinned in the matrix does not matter.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Any, Iterator, Sequence

BASE_ADAPTER = "__base__"  # PEFT's adapter_names entry for "no adapter"


@contextmanager
def per_row_adapters(model: Any, adapter_names: list[str]) -> Iterator[None]:
    """Route row i of every forward pass inside the block through ``adapter_names[i]``."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    layers = [m for m in model.modules() if isinstance(m, TrainableTokensLayer)]
    if all(n == BASE_ADAPTER for n in adapter_names) and not any(layer.merged for layer in layers):
        # every row without adapter, no adapter's rows written into the matrix: switching the adapters off for
        # the block gives the same forward, without PEFT's per-row split (several times slower on a CPU)
        with model.disable_adapter():
            yield
        return
    hooks = _route_lora(model, adapter_names) + _route_token_rows(layers, adapter_names)
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _route_lora(model, adapter_names: list[str]) -> list:
    """Pre-forward hooks giving every LoRA layer the per-row ``adapter_names`` (PEFT's mixed batch)."""
    from peft.tuners.lora import LoraLayer

    def inject(module, args, kwargs):
        kwargs["adapter_names"] = adapter_names
        return args, kwargs

    return [m.register_forward_pre_hook(inject, with_kwargs=True) for m in model.modules() if isinstance(m, LoraLayer)]


def _row_values(layer: Any, adapter_names: list[str]):
    """(new-token ids, per-row values [rows, ids, width]) of a TrainableTokens layer for this batch."""
    import torch

    names = [n for n in layer.token_indices]
    ids = layer.token_indices[names[0]]
    if any(layer.token_indices[n] != ids for n in names):
        raise ValueError("persona adapters with different new-token ids cannot share a batch")
    table = {BASE_ADAPTER: layer.trainable_tokens_original[names[0]]}
    table.update({n: layer.trainable_tokens_delta[n] for n in names})
    return ids, torch.stack([table[n] for n in adapter_names])


def _route_token_rows(layers: Sequence[Any], adapter_names: list[str]) -> list:
    """Forward hooks writing each row's persona's new-token rows (embedding) or columns (output layer)."""
    import torch

    def embedding_hook(ids_t, values, layer, args, output):
        hit = args[0].unsqueeze(-1) == ids_t  # [rows, positions, new ids]
        if bool(hit.any()):
            scale = layer._get_embed_scale()
            rows = torch.einsum("btk,bkh->bth", hit.to(values), values)
            rows = rows * scale.to(rows) if scale is not None else rows
            output = torch.where(hit.any(-1, keepdim=True), rows.to(output.dtype), output)
        return output

    def output_hook(ids_t, values, layer, args, output):
        output[..., ids_t] = torch.einsum("bth,bkh->btk", args[0], values.to(args[0])).to(output.dtype)
        return output

    hooks = []
    for layer in layers:
        ids, values = _row_values(layer, adapter_names)
        ids_t = torch.tensor(ids, device=values.device)
        if isinstance(layer.base_layer, torch.nn.Embedding):
            hooks.append(layer.register_forward_hook(partial(embedding_hook, ids_t, values)))
        elif isinstance(layer.base_layer, torch.nn.Linear):
            hooks.append(layer.register_forward_hook(partial(output_hook, ids_t, values)))
    return hooks
