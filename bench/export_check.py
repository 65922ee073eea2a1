"""Check exports of one adapter: merged vs adapter greedy replies, and GGUF (llama.cpp) vs merged.

    .venv/bin/python bench/export_check.py --adapter runs/민수/adapters/민수 [--quant f16 q8_0] [--tokens 24]

1. ``pipeline.export --format merged`` into a temporary folder; greedy replies (no repetition
   penalty) of the merged model loaded with plain ``transformers`` against the adapter on the
   extended base (PEFT), for each prompt: identical token ids or the first differing position.
2. ``--format gguf`` for each ``--quant``; where ``llama_cpp`` (llama-cpp-python, built from
   source) imports, llama.cpp's greedy tokens on the same prompt ids against the merged model's,
   and llama.cpp's tokenizer on the rendered prompt against the transformers ids.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["오늘 뭐 해?", "주말에 영화 보러 갈래? ㅋㅋ", "배고파 뭐 먹을까", "내일 몇 시에 만나?", "요즘 잘 지내?"]


def greedy(model, ids: list[int], n: int, stops: list[int]) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=n, repetition_penalty=1.0, eos_token_id=stops,
                             pad_token_id=stops[0])
    return out[0, len(ids):].tolist()


def llama_greedy(llm, ids: list[int], n: int, stops: list[int]) -> list[int]:
    out: list[int] = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(tok)
        if tok in stops or len(out) >= n:
            break
    return out


def compare(name: str, got: list[int], want: list[int]) -> bool:
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    if first is None and len(got) == len(want):
        print(f"  {name}: identical ({len(got)} tokens)")
        return True
    print(f"  {name}: differ at token {first if first is not None else min(len(got), len(want))} "
          f"(of {len(want)}): {got[:12]} vs {want[:12]}")
    return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", required=True, help="adapter directory (pipeline.train)")
    ap.add_argument("--quant", nargs="*", default=["f16", "q8_0"], help="GGUF types to check")
    ap.add_argument("--tokens", type=int, default=24, help="greedy tokens per prompt")
    ap.add_argument("--cache-dir", default=None, help="cache of extended base models")
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core import chat_format
    from pipeline import export
    from pipeline.extension import load_trained

    adapter, tmp = Path(args.adapter), Path(tempfile.mkdtemp(prefix="export-check-"))
    t0 = time.perf_counter()
    export.export_merged(adapter, tmp / "merged", args.cache_dir)
    print(f"merged export: {time.perf_counter() - t0:.1f} s")
    merged = AutoModelForCausalLM.from_pretrained(tmp / "merged").eval()
    tok = AutoTokenizer.from_pretrained(tmp / "merged")
    peft_model, _, _ = load_trained(adapter, cache_dir=args.cache_dir)
    stops = chat_format.stop_ids(tok)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"] for p in PROMPTS]
    print("merged (transformers, no PEFT) vs adapter (PEFT on the extended base), greedy:")
    reference = []
    ok = 0
    for p, ids in zip(PROMPTS, prompts):
        want = greedy(peft_model.eval(), ids, args.tokens, stops)
        got = greedy(merged, ids, args.tokens, stops)
        reference.append(got)
        ok += compare(p, got, want)
        print(f"    reply: {tok.decode(got, skip_special_tokens=True)!r}")
    print(f"merged == adapter: {ok}/{len(PROMPTS)}")

    try:
        import llama_cpp
    except ImportError as e:
        llama_cpp = None
        print(f"llama-cpp-python not importable ({e}): GGUF files written and read back only")
    for quant in args.quant:
        t0 = time.perf_counter()
        path = export.export_gguf(adapter, tmp / f"gguf-{quant}", quant, args.cache_dir)
        print(f"gguf {quant}: {path.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t0:.1f} s")
        if llama_cpp is None:
            continue
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False, logits_all=False)
        text = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                       tokenize=False)
        same_tok = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == prompts[0]
        print(f"  llama.cpp tokenizer == transformers on the rendered prompt: {same_tok}")
        ok = sum(compare(p, llama_greedy(llm, ids, args.tokens, stops), want)
                 for p, ids, want in zip(PROMPTS, prompts, reference))
        print(f"gguf {quant} (llama.cpp) == merged: {ok}/{len(PROMPTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
