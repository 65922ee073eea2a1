"""Build the *extended base*: a base model + tokenizer with the chat special tokens added once.

    python -m pipeline.extend                                   # build (once) and print the cached extended default base
    python -m pipeline.extend --base-model skt/kogpt2-base-v2 --out models/kogpt2-ext
    python -m pipeline.extend --base-model ~/models/polyglot-ko-1.3b --seed 1
    python -m pipeline.extend --verify models/kogpt2-ext         # reload and check everything; exit 1 on a mismatch
    python -m pipeline.extend --dialogue                         # with the dialogue stage merged (docs/dialogue.md)

What it does (see docs/PITFALLS.md, "Tokenizer and embeddings"):

- adds the chat special tokens (``pipeline.chat_format.SPECIAL_TOKENS``, plus ``<|pad|>``
  only when the base has no pad distinct from EOS) with ``add_special_tokens``; no
  existing id changes and each new token is one id, also glued to Korean text;
- grows the embedding to ``len(tokenizer)`` (never shrinks: a model with spare rows
  keeps them) and initialises the rows of the new ids explicitly, seeded (mean of the
  existing rows + small noise; ``<|eot|>`` starts as a copy of the base's own end-of-turn
  token), output rows too when the output layer is untied;
- stores ``CHAT_TEMPLATE`` so ``apply_chat_template`` gives exactly the ids of
  ``chat_format.render``; sets EOS = chat_format.stop_ids and the pad id for generation;
- saves with ``save_pretrained`` (never ``save_vocabulary``: it loses added tokens)
  plus ``manifest.json`` (base + sha256, token ids, rows, tied flag, seed, versions,
  fingerprint, sha256 of every saved file).

With ``--dialogue``, when ``pipeline.dialogue`` has an adapter for this base (the shipped one fits
the default model), it then merges it: the base already answers in the chat format.

Training calls :func:`ensure_extended` (cached under ``--cache-dir``, keyed by base
sha256 + token set + template + seed + the dialogue adapter's sha256) and :func:`load_extended`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from data_prep.errors import UserError
from pipeline import base_model
from pipeline.base_model import BaseModelRef, default_cache_dir, resolve_base, sha256_of
from pipeline.chat_format import (
    CHAT_TEMPLATE, EOT, PAD, SPECIAL_TOKENS, native_end_id, render, stop_ids, to_messages,
)
from pipeline.cli import parser, read_manifest_json, run_cli, setup_logging
from pipeline.dialogue import DEFAULT as DIALOGUE_DEFAULT
from pipeline.dialogue import adapter_for as dialogue_adapter_for
from pipeline.dialogue import add_flag as dialogue_flag

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump when the extension recipe changes, so cached extended bases are rebuilt
MANIFEST = "manifest.json"
NOISE_SCALE = 0.1  # noise std relative to the per-dimension std of the existing rows: small, but
#                    enough that the new tokens are not identical vectors before training
GLUE_PROBE = "안녕{}하세요"  # a special token glued to Korean text must still be exactly one id
SAMPLE_CONTEXT = ({"speaker": "민수", "text": "오늘 뭐 해? ㅋㅋ"}, {"speaker": "지은", "text": "집에 있어 ㅠㅠ"},
                  {"speaker": "민수", "text": "<|eot|>나와 ㅎㅎ"})
SAMPLE = ("지은처럼 반말로 짧게 답해.", SAMPLE_CONTEXT, "지은", "좋아 어디로 갈까?")


@dataclass(frozen=True)
class ExtendConfig:
    """Flags of ``python -m pipeline.extend``."""

    base_model: str | None = None  # --base-model: None = the default Gemma 3 270M
    out: Path | None = None  # --out: where to save; None = the cache (printed)
    cache_dir: Path | None = None  # --cache-dir: None = $KAKAO_PERSONA_CACHE or ~/.cache/kakao-persona
    seed: int = 0  # --seed: initialisation of the new embedding rows
    verify: Path | None = None  # --verify: check an existing extended dir instead of building
    dialogue: bool = DIALOGUE_DEFAULT  # --dialogue/--no-dialogue: merge the dialogue stage (pipeline.dialogue)

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
    """sha256 of every file under ``directory`` except the manifest."""
    return {p.relative_to(directory).as_posix(): sha256_of(p)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


# -- build, cache, load ------------------------------------------------------------------------


def build_extended(ref: BaseModelRef, out: str | Path, seed: int = 0, dialogue=None) -> dict[str, Any]:
    """Load ``ref``, extend it, merge the ``dialogue`` adapter (a ``pipeline.dialogue.DialogueAdapter``)
    when given, save it to ``out`` atomically (temp dir + rename); return the manifest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch

    out = Path(out)
    t0 = time.perf_counter()
    log.info("extending %s (%s) ...", ref.spec or base_model.DEFAULT_SPEC, ref.path)
    tok = AutoTokenizer.from_pretrained(ref.path)
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    ext = extend_model(model, tok, seed)
    if dialogue is not None:
        model = _merge_dialogue(model, tok, ref, ext, dialogue)
    tmp = base_model.make_temp_sibling(out)
    try:
        model.save_pretrained(tmp)
        save_tokenizer(tok, tmp)
        manifest = _manifest(ref, ext, model, tok, tmp, dialogue)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        base_model.rename_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("extended base saved to %s in %.1f s: %d new tokens, %d rows, tied=%s",
             out, time.perf_counter() - t0, len(ext.new_token_ids), ext.rows, ext.tied)
    return manifest


