"""The extended base: chat tokens added once, rows initialised by id, save -> reload -> verify.

Tiny models (tests/tiny_models.py) cover GPT-2 (KoGPT2 layout), Gemma tied and untied;
one slow test does the same on the real default model (shared user cache).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from core.chat_format import EOT, PAD, SPECIAL_TOKENS
from core.cli import run_cli
from core.models import load_extended, load_tokenizer, read_extended_manifest
from pipeline import extend
from pipeline.base_model import resolve_base
from pipeline.extension import build_extended, ensure_extended
from pipeline.extension_check import verify_extended

REPO = Path(__file__).resolve().parents[1]
TINY = ["tiny_gpt2_dir", "tiny_gemma_dir", "tiny_gemma_untied_dir"]


@pytest.fixture(scope="module")
def ext_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ext-cache")


@pytest.fixture(params=TINY)
def base_and_ext(request, ext_cache):
    """(base dir, extended dir) for each tiny model; extended once per module via the cache."""
    base = request.getfixturevalue(request.param)
    return base, ensure_extended(str(base), cache_dir=ext_cache)


def test_extend_save_reload_verify(base_and_ext):
    base_dir, ext_dir = base_and_ext
    base_tok = AutoTokenizer.from_pretrained(base_dir)
    model, tok, manifest = load_extended(ext_dir)
    assert verify_extended(ext_dir) == []
    # no existing id moved; each new token is one new id after the base vocabulary
    assert {t: tok.convert_tokens_to_ids(t) for t in base_tok.get_vocab()} == base_tok.get_vocab()
    assert manifest["new_token_ids"] == list(range(len(base_tok), len(base_tok) + len(SPECIAL_TOKENS)))
    assert list(manifest["added_tokens"]) == list(SPECIAL_TOKENS)  # bases here have a pad != EOS
    for t, i in manifest["added_tokens"].items():
        assert tok(t, add_special_tokens=False)["input_ids"] == [i]
        glued = tok(f"안녕{t}하세요", add_special_tokens=False)["input_ids"]
        assert glued.count(i) == 1 and tok.decode(glued) == f"안녕{t}하세요"
    assert len(tok) == manifest["len_tokenizer"] == len(base_tok) + 5
    assert model.get_input_embeddings().weight.shape[0] == manifest["embedding_rows"] >= len(tok)
    assert tok.pad_token_id not in (tok.eos_token_id, tok.convert_tokens_to_ids(EOT))
    assert tok.convert_tokens_to_ids(EOT) in model.generation_config.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert manifest["tied"] == (base_dir.name.startswith("tiny-gpt2") or "untied" not in base_dir.name)
    assert model.dtype == torch.float32


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def _embedding_keys(model_dir: Path) -> set[str]:
    m = AutoModelForCausalLM.from_pretrained(model_dir)
    weights = [layer.weight for layer in (m.get_input_embeddings(), m.get_output_embeddings()) if layer is not None]
    return {n for n, p in m.named_parameters(remove_duplicate=False) if any(p is w for w in weights)}


def test_only_new_rows_differ_from_base(base_and_ext):
    base_dir, ext_dir = base_and_ext
    base, ext = _state(base_dir), _state(ext_dir)
    manifest = read_extended_manifest(ext_dir)
    new_ids = manifest["new_token_ids"]
    emb_keys = _embedding_keys(ext_dir) & set(ext)
    assert set(base) == set(ext)
    assert len(emb_keys) == (1 if manifest["tied"] else 2)
    for key in base:
        if key in emb_keys:
            old_rows = base[key].shape[0]
            assert torch.equal(ext[key][:old_rows], base[key]), key
            assert ext[key].shape[0] == old_rows + len(new_ids)
            copied = {int(k): v for k, v in manifest["init"]["copied"].items()}
            # <|eot|> starts as the base's own end-of-turn (here: EOS) row, so replies stop early
            assert copied == {manifest["added_tokens"][EOT]: ext_eos_or_end(ext_dir)}
            for dst, src in copied.items():
                assert torch.equal(ext[key][dst], base[key][src])
            rest = [i for i in new_ids if i not in copied]
            new = ext[key][rest]
            mean = base[key].mean(dim=0)
            # the others: initialised near the mean of the existing rows, and distinct from each other
            assert (new - mean).abs().max() < 5 * base[key].std()
            assert len({tuple(r.tolist()) for r in ext[key][new_ids]}) == len(new_ids)
        else:
            assert torch.equal(ext[key], base[key]), key


def test_spare_rows_are_reused_not_shrunk(tiny_gpt2_dir, tmp_path):
    """polyglot-ko layout: more embedding rows than tokens; new ids land in spare rows."""
    base_dir = tmp_path / "spare"
    shutil.copytree(tiny_gpt2_dir, base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    n_tok = len(AutoTokenizer.from_pretrained(base_dir))
    model.resize_token_embeddings(n_tok + 16, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[n_tok:] = 1000.0  # never-trained garbage rows
    model.save_pretrained(base_dir)
    out = tmp_path / "ext"
    manifest = build_extended(resolve_base(str(base_dir), tmp_path / "cache"), out)
    w = load_file(out / "model.safetensors")["transformer.wte.weight"]
    assert manifest["embedding_rows"] == w.shape[0] == n_tok + 16  # not shrunk to len(tokenizer)
    new_ids = manifest["new_token_ids"]
    assert new_ids == list(range(n_tok, n_tok + 5))
    assert w[new_ids].abs().max() < 10  # explicitly initialised, not the garbage
    assert torch.all(w[n_tok + 5:] == 1000.0)  # untouched spare rows stay as they were
    assert verify_extended(out) == []


def test_pad_added_only_when_base_pads_with_eos(tiny_gpt2_dir, tmp_path):
    base_dir = tmp_path / "pad-is-eos"
    shutil.copytree(tiny_gpt2_dir, base_dir)
    base_tok = AutoTokenizer.from_pretrained(base_dir)
    base_tok.pad_token = base_tok.eos_token  # the usual GPT-2 fine-tuning shortcut, and the trap
    base_tok.save_pretrained(base_dir)
    out = tmp_path / "ext"
    manifest = build_extended(resolve_base(str(base_dir), tmp_path / "cache"), out)
    assert list(manifest["added_tokens"]) == list(SPECIAL_TOKENS) + [PAD]
    assert manifest["pad_token"] == PAD and manifest["pad_token_id"] == len(base_tok) + 5
    assert manifest["new_token_ids"] == list(range(len(base_tok), len(base_tok) + 6))
    model, tok, _ = load_extended(out)
    assert tok.pad_token_id == manifest["pad_token_id"] == model.generation_config.pad_token_id
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    assert verify_extended(out) == []


def test_seed_fixes_the_new_rows(tiny_gemma_untied_dir, tmp_path):
    ref = resolve_base(str(tiny_gemma_untied_dir), tmp_path / "cache")
    a = build_extended(ref, tmp_path / "a", seed=3)
    b = build_extended(ref, tmp_path / "b", seed=3)
    c = build_extended(ref, tmp_path / "c", seed=4)
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    assert a["files"] == b["files"]


def test_manifest_contract(base_and_ext):
    _, ext_dir = base_and_ext
    m = json.loads((ext_dir / "manifest.json").read_text(encoding="utf-8"))
    for key in ("base", "fingerprint", "added_tokens", "new_token_ids", "embedding_rows", "tied", "seed",
                "versions", "files"):
        assert key in m
    assert set(m["base"]) >= {"spec", "kind", "sha256"} and m["base"]["kind"] == "dir"
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= set(m["files"])
    assert m["versions"]["transformers"].startswith("5.")


def test_ensure_extended_is_cached(tiny_gpt2_dir, ext_cache):
    first = ensure_extended(str(tiny_gpt2_dir), cache_dir=ext_cache)
    mtime = (first / "manifest.json").stat().st_mtime_ns
    assert ensure_extended(str(tiny_gpt2_dir), cache_dir=ext_cache) == first
    assert (first / "manifest.json").stat().st_mtime_ns == mtime
    assert ensure_extended(str(tiny_gpt2_dir), cache_dir=ext_cache, seed=1) != first
    assert not [p for p in (ext_cache / "extended").iterdir() if p.name.startswith(".")]  # no temp left


def test_save_vocabulary_loses_added_tokens_save_pretrained_keeps_them(tiny_gpt2_dir, ext_cache, tmp_path):
    """The trap itself: a vocabulary-only save forgets the added chat tokens."""
    tok = load_extended(ensure_extended(str(tiny_gpt2_dir), cache_dir=ext_cache))[1]
    eot = tok.convert_tokens_to_ids(EOT)
    with pytest.raises(AttributeError):  # transformers 5 fast tokenizers cannot even save_vocabulary
        tok.save_vocabulary(str(tmp_path))
    vocab_only = tmp_path / "vocab-only"
    vocab_only.mkdir()
    tok.backend_tokenizer.model.save(str(vocab_only))  # the low-level save_model: vocab.json + merges.txt
    from tokenizers import ByteLevelBPETokenizer

    lost = PreTrainedTokenizerFast(tokenizer_object=ByteLevelBPETokenizer(
        str(vocab_only / "vocab.json"), str(vocab_only / "merges.txt"))._tokenizer)
    assert len(lost) == len(tok) - len(SPECIAL_TOKENS)
    assert len(lost(f"안녕{EOT}", add_special_tokens=False)["input_ids"]) > 2
    tok.save_pretrained(tmp_path / "full")
    kept = AutoTokenizer.from_pretrained(tmp_path / "full")
    assert len(kept) == len(tok)
    assert kept(f"안녕{EOT}", add_special_tokens=False)["input_ids"][-1:] == [eot]


def _copy(ext_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(ext_dir, dst)
    return dst


def test_verify_catches_changed_weights(tiny_gemma_untied_dir, ext_cache, tmp_path):
    d = _copy(ensure_extended(str(tiny_gemma_untied_dir), cache_dir=ext_cache), tmp_path)
    state = load_file(d / "model.safetensors")
    state["lm_head.weight"][-1] += 1.0  # an output row of a new token
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    problems = verify_extended(d)
    assert any("model.safetensors: sha256" in p for p in problems)


def test_verify_catches_tokenizer_drift_and_cli_exits_1(tiny_gpt2_dir, ext_cache, tmp_path, capsys):
    d = _copy(ensure_extended(str(tiny_gpt2_dir), cache_dir=ext_cache), tmp_path)
    m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    m["added_tokens"][EOT] += 1
    m["len_tokenizer"] += 1
    (d / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    assert run_cli(extend.main, ["--verify", str(d)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {EOT} has id" in out and "FAIL len(tokenizer)" in out


def test_verify_ok_and_cli_out(tiny_gemma_dir, tmp_path, capsys):
    out = tmp_path / "ext"
    assert run_cli(extend.main, ["--base-model", str(tiny_gemma_dir), "--out", str(out),
                                 "--cache-dir", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert run_cli(extend.main, ["--verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {out}")
    # a non-empty --out is refused (exit 2, one line)
    assert run_cli(extend.main, ["--base-model", str(tiny_gemma_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out") and "\n" not in err


def test_cli_without_out_prints_the_cached_dir(tiny_gpt2_dir, ext_cache, capsys):
    assert run_cli(extend.main, ["--base-model", str(tiny_gpt2_dir), "--cache-dir", str(ext_cache)]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == ensure_extended(str(tiny_gpt2_dir), cache_dir=ext_cache)
    assert printed.parent == ext_cache / "extended"


def test_verify_dir_without_manifest_fails(tmp_path, capsys):
    assert run_cli(extend.main, ["--verify", str(tmp_path)]) == 1
    assert "not an extended base" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["missing-dir", "not-a-model", "not-gguf.txt", "junk.gguf", "fake-magic.gguf"])
def test_bad_base_model_is_one_line_exit_2(bad, tmp_path, capsys):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-gguf.txt").write_text("hello")
    (tmp_path / "junk.gguf").write_bytes(b"\x00" * 64)
    (tmp_path / "fake-magic.gguf").write_bytes(b"GGUF" + b"\x03\x00" * 40)
    rc = run_cli(extend.main, ["--base-model", str(tmp_path / bad), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith(f"error: --base-model {tmp_path / bad}") and "\n" not in err
    assert not (tmp_path / "c" / "base").exists() or not any((tmp_path / "c" / "base").iterdir())


def test_hub_id_offline_is_a_user_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "pipeline.extend", "--base-model", "skt/kogpt2-base-v2",
                        "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "skt/kogpt2-base-v2" in lines[0] and "--base-model /path/to/model" in lines[0]


def test_load_extended_dtype_and_bad_dir(tiny_gpt2_dir, ext_cache, tmp_path):
    from core.errors import UserError

    model, tok, manifest = load_extended(ensure_extended(str(tiny_gpt2_dir), cache_dir=ext_cache),
                                         dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and manifest["tied"] is True
    with pytest.raises(UserError, match="not an extended base"):
        load_extended(tmp_path)


@pytest.mark.slow
def test_real_default_model_extends_and_reloads():
    """Materialise (once, user cache) + extend the real Gemma 3 270M, then reload and verify it."""
    path = ensure_extended(None)
    model, tok, manifest = load_extended(path)
    assert manifest["base"] == {"spec": None, "kind": "default", "sha256": manifest["base"]["sha256"]}
    assert manifest["base_len_tokenizer"] == 262144 and len(tok) == 262149
    assert manifest["embedding_rows"] == 262149 and manifest["tied"] is True
    assert PAD not in manifest["added_tokens"]  # Gemma has its own <pad> (id 0), distinct from EOS
    assert tok(f"안녕{EOT}하세요 ㅋㅋ", add_special_tokens=False)["input_ids"].count(
        manifest["added_tokens"][EOT]) == 1
    assert verify_extended(path) == []


def ext_eos_or_end(ext_dir) -> int:
    from core.chat_format import native_end_id

    return native_end_id(load_tokenizer(ext_dir))
