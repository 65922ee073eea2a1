"""Pairs: context window, at least one context turn, dedupe, split by conversation."""
import json
from datetime import datetime

from data_prep.pairs import PairConfig, PairEncoder, build_pairs, count_by_persona, dedupe, split_by_conversation
from data_prep.records import Conversation, Message

T = datetime(2024, 1, 1, 9, 0)


def conv(cid, *turns):
    return Conversation(cid, tuple(Message(T, s, t, "a.txt") for s, t in turns))


def test_pairs_need_context_and_keep_the_window():
    c = conv("c1", ("민수", "안녕"), ("영희", "응"), ("철수", "뭐해"), ("민수", "밥"), ("영희", "ㅋㅋ"), ("민수", "가자"))
    pairs = build_pairs([c], "민수", "너는 민수야.", context_turns=2, sources={"a.txt": "chat.txt"})
    assert [p.response for p in pairs] == ["밥", "가자"]  # the opening turn has no context
    assert [(t.speaker, t.text) for t in pairs[1].context] == [("민수", "밥"), ("영희", "ㅋㅋ")]
    assert pairs[0].source == "chat.txt" and pairs[0].conversation_id == "c1"
    assert '"persona": "민수"' in pairs[0].dumps()


def test_dedupe_keeps_first():
    c = [conv(f"c{i}", ("영희", "안녕"), ("민수", "응")) for i in range(3)]
    pairs, removed = dedupe(build_pairs(c, "민수", "i", 8))
    assert removed == 2 and [p.conversation_id for p in pairs] == ["c0"]


def test_split_by_conversation_is_seeded_and_disjoint():
    convs = [conv(f"c{i}", ("영희", f"q{i}"), ("민수", "a"), ("영희", "b"), ("민수", f"r{i}")) for i in range(20)]
    pairs = build_pairs(convs, "민수", "i", 8)
    train, val = split_by_conversation(pairs, 0.2, seed=0)
    assert {p.conversation_id for p in train}.isdisjoint({p.conversation_id for p in val})
    assert len({p.conversation_id for p in val}) == 4 and len(train) + len(val) == len(pairs)
    assert split_by_conversation(pairs, 0.2, seed=0) == (train, val)
    assert split_by_conversation(pairs, 0.2, seed=1) != (train, val)
    assert count_by_persona(train, val) == {"민수": {"train": 32, "validation": 8}}
    assert PairConfig(context_turns=0).validate()


def test_pair_encoder_matches_dumps():
    c = conv("c1", ("영희", 'say "hi"\n\t\\ 😀'), ("민수", "응</s>"), ("영희", "\u2028 ㅋ"), ("민수", "끝"))
    pairs = build_pairs([c], "민수", 'i "q"', 8, {"a.txt": "파일.txt"})
    enc = PairEncoder()
    assert [enc.line(p) for p in pairs] == [p.dumps() + "\n" for p in pairs]


def test_write_dataset_reads_lines_longer_than_a_block(tmp_path):
    """pyarrow reads the JSONL in 4 MB blocks; one pair longer than that must still load."""
    import datasets

    from data_prep.pairs import write_dataset, write_pairs
    from data_prep.records import ContextTurn, Pair

    pairs = [Pair("민수", "너는 민수야.", (ContextTurn("친구1", "안녕"),), "응" * n, f"c{i}") for i, n in enumerate((3, 5_000_000))]
    write_pairs(tmp_path, "train", pairs)
    write_pairs(tmp_path, "validation", pairs[:1])
    write_dataset(tmp_path / "dataset", {s: tmp_path / f"{s}.jsonl" for s in ("train", "validation")})
    ds = datasets.load_from_disk(str(tmp_path / "dataset"))
    assert [len(r) for r in ds["train"]["response"]] == [3, 5_000_000] and ds["validation"].num_rows == 1


def test_dataset_from_blocks_parsed_while_writing_equals_reading_the_file(tmp_path, monkeypatch):
    """prepare hands each written block of lines to the worker (parse_jsonl_chunk); the saved
    dataset is the same as reading the whole file, and a split with missing blocks is re-read."""
    import datasets

    from data_prep import pairs as mod
    from data_prep.records import ContextTurn, Pair

    monkeypatch.setattr(mod, "CHUNK_PAIRS", 3)
    rows = [Pair("민수", "너는 민수야.", (ContextTurn("친구1", f"질문 {i}"),), f"답 {i} 😀", f"c{i}") for i in range(10)]
    blocks = []
    mod.write_pairs(tmp_path, "train", rows, on_chunk=lambda *b: (blocks.append(b), mod.parse_jsonl_chunk(*b)))
    # validation: its first block is never parsed, so write_dataset reads that file whole
    mod.write_pairs(tmp_path, "validation", rows[:4], on_chunk=lambda *b: mod.parse_jsonl_chunk(*b) if b[1] else None)
    assert blocks[0][1] == 0 and len(blocks) == 4  # 10 pairs in blocks of 3
    assert blocks[-1][2] == (tmp_path / "train.jsonl").stat().st_size
    mod.write_dataset(tmp_path / "blocks", {s: tmp_path / f"{s}.jsonl" for s in ("train", "validation")})
    assert not mod._PARSED
    mod.write_dataset(tmp_path / "whole", {s: tmp_path / f"{s}.jsonl" for s in ("train", "validation")})
    a, b = datasets.load_from_disk(str(tmp_path / "blocks")), datasets.load_from_disk(str(tmp_path / "whole"))
    for split in ("train", "validation"):
        expected = [json.loads(p.dumps()) for p in (rows if split == "train" else rows[:4])]
        assert a[split].to_list() == b[split].to_list() == expected
