"""Train a small adapter that makes the extended base talk like one persona.

    python -m pipeline.train --data runs/minsu/data --persona 민수 --out adapters/민수
    python -m pipeline.train --data runs/minsu/data --persona 민수 --out adapters/민수 --resume
    accelerate launch -m pipeline.train --data ... --out ...        # several GPUs (DDP)
    torchrun --nproc-per-node 2 -m pipeline.train --data ... --out ...  # DDP on CPUs (gloo)

Reads DATA/train.jsonl and DATA/validation.jsonl (python -m pipeline.prepare),
builds or reuses the cached extended base (python -m pipeline.extend), renders every
pair with the shared chat format (loss only on the persona's reply and its
end-of-turn token), trains LoRA (or --method prompt|ptuning|prefix|ia3|full),
evaluates every --eval-every steps (and at least once an epoch), keeps the best weights, and writes into OUT:
adapter_config.json + adapter_model.safetensors, the tokenizer, persona.yaml,
manifest.json, metrics.jsonl, loss.png, and checkpoints/step-N (for --resume).
Ctrl-C writes a checkpoint and stops; --resume continues from it.
The defaults train a useful LoRA for Gemma 3 270M on a 2-core CPU in 5-29 minutes (small to ~800-pair chats).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from data_prep.errors import UserError
from pipeline.cli import parser, run_cli, setup_logging
from pipeline.dialogue import DEFAULT as DIALOGUE_DEFAULT
from pipeline.dialogue import add_flag as dialogue_flag
from pipeline.extend import default_device
from pipeline.training.methods import METHODS, VIRTUAL_TOKEN_METHODS

log = logging.getLogger("pipeline.train")

# peak learning rates that train in a few hundred steps, by method (--lr overrides)
DEFAULT_LR = {"lora": 1e-3, "ia3": 3e-3, "prompt": 3e-2, "ptuning": 3e-3, "prefix": 3e-3, "full": 5e-5}
NO_CHECKPOINTING = ("prefix",)  # methods PEFT refuses to combine with gradient checkpointing
# config fields that may change between a checkpoint and --resume without invalidating it
RESUME_FREE = ("max_steps", "resume", "save_every", "keep_checkpoints", "cache_dir", "threads", "out",
               "log_every", "gradient_checkpointing")  # checkpointing recomputes the same values
EVAL_LIMIT_SEED = 1234


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run; written whole into the adapter's manifest."""

    data: str  # directory written by python -m pipeline.prepare
    out: str  # adapter directory to write
    persona: str | None = None  # persona to train (optional when the data holds one)
    base_model: str | None = None  # extend-stage spec; None = the default Gemma 3 270M
    cache_dir: str | None = None  # extended-base cache (default: $KAKAO_PERSONA_CACHE or ~/.cache/kakao-persona)
    method: str = "lora"  # lora | prompt | ptuning | prefix | ia3 | full
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0  # dropout masks cost ~5% of a CPU step; a few hundred steps barely overfit
    target_modules: tuple[str, ...] = ()  # empty: the architecture's default
    num_virtual_tokens: int = 16  # prompt / ptuning / prefix
    max_length: int = 256  # tokens per example; context is trimmed from the left, the reply never
    # batch 4 rather than 8 (measured at 160 steps): 4 x 160 sees the same 640 examples as 8 x 80 with twice the
    # updates, 15-20% faster on 2 cores (142 vs 116 tokens/s); on 4 SmileStyle personas the same identification
    # (mean 0.80) and validation loss (within 1%)
    batch_size: int = 4
    grad_accum: int = 1
    lr: float | None = None  # None: DEFAULT_LR[method]
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | linear
    # 240 rather than 160: on 4 SmileStyle personas (~800 pairs, 200 steps an epoch) the validation loss is lowest
    # at step 200 and all four reach the 0.8 identification target (bench/persona_fidelity.py; at 160, 이모지 0.73)
    max_steps: int = 240  # 0: no limit (epochs decide); ~4-6 s a step for Gemma 3 270M on 2 CPU cores
    epochs: int = 6  # 0: no limit (max_steps decides); small chats need several passes
    max_grad_norm: float = 1.0
    eval_every: int = 40  # 0: evaluate only at the end
    eval_limit: int = 200  # validation examples used per evaluation (a fixed sample)
    patience: int = 2  # evaluations without improvement before stopping; 0 disables
    save_every: int = 40  # checkpoint interval in steps; 0: only on Ctrl-C
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    rehearsal: str | None = None  # general dialogue (txt, Q/A csv, jsonl) mixed in against forgetting
    rehearsal_ratio: float = 0.2  # share of rehearsal examples in the training mix
    # recompute activations in the backward: ~0.9 GB less at peak on the default model, ~10% slower;
    # None = on for every method that supports it (PEFT's prefix tuning does not)
    gradient_checkpointing: bool | None = None
    qlora: bool = False  # 4-bit base (bitsandbytes); CUDA only
    force_full: bool = False  # allow --method full above the size limit
    threads: int | None = None  # torch CPU threads (default: the CPUs this process may use)
    resume: str | None = None  # "latest" or a checkpoint directory
    dialogue: bool = DIALOGUE_DEFAULT  # train on the extended base with the dialogue stage merged (pipeline.dialogue)

    @property
    def supervised_only(self) -> bool:
        """Virtual-token methods fall back to the model's own loss (see training.loss)."""
        return self.method not in VIRTUAL_TOKEN_METHODS

    def resolved(self) -> "TrainConfig":
        """Defaults that depend on the method filled in: learning rate, gradient checkpointing."""
        cfg = self if self.lr is not None else replace(self, lr=DEFAULT_LR.get(self.method, 5e-4))
        if cfg.gradient_checkpointing is None:
            cfg = replace(cfg, gradient_checkpointing=cfg.method not in NO_CHECKPOINTING)
        return cfg

    def validate(self) -> None:
        """Raise one UserError naming every bad flag."""
        p = []
        if not (Path(self.data) / "train.jsonl").is_file():
            p.append(f"--data {self.data}: no train.jsonl (run python -m pipeline.prepare first)")
        if self.method not in METHODS:
            p.append(f"--method {self.method}: choose one of {', '.join(METHODS)}")
        for name in ("lora_r", "lora_alpha", "max_length", "batch_size", "grad_accum", "num_virtual_tokens",
                     "log_every"):
            if getattr(self, name) < 1:
                p.append(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("max_steps", "epochs", "eval_every", "save_every", "patience", "warmup_steps",
                     "keep_checkpoints", "eval_limit"):
            if getattr(self, name) < 0:
                p.append(f"--{name.replace('_', '-')} must not be negative")
        if self.max_steps == 0 and self.epochs == 0:
            p.append("--max-steps and --epochs are both 0: nothing would stop training")
        if self.lr is not None and not self.lr > 0:
            p.append("--lr must be positive")
        if not 0 <= self.lora_dropout < 1:
            p.append("--lora-dropout must be in [0, 1)")
        if self.schedule not in ("cosine", "linear"):
            p.append("--schedule must be cosine or linear")
        if not 0 < self.rehearsal_ratio < 1:
            p.append("--rehearsal-ratio must be between 0 and 1")
        if self.rehearsal and not Path(self.rehearsal).is_file():
            p.append(f"--rehearsal {self.rehearsal}: no such file")
        if self.gradient_checkpointing and self.method in NO_CHECKPOINTING:
            p.append(f"--gradient-checkpointing: PEFT's {self.method} method does not support it "
                     "(use --no-gradient-checkpointing)")
        if self.qlora and self.method != "lora":
            p.append("--qlora trains LoRA only (use --method lora)")
        if self.qlora and default_device() != "cuda":
            p.append("--qlora needs a CUDA GPU (bitsandbytes 4-bit); on a CPU train plain LoRA")
        if p:
            raise UserError("; ".join(p))

    def fingerprint_fields(self) -> dict[str, Any]:
        """The config as it shapes the weights: what a checkpoint must agree with to be resumed."""
        d = asdict(self.resolved())
        return {k: v for k, v in d.items() if k not in RESUME_FREE}


@dataclass(frozen=True)
class PersonaData:
    """The persona's pairs and what the manifest says about them."""

    persona: str
    train: list
    val: list
    instruction: str
    user_speaker: str
    data_hash: str
    card: Path | None = field(default=None)


def file_hash(paths: Sequence[Path]) -> str:
    """sha256 over the bytes of the files that define the training data."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def load_persona_data(cfg: TrainConfig) -> PersonaData:
    """The persona's train/validation pairs from the prepare stage's output."""
    from data_prep.persona_card import card_path
    from data_prep.records import read_pairs
    from pipeline.training.data import persona_instruction, user_speaker

    data = Path(cfg.data)
    val_path = data / "validation.jsonl"
    train_all = read_pairs(data / "train.jsonl")
    val_all = read_pairs(val_path) if val_path.is_file() else []
    names = sorted({p.persona for p in train_all})
    persona = cfg.persona or (names[0] if len(names) == 1 else None)
    if persona is None:
        raise UserError(f"--persona: the data holds several personas, choose one of {', '.join(names)}")
    train = [p for p in train_all if p.persona == persona]
    if not train:
        raise UserError(f"--persona {persona}: no training pairs in {data / 'train.jsonl'} "
                        f"(personas there: {', '.join(names) or 'none'})")
    hashed = [data / "train.jsonl"] + ([val_path] if val_path.is_file() else [])
    hashed += [Path(cfg.rehearsal)] if cfg.rehearsal else []
    card = card_path(data / "personas", persona)
    return PersonaData(persona, train, [p for p in val_all if p.persona == persona], persona_instruction(train),
                       user_speaker(train), file_hash(hashed), card if card.is_file() else None)


def parse_args(argv: Sequence[str] | None) -> TrainConfig:
    """The TrainConfig the command line describes (not yet validated)."""
    ap = parser("python -m pipeline.train", __doc__)
    d = TrainConfig("", "")
    a = ap.add_argument
    a("--data", required=True, help="directory from python -m pipeline.prepare (train.jsonl, validation.jsonl)")
    a("--out", required=True, help="adapter directory to write (e.g. adapters/민수)")
    a("--persona", help="persona to train; optional when the data holds only one")
    a("--base-model", help="base model: a local HF directory, a .gguf file or a hub id; default Gemma 3 270M")
    a("--cache-dir", help="where extended bases are cached (default $KAKAO_PERSONA_CACHE or ~/.cache/kakao-persona)")
    a("--method", default=d.method, choices=METHODS, help="lora (default), prompt, ptuning, prefix, ia3 or full")
    a("--lora-r", type=int, default=d.lora_r, help=f"LoRA rank (default {d.lora_r})")
    a("--lora-alpha", type=int, default=d.lora_alpha, help=f"LoRA alpha (default {d.lora_alpha})")
    a("--lora-dropout", type=float, default=d.lora_dropout, help=f"LoRA dropout (default {d.lora_dropout})")
    a("--target-modules", help="comma-separated module names for LoRA/IA3 (default: per architecture)")
    a("--num-virtual-tokens", type=int, default=d.num_virtual_tokens, help="virtual tokens for prompt/ptuning/prefix")
    a("--max-length", type=int, default=d.max_length, help=f"tokens per example (default {d.max_length}); "
      "context is trimmed from the left, pairs whose reply does not fit are dropped and counted")
    a("--batch-size", type=int, default=d.batch_size, help=f"examples per micro-batch (default {d.batch_size})")
    a("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step (default 1)")
    a("--lr", type=float, help="peak learning rate (default by method: " +
      ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    a("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default 0)")
    a("--warmup-steps", type=int, default=d.warmup_steps, help=f"linear warmup steps (default {d.warmup_steps})")
    a("--schedule", default=d.schedule, choices=("cosine", "linear"), help="decay after warmup (default cosine)")
    a("--max-steps", type=int, default=d.max_steps, help=f"stop after this many steps (default {d.max_steps}; 0: none)")
    a("--epochs", type=int, default=d.epochs, help=f"stop after this many epochs (default {d.epochs}; 0: none)")
    a("--max-grad-norm", type=float, default=d.max_grad_norm, help="gradient clipping norm (default 1.0)")
    a("--eval-every", type=int, default=d.eval_every,
      help=f"evaluate every N steps, and at least once an epoch (default {d.eval_every}; 0: at the end)")
    a("--eval-limit", type=int, default=d.eval_limit, help=f"validation examples per evaluation (default {d.eval_limit})")
    a("--patience", type=int, default=d.patience, help=f"stop after N evaluations without improvement (default {d.patience}; 0: never)")
    a("--save-every", type=int, default=d.save_every, help=f"checkpoint every N steps (default {d.save_every}; 0: only on Ctrl-C)")
    a("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="newest checkpoints to keep (default 2)")
    a("--log-every", type=int, default=d.log_every, help="steps per metrics.jsonl line (default 10)")
    a("--seed", type=int, default=d.seed, help="random seed (default 0)")
    a("--rehearsal", help="general Korean dialogue mixed in against forgetting: text lines, CSV with Q,A, or JSONL")
    a("--rehearsal-ratio", type=float, default=d.rehearsal_ratio, help="share of rehearsal examples (default 0.2)")
    a("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=d.gradient_checkpointing,
      help="recompute activations in the backward: ~0.9 GB less memory for the default model, ~10%% slower "
           "(default on, except for --method prefix, which cannot use it)")
    a("--qlora", action="store_true", help="4-bit base via bitsandbytes (CUDA only)")
    a("--force-full", action="store_true", help="allow --method full on a model above the size limit")
    a("--threads", type=int, help="torch CPU threads (default: all CPUs available to this process)")
    a("--resume", nargs="?", const="latest", help="continue from the newest checkpoint in --out (or the given one)")
    dialogue_flag(ap)
    a("-v", "--verbose", action="store_true", help="debug logging")
    ns = ap.parse_args(argv)
    setup_logging(ns.verbose)
    values = {k: v for k, v in vars(ns).items() if k != "verbose"}
    values["target_modules"] = tuple(m.strip() for m in (ns.target_modules or "").split(",") if m.strip())
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    cfg.validate()
    from pipeline.training.run import train

    train(cfg.resolved())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
