"""Export a persona adapter as a standalone model: a merged Hugging Face folder, or GGUF for llama.cpp/Ollama.

    python -m pipeline.export --adapter runs/민수/adapters/민수 --format merged --out exports/minsu
    python -m pipeline.export --adapter runs/민수/adapters/민수 --format gguf --quant q8_0 --out exports/minsu-gguf

``merged``: the adapter's LoRA merged into the extended base, and its new-token rows
(``<|system|>``, ``<|eot|>``...; PEFT TrainableTokens) written into the embedding, which
Gemma ties to the output layer; saved with ``save_pretrained`` with the tokenizer, a chat
template whose default system turn is the persona's instruction and whose default user
name is the adapter's chat partner, and a generation config that stops at ``<|eot|>``.
Loads with ``AutoModelForCausalLM`` alone (no PEFT); greedy replies equal the adapter's.

``gguf``: the merged model converted to one GGUF file (Gemma 3 architecture; tensor names
from the ``gguf`` package's map, RMSNorm weights stored as 1 + w as llama.cpp expects),
with the tokenizer, chat template and ``<|eot|>`` as end-of-turn token in its metadata,
plus an Ollama ``Modelfile`` (TEMPLATE, PARAMETER stop, SYSTEM = the persona's instruction):

    ollama create minsu -f exports/minsu-gguf/Modelfile && ollama run minsu
    llama-cli -m exports/minsu-gguf/minsu.gguf -cnv --jinja
"""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from core.adapter_format import MANIFEST
from core.errors import UserError
from core import chat_format
from core.cli import parser, run_cli, setup_logging

log = logging.getLogger(__name__)

FORMATS = ("merged", "gguf")
QUANTS = ("f16", "q8_0", "f32")
GGUF_ARCHITECTURES = {"Gemma3ForCausalLM": "gemma3"}
EXPORT_MANIFEST = "export.json"
# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


# ---- merged ---------------------------------------------------------------------------------------
def persona_template(instruction: str, user_speaker: str) -> str:
    """``chat_format.CHAT_TEMPLATE`` with this persona's defaults: its instruction, its chat partner's name."""
    default_system = "<|system|>{{ %s }}<|eot|>" % json.dumps(instruction, ensure_ascii=False)
    template = chat_format.CHAT_TEMPLATE.replace("<|system|><|eot|>", default_system, 1)
    return template.replace("m.get('name') or ''", "m.get('name') or %s" % json.dumps(user_speaker, ensure_ascii=False))


def merge_adapter(adapter: Path, cache_dir: str | Path | None = None):
    """(plain transformers model, tokenizer, adapter manifest): LoRA and new-token rows merged in."""
    from pipeline.extension import load_trained

    model, tokenizer, manifest = load_trained(adapter, cache_dir=cache_dir)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # LoRA deltas and TrainableTokens rows written into the weights
    _check_no_peft(model)
    return model.eval(), tokenizer, manifest


def _check_no_peft(model) -> None:
    leftovers = sorted({type(m).__module__ for m in model.modules() if type(m).__module__.startswith("peft")})
    if leftovers:
        raise RuntimeError(f"PEFT modules left after merging: {leftovers}")


def export_merged(adapter: Path, out: Path, cache_dir: str | Path | None = None):
    """Write the merged model folder; returns (model, tokenizer, manifest) for further conversion."""
    from transformers import GenerationConfig

    from chatbot.engine import GenerationParams

    model, tok, manifest = merge_adapter(adapter, cache_dir)
    tok.chat_template = persona_template(manifest["instruction"], manifest["user_speaker"])
    stops = chat_format.stop_ids(tok)
    model.config.eos_token_id = stops
    d = GenerationParams()  # the chat's sampling defaults
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=stops, pad_token_id=chat_format.pad_id(tok), do_sample=True,
        temperature=d.temperature, top_p=d.top_p, top_k=d.top_k, repetition_penalty=d.repetition_penalty,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _write_manifest(out, adapter, manifest, "merged", None)
    return model, tok, manifest


