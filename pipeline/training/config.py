"""The training run's configuration (:class:`TrainConfig`) and the persona's data (:func:`load_persona_data`).

``python -m pipeline.train`` builds a TrainConfig from its flags (each flag's default is
the field's default); :func:`pipeline.training.run.train` and the loop read it.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core.adapter_format import ADAPTER_WEIGHTS
from core.errors import UserError
from core.models import default_device
from data_prep.persona_card import card_path
from data_prep.records import read_pairs
from pipeline.dialogue_stage import DEFAULT as DIALOGUE_DEFAULT
from pipeline.training.data import CONTRAST_NEGATIVES, persona_instruction, user_speaker
from pipeline.training.methods import METHODS

# config fields that may change between a checkpoint and --resume without invalidating it
RESUME_FREE = ("max_steps", "resume", "save_every", "keep_checkpoints", "cache_dir", "threads", "out",
               "log_every", "gradient_checkpointing")  # checkpointing recomputes the same values


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run; written whole into the adapter's manifest."""

    data: str  # directory written by python -m pipeline.prepare
    out: str  # adapter directory to write
    persona: str | None = None  # persona to train (optional when the data holds one)
    base_model: str | None = None  # extend-stage spec; None = the default Gemma 3 270M
    cache_dir: str | None = None  # extended-base cache (default: $KAKAO_PERSONA_CACHE or ~/.cache/kakao-persona)
    method: str = "lora"  # the one method (recorded in the manifest; the chat serves LoRA)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0  # dropout masks cost ~5% of a CPU step; a few hundred steps barely overfit
    target_modules: tuple[str, ...] = ()  # empty: every linear layer but the output layer
    max_length: int = 256  # tokens per example; context is trimmed from the left, the reply never
    # batch 4 gives twice the updates of batch 8 for the same examples, faster per token on 2 cores, with the
    # same identification and validation loss on the SmileStyle personas
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-3  # peak learning rate: LoRA trains in a few hundred steps
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | linear
    # on ~800-pair chats (200 steps an epoch) the validation loss is lowest near step 200 and every SmileStyle
    # persona reaches the 0.8 identification target (bench/persona_fidelity.py)
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
    # recompute activations in the backward: ~0.9 GB less at peak on the default model, ~10% slower
    gradient_checkpointing: bool = True
    qlora: bool = False  # LoRA on a 4-bit base (bitsandbytes); CUDA only
    threads: int | None = None  # torch CPU threads (default: the CPUs this process may use)
    resume: str | None = None  # "latest" or a checkpoint directory
    dialogue: bool = DIALOGUE_DEFAULT  # train on the extended base with the dialogue stage merged (pipeline.dialogue_stage)
    # weight of the contrastive term (loop._forward): each reply's loss after its own prompt against after another
    # example's prompt; 0 trains on the replies' likelihood alone
    contrast: float = 0.0
    # which other prompt each reply is contrasted with: "next" (the next example of the batch, a random one) or
    # "similar" (the train example whose message is most like this one's, from another conversation: a hard one)
    contrast_negatives: str = "next"
    init_adapter: str | None = None  # start from this adapter's weights (same rank and base) instead of fresh LoRA
    # share of the persona's train replies also trained with no turn before them: the prompt PMI's and the chat's
    # reranking read log p(reply | no context) from, which persona examples otherwise never show
    no_context: float = 0.0

    def validate(self) -> None:
        """Raise one UserError naming every bad flag."""
        p = []
        if not (Path(self.data) / "train.jsonl").is_file():
            p.append(f"--data {self.data}: no train.jsonl (run python -m pipeline.prepare first)")
        if self.method not in METHODS:
            p.append(f"--method {self.method}: choose one of {', '.join(METHODS)}")
        for name in ("lora_r", "lora_alpha", "max_length", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                p.append(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("max_steps", "epochs", "eval_every", "save_every", "patience", "warmup_steps",
                     "keep_checkpoints", "eval_limit"):
            if getattr(self, name) < 0:
                p.append(f"--{name.replace('_', '-')} must not be negative")
        if self.max_steps == 0 and self.epochs == 0:
            p.append("--max-steps and --epochs are both 0: nothing would stop training")
        if not self.lr > 0:
            p.append("--lr must be positive")
        if not 0 <= self.lora_dropout < 1:
            p.append("--lora-dropout must be in [0, 1)")
        if self.schedule not in ("cosine", "linear"):
            p.append("--schedule must be cosine or linear")
        if not 0 < self.rehearsal_ratio < 1:
            p.append("--rehearsal-ratio must be between 0 and 1")
        if self.rehearsal and not Path(self.rehearsal).is_file():
            p.append(f"--rehearsal {self.rehearsal}: no such file")
        if not self.contrast >= 0:
            p.append("--contrast must not be negative")
        if self.contrast_negatives not in CONTRAST_NEGATIVES:
            p.append(f"--contrast-negatives {self.contrast_negatives}: choose one of {', '.join(CONTRAST_NEGATIVES)}")
        if not 0 <= self.no_context <= 1:
            p.append("--no-context must be between 0 and 1")
        if self.init_adapter and not (Path(self.init_adapter) / ADAPTER_WEIGHTS).is_file():
            p.append(f"--init-adapter {self.init_adapter}: no {ADAPTER_WEIGHTS} there")
        if self.qlora and default_device() != "cuda":
            p.append("--qlora needs a CUDA GPU (bitsandbytes 4-bit); on a CPU train plain LoRA")
        if p:
            raise UserError("; ".join(p))

    def fingerprint_fields(self) -> dict[str, Any]:
        """The config as it shapes the weights: what a checkpoint must agree with to be resumed."""
        d = asdict(self)
        if not self.contrast:  # the distractors' kind shapes nothing without the term
            d.pop("contrast_negatives")
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
