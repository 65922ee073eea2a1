"""Tiny, random, hermetic base models for tests: built in-process in about a second.

- :func:`make_tiny_gpt2`: a KoGPT2-style model: GPT-2 architecture and a byte-level
  BPE tokenizer trained here on Korean text from ``../shared/data``, with KoGPT2's
  special-token layout (``<s>``, ``</s>``, ``<usr>``, ``<pad>``, ``<sys>``, ``<unk>``,
  ``<mask>``, ``<d>``, ``</d>``, ``<unused0..9>``; bos = eos = ``</s>``).
- :func:`make_tiny_gemma`: a Gemma-3-style model with a SentencePiece BPE tokenizer
  trained here (``sentencepiece`` package, byte fallback, identity normalisation so
  ㅋㅋ stays ㅋㅋ), Gemma's id layout (``<pad>``=0, ``<eos>``=1, ``<bos>``=2, ``<unk>``=3).
  ``tie=False`` gives an untied output layer; ``softcap`` sets ``final_logit_softcapping``.

Both are saved with ``save_pretrained`` (safetensors) into the given directory, so
every stage loads them exactly as it loads a real base model.
"""
from __future__ import annotations

import csv
import io
from functools import lru_cache
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMILESTYLE_TSV = SHARED_DATA / "smilestyle" / "smilestyle_dataset.tsv"
CHATBOT_CSV = SHARED_DATA / "chatbot_data" / "ChatbotData.csv"

KOGPT2_SPECIALS = ["<s>", "</s>", "<usr>", "<pad>", "<sys>", "<unk>", "<mask>", "<d>", "</d>"] + [
    f"<unused{i}>" for i in range(10)
]


@lru_cache(maxsize=1)
def korean_corpus(limit: int = 12000) -> tuple[str, ...]:
    """Korean sentences from SmileStyle (every style) and ChatbotData, for training tokenizers."""
    lines: list[str] = []
    with open(SMILESTYLE_TSV, encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="\t"):
            lines.extend(c.strip() for c in row if c.strip())
    with open(CHATBOT_CSV, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            lines.extend((row["Q"], row["A"]))
    return tuple(lines[:limit])


def make_tiny_gpt2(out_dir: str | Path, vocab_size: int = 3000, seed: int = 0) -> Path:
    """A 2-layer GPT-2 with a Korean byte-level BPE tokenizer in KoGPT2's special-token layout."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = Path(out_dir)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        korean_corpus(), vocab_size=vocab_size, min_frequency=2, special_tokens=KOGPT2_SPECIALS,
        show_progress=False,
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="</s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", mask_token="<mask>",
    )
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _train_sentencepiece(vocab_size: int) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(korean_corpus()), model_writer=buf, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, character_coverage=0.995, num_threads=2, minloglevel=2,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"],
    )
    return buf.getvalue()


def make_tiny_gemma(
    out_dir: str | Path, vocab_size: int = 3000, tie: bool = True, softcap: float | None = 30.0,
    seed: int = 0,
) -> Path:
    """A 2-layer Gemma-3 text model with a SentencePiece tokenizer trained here."""
    import sentencepiece as spm
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    out = Path(out_dir)
    sp = spm.SentencePieceProcessor(model_proto=_train_sentencepiece(vocab_size))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    tok = GemmaTokenizer(vocab=vocab, merges=generate_merges(vocab, scores))
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
        sliding_window=64, tie_word_embeddings=tie, final_logit_softcapping=softcap,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    model = Gemma3ForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
