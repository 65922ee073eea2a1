"""The extended base: the chat tokens added to a base model once, built atomically into the cache.

What the recipe does (new tokens, embedding rows, template, manifest) is the help of
``python -m pipeline.extend`` (:mod:`pipeline.extend`). :func:`ensure_extended` caches
the result under the cache folder, keyed by base sha256 + token set + template + seed (+ the
merged dialogue adapter's sha256: with ``dialogue``, the stage of :mod:`pipeline.dialogue_stage` is
merged when one exists for the base); :func:`extended_for` finds the base an adapter was trained on;
:func:`load_base` and :func:`load_trained` load through :mod:`core.models`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from core import adapter_format
from core.chat_format import CHAT_TEMPLATE, EOT, PAD, SPECIAL_TOKENS, native_end_id, render, stop_ids
from core.files import atomic_dir, sha256_of
from core.models import (BACKWARD_DIR, EXTENDED_DIR, EXTENDED_MANIFEST, default_cache_dir, default_device,
                         load_adapter, load_extended)
from pipeline import base_model
from pipeline.base_model import BaseModelRef, resolve_base
from pipeline.dialogue_stage import DEFAULT as DIALOGUE_DEFAULT
from pipeline.dialogue_stage import DialogueAdapter, adapter_for, install_backward, merge_into

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump when the extension recipe changes, so cached extended bases are rebuilt
NOISE_SCALE = 0.1  # noise std relative to the per-dimension std of the existing rows: small, but
#                    enough that the new tokens are not identical vectors before training
# a conversation with the chat tokens in every role (one glued into a message): verify renders it, and
# merging the dialogue stage compares logits on it
SAMPLE_CONTEXT = ({"speaker": "민수", "text": "오늘 뭐 해? ㅋㅋ"}, {"speaker": "지은", "text": "집에 있어 ㅠㅠ"},
                  {"speaker": "민수", "text": "<|eot|>나와 ㅎㅎ"})
SAMPLE = ("지은처럼 반말로 짧게 답해.", SAMPLE_CONTEXT, "지은", "좋아 어디로 갈까?")


@dataclass(frozen=True)
class Extension:
    """What :func:`extend_model` changed."""

    added_tokens: dict[str, int]  # every chat special token (and the pad, if added) -> its id
    new_token_ids: list[int]  # ids that did not exist in the base tokenizer
    base_len: int  # len(tokenizer) of the base
    base_rows: int  # embedding rows of the base
    rows: int  # embedding rows now (>= base_rows: we only grow)
    tied: bool  # output layer shares the input embedding
    seed: int
    copied: dict[int, int]  # new id -> trained id its rows were copied from (<|eot|> <- end of turn)


# -- the extension itself (in memory) ----------------------------------------------------------


def add_chat_tokens(tokenizer) -> dict[str, int]:
    """Add the chat special tokens (and ``<|pad|>`` if needed); return token -> id for all of them."""
    request: dict[str, Any] = {"extra_special_tokens": list(SPECIAL_TOKENS)}
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        request["pad_token"] = PAD
    # replace=False keeps the base's own extra special tokens flagged as special
    tokenizer.add_special_tokens(request, replace_extra_special_tokens=False)
    names = list(SPECIAL_TOKENS) + ([PAD] if "pad_token" in request else [])
    return {t: tokenizer.convert_tokens_to_ids(t) for t in names}


def is_tied(model) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def extend_model(model, tokenizer, seed: int = 0) -> Extension:
    """Add the tokens to ``tokenizer`` and the matching rows to ``model``, in place."""
    base_len, base_rows = len(tokenizer), model.get_input_embeddings().weight.shape[0]
    added = add_chat_tokens(tokenizer)
    new_ids = sorted(i for i in added.values() if i >= base_len)
    if len(tokenizer) > base_rows:  # grow only: spare rows (polyglot-ko) are reused, never cut
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    tied = is_tied(model)
    n_trained = min(base_len, base_rows)
    copied = _copy_sources(tokenizer, added, n_trained)
    init_new_rows(model, new_ids, n_trained=n_trained, seed=seed, tied=tied, copy_from=copied)
    model.config.pad_token_id = tokenizer.pad_token_id
    _set_generation_ids(model, tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    rows = model.get_input_embeddings().weight.shape[0]
    return Extension(added, new_ids, base_len, base_rows, rows, tied, seed, copied)


def _copy_sources(tokenizer, added: dict[str, int], n_trained: int) -> dict[int, int]:
    """New id -> trained id whose row it starts from: <|eot|> <- the base's own end of turn.

    The base already predicts its end-of-turn token where a reply ends, so a copy makes a
    fresh adapter stop its replies from the first steps (mean-initialised, it rambles on).
    """
    src = native_end_id(tokenizer)
    eot = added[EOT]
    return {eot: src} if src is not None and src < n_trained and eot != src else {}


def init_new_rows(model, new_ids: Sequence[int], n_trained: int, seed: int, tied: bool,
                  copy_from: dict[int, int] | None = None) -> None:
    """Rows of ``new_ids`` := mean of the first ``n_trained`` rows + seeded noise (input and output),
    except ids in ``copy_from``, which start as a copy of the given trained row.

    Done by explicit id whether or not the matrix grew: ids landing in a model's spare,
    never-trained rows would otherwise keep whatever those rows hold.
    """
    import torch

    if not new_ids:
        return
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor(list(new_ids), dtype=torch.long)
    layers = [model.get_input_embeddings().weight]
    if not tied and model.get_output_embeddings() is not None:
        layers.append(model.get_output_embeddings().weight)
    with torch.no_grad():
        for w in layers:
            old = w[:n_trained].float()
            noise = torch.randn(len(ids), w.shape[1], generator=gen) * old.std(dim=0) * NOISE_SCALE
            w[ids.to(w.device)] = (old.mean(dim=0) + noise).to(w.dtype).to(w.device)
            for dst, src in (copy_from or {}).items():
                w[dst] = w[src]
        bias = getattr(model.get_output_embeddings(), "bias", None)
        if bias is not None:
            bias[ids.to(bias.device)] = bias[:n_trained].mean()
            for dst, src in (copy_from or {}).items():
                bias[dst] = bias[src]


def _set_generation_ids(model, tokenizer) -> None:
    """Generation stops on EOS or <|eot|>, and pads with the (non-EOS) pad id."""
    gc = model.generation_config
    eos = gc.eos_token_id if gc.eos_token_id is not None else tokenizer.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    gc.eos_token_id = list(dict.fromkeys(stop_ids(tokenizer) + [i for i in eos if i is not None]))
    gc.pad_token_id = tokenizer.pad_token_id
    if gc.bos_token_id is None:
        gc.bos_token_id = tokenizer.bos_token_id


# -- hashes ------------------------------------------------------------------------------------


def fingerprint(model, tokenizer, base_sha256: str, new_ids: Sequence[int],
                dialogue_sha256: str | None = None) -> str:
    """Hash of what makes this extended base what it is; equal after save + reload.

    The base sha256 pins every unchanged weight (and ``dialogue_sha256``, the merged dialogue
    adapter's, every weight it changed); the rest is hashed directly: the
    tokenizer's vocabulary and special tokens, the template, the row count and the
    values of the new rows (input and, when untied, output) in float32.
    """
    import torch

    h = hashlib.sha256()
    meta = {
        "base": base_sha256, "len": len(tokenizer), "template": tokenizer.chat_template,
        "rows": model.get_input_embeddings().weight.shape[0], "tied": is_tied(model),
        "specials": {str(t): i for t, i in sorted(_special_map(tokenizer).items())},
        "vocab": _vocab_sha(tokenizer), "new_ids": list(new_ids),
    }
    if dialogue_sha256 is not None:  # absent otherwise, so plain extended bases keep their fingerprint
        meta["dialogue"] = dialogue_sha256
    h.update(json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
    ids = torch.tensor(list(new_ids), dtype=torch.long)
    layers = [model.get_input_embeddings().weight]
    if not meta["tied"] and model.get_output_embeddings() is not None:
        layers.append(model.get_output_embeddings().weight)
    for w in layers:
        h.update(w.detach()[ids.to(w.device)].float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _special_map(tokenizer) -> dict[str, int]:
    added = {str(t): int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return added | {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}


def _vocab_sha(tokenizer) -> str:
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` except the manifest and the backward model installed beside the
    base (not part of it: :func:`pipeline.dialogue_stage.install_backward`)."""
    files = (p for p in sorted(directory.rglob("*")) if p.is_file() and p.name != EXTENDED_MANIFEST)
    return {p.relative_to(directory).as_posix(): sha256_of(p) for p in files
            if p.relative_to(directory).parts[0] != BACKWARD_DIR}


# -- build, cache, load ------------------------------------------------------------------------


def build_extended(ref: BaseModelRef, out: str | Path, seed: int = 0,
                   dialogue: DialogueAdapter | None = None) -> dict[str, Any]:
    """Load ``ref``, extend it, merge the ``dialogue`` adapter when given, save it to ``out``
    atomically (temp dir + rename); return the manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    t0 = time.perf_counter()
    log.info("extending %s (%s) ...", ref.spec or base_model.DEFAULT_SPEC, ref.path)
    tok = AutoTokenizer.from_pretrained(ref.path)
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    ext = extend_model(model, tok, seed)
    if dialogue is not None:
        model = _merge_dialogue(model, tok, ref, ext, dialogue)
    with atomic_dir(out, replace=False) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tok, tmp)
        manifest = _manifest(ref, ext, model, tok, tmp, dialogue)
        (tmp / EXTENDED_MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    log.info("extended base saved to %s in %.1f s: %d new tokens, %d rows, tied=%s",
             out, time.perf_counter() - t0, len(ext.new_token_ids), ext.rows, ext.tied)
    return manifest


def _merge_dialogue(model, tok, ref: BaseModelRef, ext: Extension, dialogue: DialogueAdapter):
    plain = fingerprint(model, tok, ref.sha256, ext.new_token_ids)
    sample = render(tok, *SAMPLE[:3], response=SAMPLE[3]).input_ids
    log.info("merging the dialogue stage %s", dialogue.path)
    return merge_into(model, dialogue, plain, sample)


def save_tokenizer(tok, directory: Path) -> None:
    """``save_pretrained``, plus the added tokens listed in ``tokenizer_config.json``.

    transformers 5 does not write ``added_tokens_decoder`` there; without it every load
    re-parses the whole ``tokenizer.json`` in Python to find the added tokens (about 1-2 s
    for Gemma's 33 MB file). The list is the tokenizer's own; verify checks that
    AutoTokenizer and :func:`load_tokenizer` still agree.
    """
    tok.save_pretrained(directory)
    cfg_path = Path(directory) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["added_tokens_decoder"] = {str(i): t.__getstate__() for i, t in sorted(tok.added_tokens_decoder.items())}
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _manifest(ref: BaseModelRef, ext: Extension, model, tok, saved: Path,
              dialogue: DialogueAdapter | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "base": {"spec": ref.spec, "kind": ref.kind, "sha256": ref.sha256},
        "added_tokens": ext.added_tokens,
        "new_token_ids": ext.new_token_ids,
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "eos_token_ids": list(model.generation_config.eos_token_id),
        "len_tokenizer": len(tok), "base_len_tokenizer": ext.base_len,
        "embedding_rows": ext.rows, "base_embedding_rows": ext.base_rows,
        "tied": ext.tied, "hidden_size": model.get_input_embeddings().weight.shape[1],
        "seed": ext.seed, "init": {"method": "mean+noise", "noise_scale": NOISE_SCALE,
                                      "copied": {str(k): v for k, v in ext.copied.items()}},
        "versions": base_model.library_versions(),
        "dialogue": dialogue.describe() if dialogue is not None else None,
        "fingerprint": fingerprint(model, tok, ref.sha256, ext.new_token_ids,
                                   dialogue.sha256 if dialogue is not None else None),
        "files": file_hashes(saved),
    }


def cache_key(ref: BaseModelRef, seed: int, dialogue_sha256: str | None = None) -> str:
    """Extended bases are cached by base weights + token set + template + seed + recipe version
    (+ the merged dialogue adapter's sha256)."""
    key = {"base": ref.sha256, "kind": ref.kind, "tokens": list(SPECIAL_TOKENS) + [PAD],
           "template": CHAT_TEMPLATE, "seed": seed, "format": FORMAT_VERSION}
    if dialogue_sha256 is not None:  # absent otherwise: plain extended bases keep their cache entry
        key["dialogue"] = dialogue_sha256
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def dialogue_adapter(ref: BaseModelRef, cache: Path, dialogue: bool) -> DialogueAdapter | None:
    """The dialogue adapter to merge into ``ref``'s extended base: None without ``dialogue`` or
    when no stage exists for this base (said in the log, so ``--dialogue`` is never silently moot)."""
    if not dialogue:
        return None
    adapter = adapter_for(ref.sha256, cache)
    if adapter is None:
        log.info("no dialogue stage for %s: the plain extended base is used (python -m pipeline.dialogue "
                 "trains one)", ref.spec or "the default base")
    return adapter


def ensure_extended(spec: str | None, cache_dir: str | Path | None = None, seed: int = 0,
                    dialogue: bool = DIALOGUE_DEFAULT) -> Path:
    """The cached extended base for ``spec`` (built on first use); returns its directory.

    ``dialogue``: merge the dialogue stage (:mod:`pipeline.dialogue_stage`) when one exists for this base,
    and install the backward model kept with it (:func:`pipeline.dialogue_stage.install_backward`).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ref = resolve_base(spec, cache)
    adapter = dialogue_adapter(ref, cache, dialogue)
    target = cache / EXTENDED_DIR / cache_key(ref, seed, adapter.sha256 if adapter else None)
    if not (target / EXTENDED_MANIFEST).is_file():
        build_extended(ref, target, seed, adapter)
    if adapter is not None and install_backward(adapter, target) is None:
        log.debug("no backward model for this dialogue stage: replies are reranked without it")
    return target


def extended_for(manifest: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    """The extended base an adapter was trained on, from its manifest (older ones: no dialogue stage)."""
    return ensure_extended(manifest.get("base_model"), cache_dir, dialogue=bool(manifest.get("dialogue", False)))


def load_base(spec: str | None, cache_dir: str | Path | None = None, device: str | None = None, dtype=None,
              dialogue: bool = DIALOGUE_DEFAULT):
    """(model, tokenizer, extended manifest) of the cached extended base for ``spec`` (built if needed;
    with the dialogue stage when ``dialogue``); ``device`` default: the GPU when torch sees one (bf16
    there), else the CPU (fp32)."""
    model, tok, manifest = load_extended(ensure_extended(spec, cache_dir, dialogue=dialogue),
                                         device=device or default_device(), dtype=dtype)
    return model.eval(), tok, manifest


def load_base_for(adapter_manifest: dict[str, Any], cache_dir: str | Path | None = None, device: str | None = None,
                  dtype=None):
    """:func:`load_base` of the extended base an adapter was trained on (its manifest's base model,
    with the dialogue stage when the manifest says so; older manifests: without)."""
    return load_base(adapter_manifest.get("base_model"), cache_dir, device, dtype,
                     dialogue=bool(adapter_manifest.get("dialogue", False)))


def load_trained(directory: str | Path, cache_dir: str | Path | None = None, device: str = "cpu", dtype=None):
    """(model, tokenizer, manifest) for an adapter folder: its extended base (the one its manifest
    names, built into the cache if needed) with the adapter attached under the persona's name."""
    manifest = adapter_format.read_manifest(directory)
    base, tokenizer, _ = load_base_for(manifest, cache_dir, device, dtype)
    return load_adapter(base, directory, manifest["persona"]).eval(), tokenizer, manifest
