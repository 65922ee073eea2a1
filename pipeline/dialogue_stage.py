"""The dialogue stage: a LoRA that makes the extended base answer the message, merged at extension time.

    python -m pipeline.run chat.txt --persona 민수                # persona adapters on the dialogue base (the default)
    python -m pipeline.run chat.txt --persona 민수 --no-dialogue  # on the plain extended base
    python -m pipeline.extend                          # build (once) the extended default base with the stage merged
    python -m pipeline.dialogue                        # retrain it from ChatbotData (600 steps of 16 Q/A pairs)

The project ships one such adapter, ``pipeline/assets/dialogue_ko`` (LoRA r=8 plus the rows of
the chat tokens, 1.9M weights, trained by ``python -m pipeline.dialogue`` on the *train* split
of ChatbotData, MIT licence: ``LICENSE-ChatbotData`` beside it). Unless ``--no-dialogue`` is given (extend,
train, run; docs/dialogue.md has the measurements behind the default) :func:`pipeline.extension.ensure_extended` merges it into the extended default
base (:func:`merge_into`), so persona adapters train on a base that already answers in the chat
format. An adapter records the base model it was trained on and is merged only
into that one; ``python -m pipeline.dialogue --base-model X`` trains one for another base, kept
in the cache (``dialogue/<base sha256>``) and found there before the shipped one. The merged
adapter's sha256 is part of the extended base's cache key and fingerprint, and persona
adapters record whether their base had the stage, so the chat and evaluation load the same base.

Beside the stage's adapter, in its ``backward/`` folder, may sit the **backward model** trained on the
base with the stage merged (``python -m pipeline.dialogue --backward``): a LoRA that reads a reply as the
user's turn and scores the message as the bot's, log p(message | reply). The extension installs it into
the extended base it fits (:func:`install_backward`; ``core.models.find_backward``), where the chat's
reranking and the evaluation's next-reply selection find it. It is not merged into anything and is not
part of the base's fingerprint: adding or retraining it leaves persona adapters valid.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from core.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST
from core.errors import UserError
from core.files import atomic_dir, read_json_or_empty
from core.models import BACKWARD_DIR, EXTENDED_MANIFEST, find_backward


ASSET = Path(__file__).resolve().parent / "assets" / "dialogue_ko"  # the shipped adapter


DEFAULT = True  # extend/train/run merge the stage unless --no-dialogue (docs/dialogue.md has the measurements)
MERGE_TOLERANCE = 1e-3  # max |logit| difference between the adapter and its merge on a sample


@dataclass(frozen=True)
class DialogueAdapter:
    """A dialogue adapter directory and what its manifest says about the base it fits."""

    path: Path
    sha256: str  # of the adapter weights and config: pins the merged weights
    base_sha256: str | None  # the base model's weights it was trained on (None: any)
    extended_fingerprint: str  # the plain extended base it was trained on

    def describe(self) -> dict[str, Any]:
        """What the extended base's manifest records about the merged stage."""
        return {"adapter": str(self.path), "sha256": self.sha256, "extended_fingerprint": self.extended_fingerprint}


def read_adapter(path: str | Path = ASSET) -> DialogueAdapter:
    """The dialogue adapter at ``path``; UserError when it is not one."""
    path = Path(path)
    files = [path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS]
    missing = [f.name for f in files + [path / MANIFEST] if not f.is_file()]
    if missing:
        raise UserError(f"{path}: not a dialogue adapter (missing {', '.join(missing)}); "
                        "train one with python -m pipeline.dialogue")
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return DialogueAdapter(path, h.hexdigest(), manifest.get("base_sha256"), str(manifest["extended_fingerprint"]))


def user_adapter_dir(cache: Path, base_sha256: str) -> Path:
    """Where ``python -m pipeline.dialogue`` puts the adapter it trains for a base (found there first)."""
    return Path(cache) / "dialogue" / base_sha256[:16]


def adapter_for(base_sha256: str, cache: Path) -> DialogueAdapter | None:
    """The dialogue adapter to merge into the extended base of ``base_sha256``: one retrained for it
    in ``cache``, else the shipped one when it was trained on that base; None when there is none."""
    for path in (user_adapter_dir(cache, base_sha256), ASSET):
        if (path / MANIFEST).is_file():
            found = read_adapter(path)
            if found.base_sha256 == base_sha256:
                return found
    return None


def install_backward(adapter: DialogueAdapter, extended: Path) -> Path | None:
    """Copy the backward model kept with ``adapter`` into the extended base folder ``extended`` (once, and
    again when it changed); returns the installed folder. None when the stage has no backward model or it
    was trained on another extended base than ``extended`` (a backward model reads the merged base's
    hidden states: on another base its scores mean nothing)."""
    src = adapter.path / BACKWARD_DIR
    if find_backward(adapter.path) is None:
        return None
    trained_on = read_json_or_empty(src / MANIFEST).get("extended_fingerprint")
    if trained_on != read_json_or_empty(Path(extended) / EXTENDED_MANIFEST).get("fingerprint"):
        return None
    dst = Path(extended) / BACKWARD_DIR
    files = sorted(f.name for f in src.iterdir() if f.is_file())
    if find_backward(extended) is not None and all(
            (dst / f).is_file() and (dst / f).read_bytes() == (src / f).read_bytes() for f in files):
        return dst
    with atomic_dir(dst) as tmp:
        for f in files:
            (tmp / f).write_bytes((src / f).read_bytes())
    return dst


def merge_into(model, adapter: DialogueAdapter, plain_fingerprint: str, sample_ids: Sequence[int]):
    """Merge ``adapter`` (LoRA + chat-token rows) into the extended ``model``; returns the merged model.

    Refuses an adapter trained on another extended base (its LoRA would be meaningless there),
    and checks on ``sample_ids`` (a rendered chat example) that the merged model's logits
    equal the adapter's: merges into tied embeddings have gone wrong elsewhere.
    """
    import torch
    from peft import PeftModel

    if plain_fingerprint != adapter.extended_fingerprint:
        raise UserError(f"{adapter.path}: the dialogue adapter was trained on extended base "
                        f"{adapter.extended_fingerprint[:12]}, this one is {plain_fingerprint[:12]}; retrain it "
                        "(python -m pipeline.dialogue) or build without it (--no-dialogue)")
    sample = torch.tensor([list(sample_ids)], device=model.device)
    peft_model = PeftModel.from_pretrained(model, str(adapter.path), adapter_name="dialogue")
    with torch.no_grad():
        want = peft_model(input_ids=sample).logits
        merged = peft_model.merge_and_unload()
        got = merged(input_ids=sample).logits
    diff = float((want - got).abs().max())
    if diff > MERGE_TOLERANCE:
        raise RuntimeError(f"merging the dialogue adapter changed the logits by {diff:.2g}")
    return merged


def add_flag(parser) -> None:
    """``--dialogue`` / ``--no-dialogue`` on a stage's parser (extend, train, run), as ``dialogue``."""
    import argparse

    parser.add_argument("--dialogue", action=argparse.BooleanOptionalAction, default=DEFAULT,
                        help="merge the dialogue stage (a LoRA trained on general Korean Q/A, see docs/dialogue.md) "
                             "into the extended base, so replies answer the message; --no-dialogue builds the plain "
                             f"extended base (default: {'on' if DEFAULT else 'off'})")
