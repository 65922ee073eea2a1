"""Training checkpoints: ``OUT/checkpoints/step-N``, written atomically, refused on a mismatch.

A checkpoint holds the trainable weights (and the best ones so far), the
optimizer and scheduler, the RNG states, the loop position and a fingerprint of
what produced it (extended base, data hash, training config without fields that
may change on resume). Files are written into a temporary directory, flushed to disk
and then renamed, so an interrupted write never leaves a half checkpoint behind;
``state.json`` also records each file's sha256, and ``--resume latest`` passes over a
newest checkpoint that the disk damaged (unreadable, truncated, altered) to the one before.
Nothing is pickled: weights in safetensors, optimizer via ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import UserError
from core.files import atomic_dir, sha256_of

CHECKPOINTS = "checkpoints"
STATE = "state.json"
_PREFIX = "step-"
_META_KEYS = ("fingerprint", "loop", "scheduler", "python_rng")

log = logging.getLogger("pipeline.train")


@dataclass
class LoopState:
    """Where the loop is; everything here is saved with a checkpoint and restored on resume."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # index into the epoch's batch plan of the next batch to use
    best_objective: float | None = None  # validation loss, + contrast x its term with --contrast
    best_step: int = 0
    bad_evals: int = 0  # evaluations since the last improvement (early stopping)
    tokens: int = 0  # non-padding tokens consumed
    last_eval: dict = field(default_factory=dict)


def trainable_state(model) -> dict:
    """Detached copies of the parameters that require grad, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict) -> None:
    """Copy saved trainable parameters back in place; names must match exactly."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = set(params) - set(state), set(state) - set(params)
    if missing or unexpected:
        raise UserError(f"checkpoint does not match the model (missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]})")
    import torch

    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n].to(p.device, p.dtype))


def _rng_state() -> tuple[dict, dict]:
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    version, internal, gauss = random.getstate()
    return tensors, {"version": version, "internal": list(internal), "gauss": gauss}


def _set_rng_state(tensors: dict, py: dict) -> None:
    import torch

    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))


def save_checkpoint(out: Path, model, optimizer, scheduler, state: LoopState, best: dict | None,
                    fingerprint: str, keep: int) -> Path:
    """Write ``out/checkpoints/step-N`` atomically and prune all but the newest ``keep``."""
    import torch
    from safetensors.torch import save_file

    final = out / CHECKPOINTS / f"{_PREFIX}{state.step}"
    with atomic_dir(final) as tmp:  # replaces a checkpoint of the same step (Ctrl-C right after a save)
        save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, tmp / "trainable.safetensors")
        if best is not None:
            save_file({k: v.contiguous() for k, v in best.items()}, tmp / "best.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        rng_tensors, rng_py = _rng_state()
        save_file(rng_tensors, tmp / "rng.safetensors")
        meta = {"fingerprint": fingerprint, "loop": asdict(state), "scheduler": scheduler.state_dict(),
                "python_rng": rng_py, "files": {p.name: sha256_of(p) for p in sorted(tmp.iterdir())}}
        (tmp / STATE).write_text(json.dumps(meta), encoding="utf-8")
    for old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints under ``out/checkpoints``, oldest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def find_checkpoint(out: Path, resume: str) -> Path:
    """``resume`` is ``latest`` (the newest readable one under ``out``) or a checkpoint directory."""
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE).is_file():
            raise UserError(f"--resume {resume}: not a checkpoint directory (no {STATE})")
        why = checkpoint_problem(path)
        if why:
            raise UserError(f"--resume {resume}: unreadable checkpoint ({why})")
        return path
    found = list_checkpoints(out)
    if not found:
        raise UserError(f"--resume: no checkpoint under {Path(out) / CHECKPOINTS}")
    skipped = []
    for ckpt in reversed(found):
        why = checkpoint_problem(ckpt)
        if why is None:
            if skipped:
                log.warning("--resume latest: %s unreadable; resuming from %s instead", "; ".join(skipped), ckpt.name)
            return ckpt
        skipped.append(f"{ckpt.name} ({why})")
    raise UserError(f"--resume latest: no readable checkpoint under {Path(out) / CHECKPOINTS}: {'; '.join(skipped)}")


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (state.json unreadable, a file missing or not the one
    written), or None."""
    try:
        meta = json.loads((ckpt / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"{STATE}: {type(e).__name__}"
    if not isinstance(meta, dict) or any(k not in meta for k in _META_KEYS):
        return f"{STATE} is incomplete"
    names = meta.get("files") or {"trainable.safetensors": None, "optimizer.pt": None, "rng.safetensors": None}
    for name, digest in names.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if digest is not None and sha256_of(path) != digest:
            return f"{name} is damaged (sha256 differs from {STATE})"
        if digest is None and name.endswith(".safetensors") and _safetensors_problem(path):
            return f"{name} is not a whole safetensors file"
    return None


def _safetensors_problem(path: Path) -> bool:
    from safetensors import safe_open

    try:  # the header and every tensor: a truncated file fails here
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
    except Exception:  # safetensors raises its own error types for a garbled file
        return True
    return False


def read_meta(ckpt: Path, fingerprint: str) -> dict:
    """The checkpoint's metadata; refuses one written for another base, data set or config."""
    meta = json.loads((ckpt / STATE).read_text(encoding="utf-8"))
    if meta.get("fingerprint") != fingerprint:
        raise UserError(
            f"--resume {ckpt}: the checkpoint was written for a different extended base, data or "
            "training config; start a fresh run (another --out) or use the same flags")
    return meta


def restore(ckpt: Path, meta: dict, model, optimizer, scheduler) -> tuple[LoopState, dict | None]:
    """Load weights, optimizer, scheduler and RNG from ``ckpt``; returns the loop state and best weights."""
    import torch
    from safetensors.torch import load_file

    load_trainable_state(model, load_file(ckpt / "trainable.safetensors"))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(meta["scheduler"])
    _set_rng_state(load_file(ckpt / "rng.safetensors"), meta["python_rng"])
    best_file = ckpt / "best.safetensors"
    best = load_file(best_file) if best_file.is_file() else None
    loop = dict(meta["loop"])
    if "best_val" in loop:  # the key's name in older checkpoints
        loop["best_objective"] = loop.pop("best_val")
    return LoopState(**loop), best
