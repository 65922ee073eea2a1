"""Build the *extended base*: a base model + tokenizer with the chat special tokens added once.

    python -m pipeline.extend                                   # build (once) and print the cached extended default base
    python -m pipeline.extend --base-model skt/kogpt2-base-v2 --out models/kogpt2-ext
    python -m pipeline.extend --base-model ~/models/polyglot-ko-1.3b --seed 1
    python -m pipeline.extend --verify models/kogpt2-ext         # reload and check everything; exit 1 on a mismatch
    python -m pipeline.extend --dialogue                         # with the dialogue stage merged (docs/dialogue.md)

What it does:

- adds the chat special tokens (``core.chat_format.SPECIAL_TOKENS``, plus ``<|pad|>``
  only when the base has no pad distinct from EOS) with ``add_special_tokens``; no
  existing id changes and each new token is one id, also glued to Korean text;
- grows the embedding to ``len(tokenizer)`` (never shrinks: a model with spare rows
  keeps them) and initialises the rows of the new ids explicitly, seeded (mean of the
  existing rows + small noise; ``<|eot|>`` starts as a copy of the base's own end-of-turn
  token), output rows too when the output layer is untied;
- stores ``CHAT_TEMPLATE`` so ``apply_chat_template`` gives exactly the ids of
  ``chat_format.render``; sets EOS = chat_format.stop_ids and the pad id for generation;
- saves with ``save_pretrained`` (``save_vocabulary`` would lose the added tokens)
  plus ``manifest.json`` (base + sha256, token ids, rows, tied flag, seed, versions,
  fingerprint, sha256 of every saved file).

With ``--dialogue``, when ``pipeline.dialogue_stage`` finds an adapter for this base (the shipped one fits
the default model), it then merges it: the base already answers in the chat format.

Training calls :func:`ensure_extended` (cached under ``--cache-dir``, keyed by base
sha256 + token set + template + seed + the dialogue adapter's sha256) and ``core.models.load_extended``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from core.cli import parser, run_cli, setup_logging
from core.errors import UserError
from core.models import default_cache_dir, read_extended_manifest
from pipeline.base_model import resolve_base
from pipeline.dialogue_stage import DEFAULT as DIALOGUE_DEFAULT
from pipeline.dialogue_stage import add_flag as dialogue_flag
from pipeline.extension import build_extended, dialogue_adapter, ensure_extended
from pipeline.extension_check import verify_extended


@dataclass(frozen=True)
class ExtendConfig:
    """Flags of ``python -m pipeline.extend``."""

    base_model: str | None = None  # --base-model: None = the default Gemma 3 270M
    out: Path | None = None  # --out: where to save; None = the cache (printed)
    cache_dir: Path | None = None  # --cache-dir: None = $KAKAO_PERSONA_CACHE or ~/.cache/kakao-persona
    seed: int = 0  # --seed: initialisation of the new embedding rows
    verify: Path | None = None  # --verify: check an existing extended dir instead of building
    dialogue: bool = DIALOGUE_DEFAULT  # --dialogue/--no-dialogue: merge the dialogue stage (pipeline.dialogue_stage)

    def validate(self) -> None:
        problems = []
        if self.seed < 0:
            problems.append("--seed must be >= 0")
        if self.out is not None and self.out.exists() and any(self.out.iterdir()):
            problems.append(f"--out {self.out}: exists and is not empty; choose a new directory")
        if self.verify is not None and not self.verify.is_dir():
            problems.append(f"--verify {self.verify}: no such directory")
        if self.verify is not None and self.out is not None:
            problems.append("--verify and --out cannot be combined")
        if problems:
            raise UserError("; ".join(problems))


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m pipeline.extend``."""
    p = parser("python -m pipeline.extend", __doc__)
    p.add_argument("--base-model", default=None, metavar="SPEC",
                   help="a local HF model dir, a .gguf file, or a hub id; default: Gemma 3 270M (bundled)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="save the extended base here (a new directory); default: the cache, path printed")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="cache for materialised/extended bases (default: $KAKAO_PERSONA_CACHE or "
                        "~/.cache/kakao-persona)")
    p.add_argument("--seed", type=int, default=0, help="seed for the new embedding rows (default 0)")
    p.add_argument("--verify", type=Path, default=None, metavar="DIR",
                   help="reload an extended base and check it against its manifest; exit 1 on a mismatch")
    dialogue_flag(p)
    return p


def _args(argv: Sequence[str] | None) -> ExtendConfig:
    a = build_parser().parse_args(argv)
    return ExtendConfig(a.base_model, a.out, a.cache_dir, a.seed, a.verify, a.dialogue)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    cfg = _args(argv)
    cfg.validate()
    if cfg.verify is not None:
        problems = verify_extended(cfg.verify)
        for problem in problems:
            print(f"FAIL {problem}")
        if problems:
            return 1
        print(f"OK {cfg.verify} (fingerprint {read_extended_manifest(cfg.verify)['fingerprint'][:16]})")
        return 0
    if cfg.out is not None:
        cache = cfg.cache_dir or default_cache_dir()
        ref = resolve_base(cfg.base_model, cache)
        build_extended(ref, cfg.out, cfg.seed, dialogue_adapter(ref, cache, cfg.dialogue))
        print(cfg.out)
    else:
        print(ensure_extended(cfg.base_model, cfg.cache_dir, cfg.seed, cfg.dialogue))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
