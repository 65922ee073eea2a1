"""The contrastive term: distractor prompts, what it trains, and starting from another adapter."""
from __future__ import annotations

import json

import pytest
import torch

from core import chat_format
from core.chat_format import IGNORE_INDEX
from core.cli import run_cli
from data_prep.records import ContextTurn, Pair
from pipeline.train import main, parse_args
from pipeline.training.data import render_pairs, render_with_distractors, similar_contexts, swap_contexts
from pipeline.training.run import train
from tests.test_train_cli import no_gpu  # noqa: F401 (fixture)
from tests.test_train_helpers import extended, persona_data, persona_pairs, train_cache  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def tok(tiny_gemma_dir, train_cache):
    return extended(tiny_gemma_dir, train_cache)[1]


def test_swap_contexts_puts_each_reply_after_the_next_prompt(tok):
    examples, _ = render_pairs(persona_pairs(limit=4), tok, 256)
    swapped = swap_contexts(examples, 256)
    for i, (e, s) in enumerate(zip(examples, swapped)):
        other = examples[(i + 1) % len(examples)]
        b = other.reply_start
        assert s.input_ids[:b] == other.input_ids[:b]  # the other example's prompt, up to its <|bot|>
        assert s.input_ids[b:] == e.input_ids[e.reply_start:]  # this example's reply and <|eot|>
        assert [x for x in s.labels if x != IGNORE_INDEX] == [x for x in e.labels if x != IGNORE_INDEX]
        assert s.input_ids[b - 1] == tok.convert_tokens_to_ids(chat_format.BOT)


def test_swap_contexts_skips_own_prompt_too_long_and_single(tok):
    p = Pair("민수", "말해", (ContextTurn("지영", "뭐해?"),), "밥 먹어", "c1")
    q = Pair("민수", "말해", (ContextTurn("지영", "뭐해?"),), "자는 중", "c2")  # the same prompt
    r = Pair("민수", "말해", (ContextTurn("지영", "주말에 시간 돼? " * 20),), "ㅇㅇ", "c3")
    ex, _ = render_pairs([p, q, r], tok, 256)
    swapped = swap_contexts(ex, 256)
    assert swapped[0] is None and swapped[1] is not None and swapped[2] is not None
    assert swap_contexts(ex, len(ex[0].input_ids) + 1)[1] is None  # r's long prompt + q's reply do not fit
    assert swap_contexts(ex[:1], 256) == [None]


def _pair(message: str, reply: str, conversation: str) -> Pair:
    return Pair("민수", "말해", (ContextTurn("민수", "ㅇㅇ"), ContextTurn("지영", message)), reply, conversation)


def test_similar_contexts_picks_the_nearest_message_of_another_conversation():
    pairs = [_pair("이번 주말에 영화 보러 갈래?", "좋아 ㅋㅋ", "c1"),
             _pair("이번 주말에 영화 보러 갈래?", "콜", "c1"),            # same conversation: never a distractor
             _pair("이번 주말에 영화 보러 갈래??", "ㄱㄱ", "c2"),          # a near copy: asks the same thing
             _pair("주말에 영화 볼까 아니면 쉴까", "쉬자", "c3"),
             _pair("배고프다 밥 먹었어?", "아직", "c4"),                   # shares no n-gram with any other
             _pair("이번 주말에 영화 어때", "좋아 ㅋㅋ", "c5")]           # the same reply as the first: fits both
    got = similar_contexts(pairs)
    # 0: 1 is its conversation, 2 a near copy, 5 has its reply, so the next nearest, 3; 1 ("콜") may take 5
    assert got == [3, 5, 5, 5, None, 1]
    assert similar_contexts(pairs) == got  # deterministic
    assert similar_contexts(pairs[:2]) == [None, None]  # one conversation: nothing qualifies
    assert similar_contexts([]) == []


def test_render_with_distractors_puts_the_reply_after_the_mined_prompt(tok):
    pairs = persona_pairs(limit=6)
    others = similar_contexts(pairs)
    examples, distractors, stats = render_with_distractors(pairs, others, tok, 256)
    plain, plain_stats = render_pairs(pairs, tok, 256)
    assert examples == plain and stats == plain_stats and len(distractors) == len(examples)
    assert any(d is not None for d in distractors)
    for p, j, e, d in zip(pairs, others, examples, distractors):
        if d is None:
            continue
        other = chat_format.render(tok, p.instruction, pairs[j].context, p.persona, pairs[j].response, 256)
        assert d.input_ids[:d.reply_start] == other.input_ids[:other.reply_start]  # the other pair's prompt
        assert d.input_ids[d.reply_start:] == e.input_ids[e.reply_start:]  # this pair's reply and <|eot|>
        assert d.labels[d.reply_start:] == e.labels[e.reply_start:]
    none = render_with_distractors(pairs, [None] * len(pairs), tok, 256)[1]
    assert none == [None] * len(pairs)


