"""Benchmark: this trainer against TRL's SFTTrainer on the same persona pairs and hyperparameters.

    .venv/bin/python bench/train_bench.py --steps 20            # the default model (Gemma 3 270M)
    .venv/bin/python bench/train_bench.py --tiny                # a tiny Gemma, for a quick check

Both train LoRA (same rank, alpha, dropout, target modules) on SmileStyle pairs (persona 민수 in one style answering
지영), the same examples (rendered by the shared chat format; TRL gets them as a
conversational prompt-completion dataset with ``completion_only_loss=True`` and
the same chat template), batch size, learning rate, warmup + cosine schedule,
clipping and fp32 on the CPU. TRL keeps its own defaults otherwise; it runs twice:
``trl`` with its default gradient checkpointing (what a user gets, the baseline
of the targets) and ``trl-nogc`` without it (faster, more memory); ours runs with
its defaults (``ours``: gradient checkpointing on) and without it (``ours-nogc``). Ours also trains
the new chat-token rows (trainable_token_indices); TRL 1.16 cannot (its fused LM
head fails on PEFT's trainable-token wrapper), so the baseline does less work.

Each trainer runs in its own fresh process, one after the other, so its peak RSS
(``ru_maxrss``: loading, training, saving; the final evaluation comes after) is
its own. Printed: tokens/s of training (the mean example length x examples per
second, so padding counts as overhead), peak RSS, the final validation loss of
each model measured by the same function, the 1-minute load average before and
after each run (other jobs on the machine slow the tokens/s), and the ratios.
Not a test: figures depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# ours: our defaults (gradient checkpointing on); ours-nogc: off;
# trl: TRL's defaults (gradient checkpointing on); trl-nogc: off
TRAINERS = ("ours", "ours-nogc", "trl", "trl-nogc")


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny Gemma built in-process instead of the default model")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps for each trainer (default 20)")
    ap.add_argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    ap.add_argument("--max-length", type=int, default=256, help="tokens per example (default 256)")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    ap.add_argument("--train-pairs", type=int, default=600, help="training pairs (default 600)")
    ap.add_argument("--val-pairs", type=int, default=64, help="validation pairs (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for each trainer (default 2)")
    ap.add_argument("--only", choices=TRAINERS, action="append",
                    help="run only this trainer (repeatable; default: all of " + ", ".join(TRAINERS) + ")")
    ap.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _setup(a, work: Path) -> tuple[str | None, Path, Path]:
    """Write the persona data; returns (base spec, data dir, extended-base cache)."""
    from tests.test_train_helpers import write_persona_data
    from tests.tiny_models import make_tiny_gemma

    data = write_persona_data(work / "data", n_train=a.train_pairs, n_val=a.val_pairs)
    base = str(make_tiny_gemma(work / "tiny-gemma")) if a.tiny else None
    cache = work / "cache" if a.tiny else None
    return base, data, cache


def _examples(tok, pairs, max_length):
    from pipeline.training.data import render_pairs

    return render_pairs(pairs, tok, max_length)[0]


def eval_loss(model, tok, examples, batch_size: int = 8) -> float:
    """Mean loss per supervised token: the same judge for both models.

    SupervisedLoss equals the model's own loss (tests hold them equal) without
    materialising full-vocabulary logits, so evaluation does not set the peak memory.
    """
    import torch

    from core import chat_format
    from pipeline.training.data import collate
    from pipeline.training.loss import SupervisedLoss

    judge = SupervisedLoss(model).eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            s, k = judge(**collate(examples[i:i + batch_size], chat_format.pad_id(tok)))
            total, n = total + float(s), n + int(k)
    return total / n


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _val_and_len(a, tok, data: Path):
    from data_prep.records import read_pairs

    val = _examples(tok, read_pairs(data / "validation.jsonl"), a.max_length)
    train = _examples(tok, read_pairs(data / "train.jsonl"), a.max_length)
    return val, sum(len(e.input_ids) for e in train) / len(train)


def worker_ours(a, base, data, cache, work: Path, checkpointing: bool = True) -> dict:
    from pipeline.training.config import TrainConfig
    from pipeline.training.run import train

    cfg = TrainConfig(str(data), str(work / "ours"), persona="민수", base_model=base,
                      cache_dir=str(cache) if cache else None, max_steps=a.steps, epochs=0,
                      batch_size=a.batch_size, max_length=a.max_length, lr=a.lr, eval_every=0, save_every=0,
                      patience=0, threads=a.threads, lora_dropout=0.0, gradient_checkpointing=checkpointing)
    result = train(cfg)
    peak = _peak_rss_mb()  # training (and loading) only, before the evaluation below
    m = result.manifest["metrics"]
    val, mean_len = _val_and_len(a, _tok(base, cache), data)
    elapsed = m["steps"] / m["steps_per_s"]
    return {"train_s": elapsed, "tokens_per_s": a.steps * a.batch_size * mean_len / elapsed,
            "peak_rss_mb": peak, "val_loss": eval_loss(result.model, _tok(base, cache), val)}


def _tok(base, cache):
    from transformers import AutoTokenizer

    from pipeline.extension import ensure_extended

    return AutoTokenizer.from_pretrained(ensure_extended(base, cache))


def _trl_dataset(pairs, tok, max_length):
    """Conversational prompt-completion rows holding exactly the context render() keeps."""
    from datasets import Dataset

    from core import chat_format

    rows = []
    for p in pairs:
        r = chat_format.render(tok, p.instruction, p.context, p.persona, p.response, max_length)
        if r is None:
            continue
        kept = p.context[len(p.context) - r.context_turns:] if r.context_turns else ()
        msgs = chat_format.to_messages(p.instruction, kept, p.persona, tokenizer=tok)
        for m in msgs:
            m.setdefault("name", None)
        rows.append({"prompt": msgs, "completion": [{"role": "assistant", "content": p.response, "name": None}]})
    return Dataset.from_list(rows)


def worker_trl(a, base, data, cache, work: Path, checkpointing: bool = True) -> dict:
    import torch
    from trl import SFTConfig, SFTTrainer

    from core.models import load_extended
    from data_prep.records import read_pairs
    from pipeline.extension import ensure_extended
    from pipeline.training.methods import MethodSettings, peft_config

    torch.set_num_threads(a.threads)
    model, tok, manifest = load_extended(ensure_extended(base, cache))
    # TRL 1.16 patches the LM head with its fused loss, which reads lm_head.bias and fails on PEFT's
    # trainable-token wrapper (AttributeError: 'TrainableTokensWrapper' object has no attribute 'bias');
    # so the baseline trains LoRA only and leaves the new rows as initialised (less work for it)
    lora = peft_config(model.config.model_type, MethodSettings(lora_dropout=0.0))
    args = SFTConfig(
        output_dir=str(work / "trl"), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
        learning_rate=a.lr, lr_scheduler_type="cosine", warmup_steps=10, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=5, save_strategy="no", report_to="none", bf16=False, use_cpu=True, seed=0,
        completion_only_loss=True, max_length=a.max_length, dataloader_num_workers=0,
        gradient_checkpointing=checkpointing,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=_trl_dataset(read_pairs(data / "train.jsonl"), tok,
                         a.max_length), processing_class=tok, peft_config=lora)
    t0 = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - t0
    peak = _peak_rss_mb()
    val, mean_len = _val_and_len(a, tok, data)
    return {"train_s": elapsed, "tokens_per_s": a.steps * a.batch_size * mean_len / elapsed,
            "peak_rss_mb": peak, "val_loss": eval_loss(trainer.model, tok, val)}


def _run_worker(a, name: str, work: Path) -> dict:
    argv = [sys.executable, __file__, "--worker", name, "--work", str(work), "--steps", str(a.steps),
            "--batch-size", str(a.batch_size), "--max-length", str(a.max_length), "--lr", str(a.lr),
            "--train-pairs", str(a.train_pairs), "--val-pairs", str(a.val_pairs), "--threads", str(a.threads)]
    argv += ["--tiny"] if a.tiny else []
    load_before = os.getloadavg()[0]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "load": (load_before, os.getloadavg()[0])}


WORKERS = {"ours": worker_ours, "ours-nogc": lambda *args: worker_ours(*args, checkpointing=False), "trl": worker_trl,
           "trl-nogc": lambda *args: worker_trl(*args, checkpointing=False)}


def _ratios(o: dict, t: dict, ours: str, name: str) -> str:
    return (f"{ours}/{name}: tokens/s {o['tokens_per_s'] / t['tokens_per_s']:.2f}x (target >= 2), "
            f"peak RSS {o['peak_rss_mb'] / t['peak_rss_mb']:.2f}x (target <= 0.6), "
            f"val loss {o['val_loss'] / t['val_loss'] - 1:+.2%} (target within 2%)")


def main(argv=None) -> int:
    a = _args(argv)
    if a.worker:
        work = Path(a.work)
        base, data, cache = _setup(a, work)
        result = WORKERS[a.worker](a, base, data, cache, work)
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        names = [n for n in TRAINERS if not a.only or n in a.only]
        results = {}
        for n in names:  # one at a time: each has the machine (and its memory figure) to itself
            results[n] = _run_worker(a, n, Path(tmp) / n)
            print(f"{n}: {json.dumps(results[n])}", flush=True)
    model = "tiny Gemma" if a.tiny else "Gemma 3 270M (extended)"
    print(f"model: {model}; {a.steps} steps x {a.batch_size} examples, max_length {a.max_length}, "
          f"{a.threads} threads")
    print(f"{'trainer':9} {'tokens/s':>10} {'peak RSS MB':>12} {'val loss':>9} {'train s':>8} {'load 1m':>11}")
    for n, r in results.items():
        load = f"{r['load'][0]:.1f}->{r['load'][1]:.1f}"
        print(f"{n:9} {r['tokens_per_s']:10.1f} {r['peak_rss_mb']:12.0f} {r['val_loss']:9.4f} {r['train_s']:8.1f} "
              f"{load:>11}")
    for ours in ("ours", "ours-nogc"):
        for name in ("trl", "trl-nogc"):
            if ours in results and name in results:
                print(_ratios(results[ours], results[name], ours, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
