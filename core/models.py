"""Load what the extension stage built and what training wrote: the extended base and LoRA adapters.

The chat and the evaluation load models through here; building an extended base
(GGUF materialisation, tokenizer extension) lives in :mod:`pipeline.extension` and
is not imported. torch, transformers and peft are imported inside the functions.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core import adapter_format
from core.chat_format import CHAT_TEMPLATE, EOT
from core.errors import UserError
from core.files import read_json, read_json_or_empty

CACHE_ENV = "KAKAO_PERSONA_CACHE"
EXTENDED_MANIFEST = "manifest.json"
EXTENDED_DIR = "extended"  # extended bases live in CACHE/extended/<cache key>/
# the backward model p(message | reply) that reranks replies: a LoRA folder inside the extended base it was
# trained on (put there by the extension), attached beside the persona adapters under BACKWARD_ADAPTER
BACKWARD_DIR = "backward"
BACKWARD_ADAPTER = "_backward"


def default_cache_dir() -> Path:
    """``$KAKAO_PERSONA_CACHE`` or ``~/.cache/kakao-persona``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kakao-persona"


def default_device() -> str:
    """Where models run unless told otherwise: "cuda" when torch sees a GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def read_extended_manifest(path: str | Path) -> dict[str, Any]:
    """The extended base's ``manifest.json``; UserError when the directory is not one."""
    return read_json(Path(path) / EXTENDED_MANIFEST, "an extended base", "build one with python -m pipeline.extend")


def find_extended(fingerprint: str, cache_dir: str | Path | None = None) -> Path | None:
    """The cached extended base whose manifest has ``fingerprint``, or None (only manifests are read)."""
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / EXTENDED_DIR
    if not fingerprint or not root.is_dir():
        return None
    for d in sorted(root.iterdir()):
        if read_json_or_empty(d / EXTENDED_MANIFEST).get("fingerprint") == fingerprint:
            return d
    return None


def find_backward(extended: str | Path) -> Path | None:
    """The backward model installed in the extended base folder ``extended``, or None (none trained for it)."""
    path = Path(extended) / BACKWARD_DIR
    files = (adapter_format.ADAPTER_CONFIG, adapter_format.ADAPTER_WEIGHTS, adapter_format.MANIFEST)
    return path if all((path / f).is_file() for f in files) else None


def load_tokenizer(path: str | Path):
    """The saved tokenizer, read straight from ``tokenizer.json`` when there is one.

    ``AutoTokenizer`` would rebuild a model-specific class (GemmaTokenizer re-parses
    and rebuilds a 262k vocabulary in Python, seconds); the generic backend loads the
    same serialised pipeline. ``python -m pipeline.extend --verify`` checks that both
    give the same ids.
    """
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    path = Path(path)
    if (path / "tokenizer.json").is_file():
        return TokenizersBackend.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def load_model(path: str | Path, device: str = "cpu", dtype=None):
    """(model, tokenizer) from a saved model directory; ``dtype`` default: bf16 on CUDA, else fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return model, tok


def load_extended(path: str | Path, device: str = "cpu", dtype=None):
    """Load (model, tokenizer, manifest) from an extended base directory.

    ``dtype``: a torch dtype or its name; default float32 on CPU, bfloat16 on CUDA.
    Checks cheaply that the tokenizer matches the manifest and fits the embedding;
    file hashes are checked only by ``python -m pipeline.extend --verify`` (seconds).
    """
    path = Path(path)
    manifest = read_extended_manifest(path)
    model, tok = load_model(path, device, dtype)
    problems = quick_checks(model, tok, manifest)
    if problems:
        raise UserError(f"{path}: extended base does not match its manifest: {problems[0]} "
                        f"(python -m pipeline.extend --verify {path})")
    return model, tok, manifest


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


def load_adapter(base, directory: str | Path, name: str = "default", into=None):
    """Attach the LoRA adapter in ``directory`` as ``name``: onto ``base`` (a new PeftModel) or ``into``
    (an existing PeftModel holding other adapters); returns the PeftModel."""
    if into is not None:
        into.load_adapter(str(directory), adapter_name=name)
        return into
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(directory), adapter_name=name)


def cache_name(module) -> str:
    """The forward's (and ``generate``'s) KV-cache argument: ``cache`` in newer transformers 5 releases,
    which deprecate ``past_key_values`` (to be removed in 5.40); ``past_key_values`` in the older ones.
    The model output holds the cache under the same name (``out[name]``)."""
    import inspect

    inner = module.get_base_model() if hasattr(module, "get_base_model") else module  # PeftModel forwards kwargs
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
