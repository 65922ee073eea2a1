"""The training loop: AdamW, warmup + cosine/linear decay, accumulation, clipping, eval, checkpoints.

One loop for one process and for DDP (``accelerate launch -m pipeline.train``):
every rank plans the same length-bucketed batches from ``(seed, epoch)`` and
takes its own slice of each optimizer step; the loss of a step is the sum over
supervised tokens divided by the step's supervised tokens *across all ranks*
(known from the labels before the forward), so each token weighs the same
whatever the padding, the accumulation or the number of processes. The RNG is
re-seeded from ``(seed, step, rank)`` at every step, so a resumed run draws the
same dropout masks as an uninterrupted one. Only rank 0 writes files.

Ctrl-C sets a flag; the loop finishes the current step, writes a checkpoint and
raises :class:`KeyboardInterrupt` (the CLI exits 130 with a resume hint).
"""
from __future__ import annotations

import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from core.chat_format import Rendered
from core.errors import UserError
from core.files import atomic_write
from pipeline.training import checkpoint as ckpt_io
from pipeline.training import memory
from pipeline.training.checkpoint import LoopState
from pipeline.training.config import TrainConfig
from pipeline.training.data import collate, plan_batches, swap_contexts


@dataclass(frozen=True)
class LoopData:
    """Rendered examples for the loop; ``rehearsal_val`` may be empty. ``train_distractors`` /
    ``val_distractors``, when given, hold each example's reply after a mined other prompt
    (``--contrast-negatives similar``; None where there is none), in the examples' order; without them
    the contrastive term rotates prompts within each batch (:func:`swap_contexts`)."""

    train: list[Rendered]
    val: list[Rendered]
    rehearsal_val: list[Rendered]
    pad: int
    train_distractors: list[Rendered | None] | None = None
    val_distractors: list[Rendered | None] | None = None


@dataclass(frozen=True)
class LoopResult:
    state: LoopState
    best: dict | None  # trainable weights at the best validation loss (None if never evaluated)
    total_steps: int
    steps_per_s: float
    tokens_per_s: float


