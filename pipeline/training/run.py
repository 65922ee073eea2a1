"""One training run, end to end: data -> extended base -> method -> loop -> adapter directory.

:func:`train` is what ``python -m pipeline.train`` calls (and what ``pipeline.run``
can call in-process). It runs the same way in one process and under
``accelerate launch`` / ``torchrun``; only rank 0 prints and writes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import adapter_format
from core.chat_format import pad_id
from core.errors import UserError
from core.files import sha256_of
from core.models import load_extended, load_tokenizer, read_extended_manifest
from pipeline.extension import ensure_extended
from pipeline.training import checkpoint as ckpt_io
from pipeline.training import memory
from pipeline.training.config import PersonaData, TrainConfig, load_persona_data
from pipeline.training.data import (read_rehearsal, rehearsal_split, render_pairs, render_with_distractors,
                                    similar_contexts, without_context)
from pipeline.training.loop import LoopData, LoopResult, read_metrics
from pipeline.training.loop import run as run_loop
from pipeline.training.methods import MethodSettings, apply_method, count_parameters

log = logging.getLogger("pipeline.train")


@dataclass(frozen=True)
class TrainResult:
    out: Path
    manifest: dict[str, Any]  # empty on ranks other than 0
    model: Any = None  # the trained model (best weights), for callers that go on in-process


def make_accelerator():
    """bf16 autocast on CUDA, fp32 on CPU; DDP when launched with accelerate/torchrun."""
    import torch
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    local_world, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count() if cuda else 0
    if cuda and local_world > gpus:  # every rank says so, before CUDA's "invalid device ordinal" in one of them
        raise UserError(f"{local_world} processes on this machine but {gpus} GPU(s): launch at most {gpus} per "
                        f"machine (--nproc-per-node / --num_processes), or hide the GPUs (CUDA_VISIBLE_DEVICES=) "
                        f"to train on the CPU")
    return Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")


def set_threads(threads: int | None, local_world: int) -> int:
    """Use the CPUs this process may run on, split between the processes of this machine."""
    import torch

    n = threads or max(1, len(os.sched_getaffinity(0)) // max(1, local_world))
    torch.set_num_threads(n)
    return n


def load_base(cfg: TrainConfig, ext_path: Path, device):
    """(model, tokenizer, extended manifest); 4-bit only with --qlora (bitsandbytes imported only then)."""
    import torch

    if not cfg.qlora:
        dtype = torch.float32 if device.type != "cuda" else torch.bfloat16
        return load_extended(ext_path, device=str(device), dtype=dtype)
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(ext_path, quantization_config=quant, device_map={"": device})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return model, AutoTokenizer.from_pretrained(ext_path), read_extended_manifest(ext_path)


def build_loop_data(cfg: TrainConfig, pd: PersonaData, tok) -> tuple[LoopData, dict[str, int]]:
    """Render persona (and rehearsal) pairs, with the contrastive term's mined distractors where asked;
    count what was dropped."""
    val_pairs = list(pd.val)
    if len(val_pairs) > cfg.eval_limit:  # a fixed sample keeps evaluation cheap and comparable
        val_pairs = random.Random(cfg.seed).sample(val_pairs, cfg.eval_limit)
    mined = bool(cfg.contrast) and cfg.contrast_negatives == "similar"

    def render(pairs):
        others = similar_contexts(pairs) if mined else [None] * len(pairs)
        return render_with_distractors(pairs, others, tok, cfg.max_length)

    train, train_d, st = render(list(pd.train))
    val, val_d, vst = render(val_pairs)
    bare_pairs = without_context(pd.train, cfg.no_context)
    bare, bst = render_pairs(bare_pairs, tok, cfg.max_length)
    train, train_d = train + bare, train_d + [None] * len(bare)
    counts = {"train_examples": st.kept + bst.kept, "validation_examples": vst.kept,
              "dropped_too_long": st.dropped_too_long + bst.dropped_too_long + vst.dropped_too_long,
              **({"no_context_examples": len(bare_pairs)} if bare_pairs else {}),
              **({"contrast_distractors": sum(d is not None for d in train_d)} if mined else {})}
    reh_val: list = []
    if cfg.rehearsal:
        pairs = read_rehearsal(cfg.rehearsal, pd.user_speaker)
        reh_train_pairs, reh_val_pairs = rehearsal_split(pairs, len(train), cfg.rehearsal_ratio, cfg.seed,
                                                         max_val=max(1, min(64, cfg.eval_limit)))
        reh_train, rst = render_pairs(reh_train_pairs, tok, cfg.max_length)
        reh_val, rvst = render_pairs(reh_val_pairs, tok, cfg.max_length)
        train, train_d = train + reh_train, train_d + [None] * len(reh_train)
        counts.update(rehearsal_train_examples=rst.kept, rehearsal_validation_examples=rvst.kept,
                      rehearsal_dropped_too_long=rst.dropped_too_long + rvst.dropped_too_long)
    if not train:
        raise UserError(f"--max-length {cfg.max_length}: no training pair fits (every reply is too long)")
    return LoopData(train, val, reh_val, pad_id(tok), train_d if mined else None, val_d if mined else None), counts


def run_fingerprint(cfg: TrainConfig, ext_manifest: dict, data_hash: str, init_sha256: str | None = None) -> str:
    """What a checkpoint must match to be resumed: extended base, data, weight-shaping config, starting weights."""
    blob = json.dumps({"extended": ext_manifest.get("fingerprint"), "data": data_hash,
                       "config": cfg.fingerprint_fields(), **({"init": init_sha256} if init_sha256 else {})},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def prepare_model(cfg: TrainConfig, model, new_ids: list[int]):
    """Gradient checkpointing (input-grad trap handled), then the method's wrapper."""
    from transformers import set_seed

    set_seed(cfg.seed)  # identical adapter initialisation on every rank and every run
    model.config.use_cache = False
    if cfg.gradient_checkpointing and not cfg.qlora:
        enable = getattr(model, "activation_checkpointing_enable", None)  # the name in newer transformers 5
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    settings = MethodSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.target_modules), tuple(new_ids))
    return apply_method(model, settings)