def _merge_dialogue(model, tok, ref: BaseModelRef, ext: Extension, dialogue):
    from pipeline.dialogue import merge_into

    plain = fingerprint(model, tok, ref.sha256, ext.new_token_ids)
    sample = render(tok, *SAMPLE[:3], response=SAMPLE[3]).input_ids
    log.info("merging the dialogue stage %s", dialogue.path)
    return merge_into(model, dialogue, plain, sample)


def save_tokenizer(tok, directory: Path) -> None:
    """``save_pretrained``, plus the added tokens listed in ``tokenizer_config.json``.

    transformers 5 no longer writes ``added_tokens_decoder`` there; without it every load
    re-parses the whole ``tokenizer.json`` in Python to find the added tokens (about 1-2 s
    for Gemma's 33 MB file). The list is the tokenizer's own; verify checks that
    AutoTokenizer and :func:`load_tokenizer` still agree.
    """
    tok.save_pretrained(directory)
    cfg_path = Path(directory) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["added_tokens_decoder"] = {str(i): t.__getstate__() for i, t in sorted(tok.added_tokens_decoder.items())}
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _manifest(ref: BaseModelRef, ext: Extension, model, tok, saved: Path, dialogue=None) -> dict[str, Any]:
    dialogue_sha = dialogue.sha256 if dialogue is not None else None
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
        "fingerprint": fingerprint(model, tok, ref.sha256, ext.new_token_ids, dialogue_sha),
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


def ensure_extended(spec: str | None, cache_dir: str | Path | None = None, seed: int = 0,
                    dialogue: bool = DIALOGUE_DEFAULT) -> Path:
    """The cached extended base for ``spec`` (built on first use); returns its directory.

    ``dialogue``: merge the dialogue stage (``pipeline.dialogue``) when one exists for this base.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ref = resolve_base(spec, cache)
    adapter = dialogue_adapter_for(ref.sha256, cache) if dialogue else None
    if dialogue and adapter is None:
        log.info("no dialogue stage for %s: the plain extended base is used (python -m pipeline.dialogue "
                 "trains one)", ref.spec or "the default base")
    target = cache / "extended" / cache_key(ref, seed, adapter.sha256 if adapter else None)
    if not (target / MANIFEST).is_file():
        build_extended(ref, target, seed, adapter)
    return target


def extended_for(manifest: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    """The extended base an adapter was trained on, from its manifest (older ones: no dialogue stage)."""
    return ensure_extended(manifest.get("base_model"), cache_dir, dialogue=bool(manifest.get("dialogue", False)))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The extended base's ``manifest.json``; UserError when the directory is not one."""
    return read_manifest_json(Path(path) / MANIFEST, "an extended base",
                              "build one with python -m pipeline.extend")