def _write_manifest(out: Path, adapter: Path, manifest: dict, fmt: str, quant: str | None) -> None:
    info = {"format": fmt, "quant": quant, "adapter": str(adapter), "persona": manifest.get("persona"),
            "instruction": manifest.get("instruction"), "user_speaker": manifest.get("user_speaker"),
            "base_model": manifest.get("base_model"), "extended_fingerprint": manifest.get("extended_fingerprint"),
            "stop": [chat_format.EOT]}
    (out / EXPORT_MANIFEST).write_text(json.dumps(info, ensure_ascii=False, indent=1), encoding="utf-8")


# ---- GGUF -----------------------------------------------------------------------------------------
def _token_types(tok) -> list[int]:
    """llama.cpp token types: special added tokens are control, other added ones user-defined."""
    added = dict(tok.added_tokens_decoder)
    types = []
    for i, piece in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        if i in added:
            types.append(CONTROL if added[i].special else USER_DEFINED)
        elif i == tok.unk_token_id:
            types.append(UNKNOWN)
        elif _BYTE_PIECE.fullmatch(piece or ""):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    return types


def tokenizer_metadata(tok) -> dict[str, Any]:
    """SentencePiece-style ("llama") vocabulary for llama.cpp: pieces, scores, types.

    A SentencePiece BPE vocabulary lists pieces in merge order, so the score -id ranks merges
    as the original scores do (Gemma 3's own GGUF has score = -id + a constant for normal pieces);
    control and user-defined tokens get -1000 and byte pieces 0, as there.
    """
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    types = _token_types(tok)
    scores = [-1000.0 if t in (CONTROL, USER_DEFINED, UNKNOWN) else 0.0 if t == BYTE else float(-i)
              for i, t in enumerate(types)]
    return {"tokens": pieces, "scores": scores, "types": types}


def _gguf_arch(model) -> str:
    archs = list(getattr(model.config, "architectures", None) or [type(model).__name__])
    for a in archs:
        if a in GGUF_ARCHITECTURES:
            return GGUF_ARCHITECTURES[a]
    raise UserError(f"GGUF export supports {', '.join(GGUF_ARCHITECTURES)} (Gemma 3); this model is {archs[0]}: "
                    "use --format merged (and llama.cpp's convert_hf_to_gguf.py on it)")


def _rope_theta(cfg) -> float:
    rope = getattr(cfg, "rope_parameters", None)
    if isinstance(rope, dict):  # transformers 5: per attention type
        rope = rope.get("full_attention", rope)
        if isinstance(rope, dict) and rope.get("rope_theta"):
            return float(rope["rope_theta"])
    return float(getattr(cfg, "rope_theta", None) or 1_000_000.0)


def _write_hparams(w, cfg, ftype: int) -> None:
    import gguf

    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(cfg.num_attention_heads))
    w.add_head_count_kv(int(cfg.num_key_value_heads))
    w.add_key_length(int(cfg.head_dim))
    w.add_value_length(int(cfg.head_dim))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_sliding_window(int(cfg.sliding_window))
    if getattr(cfg, "final_logit_softcapping", None):
        w.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tokenizer(w, tok) -> None:
    meta = tokenizer_metadata(tok)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(meta["tokens"])
    w.add_token_scores(meta["scores"])
    w.add_token_types(meta["types"])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_eot_token_id(tok.convert_tokens_to_ids(chat_format.EOT))  # llama.cpp ends a reply at end-of-turn
    if tok.unk_token_id is not None:
        w.add_unk_token_id(tok.unk_token_id)
    w.add_pad_token_id(chat_format.pad_id(tok))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(tok.chat_template)


def _tensors(model, n_vocab: int):
    """(GGUF name, float32 numpy array) for each weight; a tied output layer is not stored."""
    import gguf

    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, int(cfg.num_hidden_layers))
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"GGUF export: no GGUF name for tensor {name}")
        data = t.detach().float()
        if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            data = data[:n_vocab]  # spare rows past the tokenizer (padding) are not tokens
        if name.endswith("norm.weight"):
            data = data + 1.0  # Gemma's RMSNorm scales by (1 + w); llama.cpp multiplies by the stored weight
        yield new, data.numpy()


FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # llama_ftype of each --quant


def _quantise(data, quant: str):
    """(array, GGML type) as stored: 1-D tensors stay float32, as llama.cpp's own converter keeps them."""
    import gguf
    import numpy as np

    if data.ndim == 1 or quant == "f32":
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = gguf.GGMLQuantizationType.Q8_0
    if quant == "f16" or data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(data, qtype), qtype


