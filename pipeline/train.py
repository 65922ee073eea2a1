"""Train a small adapter that makes the extended base talk like one persona.

    python -m pipeline.train --data runs/minsu/data --persona 민수 --out adapters/민수
    python -m pipeline.train --data runs/minsu/data --persona 민수 --out adapters/민수 --resume
    accelerate launch -m pipeline.train --data ... --out ...        # several GPUs (DDP)
    torchrun --nproc-per-node 2 -m pipeline.train --data ... --out ...  # DDP on CPUs (gloo)

Reads DATA/train.jsonl and DATA/validation.jsonl (python -m pipeline.prepare),
builds or reuses the cached extended base (python -m pipeline.extend), renders every
pair with the shared chat format (loss only on the persona's reply and its
end-of-turn token), trains LoRA on every linear layer and the new token rows (--qlora: on a 4-bit base),
evaluates every --eval-every steps (and at least once an epoch), keeps the best weights, and writes into OUT:
adapter_config.json + adapter_model.safetensors, the tokenizer, persona.yaml,
manifest.json, metrics.jsonl, loss.png, and checkpoints/step-N (for --resume).
Ctrl-C writes a checkpoint and stops; --resume continues from it.
The defaults train a useful LoRA for Gemma 3 270M on a 2-core CPU in 5-29 minutes (small to ~800-pair chats).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from core.cli import parser, run_cli, setup_logging
from pipeline.dialogue_stage import add_flag as dialogue_flag
from pipeline.training.config import TrainConfig
from pipeline.training.data import CONTRAST_NEGATIVES
from pipeline.training.methods import METHODS
from pipeline.training.run import train

log = logging.getLogger("pipeline.train")


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m pipeline.train``; each default is :class:`TrainConfig`'s."""
    ap = parser("python -m pipeline.train", __doc__)
    d = TrainConfig("", "")
    a = ap.add_argument
    a("--data", required=True, help="directory from python -m pipeline.prepare (train.jsonl, validation.jsonl)")
    a("--out", required=True, help="adapter directory to write (e.g. adapters/민수)")
    a("--persona", help="persona to train; optional when the data holds only one")
    a("--base-model", help="base model: a local HF directory, a .gguf file or a hub id; default Gemma 3 270M")
    a("--cache-dir", help="where extended bases are cached (default $KAKAO_PERSONA_CACHE or ~/.cache/kakao-persona)")
    a("--method", default=d.method, choices=METHODS, help="lora, the one method (LoRA on a 4-bit base: --qlora)")
    a("--lora-r", type=int, default=d.lora_r, help=f"LoRA rank (default {d.lora_r})")
    a("--lora-alpha", type=int, default=d.lora_alpha, help=f"LoRA alpha (default {d.lora_alpha})")
    a("--lora-dropout", type=float, default=d.lora_dropout, help=f"LoRA dropout (default {d.lora_dropout})")
    a("--target-modules", help="comma-separated module names for LoRA (default: every linear layer but the output)")
    a("--max-length", type=int, default=d.max_length, help=f"tokens per example (default {d.max_length}); "
      "context is trimmed from the left, pairs whose reply does not fit are dropped and counted")
    a("--batch-size", type=int, default=d.batch_size, help=f"examples per micro-batch (default {d.batch_size})")
    a("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step (default 1)")
    a("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g})")
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
    a("--rehearsal", help="general Korean dialogue mixed in against forgetting: text lines, CSV with Q,A, or JSONL "
                          "(Q/A rows of the held-out split that next-reply selection measures on are left out)")
    a("--rehearsal-ratio", type=float, default=d.rehearsal_ratio, help="share of rehearsal examples (default 0.2)")
    a("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=d.gradient_checkpointing,
      help="recompute activations in the backward: ~0.9 GB less memory for the default model, ~10%% slower "
           "(default on)")
    a("--qlora", action="store_true", help="LoRA on a 4-bit base via bitsandbytes (CUDA only)")
    a("--threads", type=int, help="torch CPU threads (default: all CPUs available to this process)")
    a("--resume", nargs="?", const="latest",
      help="continue from the newest readable checkpoint in --out (a damaged newest one is skipped, with a log "
           "line) or from the given one")
    a("--contrast", type=float, default=d.contrast,
      help="weight of a contrastive term: each reply must be likelier after its own prompt than after another "
           f"example's (one extra forward per example; default {d.contrast:g}: off)")
    a("--contrast-negatives", choices=CONTRAST_NEGATIVES, default=d.contrast_negatives,
      help="the other prompt each reply is contrasted with: next (the next example of its batch, a random one) "
           "or similar (the train pair whose message is most like its own, by TF-IDF of character n-grams, from "
           f"another conversation and not a near copy: a hard distractor) (default {d.contrast_negatives})")
    a("--no-context", type=float, default=d.no_context, metavar="SHARE",
      help="share of the persona's train replies also trained with no message before them, the prompt that "
           "next-reply selection's PMI and the chat's reranking read p(reply) from (default 0: off)")
    a("--init-adapter", help="start from this adapter's weights (same LoRA rank and extended base) instead of "
                             "a fresh LoRA")
    dialogue_flag(ap)
    a("-v", "--verbose", action="store_true", help="debug logging")
    return ap


def parse_args(argv: Sequence[str] | None) -> TrainConfig:
    """The TrainConfig the command line describes (not yet validated)."""
    ns = build_parser().parse_args(argv)
    setup_logging(ns.verbose)
    values = {k: v for k, v in vars(ns).items() if k != "verbose"}
    values["target_modules"] = tuple(m.strip() for m in (ns.target_modules or "").split(",") if m.strip())
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    cfg.validate()
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
