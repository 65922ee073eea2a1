"""Exports on tiny personas: the merged folder answers like the adapter; the GGUF holds the merged weights."""
from __future__ import annotations

from pathlib import Path

import pytest

from chatbot.engine import GenerationParams
from core import chat_format
from pipeline import export
from tests.chat_helpers import chat_dirs, engine  # noqa: F401 (fixtures)

MESSAGES = ["안녕, 오늘 뭐 해?", "주말에 영화 볼래? 나 시간 돼 ㅋㅋ", "배고프다"]
GREEDY = GenerationParams(temperature=0, max_new_tokens=16)


def _cache(chat_dirs) -> Path:
    return Path(chat_dirs[0]).parents[1]


@pytest.fixture(scope="module")
def merged(chat_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged")
    export.main(["--adapter", str(chat_dirs[1] / "minji"), "--format", "merged", "--out", str(out),
                 "--cache-dir", str(_cache(chat_dirs))])
    return out


def test_merged_folder_needs_no_peft(merged):
    names = {p.name for p in merged.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}


def test_merged_greedy_replies_equal_the_adapter(merged, engine):
    """Plain greedy generation on both sides (no reply shaping): the merged weights compute what the
    adapter does, token for token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    tok = AutoTokenizer.from_pretrained(merged)
    assert model.generation_config.eos_token_id == chat_format.stop_ids(tok)
    greedy = dict(do_sample=False, max_new_tokens=GREEDY.max_new_tokens, repetition_penalty=1.0,
                  eos_token_id=chat_format.stop_ids(tok), pad_token_id=chat_format.pad_id(tok))
    replies = set()
    for text in MESSAGES:
        history = [{"role": "user", "content": text}]
        # the template's defaults are the persona's instruction and its chat partner's name
        ids = tok.apply_chat_template(history, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert ids == engine.prompt_ids(history, "minji", GREEDY.max_new_tokens)
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), **greedy)[0, len(ids):].tolist()
            engine.swap("minji")
            with engine.exclusive():
                want = engine.model.generate(input_ids=torch.tensor([ids]), **greedy)[0, len(ids):].tolist()
        assert out == want
        replies.add(tuple(out))
    assert len(replies) > 1  # the prompts matter: not one fixed reply


@pytest.fixture(scope="module")
def gguf_f32(chat_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return export.export_gguf(chat_dirs[1] / "minji", out, "f32", _cache(chat_dirs)), out


def test_gguf_holds_the_merged_weights_and_chat_metadata(gguf_f32, merged):
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    path, out = gguf_f32
    reader = gguf.GGUFReader(str(path))
    field = lambda k: reader.fields[k].contents()  # noqa: E731
    tok = AutoTokenizer.from_pretrained(merged)
    weights = load_file(str(merged / "model.safetensors"))
    tensors = {t.name: t for t in reader.tensors}

    assert field("general.architecture") == "gemma3"
    assert field("tokenizer.ggml.tokens") == tok.convert_ids_to_tokens(list(range(len(tok))))
    eot = tok.convert_tokens_to_ids(chat_format.EOT)
    assert field("tokenizer.ggml.eot_token_id") == eot
    assert field("tokenizer.ggml.token_type")[eot] == export.CONTROL
    assert field("tokenizer.chat_template") == tok.chat_template
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    embd = tensors["token_embd.weight"].data
    assert embd.shape == (len(tok), weights["model.embed_tokens.weight"].shape[1])
    new_ids = [tok.convert_tokens_to_ids(t) for t in chat_format.SPECIAL_TOKENS]
    # the persona's trained new-token rows survived merge and conversion
    assert (embd[new_ids] == weights["model.embed_tokens.weight"][new_ids].numpy()).all()
    norm = tensors["blk.0.attn_norm.weight"].data
    assert (norm == weights["model.layers.0.input_layernorm.weight"].numpy() + 1).all()


def test_q8_gguf_is_close_to_f32(chat_dirs, gguf_f32, tmp_path):
    import gguf
    import numpy as np

    q8 = export.export_gguf(chat_dirs[1] / "minji", tmp_path, "q8_0", _cache(chat_dirs))
    exact = {t.name: t.data for t in gguf.GGUFReader(str(gguf_f32[0])).tensors}
    for t in gguf.GGUFReader(str(q8)).tensors:
        ref = exact[t.name]
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ref.shape)
            assert np.abs(got - ref).max() <= np.abs(ref).max() / 100  # 8-bit blocks: under 1% of the range
        else:
            assert (t.data == ref).all()


def test_modelfile_speaks_the_chat_format(gguf_f32, engine):
    text = (gguf_f32[1] / "Modelfile").read_text(encoding="utf-8")
    info = engine.persona("minji")
    assert f"FROM ./{gguf_f32[0].name}\n" in text
    assert f'SYSTEM """{info.instruction}"""' in text
    assert 'PARAMETER stop "<|eot|>"' in text
    assert f"<|user|>{info.user_speaker}<|sep|>{{{{ .Content }}}}<|eot|>" in text


def test_gguf_refuses_other_architectures(tiny_gpt2_dir, tmp_path):
    from tests.chat_helpers import extend_tiny, make_adapter

    ext = extend_tiny(Path(tiny_gpt2_dir), tmp_path / "cache")
    adapter = make_adapter(ext, tmp_path / "adapters" / "g", "민지", "철수", 1, base_spec=str(tiny_gpt2_dir))
    from core.cli import run_cli

    argv = ["--adapter", str(adapter), "--format", "gguf", "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache")]
    assert run_cli(export.main, argv) == 2
    assert not (tmp_path / "out").exists()