def init_sha256(cfg: TrainConfig) -> str | None:
    """sha256 of the ``--init-adapter`` weights (None without one)."""
    if not cfg.init_adapter:
        return None
    return sha256_of(Path(cfg.init_adapter) / adapter_format.ADAPTER_WEIGHTS)


def init_from(cfg: TrainConfig, model, ext_manifest: dict) -> None:
    """Load ``cfg.init_adapter``'s weights into the freshly wrapped ``model``.

    The adapter must have the run's LoRA rank and alpha and come from the same extended base
    (its manifest's ``extended_fingerprint``), and every trainable weight must be in it."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(cfg.init_adapter)
    conf = json.loads((path / adapter_format.ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if (conf.get("r"), conf.get("lora_alpha")) != (cfg.lora_r, cfg.lora_alpha):
        raise UserError(f"--init-adapter {path}: LoRA r={conf.get('r')} alpha={conf.get('lora_alpha')}, this run "
                        f"r={cfg.lora_r} alpha={cfg.lora_alpha}")
    manifest_path = path / adapter_format.MANIFEST
    fp = json.loads(manifest_path.read_text(encoding="utf-8")).get("extended_fingerprint") \
        if manifest_path.is_file() else None
    if fp and fp != ext_manifest.get("fingerprint"):
        raise UserError(f"--init-adapter {path}: trained on extended base {str(fp)[:12]}, this run's is "
                        f"{str(ext_manifest.get('fingerprint'))[:12]}")
    result = set_peft_model_state_dict(model, load_file(path / adapter_format.ADAPTER_WEIGHTS))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(n for n in result.missing_keys if n in trainable)
    if result.unexpected_keys or missing:
        raise UserError(f"--init-adapter {path}: does not fit this model ({len(missing)} trainable weights missing, "
                        f"{len(result.unexpected_keys)} unexpected, e.g. "
                        f"{(missing + list(result.unexpected_keys))[0]})")


def _metrics(cfg: TrainConfig, result: LoopResult, records: list[dict], counts: dict) -> dict[str, Any]:
    st = result.state
    at_best = next((r for r in records if r.get("step") == st.best_step and "val_loss" in r), {})
    val = at_best.get("val_loss", st.best_objective) if st.best_objective is not None else None
    return {"steps": st.step, "best_step": st.best_step if val is not None else st.step,
            "val_loss": val, "val_ppl": math.exp(min(val, 50)) if val is not None else None,
            "rehearsal_val_loss": at_best.get("rehearsal_val_loss"),
            **({"val_contrast": at_best.get("val_contrast"), "val_contrast_acc": at_best.get("val_contrast_acc")}
               if cfg.contrast else {}),
            "train_loss": next((r["loss"] for r in reversed(records) if "loss" in r), None),
            "tokens": st.tokens, "steps_per_s": result.steps_per_s, "tokens_per_s": result.tokens_per_s,
            **counts}


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def finish(cfg: TrainConfig, pd: PersonaData, model, ext: tuple[Path, dict], result: LoopResult,
           records: list[dict], counts: dict, init: str | None = None) -> TrainResult:
    """Keep the best weights, write the adapter directory (with the extended base's tokenizer), check it,
    plot the losses."""
    from pipeline.training.plots import plot_loss

    ext_path, ext_manifest = ext
    if result.best is not None:
        ckpt_io.load_trainable_state(model, result.best)
    out = Path(cfg.out)
    manifest = {
        "persona": pd.persona, "method": cfg.method, "base_model": cfg.base_model,
        "extended_fingerprint": ext_manifest.get("fingerprint"), "dialogue": bool(ext_manifest.get("dialogue")),
        "data_hash": pd.data_hash, **({"init_adapter_sha256": init} if init else {}),
        "instruction": pd.instruction, "user_speaker": pd.user_speaker, "max_length": cfg.max_length,
        "config": asdict(cfg), "metrics": _metrics(cfg, result, records, counts), "versions": _versions(),
    }

    def check_and_plot(folder: Path) -> None:  # before the swap: a failed check keeps the old adapter
        problems = adapter_format.check_weights(folder, bool(ext_manifest.get("new_token_ids")), ext_path)
        if problems:
            raise RuntimeError("saved adapter failed its checks: " + "; ".join(problems))
        plot_loss(records, folder / "loss.png", title=f"{cfg.method} r={cfg.lora_r}")

    manifest = adapter_format.write_adapter(model, load_tokenizer(ext_path), out, manifest, pd.card, check_and_plot)
    return TrainResult(out, manifest, model)


def _resume_point(cfg: TrainConfig, fingerprint: str, is_main: bool) -> tuple[Path | None, dict | None]:
    out = Path(cfg.out)
    if cfg.resume:
        ckpt = ckpt_io.find_checkpoint(out, cfg.resume)
        return ckpt, ckpt_io.read_meta(ckpt, fingerprint)
    if is_main and ckpt_io.list_checkpoints(out):
        log.info("starting fresh: removing old checkpoints in %s (use --resume to continue them)", out)
        shutil.rmtree(out / ckpt_io.CHECKPOINTS)
    return None, None


def train(cfg: TrainConfig) -> TrainResult:
    """Train the persona adapter described by ``cfg`` (already validated)."""

    acc = make_accelerator()
    threads = set_threads(cfg.threads, acc.num_processes if acc.device.type == "cpu" else 1)
    if not acc.is_main_process:
        log.setLevel(logging.WARNING)
    pd = load_persona_data(cfg)
    with acc.main_process_first():  # build the extended base once, not once per rank
        ext_path = ensure_extended(cfg.base_model, cfg.cache_dir, dialogue=cfg.dialogue)
    model, tok, ext_manifest = load_base(cfg, ext_path, acc.device)
    data, counts = build_loop_data(cfg, pd, tok)
    # the examples are token ids now: a 262k-entry tokenizer holds ~300 MB that the loop
    # does not need (finish reloads it from the extended base to save it with the adapter)
    del tok
    memory.release_free_memory()
    log.info("persona %s: %d training examples (%d rehearsal, %d with no context), %d validation; dropped %d pairs "
             "whose reply alone does not fit --max-length %d", pd.persona, len(data.train),
             counts.get("rehearsal_train_examples", 0), counts.get("no_context_examples", 0), len(data.val),
             counts["dropped_too_long"], cfg.max_length)
    if "contrast_distractors" in counts:
        log.info("--contrast-negatives similar: %d of %d persona examples have a mined distractor prompt",
                 counts["contrast_distractors"], len(pd.train))
    init = init_sha256(cfg)
    fingerprint = run_fingerprint(cfg, ext_manifest, pd.data_hash, init)
    ckpt, meta = _resume_point(cfg, fingerprint, acc.is_main_process)
    model = prepare_model(cfg, model, list(ext_manifest.get("new_token_ids", [])))
    if cfg.init_adapter:
        init_from(cfg, model, ext_manifest)
        log.info("starting from the weights of %s (sha256 %s)", cfg.init_adapter, init[:12])
    trainable, total = count_parameters(model)
    log.info("%s: %.2fM trainable of %.1fM parameters; %d threads, %d process(es) on %s", cfg.method,
             trainable / 1e6, total / 1e6, threads, acc.num_processes, acc.device)
    try:
        result = run_loop(cfg, model, data, Path(cfg.out), fingerprint, acc, ckpt, meta)
    except KeyboardInterrupt:
        log.warning("interrupted: checkpoint written under %s; continue with the same command and --resume",
                    Path(cfg.out) / ckpt_io.CHECKPOINTS)
        raise
    ranks_agree(acc, model)
    records = read_metrics(Path(cfg.out) / "metrics.jsonl")
    done = None
    if acc.is_main_process:
        done = finish(cfg, pd, model, (ext_path, ext_manifest), result, records, counts, init)
        m = done.manifest["metrics"]
        log.info("saved %s (best step %d, val loss %s, %.2f steps/s, %.0f tokens/s)", done.out, m["best_step"],
                 f"{m['val_loss']:.4f}" if m["val_loss"] is not None else "n/a", m["steps_per_s"], m["tokens_per_s"])
    acc.wait_for_everyone()
    return done or TrainResult(Path(cfg.out), {}, model)


def ranks_agree(acc, model) -> None:
    """Under DDP every rank must end with the same weights; a cheap checksum proves it."""
    if acc.num_processes == 1:
        return
    import torch

    total = sum(p.detach().double().abs().sum() for p in model.parameters() if p.requires_grad)
    sums = acc.gather(torch.stack([total.to(acc.device)]))
    if not torch.allclose(sums, sums[0].expand_as(sums), rtol=1e-9, atol=0):
        raise RuntimeError(f"ranks disagree after training: {sums.tolist()}")
    log.info("all %d ranks agree (weight checksum %.6f)", acc.num_processes, float(sums[0]))


