"""The persona's memory (core.memory): retrieval from the train split only, the prompt it makes, the flags.

The retriever is checked on hand-made prepared folders (train.jsonl / validation.jsonl as prepare
writes them); the chat engine on the tiny personas of tests/chat_helpers.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chatbot.engine import Engine, GenerationParams
from core import chat_format
from core.errors import UserError
from core.memory import Memory, MemoryIndex, answered, ngrams
from data_prep.records import ContextTurn, Pair
from tests.chat_helpers import chat_dirs, engine  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
PERSONA, FRIEND = "민수", "친구1"
TRAIN = [  # (message the persona answered, its reply)
    ("이번 주말에 뭐함?", "나 토요일은 알바 ㅠㅠ"),
    ("자료구조 과제 다 했어?", "아니 연결리스트에서 막힘"),
    ("내일 1교시 있어?", "아니 다행히 2교시부터"),
    ("고마워 ㅎㅎ", "나중에 밥 한 번 사 ㅋㅋ"),
    ("저녁 뭐 먹을래", "국밥 ㄱㄱ"),
]
HELD_OUT = ("오늘 만우절인데 아무도 안 속였어", "나 아침에 시험 범위 바뀌었다고 했는데 진짜 믿음 ㅋㅋ")


def _pair(message: str, reply: str, conv: str, persona: str = PERSONA) -> str:
    ctx = (ContextTurn(persona, "ㅋㅋ 그치"), ContextTurn(FRIEND, message))
    return Pair(persona, "너는 민수야.", ctx, reply, conv).dumps()


def write_data(folder: Path, train=TRAIN, held_out=(HELD_OUT,), persona: str = PERSONA) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text(
        "\n".join(_pair(m, r, f"c{i}", persona) for i, (m, r) in enumerate(train)) + "\n", encoding="utf-8")
    (folder / "validation.jsonl").write_text(
        "\n".join(_pair(m, r, f"v{i}", persona) for i, (m, r) in enumerate(held_out)) + "\n", encoding="utf-8")
    return folder


def test_the_pair_with_the_same_message_comes_first(tmp_path):
    memory = Memory.load([write_data(tmp_path / "data")])
    for message, reply in TRAIN:
        got = memory.recall(PERSONA, [{"speaker": FRIEND, "text": message}])
        assert got[0].reply == reply and got[0].score == pytest.approx(1.0)
        assert [g.score for g in got] == sorted((g.score for g in got), reverse=True)
    # spacing, NFD jamo and long laughter do not hide the same message
    import unicodedata

    loose = unicodedata.normalize("NFD", "저녁 뭐먹을래") + "ㅋㅋㅋㅋㅋㅋ"
    assert memory.recall(PERSONA, [{"speaker": FRIEND, "text": loose}])[0].reply == "국밥 ㄱㄱ"


def test_held_out_pairs_are_never_recalled(tmp_path):
    memory = Memory.load([write_data(tmp_path / "data")])
    got = memory.recall(PERSONA, [{"speaker": FRIEND, "text": HELD_OUT[0]}])
    assert HELD_OUT[1] not in [g.reply for g in got]
    assert all(g.reply in dict(TRAIN).values() for g in got)


def test_unrelated_message_recalls_nothing_and_k_caps_the_list(tmp_path):
    data = write_data(tmp_path / "data")
    memory = Memory.load([data])
    assert memory.recall(PERSONA, [{"speaker": FRIEND, "text": "고양이 사진 보여줘"}]) == []
    assert memory.recall("지은", [{"speaker": FRIEND, "text": "이번 주말에 뭐함?"}]) == []  # no such persona
    wide = Memory.load([data], k=2, min_similarity=0.0)
    assert len(wide.recall(PERSONA, [{"speaker": FRIEND, "text": "내일 뭐함? 과제 했어?"}])) == 2


def test_index_is_deterministic_and_ties_keep_file_order():
    pairs = [("밥 먹자", "좋아"), ("밥 먹자", "싫어"), ("영화 볼래", "콜"), ("밥 먹자", "좋아")]
    a, b = MemoryIndex.build(pairs), MemoryIndex.build(list(pairs))
    assert a == b and len(a) == 3  # the repeated pair is kept once
    assert [r.reply for r in a.search("밥 먹자")] == ["좋아", "싫어"]


def test_the_answered_message_is_the_turns_after_the_persona_spoke():
    ctx = [ContextTurn(FRIEND, "옛날 얘기"), ContextTurn(PERSONA, "응"), ContextTurn(FRIEND, "밥 먹자"),
           ContextTurn("친구2", "나도")]
    assert answered(ctx, PERSONA) == "밥 먹자\n나도"
    assert answered([ContextTurn(PERSONA, "혼잣말")], PERSONA) == "혼잣말"
    assert answered([], PERSONA) == ""
    assert ngrams("ㅋ") == {"ㅋ": 1} and ngrams("  ") == {}


def test_bad_memory_folders_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        Memory.load([tmp_path / "nope"])
    with pytest.raises(UserError, match="no train.jsonl"):
        Memory.load([tmp_path])
    (tmp_path / "train.jsonl").write_text('{"persona": "민수"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"train.jsonl:1: not a prepared pair"):
        Memory.load([tmp_path])
    memory = Memory.load([write_data(tmp_path / "other", persona="지은")])
    with pytest.raises(UserError, match="no train pairs of 민수"):
        memory.check([PERSONA])


def test_memory_goes_into_the_system_turn_of_the_engine_prompt(engine, tmp_path):
    """The chat with a memory renders the recalled exchanges through the shared builder; without one,
    or for the MMI baseline (no conversation), the prompt is the plain one."""
    info = engine.persona("minji")
    memory = Memory.load([write_data(tmp_path / "data", persona=info.persona)])
    remembering = Engine(engine.model, engine.tokenizer, engine.personas, memory)
    history = [{"role": "user", "content": "저녁 뭐 먹을래"}]
    recalled = remembering.recall(history, "minji")
    assert recalled and recalled[0].reply == "국밥 ㄱㄱ"
    prompt = remembering.prompt(history, "minji", 16)
    context = [{"speaker": info.user_speaker, "text": "저녁 뭐 먹을래"}]
    want = chat_format.render(engine.tokenizer, info.instruction, context, "bot", None, None, recalled).input_ids
    assert list(prompt.ids) == want
    assert chat_format.MEMORY_HEADER in engine.tokenizer.decode(prompt.ids)
    assert '- "저녁 뭐 먹을래" → "국밥 ㄱㄱ"' in engine.tokenizer.decode(prompt.ids)
    assert list(prompt.no_context_ids) == list(engine.prompt(history, "minji", 16).no_context_ids)
    assert list(engine.prompt(history, "minji", 16).ids) == chat_format.render(
        engine.tokenizer, info.instruction, context, "bot").input_ids
    assert remembering.recall(history, None) == []  # the bare base model has no persona to remember
    p = GenerationParams(max_new_tokens=6, candidates=1)
    assert remembering.reply(history, "minji", p, seed=1)  # it answers with the longer prompt


def _cli(module: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)


@pytest.mark.parametrize("module", ["chatbot.cli", "chatbot.serve", "chatbot"])
def test_chat_memory_flag_errors_are_one_line_exit_2(module, chat_dirs, tmp_path):
    _, adapters = chat_dirs
    r = _cli(module, "--adapters", str(adapters), "--memory", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.strip() == f"error: --memory {tmp_path / 'nope'}: not a directory"


def test_memory_without_a_persona_of_the_adapters_stops_before_loading(chat_dirs, tmp_path):
    _, adapters = chat_dirs
    r = _cli("chatbot.cli", "--adapters", str(adapters), "--memory", str(write_data(tmp_path / "d")))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --memory: no train pairs of 민지, 준호 in the memory folder(s) (personas there: 민수)"]


def test_evaluate_memory_needs_selection(tmp_path):
    r = _cli("pipeline.evaluate", "--adapter", str(tmp_path), "--data", str(tmp_path), "--memory",
             "--selection-items", "0")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--memory is measured by next-reply selection" in r.stderr