def read_metrics(path: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` ([] when there is none). A last line that is not a whole
    record (the process was killed while appending it) is dropped; a bad line before it is an error."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").split("\n") if line.strip()]
    records = []
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            if i == len(lines):
                logging.getLogger("pipeline.train").info("%s: dropping a torn last line (an interrupted write)", path)
                break
            raise UserError(f"{path}: line {i} is not a metrics record; remove the file to start its log afresh")
        records.append(record)
    return records


class MetricsLog:
    """``metrics.jsonl``: one JSON record per log line or evaluation (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        self.records: list[dict] = []
        if enabled and resume_step is not None:
            # a crash may have logged past the checkpoint: drop what the resumed run will redo
            self.records = [r for r in read_metrics(path) if r["step"] <= resume_step]
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict) -> None:
        if self.enabled:
            self.records.append(record)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


class StopFlag:
    """Installs a SIGINT handler that asks the loop to stop at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread (e.g. called from a UI): no handler
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def lr_lambda(warmup: int, total: int, kind: str):
    """Linear warmup, then cosine or linear decay to 10% of the peak."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
        return 0.1 + 0.9 * decay

    return f


def steps_per_epoch(n_batches: int, world: int, grad_accum: int) -> int:
    """Optimizer steps an epoch gives; an epoch's last partial step is skipped (reshuffled next epoch)."""
    return n_batches // (world * grad_accum)


def _seed_step(seed: int, step: int, rank: int) -> None:
    import torch

    torch.manual_seed(seed * 1_000_003 + step * 101 + rank)


def _reduce_sum(acc, *values: float):
    """Sum each value over all processes (one collective); a single value comes back as a float."""
    import torch

    if acc.num_processes > 1:
        t = acc.reduce(torch.tensor(values, dtype=torch.float64, device=acc.device), reduction="sum")
        values = tuple(float(v) for v in t.tolist())
    return values[0] if len(values) == 1 else values


@dataclass
class _Ctx:
    """What every step needs; built once by :func:`run`."""

    cfg: TrainConfig
    acc: object  # accelerate.Accelerator
    model: object  # SupervisedLoss, possibly DDP-wrapped
    params: list
    optimizer: object
    scheduler: object
    data: LoopData
    lengths: list[int]
    spe: int  # optimizer steps per epoch

    @property
    def inner(self):
        """The trained model itself (PEFT or full), without the loss and DDP wrappers."""
        return self.acc.unwrap_model(self.model).model


def _micro_batches(c: _Ctx, state: LoopState) -> list[list[int]]:
    """This rank's micro-batches (indices into the train examples) for the next step; advances the data
    position."""
    world, accum = c.acc.num_processes, c.cfg.grad_accum
    if state.batch_in_epoch // (world * accum) >= c.spe:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    plan = plan_batches(c.lengths, c.cfg.batch_size, c.cfg.seed, state.epoch)
    start = state.batch_in_epoch + c.acc.process_index * accum
    state.batch_in_epoch += world * accum
    return [plan[j] for j in range(start, start + accum)]


def _forward(c: _Ctx, examples: list[Rendered], negatives: list | None = None) -> tuple[object, object, int, int]:
    """(sum of the replies' token losses, sum of the contrastive term, its pairs, pairs it ranks right).

    With ``--contrast`` the batch also holds each reply after another example's prompt (``negatives``:
    the next example's, :func:`swap_contexts`, or a mined similar one), and the term is
    ``softplus(loss(reply | own prompt) - loss(reply | other prompt))`` per reply, the losses summed over the
    reply's tokens: a Bradley-Terry preference for the prompt the reply answers, so the model learns to *use* the message (the distractor objective of
    TransferTransfo, Wolf et al. 2019, on the LM's own likelihood; PMI ranking rewards exactly this).
    """
    import torch

    if negatives is None:
        negatives = _negatives(c, examples)
    pairs = [i for i, e in enumerate(negatives) if e is not None]
    rows = examples + [negatives[i] for i in pairs]
    batch = {k: v.to(c.acc.device) for k, v in collate(rows, c.data.pad).items()}
    with c.acc.autocast():
        if not pairs:
            lm, _ = c.model(**batch)
            return lm, None, 0, 0
        sums, _ = c.model(**batch, per_example=True)
    own, other = sums[pairs], sums[len(examples):]
    margin = own - other
    return (sums[:len(examples)].sum(), torch.nn.functional.softplus(margin).sum(), len(pairs),
            int((margin < 0).sum()))


def _negatives(c: _Ctx, examples: list[Rendered], mined: list[Rendered | None] | None = None,
               idx: list[int] | None = None) -> list:
    """The contrastive term's distractors for ``examples`` ([] with the term off): where ``mined`` is given
    (aligned with the whole example list), the entries at ``idx``, the examples' positions in it; else the
    batch's prompts rotated."""
    if not c.cfg.contrast:
        return []
    return [mined[i] for i in idx] if mined is not None else swap_contexts(examples, c.cfg.max_length)


def _train_step(c: _Ctx, state: LoopState) -> dict:
    """One optimizer step; returns the step's loss per supervised token and its token count."""
    import torch

    _seed_step(c.cfg.seed, state.step, c.acc.process_index)
    micro_idx = _micro_batches(c, state)
    micro = [[c.data.train[i] for i in b] for b in micro_idx]
    local_n = sum(e.supervised for b in micro for e in b)
    negatives = [_negatives(c, b, c.data.train_distractors, idx) for b, idx in zip(micro, micro_idx)]
    local_pairs = sum(e is not None for b in negatives for e in b)
    global_n, global_pairs = _reduce_sum(c.acc, local_n, local_pairs)
    world = c.acc.num_processes
    c.model.train()
    loss_total, contrast_total, right, tokens = 0.0, 0.0, 0, 0
    for i, examples in enumerate(micro):
        sync = nullcontext() if i == len(micro) - 1 else c.acc.no_sync(c.model)
        with sync:
            lm_sum, contrast_sum, _, ok = _forward(c, examples, negatives[i])
            # DDP averages gradients over ranks, hence * world: each term is its sum / its global count
            loss = lm_sum / global_n * world
            if contrast_sum is not None:
                loss = loss + c.cfg.contrast * contrast_sum / global_pairs * world
                contrast_total, right = contrast_total + float(contrast_sum.detach()), right + ok
            c.acc.backward(loss)
        loss_total += float(lm_sum.detach())
        tokens += sum(len(e.input_ids) for e in examples)
    grad_norm = torch.nn.utils.clip_grad_norm_(c.params, c.cfg.max_grad_norm)
    c.optimizer.step()
    c.scheduler.step()
    c.optimizer.zero_grad(set_to_none=True)
    loss_total, tokens, contrast_total, right = _reduce_sum(c.acc, loss_total, tokens, contrast_total, right)
    state.step += 1
    state.tokens += int(tokens)
    m = {"loss": loss_total / global_n, "tokens": int(tokens), "grad_norm": float(grad_norm)}
    if global_pairs:
        m.update(contrast=contrast_total / global_pairs, contrast_acc=right / global_pairs)
    return m


def evaluate(c: _Ctx, examples: list[Rendered], mined: list[Rendered | None] | None = None) -> dict | None:
    """Mean loss per supervised token over ``examples`` (sharded over ranks), and with ``--contrast``
    the contrastive term's mean and the share of replies it ranks right (each against its ``mined``
    distractor where given, else the next example's prompt in length order); None when there are no
    examples."""
    import torch

    if not examples:
        return None
    rank, world = c.acc.process_index, c.acc.num_processes
    order = sorted(range(rank, len(examples), world), key=lambda i: len(examples[i].input_ids))
    total, n, con, pairs, right = 0.0, 0, 0.0, 0, 0
    c.model.eval()
    with torch.no_grad():
        for i in range(0, len(order), c.cfg.batch_size):
            idx = order[i:i + c.cfg.batch_size]
            part = [examples[j] for j in idx]
            lm_sum, contrast_sum, k, ok = _forward(c, part, _negatives(c, part, mined, idx))
            total, n = total + float(lm_sum), n + sum(e.supervised for e in part)
            if contrast_sum is not None:
                con, pairs, right = con + float(contrast_sum), pairs + k, right + ok
    total, n, con, pairs, right = _reduce_sum(c.acc, total, n, con, pairs, right)
    out = {"loss": total / max(1.0, n)}
    if pairs:
        out.update(contrast=con / pairs, contrast_acc=right / pairs)
    return out


def objective(cfg: TrainConfig, ev: dict) -> float:
    """What the best weights are chosen by: the validation loss, plus the weighted contrastive term."""
    return ev["loss"] + cfg.contrast * ev.get("contrast", 0.0)


def _eval_and_track(c: _Ctx, state: LoopState, best: dict | None, log: MetricsLog) -> dict | None:
    """Evaluate, log, and keep the best weights; returns the (possibly new) best weights."""
    ev = evaluate(c, c.data.val, c.data.val_distractors)
    reh = evaluate(c, c.data.rehearsal_val)
    val = ev["loss"] if ev is not None else None
    record = {"step": state.step, "val_loss": val, "val_ppl": math.exp(min(val, 50)) if val is not None else None,
              "rehearsal_val_loss": reh["loss"] if reh is not None else None}
    if ev is not None and "contrast" in ev:
        record.update(val_contrast=ev["contrast"], val_contrast_acc=ev["contrast_acc"],
                      val_objective=objective(c.cfg, ev))
    log.write(record)
    state.last_eval = record
    if ev is None:
        return best
    score = objective(c.cfg, ev)
    if state.best_objective is None or score < state.best_objective - 1e-4:
        state.best_objective, state.best_step, state.bad_evals = score, state.step, 0
        return ckpt_io.trainable_state(c.inner)
    state.bad_evals += 1
    return best


def _build(cfg: TrainConfig, model, acc, total_hint: int):
    import torch

    from pipeline.training.loss import SupervisedLoss

    wrapper = acc.prepare_model(SupervisedLoss(model))
    params = [p for p in wrapper.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, total_hint, cfg.schedule))
    return wrapper, params, optimizer, scheduler


def total_steps(cfg: TrainConfig, spe: int) -> int:
    """Steps to run: ``--max-steps`` or ``--epochs`` worth of steps, whichever comes first."""
    by_epochs = cfg.epochs * spe if cfg.epochs else None
    caps = [x for x in (cfg.max_steps or None, by_epochs) if x]
    return min(caps)


def eval_interval(eval_every: int, spe: int) -> int:
    """Steps between evaluations: ``--eval-every``, but at least once an epoch. A small chat overfits within a
    few epochs (the shipped example: validation loss 4.4 after two epochs, 8.0 after six), so its best weights
    and early stopping need an evaluation every epoch; 0 keeps evaluation to the end only."""
    return min(eval_every, spe) if eval_every else 0


def run(cfg: TrainConfig, model, data: LoopData, out: Path, fingerprint: str, acc,
        resume: Path | None = None, resume_meta: dict | None = None) -> LoopResult:
    """Train ``model`` (already wrapped by its method) and return the best weights and figures."""
    from tqdm.auto import tqdm

    lengths = [len(e.input_ids) for e in data.train]
    spe = steps_per_epoch(len(plan_batches(lengths, cfg.batch_size, cfg.seed, 0)), acc.num_processes,
                          cfg.grad_accum)
    if spe == 0:
        raise UserError(f"{len(data.train)} training examples do not fill one step of --batch-size "
                        f"{cfg.batch_size} x --grad-accum {cfg.grad_accum} x {acc.num_processes} process(es)")
    total, every = total_steps(cfg, spe), eval_interval(cfg.eval_every, spe)
    memory.fix_mmap_threshold()  # freed activations go back to the OS, not malloc's heaps
    wrapper, params, optimizer, scheduler = _build(cfg, model, acc, total)
    c = _Ctx(cfg, acc, wrapper, params, optimizer, scheduler, data, lengths, spe)
    state, best = LoopState(), None
    if resume is not None:
        state, best = ckpt_io.restore(resume, resume_meta, c.inner, optimizer, scheduler)
    log = MetricsLog(out / "metrics.jsonl", acc.is_main_process, state.step if resume else None)
    bar = tqdm(total=total, initial=state.step, disable=not acc.is_main_process, desc="train", unit="step")
    t0, tokens0, step0, window = time.perf_counter(), state.tokens, state.step, []
    with StopFlag() as stop:
        while state.step < total:
            m = _train_step(c, state)
            memory.release_free_memory()
            window.append(m)
            tok_s = (state.tokens - tokens0) / max(1e-9, time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{tok_s:.0f}")
            if state.step % cfg.log_every == 0 or state.step == total:
                means = {k: sum(w[k] for w in window) / len(window) for k in ("loss", "contrast", "contrast_acc")
                         if all(k in w for w in window)}  # over the steps since the last line
                log.write({"step": state.step, "epoch": state.epoch, **means,
                           "lr": scheduler.get_last_lr()[0], "grad_norm": m["grad_norm"],
                           "tokens_per_s": tok_s, "elapsed_s": time.perf_counter() - t0})
                window = []
            if state.step == total or (every and state.step % every == 0):
                t_eval = time.perf_counter()
                best = _eval_and_track(c, state, best, log)
                memory.release_free_memory()
                t0 += time.perf_counter() - t_eval  # speed figures count training time only
            stopping = bool(_reduce_sum(acc, float(stop.requested)))
            early = cfg.patience and state.bad_evals >= cfg.patience
            if acc.is_main_process and (stopping or (cfg.save_every and state.step % cfg.save_every == 0)):
                ckpt_io.save_checkpoint(out, c.inner, optimizer, scheduler, state, best,
                                        fingerprint, cfg.keep_checkpoints)
            acc.wait_for_everyone()
            if stopping:
                bar.close()
                raise KeyboardInterrupt(f"stopped at step {state.step}")
            if early:
                bar.write(f"early stopping at step {state.step}: no improvement in {cfg.patience} evaluations")
                break
    bar.close()
    elapsed = max(1e-9, time.perf_counter() - t0)
    return LoopResult(state, best, total, (state.step - step0) / elapsed, (state.tokens - tokens0) / elapsed)

