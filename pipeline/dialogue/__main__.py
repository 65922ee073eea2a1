"""Retrain the dialogue stage from ChatbotData with the project's own training code.

    python -m pipeline.dialogue                                   # the default base; writes into the cache
    python -m pipeline.dialogue --max-steps 20 --out /tmp/dialogue  # a quick one, somewhere else
    python -m pipeline.dialogue --base-model ~/models/kogpt2-base-v2
    python -m pipeline.dialogue --backward                        # the backward model, on the base with the stage

Builds chat pairs from the *train* split of ChatbotData (``pipeline.dialogue.data``), trains
a LoRA (plus the chat-token rows) on the plain extended base with ``pipeline.train``'s
trainer, and writes a dialogue adapter (``adapter_config.json``, ``adapter_model.safetensors``,
``manifest.json``, the ChatbotData licence). Written into the cache (the default), it is merged
into the extended base for that base model from then on (the base's fingerprint changes, so
persona adapters trained on the previous one are listed as trained on another base).
The shipped adapter was trained with the defaults below.

``--backward`` trains the backward model instead: the same pairs turned around (the answer as the user's
turn, the question as the reply), on the extended base *with* the stage merged, written into the stage's
``backward/`` folder, from where the extension installs it beside the merged base. The chat's reranking
and the evaluation's next-reply selection add its log p(message | reply) to the forward score
(docs/conversation.md). The shipped one was trained with the same defaults and ``--backward``.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from core.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST
from core.cli import parser, run_cli, setup_logging
from core.errors import UserError
from core.models import BACKWARD_DIR, default_cache_dir
from data_prep.chatbot_data import DEFAULT_CSV
from pipeline.base_model import resolve_base
from pipeline.dialogue_stage import ASSET, adapter_for, user_adapter_dir
from pipeline.dialogue.data import PERSONA, dialogue_pairs, write_data
from pipeline.training.data import CONTRAST_NEGATIVES

LICENSE = "LICENSE-ChatbotData"
# the shipped adapter's settings. Q/A examples are short (~33 tokens), so batch 16 is cheap: 600 steps are about one
# epoch of the 10,358 train pairs (~3 s a step on two idle CPU cores, 45 min); the validation loss was lowest at step
# 540 (2.45, perplexity 11.5) and the trainer keeps that step's weights.
TRAIN_DEFAULTS = {"batch_size": 16, "lr": 1e-3, "max_steps": 600, "warmup_steps": 4, "eval_every": 20,
                  "eval_limit": 48, "patience": 0, "save_every": 10, "log_every": 1, "gradient_checkpointing": False}


def _args(argv: Sequence[str] | None):
    p = parser("python -m pipeline.dialogue", __doc__)
    d = TRAIN_DEFAULTS
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"ChatbotData.csv (default {DEFAULT_CSV})")
    p.add_argument("--out", type=Path, help="adapter directory (default: the cache, where extend finds it)")
    p.add_argument("--base-model", help="base model spec as for pipeline.extend (default Gemma 3 270M)")
    p.add_argument("--cache-dir", type=Path, help="model cache (default $KAKAO_PERSONA_CACHE or ~/.cache/kakao-persona)")
    p.add_argument("--max-steps", type=int, default=d["max_steps"], help=f"training steps (default {d['max_steps']})")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"examples a step (default {d['batch_size']})")
    p.add_argument("--lr", type=float, default=d["lr"], help=f"peak learning rate (default {d['lr']:g})")
    p.add_argument("--contrast", type=float, default=0.0,
                   help="weight of the contrastive term (pipeline.train --contrast): each answer must be likelier "
                        "after its own question than after another's (default 0: off)")
    p.add_argument("--contrast-negatives", choices=CONTRAST_NEGATIVES, default="next",
                   help="the other question an answer is contrasted with (pipeline.train --contrast-negatives): "
                        "next (the next pair of its batch) or similar (the most similar train question with "
                        "another answer, not a near copy) (default next)")
    p.add_argument("--no-context", type=float, default=0.0, metavar="SHARE",
                   help="share of train rows whose answer is also trained with no question before it, the prompt "
                        "PMI's p(reply) comes from (default 0)")
    p.add_argument("--cards", type=float, default=0.0, metavar="SHARE",
                   help="share of rows whose instruction is a persona card (measured on the answers, under one of "
                        "a few names) instead of the empty or neutral one: the system text persona adapters "
                        "use (default 0)")
    p.add_argument("--backward", action="store_true",
                   help="train the backward model p(question | answer) on the base with the stage merged, for "
                        "reranking replies; written into the stage's backward/ folder unless --out is given")
    p.add_argument("--init-adapter", type=Path, help="continue from this dialogue adapter's weights (e.g. "
                                                     "pipeline/assets/dialogue_ko) instead of a fresh LoRA")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all CPUs available)")
    return p.parse_args(argv)


def export(trained: Path, out: Path, base_sha256: str, stage: str = "dialogue") -> None:
    """Keep the trainer's adapter config and weights (in float16: half the size, merged in the base's
    dtype; relative rounding error about 5e-4); a manifest with the base it fits; the licence."""
    from safetensors.torch import load_file, save_file

    manifest = json.loads((trained / MANIFEST).read_text(encoding="utf-8"))
    keep = {k: manifest[k] for k in ("method", "base_model", "extended_fingerprint", "instruction", "max_length",
                                     "config", "metrics", "versions", "init_adapter_sha256") if k in manifest}
    keep["config"] = {k: v for k, v in keep["config"].items() if k not in ("data", "out", "cache_dir")}
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trained / ADAPTER_CONFIG, out / ADAPTER_CONFIG)
    weights = load_file(trained / ADAPTER_WEIGHTS)
    save_file({k: v.half() for k, v in weights.items()}, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    if out.resolve() != ASSET.resolve():
        shutil.copyfile(ASSET / LICENSE, out / LICENSE)
    record = {"stage": stage, "base_sha256": base_sha256, "data": "ChatbotData train split (MIT)", **keep}
    (out / MANIFEST).write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    a = _args(argv)
    for flag, share in (("--no-context", a.no_context), ("--cards", a.cards)):
        if not 0 <= share <= 1:
            raise UserError(f"{flag} {share:g}: a share between 0 and 1")
    from pipeline.training.config import TrainConfig
    from pipeline.training.run import train

    cache = a.cache_dir or default_cache_dir()
    ref = resolve_base(a.base_model, cache)
    out = a.out or user_adapter_dir(cache, ref.sha256)
    if a.backward:
        stage = adapter_for(ref.sha256, cache)
        if stage is None:
            raise UserError("--backward: no dialogue stage for this base model; train one first (python -m "
                            "pipeline.dialogue)")
        out = a.out or stage.path / BACKWARD_DIR
    with tempfile.TemporaryDirectory(prefix="dialogue-") as tmp:
        data = write_data(Path(tmp) / "data", *dialogue_pairs(a.csv, a.no_context, a.cards, a.backward))
        base_cfg = TrainConfig(str(data), str(Path(tmp) / "adapter"), persona=PERSONA, base_model=a.base_model,
                               cache_dir=str(cache), seed=a.seed, threads=a.threads, dialogue=a.backward)
        cfg = replace(base_cfg, **{**TRAIN_DEFAULTS, "max_steps": a.max_steps, "batch_size": a.batch_size,
                                   "lr": a.lr, "contrast": a.contrast,
                                   "contrast_negatives": a.contrast_negatives,
                                   "init_adapter": str(a.init_adapter) if a.init_adapter else None})
        cfg.validate()
        result = train(cfg)
        export(result.out, out, ref.sha256, "backward" if a.backward else "dialogue")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