def write_gguf(model, tok, manifest: dict, path: Path, quant: str) -> None:
    """Convert a merged Gemma 3 model to one GGUF file with its tokenizer and chat template."""
    import gguf
    from tqdm import tqdm

    w = gguf.GGUFWriter(str(path), _gguf_arch(model))
    w.add_name(f"{manifest.get('persona', 'persona')} (kakao-persona)")
    _write_hparams(w, model.config, FILE_TYPES[quant])
    _write_tokenizer(w, tok)
    for name, data in tqdm(list(_tensors(model, len(tok))), desc="GGUF tensors", unit="tensor", leave=False):
        arr, qtype = _quantise(data, quant)
        w.add_tensor(name, arr, raw_dtype=qtype)  # quantised arrays are bytes; the writer derives the shape
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def modelfile(gguf_name: str, manifest: dict) -> str:
    """An Ollama Modelfile: the chat format's turns, stop at <|eot|>, the persona's instruction as SYSTEM."""
    from chatbot.engine import GenerationParams

    d = GenerationParams()
    user = manifest["user_speaker"].replace("{", "").replace("}", "")
    template = (
        "<|system|>{{ .System }}<|eot|>"
        "{{- range .Messages }}"
        '{{- if eq .Role "user" }}<|user|>' + user + "<|sep|>{{ .Content }}<|eot|>"
        '{{- else if eq .Role "assistant" }}<|bot|>{{ .Content }}<|eot|>{{- end }}'
        "{{- end }}<|bot|>"
    )
    instruction = manifest["instruction"].replace('"""', "'''")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""', f'SYSTEM """{instruction}"""']
    lines += [f'PARAMETER stop "{s}"' for s in (chat_format.EOT, chat_format.USER)]
    lines += [f"PARAMETER temperature {d.temperature}", f"PARAMETER top_p {d.top_p}", f"PARAMETER top_k {d.top_k}",
              f"PARAMETER repeat_penalty {d.repetition_penalty}"]
    return "\n".join(lines) + "\n"


def export_gguf(adapter: Path, out: Path, quant: str, cache_dir: str | Path | None = None) -> Path:
    """The GGUF file and an Ollama Modelfile in ``out``; returns the GGUF path."""
    model, tok, manifest = merge_adapter(adapter, cache_dir)
    _gguf_arch(model)  # refuse before writing anything
    tok.chat_template = persona_template(manifest["instruction"], manifest["user_speaker"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{adapter.name}-{quant}.gguf"
    write_gguf(model, tok, manifest, path, quant)
    (out / "Modelfile").write_text(modelfile(path.name, manifest), encoding="utf-8")
    _write_manifest(out, adapter, manifest, "gguf", quant)
    return path


# ---- command line ---------------------------------------------------------------------------------
def _args(argv: Sequence[str] | None):
    p = parser("python -m pipeline.export", __doc__)
    p.add_argument("--adapter", required=True, help="adapter directory written by python -m pipeline.train")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="merged = Hugging Face model folder; gguf = one GGUF file + Ollama Modelfile")
    p.add_argument("--quant", default="q8_0", choices=QUANTS,
                   help="GGUF weight type (default q8_0; f16 = closest to the merged model)")
    p.add_argument("--out", required=True, help="output directory (created; files of the same name are replaced)")
    p.add_argument("--cache-dir", default=None, help="cache of extended base models (default $KAKAO_PERSONA_CACHE)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    setup_logging()
    adapter, out = Path(args.adapter), Path(args.out)
    if not (adapter / MANIFEST).is_file():
        raise UserError(f"--adapter {adapter}: no {MANIFEST} (not an adapter written by pipeline.train)")
    if out.resolve() == adapter.resolve():
        raise UserError("--out must differ from --adapter")
    if args.format == "merged":
        export_merged(adapter, out, args.cache_dir)
        print(f"merged model written to {out} (transformers AutoModelForCausalLM loads it; no PEFT needed)")
    else:
        path = export_gguf(adapter, out, args.quant, args.cache_dir)
        print(f"GGUF written to {path}; Ollama: ollama create NAME -f {out / 'Modelfile'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