def default_device() -> str:
    """Where models run unless told otherwise: "cuda" when torch sees a GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_extended(path: str | Path, device: str = "cpu", dtype=None):
    """Load (model, tokenizer, manifest) from an extended base directory.

    ``dtype``: a torch dtype or its name; default float32 on CPU, bfloat16 on CUDA.
    Checks cheaply that the tokenizer matches the manifest and fits the embedding;
    file hashes are checked only by :func:`verify_extended` (they cost seconds).
    """
    path = Path(path)
    manifest = read_manifest(path)
    model, tok = _load(path, device, dtype)
    problems = quick_checks(model, tok, manifest)
    if problems:
        raise UserError(f"{path}: extended base does not match its manifest: {problems[0]} "
                        f"(python -m pipeline.extend --verify {path})")
    return model, tok, manifest


def _load(path: Path, device: str = "cpu", dtype=None):
    import torch
    from transformers import AutoModelForCausalLM

    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return model, tok


def load_tokenizer(path: str | Path):
    """The saved tokenizer, read straight from ``tokenizer.json`` when there is one.

    ``AutoTokenizer`` would rebuild a model-specific class (GemmaTokenizer re-parses
    and rebuilds a 262k vocabulary in Python, seconds); the generic backend loads the
    same serialised pipeline. ``verify_extended`` checks that both give the same ids.
    """
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    path = Path(path)
    if (path / "tokenizer.json").is_file():
        return TokenizersBackend.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def quick_checks(model, tok, manifest: dict[str, Any]) -> list[str]:
    """Cheap consistency checks between a loaded extended base and its manifest."""
    problems = []
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:
        problems.append(f"len(tokenizer)={len(tok)} exceeds the embedding rows ({rows})")
    if len(tok) != manifest.get("len_tokenizer"):
        problems.append(f"len(tokenizer)={len(tok)}, manifest says {manifest.get('len_tokenizer')}")
    if rows != manifest.get("embedding_rows"):
        problems.append(f"embedding rows={rows}, manifest says {manifest.get('embedding_rows')}")
    for t, i in manifest.get("added_tokens", {}).items():
        if tok.convert_tokens_to_ids(t) != i:
            problems.append(f"{t} has id {tok.convert_tokens_to_ids(t)}, manifest says {i}")
    if tok.pad_token_id is None or tok.pad_token_id in (tok.eos_token_id, tok.convert_tokens_to_ids(EOT)):
        problems.append(f"pad id {tok.pad_token_id} is missing or equals EOS/EOT")
    if tok.chat_template != CHAT_TEMPLATE:
        problems.append("the tokenizer's chat_template differs from chat_format.CHAT_TEMPLATE")
    return problems


# -- verify ------------------------------------------------------------------------------------


def verify_extended(path: str | Path) -> list[str]:
    """Reload an extended base and check everything against its manifest; [] means OK."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except UserError as e:
        return [str(e)]
    problems = _check_files(path, manifest)
    try:
        model, tok = _load(path)
    except Exception as e:  # a file that cannot be loaded is a failed check, not a crash
        return problems + [f"cannot load: {type(e).__name__}: {e}".splitlines()[0]]
    problems += quick_checks(model, tok, manifest)
    problems += _check_tokens(tok, manifest) + _check_model(model, tok, manifest)
    try:
        problems += check_template(tok) + _check_auto_tokenizer(path, tok)
    except ValueError as e:  # render() refuses a tokenizer without the chat tokens
        problems.append(str(e))
    return problems


