"""The dialogue stage: trained from ChatbotData's train split only, merged into the extended base.

A tiny dialogue adapter is trained here by ``python -m pipeline.dialogue`` itself (2 steps on the
tiny Gemma, a few hundred ChatbotData rows), then merged by ``ensure_extended``.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.errors import UserError
from core.models import BACKWARD_DIR, find_backward, load_extended
from core.models import read_extended_manifest as read_manifest
from data_prep.chatbot_data import is_heldout, load_qa
from pipeline import dialogue_stage as dialogue
from pipeline.dialogue.__main__ import main as dialogue_main
from pipeline.dialogue.data import CARD_NAMES, INSTRUCTIONS, dialogue_pairs
from pipeline.extension import ensure_extended, extended_for
from pipeline.extension_check import verify_extended
from tests.tiny_models import CHATBOT_CSV

ROWS = 400  # ChatbotData rows in the test CSV: both splits, ~10 validation pairs


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    with open(CHATBOT_CSV, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for _, r in zip(range(ROWS), reader)]
    path = tmp_path_factory.mktemp("chatbot") / "ChatbotData.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def stage(tiny_gemma_dir, small_csv, tmp_path_factory):
    """(spec, cache, plain extended dir, dialogue adapter dir, merged extended dir)."""
    spec, cache = str(tiny_gemma_dir), tmp_path_factory.mktemp("cache")
    plain = ensure_extended(spec, cache, dialogue=False)
    argv = ["--csv", str(small_csv), "--base-model", spec, "--cache-dir", str(cache), "--max-steps", "2",
            "--batch-size", "4", "--threads", "1"]
    assert dialogue_main(argv) == 0
    adapter = dialogue.user_adapter_dir(cache, read_manifest(plain)["base"]["sha256"])
    merged = ensure_extended(spec, cache, dialogue=True)
    return spec, cache, plain, adapter, merged


def test_training_pairs_never_hold_a_heldout_answer(small_csv):
    train, val = dialogue_pairs(small_csv)
    answers = [p.response for p in train + val]
    heldout = {qa.answer for qa in load_qa(small_csv, split="heldout")}
    assert heldout and not heldout & set(answers)
    assert not any(is_heldout(a) for a in answers)
    assert sorted(answers) == sorted(qa.answer for qa in load_qa(small_csv, split="train"))
    assert not {p.response for p in train} & {p.response for p in val}  # split by answer


def test_no_context_adds_answers_with_no_question_to_train_only(small_csv):
    train, val = dialogue_pairs(small_csv)
    train2, val2 = dialogue_pairs(small_csv, no_context=0.5)
    assert val2 == val and [p for p in train2 if p.context] == train
    alone = [p for p in train2 if not p.context]
    assert 0.3 * len(train) < len(alone) < 0.7 * len(train)  # about half, by a hash of the question
    assert {p.response for p in alone} <= {p.response for p in train}
    assert dialogue_pairs(small_csv, no_context=0.5) == (train2, val2)  # stable
    assert len([p for p in dialogue_pairs(small_csv, no_context=1.0)[0] if not p.context]) == len(train)


def test_cards_give_a_share_of_rows_a_persona_card_of_the_answers(small_csv):
    train, val = dialogue_pairs(small_csv)
    train2, val2 = dialogue_pairs(small_csv, cards=0.5)
    assert [(p.context, p.response) for p in train2 + val2] == [(p.context, p.response) for p in train + val]
    carded = [p for p in train2 + val2 if p.instruction not in INSTRUCTIONS]
    assert 0.3 * len(train2 + val2) < len(carded) < 0.7 * len(train2 + val2)  # about half, by a hash of the question
    names = {p.instruction.split("처럼")[0].split(". ")[-1] for p in carded}
    assert names <= set(CARD_NAMES) and len(names) > 1
    assert all(p.instruction.startswith(f"너는 {p.instruction.split('처럼')[0].split('. ')[-1]}") for p in carded)
    assert all("자 정도로" in p.instruction for p in carded)  # measured habits, as a persona's card
    unchanged = [(a.instruction, b.instruction) for a, b in zip(train + val, train2 + val2)
                 if b.instruction in INSTRUCTIONS]
    assert all(a == b for a, b in unchanged)  # the other rows keep their instruction
    assert dialogue_pairs(small_csv, cards=0.5) == (train2, val2)  # stable
    assert all(p.instruction not in INSTRUCTIONS for p in sum(dialogue_pairs(small_csv, cards=1.0), []))


def test_dialogue_rejects_a_share_outside_zero_to_one(small_csv):
    for flag in ("--cards", "--no-context"):
        with pytest.raises(UserError, match=flag):
            dialogue_main(["--csv", str(small_csv), flag, "1.5"])


def test_the_stage_takes_hard_distractors_for_its_contrastive_term(tiny_gemma_dir, small_csv, tmp_path):
    out = tmp_path / "stage"
    argv = ["--csv", str(small_csv), "--base-model", str(tiny_gemma_dir), "--cache-dir", str(tmp_path / "cache"),
            "--max-steps", "1", "--batch-size", "4", "--threads", "1", "--contrast", "1",
            "--contrast-negatives", "similar", "--out", str(out)]
    assert dialogue_main(argv) == 0
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["config"]["contrast"] == 1 and m["config"]["contrast_negatives"] == "similar"
    assert m["metrics"]["contrast_distractors"] > 0.5 * m["metrics"]["train_examples"]


def test_pair_is_the_question_as_user_turn_and_the_answer_as_reply(small_csv):
    qa = load_qa(small_csv, split="train")[0]
    pair = next(p for p in dialogue_pairs(small_csv)[0] + dialogue_pairs(small_csv)[1] if p.response == qa.answer)
    assert [t.text for t in pair.context] == [qa.question]
    assert pair.context[0].speaker != pair.persona


def test_exported_adapter_records_its_base_and_licence(stage):
    _, _, plain, adapter, _ = stage
    m = json.loads((adapter / "manifest.json").read_text(encoding="utf-8"))
    assert m["extended_fingerprint"] == read_manifest(plain)["fingerprint"]
    assert m["base_sha256"] == read_manifest(plain)["base"]["sha256"]
    assert m["metrics"]["steps"] == 2 and m["config"]["dialogue"] is False
    assert sorted(p.name for p in adapter.iterdir()) == [
        "LICENSE-ChatbotData", "adapter_config.json", "adapter_model.safetensors", "manifest.json"]


def test_merge_changes_the_fingerprint_and_the_flag_keeps_the_plain_base(stage):
    spec, cache, plain, adapter, merged = stage
    pm, mm = read_manifest(plain), read_manifest(merged)
    assert merged != plain and pm["fingerprint"] != mm["fingerprint"]
    assert pm["dialogue"] is None and mm["dialogue"]["sha256"] == dialogue.read_adapter(adapter).sha256
    assert ensure_extended(spec, cache, dialogue=False) == plain
    assert read_manifest(plain)["fingerprint"] == pm["fingerprint"]
    assert extended_for({"base_model": spec}, cache) == plain  # adapters from before the stage
    assert extended_for({"base_model": spec, "dialogue": True}, cache) == merged
    assert verify_extended(merged) == []


def test_merged_weights_are_base_plus_lora_and_the_token_rows(stage):
    _, _, plain, adapter, merged = stage
    before, after = load_extended(plain)[0].state_dict(), load_extended(merged)[0].state_dict()
    ad = {k: v.float() for k, v in load_file(adapter / "adapter_model.safetensors").items()}  # stored in float16
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    a_key = next(k for k in ad if k.endswith("q_proj.lora_A.weight"))
    b = ad[a_key.replace("lora_A", "lora_B")]
    name = a_key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
    expected = before[name] + scale * b @ ad[a_key]
    assert not torch.equal(before[name], after[name])
    torch.testing.assert_close(after[name], expected, rtol=1e-5, atol=1e-6)
    emb = next(k for k in after if k.endswith("embed_tokens.weight"))
    ids = read_manifest(plain)["new_token_ids"]
    delta = next(v for k, v in ad.items() if "trainable_tokens_delta" in k)
    torch.testing.assert_close(after[emb][ids], delta)
    keep = torch.ones(after[emb].shape[0], dtype=torch.bool)
    keep[ids] = False
    assert torch.equal(after[emb][keep], before[emb][keep])


def test_merged_base_gives_the_adapters_logits(stage):
    from peft import PeftModel

    _, _, plain, adapter, merged = stage
    ids = torch.tensor([[2, 5, 9, 11, 40, 41]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(load_extended(plain)[0], str(adapter)).eval()(input_ids=ids).logits
        got = load_extended(merged)[0].eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_an_adapter_for_another_extended_base_is_refused(stage, tmp_path):
    _, _, plain, adapter, _ = stage
    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    m = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**m, "extended_fingerprint": "0" * 64}))
    model, tok, pm = load_extended(plain)
    with pytest.raises(UserError, match="another|trained on extended base"):
        dialogue.merge_into(model, dialogue.read_adapter(other), pm["fingerprint"], [2, 5, 9])


def test_shipped_adapter_fits_only_its_own_base(tmp_path):
    assert dialogue.adapter_for("0" * 64, tmp_path) is None
    if (dialogue.ASSET / "manifest.json").is_file():
        shipped = dialogue.read_adapter(dialogue.ASSET)
        assert dialogue.adapter_for(shipped.base_sha256, tmp_path) == shipped


def test_the_flag_reaches_extend_and_train_and_changes_their_fingerprint(tmp_path):
    from pipeline.run import build_parser, config_from_args, extend_stage, train_stage
    from pipeline.train import parse_args

    chat = tmp_path / "chat.txt"
    chat.write_text("x", encoding="utf-8")
    on, off = (config_from_args(build_parser().parse_args([str(chat), "--persona", "민수", flag]))
               for flag in ("--dialogue", "--no-dialogue"))
    assert on.dialogue and not off.dialogue
    assert extend_stage(on).argv != extend_stage(off).argv  # the extend stage reruns when the flag changes
    train_on, train_off = (parse_args(list(train_stage(c, "민수", "fp").argv)) for c in (on, off))
    assert train_on.dialogue and not train_off.dialogue


def test_the_chat_builds_the_dialogue_base_in_its_child_process(stage, tmp_path):
    """Adapters trained on a dialogue base: chatbot.engine.build_extended passes --dialogue to pipeline.extend,
    which builds the same merged base (same cache key and fingerprint) into a cache that lacks it."""
    from chatbot.adapters import PersonaInfo, choose_dialogue
    from chatbot.engine import build_extended

    spec, cache, plain, adapter, merged = stage
    infos = [PersonaInfo(name=n, path=tmp_path, dialogue=d, base_model=spec) for n, d in (("a", True), ("b", False),
                                                                                          ("c", True))]
    assert choose_dialogue(infos, spec) is True and choose_dialogue(infos[1:2], spec) is False
    fresh = tmp_path / "cache"
    shutil.copytree(adapter, dialogue.user_adapter_dir(fresh, read_manifest(plain)["base"]["sha256"]))
    built = build_extended(spec, fresh, dialogue=True)
    assert built.name == merged.name
    assert read_manifest(built)["fingerprint"] == read_manifest(merged)["fingerprint"]


def test_backward_pairs_turn_every_pair_around_on_the_same_split(small_csv):
    train, val = dialogue_pairs(small_csv)
    btrain, bval = dialogue_pairs(small_csv, backward=True)
    assert [(p.context[0].speaker, p.context[0].text, p.response) for p in btrain + bval] == [
        (p.context[0].speaker, p.response, p.context[0].text) for p in train + val]
    assert [p.instruction for p in btrain] == [p.instruction for p in train]
    for share in ({"no_context": 0.2}, {"cards": 0.2}):
        with pytest.raises(UserError, match="backward"):
            dialogue_pairs(small_csv, backward=True, **share)


@pytest.fixture(scope="module")
def backward(stage, small_csv):
    """The backward model trained by ``python -m pipeline.dialogue --backward`` (2 steps), then installed."""
    spec, cache, plain, adapter, merged = stage
    argv = ["--csv", str(small_csv), "--base-model", spec, "--cache-dir", str(cache), "--max-steps", "2",
            "--batch-size", "4", "--threads", "1", "--backward"]
    assert dialogue_main(argv) == 0
    assert ensure_extended(spec, cache, dialogue=True) == merged  # same cache entry: installs, does not rebuild
    return adapter / BACKWARD_DIR


def test_backward_model_trains_on_the_merged_base_and_is_installed_beside_it(stage, backward):
    _, _, plain, adapter, merged = stage
    m = json.loads((backward / "manifest.json").read_text(encoding="utf-8"))
    assert m["stage"] == "backward" and m["config"]["dialogue"] is True
    assert m["extended_fingerprint"] == read_manifest(merged)["fingerprint"] != read_manifest(plain)["fingerprint"]
    installed = find_backward(merged)
    assert installed == merged / BACKWARD_DIR and find_backward(plain) is None
    assert all((installed / f.name).read_bytes() == f.read_bytes() for f in backward.iterdir())
    assert read_manifest(merged)["dialogue"]["sha256"] == dialogue.read_adapter(adapter).sha256  # fingerprint kept
    assert verify_extended(merged) == []


def test_a_backward_model_of_another_base_is_not_installed(stage, backward, tmp_path):
    _, _, _, adapter, merged = stage
    other = tmp_path / "stage"
    shutil.copytree(adapter, other)
    m = json.loads((other / BACKWARD_DIR / "manifest.json").read_text())
    (other / BACKWARD_DIR / "manifest.json").write_text(json.dumps({**m, "extended_fingerprint": "0" * 64}))
    ext = tmp_path / "ext"
    shutil.copytree(merged, ext, ignore=shutil.ignore_patterns(BACKWARD_DIR))
    assert dialogue.install_backward(dialogue.read_adapter(other), ext) is None and find_backward(ext) is None
    assert dialogue.install_backward(dialogue.read_adapter(adapter), ext) == ext / BACKWARD_DIR
