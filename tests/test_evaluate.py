"""Evaluation: scoring equals the model's own loss on render labels, shared-prefix scoring, merged
adapters, persona identification on a toy case, the SmileStyle index, and the CLI end to end.

Tiny models only: the extended base comes from ``pipeline.extend`` on the tiny Gemma
(sliding window 64, logit softcapping), adapters are PEFT LoRA with
``trainable_token_indices`` trained a few steps here, saved in the adapter folder format (core.adapter_format).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from core.chat_format import render
from core.cli import run_cli
from data_prep import smilestyle
from data_prep.records import ContextTurn
from pipeline.evaluation.identification import IdItem, rank_item
from pipeline.evaluation.parallel import ParallelIndex
from pipeline.evaluation.scoring import Example, _score_full, render_group, score_group
from tests.tiny_models import CHATBOT_CSV, SMILESTYLE_TSV

PERSONA, STYLE, PARTNER = "왕", "king", "친구"


def smilestyle_dialogues(limit: int) -> list[list[dict[str, str]]]:
    """The first ``limit`` SmileStyle dialogues, each a list of rows (style -> text)."""
    return smilestyle.load_dialogues(SMILESTYLE_TSV)[:limit]


def smilestyle_pairs(dialogues, persona=PERSONA, style=STYLE, prefix="c") -> list[dict]:
    """Pairs as prepare writes them: the persona speaks ``style`` on odd turns, the partner informal."""
    out = []
    for k, d in enumerate(dialogues):
        for i in range(1, len(d), 2):
            if not d[i].get(style):
                continue
            ctx = [{"speaker": persona if j % 2 else PARTNER, "text": d[j][style if j % 2 else "informal"]}
                   for j in range(max(0, i - 4), i)]
            out.append({"persona": persona, "instruction": f"너는 {persona}야. {persona}처럼 답해.",
                        "context": ctx, "response": d[i][style], "conversation_id": f"{prefix}{k}", "source": "t"})
    return out


def write_data(directory: Path, n_train: int = 12, n_val: int = 4,
               speakers: tuple[tuple[str, str], ...] = ((PERSONA, STYLE),)) -> Path:
    """train/validation.jsonl with the pairs of each (persona, style) of ``speakers``."""
    dialogues = smilestyle_dialogues(n_train + n_val)
    directory.mkdir(parents=True, exist_ok=True)
    for name, part, prefix in (("train", dialogues[:n_train], "t"), ("validation", dialogues[n_train:], "v")):
        rows = [r for p, st in speakers for r in smilestyle_pairs(part, p, st, prefix)]
        (directory / f"{name}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return directory


def train_tiny_adapter(ext_dir: Path, base_spec: str, data: Path, out: Path, steps: int = 4,
                       persona: str = PERSONA) -> Path:
    """A LoRA adapter in the adapter folder format, trained ``steps`` steps on render labels."""
    import torch
    from peft import LoraConfig, get_peft_model

    from core.models import load_extended
    from data_prep.records import read_pairs

    model, tok, ext = load_extended(ext_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                     trainable_token_indices={"embed_tokens": ext["new_token_ids"]})
    model = get_peft_model(model, cfg)
    pairs = [p for p in read_pairs(data / "train.jsonl") if p.persona == persona]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    for step in range(steps):
        p = pairs[step % len(pairs)]
        r = render(tok, p.instruction, p.context, p.persona, p.response, 256)
        loss = model(input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([r.labels])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out, save_embedding_layers=False)
    tok.save_pretrained(out)
    manifest = {"persona": persona, "method": "lora", "base_model": base_spec,
                "extended_fingerprint": ext["fingerprint"], "data_hash": "test", "instruction": pairs[0].instruction,
                "user_speaker": PARTNER, "max_length": 256, "config": {}, "metrics": {"steps": steps}, "versions": {}}
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ~10x faster on one thread than on two busy ones; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("persona-cache")


@pytest.fixture(scope="module")
def extended(tiny_gemma_dir, cache_dir):
    from core.models import load_extended
    from pipeline.extension import ensure_extended

    path = ensure_extended(str(tiny_gemma_dir), cache_dir=cache_dir)
    model, tok, _ = load_extended(path)
    return path, model.eval(), tok


@pytest.fixture(scope="module")
def adapter_and_data(tmp_path_factory, tiny_gemma_dir, extended):
    root = tmp_path_factory.mktemp("eval")
    data = write_data(root / "data")
    return train_tiny_adapter(extended[0], str(tiny_gemma_dir), data, root / "adapters" / PERSONA), data


def long_context(n: int = 6) -> tuple[ContextTurn, ...]:
    return tuple(ContextTurn(PARTNER if i % 2 == 0 else PERSONA, "오늘 뭐 해? 나는 집에서 쉬는 중이야 " * 3)
                 for i in range(n))


def test_reply_logprob_equals_minus_loss_times_supervised_tokens(extended):
    import torch

    _, model, tok = extended
    for reply in ("응 그래", "그렇소. 짐은 쉬오. <|eot|> ㅋㅋ"):
        r = render(tok, "너는 왕이야.", long_context(), PERSONA, reply, 256)
        assert len(r.input_ids) > 64  # longer than the sliding window: the cache path must still agree
        s = score_group(model, tok, [r])[0]
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([r.labels])).loss
        assert s.tokens == r.supervised
        assert s.logprob == pytest.approx(-loss.item() * r.supervised, rel=1e-4, abs=1e-3)


def test_shared_prefix_group_scores_equal_one_by_one_scores(extended, monkeypatch):
    _, model, tok = extended
    variants = ["응 그래", "그렇소. 짐은 쉬오.", "ㅋㅋㅋ 나도 쉬는 중이야!! (´･ω･`)"]
    examples = [Example("너는 왕이야.", long_context(), PERSONA, v) for v in variants]
    renders = render_group(tok, examples, 150)
    assert len({r.context_turns for r in renders}) == 1  # every variant sees the same context
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the KV cache is passed under the current name
        grouped = score_group(model, tok, renders)
    alone = [_score_full(model, r) for r in renders]
    for g, a in zip(grouped, alone):
        assert g.tokens == a.tokens
        assert g.logprob == pytest.approx(a.logprob, rel=1e-4, abs=1e-3)
    # the model's own forward (full logits of every tail position) gives the same as the labelled-rows path
    monkeypatch.setattr("pipeline.training.loss.supports_fast_loss", lambda m: False)
    for g, f in zip(grouped, score_group(model, tok, renders)):
        assert g.tokens == f.tokens and g.logprob == pytest.approx(f.logprob, rel=1e-4, abs=1e-3)


def test_merged_adapter_scores_like_the_peft_model(adapter_and_data, extended, cache_dir):
    from peft import PeftModel

    from core.models import load_extended
    from pipeline.evaluation.runner import load_adapter
    from pipeline.evaluation.tasks import build_task

    adapter, data = adapter_and_data
    task = build_task(adapter, data, None, max_examples=2, shots=2, seed=0)
    merged, tok = load_adapter(task, cache_dir)
    base, _, _ = load_extended(extended[0])
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    r = render(tok, task.held_out[0].instruction, task.held_out[0].context, PERSONA, task.held_out[0].response, 256)
    a, b = score_group(merged, tok, [r])[0], score_group(peft_model, tok, [r])[0]
    assert a.logprob == pytest.approx(b.logprob, rel=1e-4, abs=1e-3)


def test_identification_ranks_the_clearly_matching_variant_first(tiny_gemma_dir, cache_dir):
    """Fine-tune the tiny model on one style's replies; that style's variants must then rank first."""
    import torch

    from core.models import load_extended
    from pipeline.extension import ensure_extended

    model, tok, _ = load_extended(ensure_extended(str(tiny_gemma_dir), cache_dir=cache_dir))
    index = ParallelIndex.load(SMILESTYLE_TSV)
    rows = index.rows[:3]
    ctx = (ContextTurn(PARTNER, "안녕! 뭐 해?"),)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(12):
        for row in rows:
            r = render(tok, "너는 왕이야.", ctx, PERSONA, row[STYLE], 128)
            model(input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([r.labels])).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    for row in rows:
        item = IdItem(Example("너는 왕이야.", ctx, PERSONA), dict(row), STYLE)
        ranking = rank_item(model, tok, item, 128)
        assert ranking.predicted == STYLE, ranking.ranked[:3]
        assert set(ranking.scores) == set(row)


def test_parallel_index_matches_replies_as_prepare_normalises_them():
    index = ParallelIndex.load(SMILESTYLE_TSV)
    assert len(index.styles) == 17 and "king" in index.styles
    king = [r["king"] for r in index.rows[:10] if "king" in r]
    spaced = [t.replace(" ", "  ") + "\n" for t in king]  # whitespace differences do not matter
    m = index.detect_style(spaced + ["이건 SmileStyle에 없는 문장이야"])
    assert m.style == "king" and m.matched == len(king) and m.total == len(king) + 1
    row = index.row_of(spaced[0], "king")
    assert row["king"] == king[0] and len(row) > 10


def test_evaluate_cli_writes_json_markdown_and_charts(adapter_and_data, cache_dir, tmp_path, capsys):
    from pipeline.evaluate import main

    adapter, data = adapter_and_data
    out = tmp_path / "eval"
    argv = ["--adapter", str(adapter), "--data", str(data), "--out", str(out), "--cache-dir", str(cache_dir),
            "--max-examples", "3", "--general-lines", "3", "--generate", "2", "--samples", "2",
            "--max-new-tokens", "4", "--shots", "2", "--smilestyle", str(SMILESTYLE_TSV),
            "--selection-items", "2", "--switch-items", "2", "--qa", str(CHATBOT_CSV), "--memory"]
    assert run_cli(main, argv) == 0
    assert "eval.md" in capsys.readouterr().out
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    r = result["personas"][PERSONA]
    assert set(r["perplexity"]) == {"base", "few_shot", "adapter"}
    assert all(v > 1 for v in r["perplexity"].values())
    assert r["forgetting"]["n"] == 3 and r["forgetting"]["adapter_over_base"] > 0
    assert r["smilestyle"]["style"] == STYLE
    for ident in r["identification"].values():  # top-1 = share of the 3 items whose true style ranked first
        assert ident["n"] == sum(ident["predicted"].values()) == 3
        assert ident["top1"] == pytest.approx(ident["predicted"].get(STYLE, 0) / 3, abs=1e-3)  # rounded in eval.json
        assert ident["chance"] == pytest.approx(1 / 17, abs=0.02)
        assert (ident["mean_rank"] == 1) == (ident["top1"] == 1)
    confusion = result["confusion"]
    column = confusion["styles"].index(STYLE)
    assert confusion["adapter"][0][column] == pytest.approx(r["identification"]["adapter"]["top1"], abs=1e-3)
    sel = r["selection"]
    assert set(sel) == {"persona", "qa", "switch"} and set(sel["qa"]) == {"base", "few_shot", "adapter",
                                                                         "adapter_memory"}
    assert 0 <= sel["switch"]["adapter"]["mmi"]["previous_first"] <= 1  # only the change-of-topic items have it
    assert "previous_first" not in sel["qa"]["adapter"]["mmi"]
    assert r["selection_memory"]["persona"]["items"] == 2 and r["selection_memory"]["qa"]["items"] == 2
    for s in ("persona", "qa"):
        assert sel[s]["adapter_memory"]["n"] == 2
        got = sel[s]["adapter"]
        assert got["n"] == 2 and got["chance"] == 0.05 and set(got) >= {"mean", "pmi", "pmi_mean"}
        assert 1 <= got["pmi"]["mean_rank"] <= 20
        lo, hi = got["pmi"]["hits1_ci95"]
        assert 0 <= lo <= got["pmi"]["hits1"] <= hi <= 1
        for other in ("base", "few_shot"):  # the adapter against each on the same items
            d = r["selection_vs"][s][other]["pmi"]
            assert d["n"] == 2 and d["diff"] == pytest.approx(got["pmi"]["hits1"] - sel[s][other]["pmi"]["hits1"],
                                                               abs=2e-3)
    assert result["attribution"] is None  # one adapter: nothing to attribute
    assert len(r["samples"]) == 2 and {"real", "base", "few_shot", "adapter"} <= set(r["samples"][0])
    assert set(r["style_distance"]["adapter"]) >= {"length", "laugh_k", "emoji", "endings", "distinct_2"}
    replies = r["replies"]
    assert set(replies) == {"real", "base", "few_shot", "adapter"} and replies["adapter"]["n"] == 2
    assert replies["real"]["n"] == 3 and replies["adapter"]["loop"] == 0 and replies["adapter"]["empty"] == 0
    assert replies["adapter"]["profanity"] == 0 and replies["real"]["profanity"] == 0  # the chat's ban holds
    md = (out / "eval.md").read_text(encoding="utf-8")
    assert "Persona identification" in md and "few-shot" in md and "Next-reply selection" in md
    assert "adapter + memory" in md and "Memory: " in md
    assert "95% intervals of Hits@1" in md and "Adapter - base on the same items" in md
    assert "Adapter - few-shot on the same items" in md
    assert "Generated replies: empty, echoes" in md and "swearing not theirs" in md
    for png in ("perplexity.png", "style.png", "identification.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png})" in md


def test_evaluate_cli_attributes_replies_to_speakers_of_one_chat(tiny_gemma_dir, extended, cache_dir, tmp_path):
    """Two speakers of the same chat, an adapter each: every held-out reply is attributed, a 2x2 matrix."""
    from pipeline.evaluate import main

    data = write_data(tmp_path / "data", speakers=((PERSONA, STYLE), ("할배", "halbae")))
    adapters = [train_tiny_adapter(extended[0], str(tiny_gemma_dir), data, tmp_path / "adapters" / p, persona=p)
                for p in (PERSONA, "할배")]
    out = tmp_path / "eval"
    argv = [x for a in adapters for x in ("--adapter", str(a))] + [
        "--data", str(data), "--out", str(out), "--cache-dir", str(cache_dir), "--max-examples", "3",
        "--general-lines", "1", "--generate", "1", "--samples", "1", "--max-new-tokens", "2", "--shots", "1",
        "--no-identification", "--selection-items", "0"]
    assert run_cli(main, argv) == 0
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    block = result["attribution"]
    assert block["personas"] == [PERSONA, "할배"] and block["n"] == {PERSONA: 3, "할배": 3}
    for score in ("logprob", "gain"):
        m = block[score]["matrix"]
        assert len(m) == 2 and all(len(row) == 2 and sum(row) == pytest.approx(1) for row in m)
        assert block[score]["n"] == 6 and block[score]["chance"] == 0.5
        assert block[score]["accuracy"] == pytest.approx((m[0][0] + m[1][1]) / 2, abs=1e-3)
    assert result["personas"][PERSONA]["selection"] is None  # --selection-items 0 skips selection
    md = (out / "eval.md").read_text(encoding="utf-8")
    assert "Speaker attribution" in md and "(attribution.png)" in md
    assert (out / "attribution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_cli_bad_paths_exit_2_with_one_line(tmp_path, capsys):
    from pipeline.evaluate import main

    code = run_cli(main, ["--adapter", str(tmp_path / "nope"), "--data", str(tmp_path / "nodata")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --adapter") and "--data" in err and "\n" not in err


def test_selection_adds_the_backward_models_score_where_the_extended_base_has_one(adapter_and_data, extended,
                                                                                   cache_dir, tmp_path):
    """A backward model installed in the extended base (a random LoRA here) scores the items once; every
    system's selection then reports ``pmi_bidi``."""
    import shutil

    from core.models import BACKWARD_DIR, find_backward
    from pipeline.evaluate import main
    from tests.chat_helpers import make_adapter

    adapter, data = adapter_and_data
    argv = ["--adapter", str(adapter), "--data", str(data), "--cache-dir", str(cache_dir), "--max-examples", "2",
            "--general-lines", "0", "--generate", "0", "--samples", "0", "--no-identification",
            "--selection-items", "3", "--qa", str(CHATBOT_CSV)]
    runs = {}
    try:
        for name in ("without", "with"):
            if name == "with":
                make_adapter(extended[0], extended[0] / BACKWARD_DIR, "dialogue", "나", seed=9)
                assert find_backward(extended[0]) is not None
            assert run_cli(main, argv + ["--out", str(tmp_path / name)]) == 0
            runs[name] = json.loads((tmp_path / name / "eval.json").read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(extended[0] / BACKWARD_DIR, ignore_errors=True)
    for item_set in ("persona", "qa"):
        before, after = (r["personas"][PERSONA]["selection"][item_set] for r in (runs["without"], runs["with"]))
        for system in ("base", "few_shot", "adapter"):
            assert before[system]["pmi_bidi"]["hits1"] is None and after[system]["pmi_bidi"]["hits1"] is not None
            assert after[system]["pmi"] == before[system]["pmi"]  # the forward scores are untouched
    md = {name: (tmp_path / name / "eval.md").read_text(encoding="utf-8") for name in runs}
    assert "Hits@1 PMI + backward" in md["with"] and "Hits@1 PMI + backward" not in md["without"]
    # the score to read: the summary, the intervals and the paired differences follow the backward model
    assert "Q/A Hits@1 (PMI + backward) base" in md["with"] and "Q/A Hits@1 (PMI) base" in md["without"]
    assert "95% intervals of Hits@1 PMI + backward" in md["with"]
