"""Parameter-efficient methods: one PEFT config per method, target modules per architecture.

LoRA (the default) also trains the rows of the new chat tokens through PEFT's
``trainable_token_indices`` (a tied output layer shares them), so the adapter
never carries a copy of the embedding. The virtual-token methods (prompt
tuning, P-tuning, prefix tuning) and IA3 leave the new rows as the extended
base initialised them. ``full`` trains every weight and is refused above
:data:`FULL_MAX_PARAMS` unless forced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from data_prep.errors import UserError

METHODS = ("lora", "prompt", "ptuning", "prefix", "ia3", "full")
VIRTUAL_TOKEN_METHODS = ("prompt", "ptuning", "prefix")
FULL_MAX_PARAMS = 500_000_000  # AdamW in fp32 keeps ~16 bytes a weight: 8 GB at this size

_LLAMA_STYLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_NEOX = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
LORA_TARGETS: dict[str, tuple[str, ...]] = {"gpt2": ("c_attn", "c_proj", "c_fc"), "gpt_neox": _NEOX}
# IA3: (target modules, the feed-forward ones among them, whose *input* is rescaled)
IA3_TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gpt2": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
    "gpt_neox": (("query_key_value", "dense_4h_to_h"), ("dense_4h_to_h",)),
}
_IA3_DEFAULT = (("k_proj", "v_proj", "down_proj"), ("down_proj",))
_CONV1D_MODELS = ("gpt2",)  # GPT-2 stores its projections transposed (Conv1D)


@dataclass(frozen=True)
class MethodSettings:
    """What a method needs; ``target_modules`` empty means the architecture's default."""

    method: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ()
    num_virtual_tokens: int = 16
    new_token_ids: tuple[int, ...] = ()
    force_full: bool = False


def lora_targets(model_type: str, override: Sequence[str] = ()) -> list[str]:
    """LoRA target modules: the override, else the architecture's projections (llama-style default)."""
    return list(override) if override else list(LORA_TARGETS.get(model_type, _LLAMA_STYLE))


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
    """The PEFT config for ``s.method`` (None for ``full``)."""
    import peft

    conv1d = model_type in _CONV1D_MODELS
    if s.method == "lora":
        return peft.LoraConfig(
            task_type="CAUSAL_LM", r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
            target_modules=lora_targets(model_type, s.target_modules), fan_in_fan_out=conv1d,
            trainable_token_indices=token_indices,
        )
    if s.method == "ia3":
        targets, ff = IA3_TARGETS.get(model_type, _IA3_DEFAULT)
        if s.target_modules:
            targets, ff = tuple(s.target_modules), tuple(m for m in ff if m in s.target_modules)
        return peft.IA3Config(
            task_type="CAUSAL_LM", target_modules=list(targets), feedforward_modules=list(ff),
            fan_in_fan_out=conv1d,
        )
    virtual = {
        "prompt": lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=s.num_virtual_tokens),
        "ptuning": lambda: peft.PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=s.num_virtual_tokens, encoder_hidden_size=128),
        "prefix": lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=s.num_virtual_tokens),
    }
    if s.method in virtual:
        return virtual[s.method]()
    if s.method == "full":
        return None
    raise UserError(f"--method {s.method}: unknown, choose one of {', '.join(METHODS)}")


def apply_method(model, s: MethodSettings):
    """Wrap ``model`` for training with ``s.method``; only the method's parameters require grad."""
    if s.method == "full":
        n = sum(p.numel() for p in model.parameters())
        if n > FULL_MAX_PARAMS and not s.force_full:
            raise UserError(
                f"--method full: the model has {n / 1e6:.0f}M parameters (limit {FULL_MAX_PARAMS / 1e6:.0f}M); "
                "use --method lora, or --force-full if you have the memory")
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    import peft

    rows = token_rows(model, s.new_token_ids) if s.method == "lora" else None
    return peft.get_peft_model(model, peft_config(model.config.model_type, s, rows))


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