def test_contrast_gradient_lowers_the_term(tiny_gemma_dir, train_cache):
    """A small step down the term's gradient makes each reply likelier after its own prompt relative to
    the distractor's: the term's sign and its way through the per-example losses are right."""
    from types import SimpleNamespace

    from accelerate import Accelerator

    from pipeline.training.loop import _forward
    from pipeline.training.loss import SupervisedLoss
    from tests.test_train_loss import _lora_model

    model, tok, _ = _lora_model(tiny_gemma_dir, train_cache)
    examples, _ = render_pairs(persona_pairs(limit=6), tok, 256)
    c = SimpleNamespace(cfg=SimpleNamespace(contrast=1.0, max_length=256),
                        data=SimpleNamespace(pad=chat_format.pad_id(tok)), acc=Accelerator(cpu=True),
                        model=SupervisedLoss(model))
    params = [p for p in model.parameters() if p.requires_grad]
    _, before, pairs, _ = _forward(c, examples)
    assert pairs == len(examples)
    grads = torch.autograd.grad(before, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(1e-2 * g / max(1e-12, float(torch.cat([x.flatten() for x in grads]).norm())))
        _, after, _, _ = _forward(c, examples)
    assert float(after) < float(before) - 1e-4, (float(before), float(after))


def test_contrast_is_logged_and_the_best_step_chosen_by_the_objective(tiny_gemma_dir, persona_data, train_cache,
                                                                        tmp_path, no_gpu):
    flags = ["--data", str(persona_data), "--persona", "민수", "--base-model", str(tiny_gemma_dir),
             "--cache-dir", str(train_cache), "--max-steps", "8", "--batch-size", "4", "--lr", "1e-2",
             "--eval-every", "4", "--save-every", "0", "--log-every", "1", "--threads", "1", "--seed", "3",
             "--no-gradient-checkpointing"]
    threads = torch.get_num_threads()
    try:
        plain = train(parse_args([*flags, "--out", str(tmp_path / "plain")]))
        contrast = train(parse_args([*flags, "--out", str(tmp_path / "contrast"), "--contrast", "0.5"]))
        similar = train(parse_args([*flags, "--out", str(tmp_path / "similar"), "--contrast", "0.5",
                                    "--contrast-negatives", "similar"]))
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(x) for x in (tmp_path / "contrast" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 8 and all(0 <= r["contrast_acc"] <= 1 and r["contrast"] > 0 for r in steps)
    evals = [r for r in records if "val_loss" in r]
    assert len(evals) == 2
    assert all(r["val_objective"] == pytest.approx(r["val_loss"] + 0.5 * r["val_contrast"]) for r in evals)
    best = min(evals, key=lambda r: r["val_objective"])
    m = contrast.manifest["metrics"]
    assert m["best_step"] == best["step"] and m["val_loss"] == best["val_loss"]  # the LM loss, not the objective
    assert m["val_contrast_acc"] == best["val_contrast_acc"]
    assert "val_contrast" not in plain.manifest["metrics"]
    assert contrast.manifest["config"]["contrast"] == 0.5

    # mined distractors: a different term (other prompts), logged the same way, named in the config
    mined = [json.loads(x) for x in (tmp_path / "similar" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in mined if "loss" in r] == [r["step"] for r in steps]
    assert [r["loss"] for r in mined if "loss" in r][0] == steps[0]["loss"]  # same batches, same LM loss
    assert [r["contrast"] for r in mined if "loss" in r] != [r["contrast"] for r in steps]
    assert similar.manifest["config"]["contrast_negatives"] == "similar"
    with pytest.raises(SystemExit) as bad:
        parse_args([*flags, "--out", str(tmp_path / "bad"), "--contrast", "1", "--contrast-negatives", "hardest"])
    assert bad.value.code == 2
    # without the term the distractors' kind shapes nothing, so it does not change what a checkpoint must match
    assert "contrast_negatives" not in parse_args([*flags, "--out", "x"]).fingerprint_fields()
    assert parse_args([*flags, "--out", "x", "--contrast", "1"]).fingerprint_fields()["contrast_negatives"] == "next"


def test_init_adapter_starts_from_its_weights(tiny_gemma_dir, persona_data, train_cache, tmp_path, no_gpu, capsys):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from pipeline.extension import ensure_extended
    from pipeline.training.run import init_from, load_base, prepare_model

    flags = ["--data", str(persona_data), "--persona", "민수", "--base-model", str(tiny_gemma_dir),
             "--cache-dir", str(train_cache), "--max-steps", "3", "--batch-size", "2", "--lr", "5e-3",
             "--eval-every", "0", "--save-every", "0", "--threads", "1", "--no-gradient-checkpointing"]
    threads = torch.get_num_threads()
    try:
        first = train(parse_args([*flags, "--out", str(tmp_path / "a")]))
    finally:
        torch.set_num_threads(threads)
    cfg = parse_args([*flags, "--out", str(tmp_path / "b"), "--init-adapter", str(first.out)])
    ext = ensure_extended(cfg.base_model, cfg.cache_dir, dialogue=cfg.dialogue)
    model, _, ext_manifest = load_base(cfg, ext, torch.device("cpu"))
    model = prepare_model(cfg, model, ext_manifest["new_token_ids"])
    init_from(cfg, model, ext_manifest)
    saved = load_file(first.out / "adapter_model.safetensors")
    now = get_peft_model_state_dict(model)
    assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved)

    assert run_cli(main, [*flags, "--out", str(tmp_path / "c"), "--init-adapter", str(first.out), "--lora-r", "4"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--init-adapter" in err.strip().splitlines()[-1] and "r=8" in err, err[-500:]
    assert run_cli(main, [*flags, "--out", str(tmp_path / "d"), "--init-adapter", str(tmp_path / "nowhere")]) == 2