def _check_auto_tokenizer(path: Path, tok) -> list[str]:
    """``AutoTokenizer`` (what other tools load) must agree with :func:`load_tokenizer`."""
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(path)
    instruction, context, persona, reply = SAMPLE
    a = render(auto, instruction, context, persona, response=reply)
    b = render(tok, instruction, context, persona, response=reply)
    if len(auto) != len(tok) or a != b:
        return [f"AutoTokenizer ({type(auto).__name__}) and the saved tokenizer.json give different ids"]
    return []


def _check_files(path: Path, manifest: dict[str, Any]) -> list[str]:
    problems = [f"manifest has no {k!r}" for k in ("base", "fingerprint", "added_tokens", "new_token_ids",
                                                    "embedding_rows", "tied", "seed", "versions", "files")
                if k not in manifest]
    expected, actual = manifest.get("files", {}), file_hashes(path)
    problems += [f"{n}: missing" for n in sorted(set(expected) - set(actual))]
    problems += [f"{n}: not listed in the manifest" for n in sorted(set(actual) - set(expected))]
    problems += [f"{n}: sha256 differs from the manifest" for n in sorted(set(expected) & set(actual))
                 if expected[n] != actual[n]]
    return problems


def _check_tokens(tok, manifest: dict[str, Any]) -> list[str]:
    problems = []
    for t, i in manifest.get("added_tokens", {}).items():
        if tok(t, add_special_tokens=False)["input_ids"] != [i]:
            problems.append(f"{t} does not encode to the single id {i}")
        glued = tok(GLUE_PROBE.format(t), add_special_tokens=False)["input_ids"]
        if glued.count(i) != 1:
            problems.append(f"{t} glued to Korean text ({GLUE_PROBE.format(t)!r}) is not one id {i}")
    return problems


def _check_model(model, tok, manifest: dict[str, Any]) -> list[str]:
    problems = []
    if is_tied(model) != manifest.get("tied"):
        problems.append(f"tied={is_tied(model)}, manifest says {manifest.get('tied')}")
    fp = fingerprint(model, tok, manifest.get("base", {}).get("sha256", ""), manifest.get("new_token_ids", []),
                     (manifest.get("dialogue") or {}).get("sha256"))
    if fp != manifest.get("fingerprint"):
        problems.append("fingerprint of the reloaded model/tokenizer differs from the manifest")
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    if tok.convert_tokens_to_ids(EOT) not in eos:
        problems.append(f"generation_config.eos_token_id {eos} does not include {EOT}")
    if model.generation_config.pad_token_id != tok.pad_token_id:
        problems.append("generation_config.pad_token_id differs from the tokenizer's pad id")
    return problems


def check_template(tok) -> list[str]:
    """``apply_chat_template`` must give exactly the ids of ``render`` on a sample conversation."""
    instruction, context, persona, reply = SAMPLE
    problems = []
    for response in (reply, None):
        ids = render(tok, instruction, context, persona, response=response).input_ids
        msgs = to_messages(instruction, context, persona, response, tokenizer=tok)
        via = tok.apply_chat_template(msgs, tokenize=True, return_dict=False,
                                      add_generation_prompt=response is None)
        if list(via) != ids:
            problems.append(f"apply_chat_template ids differ from render ids ({'with' if response else 'without'}"
                            " a reply)")
    return problems


# -- CLI ---------------------------------------------------------------------------------------


def _args(argv: Sequence[str] | None) -> ExtendConfig:
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
    a = p.parse_args(argv)
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
        print(f"OK {cfg.verify} (fingerprint {read_manifest(cfg.verify)['fingerprint'][:16]})")
        return 0
    if cfg.out is not None:
        cache = cfg.cache_dir or default_cache_dir()
        ref = resolve_base(cfg.base_model, cache)
        build_extended(ref, cfg.out, cfg.seed, dialogue_adapter_for(ref.sha256, cache) if cfg.dialogue else None)
        print(cfg.out)
    else:
        print(ensure_extended(cfg.base_model, cfg.cache_dir, cfg.seed, cfg.dialogue))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
