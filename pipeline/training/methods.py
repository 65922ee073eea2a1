"""The training method: LoRA on every linear layer, plus the rows of the new chat tokens.

LoRA also trains the rows of the new chat tokens through PEFT's
``trainable_token_indices`` (a tied output layer shares them), so the adapter never
carries a copy of the embedding. ``--qlora`` is the same LoRA on a 4-bit base.
LoRA is the one method: it is what the chat serves (many personas in one model,
switched with ``set_adapter``) and what the evaluation merges.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

METHODS = ("lora",)
_CONV1D_MODELS = ("gpt2",)  # GPT-2 stores its projections transposed (Conv1D)


@dataclass(frozen=True)
class MethodSettings:
    """What LoRA needs; ``target_modules`` empty means every linear layer but the output layer."""

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ()
    new_token_ids: tuple[int, ...] = ()


def lora_targets(override: Sequence[str] = ()) -> list[str] | str:
    """LoRA target modules: the override, else PEFT's ``"all-linear"`` (every linear layer but the output)."""
    return list(override) if override else "all-linear"


def token_rows(model, new_ids: Sequence[int]) -> dict[str, list[int]] | None:
    """``trainable_token_indices`` for the new ids: the input embedding, plus the output
    layer when it is not tied to it (a tied one shares the input's trainable rows)."""
    if not new_ids:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    inp, outp = model.get_input_embeddings(), model.get_output_embeddings()
    rows = {names[id(inp)].rsplit(".", 1)[-1]: list(new_ids)}
    if outp is not None and outp.weight is not inp.weight:
        rows[names[id(outp)].rsplit(".", 1)[-1]] = list(new_ids)
    return rows


def peft_config(model_type: str, s: MethodSettings, token_indices: dict[str, list[int]] | None = None):
    """The PEFT LoRA config."""
    import peft

    return peft.LoraConfig(
        task_type="CAUSAL_LM", r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
        target_modules=lora_targets(s.target_modules), fan_in_fan_out=model_type in _CONV1D_MODELS,
        trainable_token_indices=token_indices,
    )


def apply_method(model, s: MethodSettings):
    """Wrap ``model`` with LoRA; only the adapter's parameters (and the new token rows) require grad."""
    import peft

    return peft.get_peft_model(model, peft_config(model.config.model_type, s, token_rows(model, s.new_token_ids)))


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
