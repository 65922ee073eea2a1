"""Pairs: context window, at least one context turn, dedupe, split by conversation, JSONL lines."""
import json
from datetime import datetime

from data_prep.pairs import PairConfig, build_pair_lines, count_by_persona
from data_prep.records import ContextTurn, Conversation, Message, Pair

T = datetime(2024, 1, 1, 9, 0)


def conv(cid, *turns, source="a.txt"):
    return Conversation(cid, tuple(Message(T, s, t, source) for s, t in turns))


def build(convs, persona="민수", instruction="i", context_turns=8, sources=None):
    lines = build_pair_lines(convs, [persona], context_turns, sources)
    lines.instruct({persona: instruction})
    return lines


def test_pairs_need_context_and_keep_the_window():
    c = conv("c1", ("민수", "안녕"), ("영희", "응"), ("철수", "뭐해"), ("민수", "밥"), ("영희", "ㅋㅋ"), ("민수", "가자"))
    pairs = build([c], "민수", "너는 민수야.", context_turns=2, sources={"a.txt": "chat.txt"}).pairs()
    assert pairs == [  # the opening turn has no context
        Pair("민수", "너는 민수야.", (ContextTurn("영희", "응"), ContextTurn("철수", "뭐해")), "밥", "c1", "chat.txt"),
        Pair("민수", "너는 민수야.", (ContextTurn("민수", "밥"), ContextTurn("영희", "ㅋㅋ")), "가자", "c1", "chat.txt"),
    ]


def test_lines_are_pair_dumps_persona_by_persona():
    """Each line is Pair.dumps() byte for byte (escapes, emoji, U+2028 kept raw); personas one after another."""
    a = conv("c1", ("영희", 'say "hi"\n\t\\ 😀'), ("민수", "응</s>"), ("영희", "\u2028 ㅋ"), ("민수", "끝"))
    b = conv("c2", ("민수", "또"), ("영희", "왜"), source="b.txt")
    lines = build_pair_lines([a, b], ["민수", "영희"], 2, {"a.txt": "파일.txt"})
    lines.instruct({"민수": 'i "q"', "영희": "j"})
    pairs = lines.pairs()
    assert [(p.persona, p.response, p.source) for p in pairs] == [
        ("민수", "응</s>", "파일.txt"), ("민수", "끝", "파일.txt"), ("영희", "\u2028 ㅋ", "파일.txt"), ("영희", "왜", "b.txt")]
    assert lines.encode().decode("utf-8") == "".join(p.dumps() + "\n" for p in pairs)
    assert lines.response_chars == [len(p.response) for p in pairs]
    assert lines.encode(1, 3) == "".join(p.dumps() + "\n" for p in pairs[1:3]).encode("utf-8")


def test_dedupe_keeps_first():
    c = [conv(f"c{i}", ("영희", "안녕"), ("민수", "응")) for i in range(3)]
    lines = build(c + [conv("c3", ("영희", "안녕!"), ("민수", "응"))])
    assert lines.duplicates == 2 and lines.conversation_ids == ["c0", "c3"]
    # the same context and response for another persona is no repeat
    other = build_pair_lines(c[:1] + [conv("c9", ("영희", "안녕"), ("철수", "응"))], ["민수", "철수"], 8)
    assert other.duplicates == 0 and other.personas == ["민수", "철수"]


def test_split_by_conversation_is_seeded_and_disjoint():
    convs = [conv(f"c{i}", ("영희", f"q{i}"), ("민수", "a"), ("영희", "b"), ("민수", f"r{i}")) for i in range(20)]
    lines = build(convs)
    train, val = lines.split(0.2, seed=0)
    assert set(train.conversation_ids).isdisjoint(val.conversation_ids)
    assert len(set(val.conversation_ids)) == 4 and len(train) + len(val) == len(lines)
    assert train.pairs() + val.pairs() == sorted(lines.pairs(), key=lambda p: p.conversation_id in val.conversation_ids)
    assert [x.encode() for x in lines.split(0.2, seed=0)] == [train.encode(), val.encode()]
    assert lines.split(0.2, seed=1)[1].conversation_ids != val.conversation_ids
    assert count_by_persona(train, val) == {"민수": {"train": 32, "validation": 8}}
    assert PairConfig(context_turns=0).validate()


def test_write_dataset_reads_lines_longer_than_a_block(tmp_path):
    """pyarrow reads the JSONL in 4 MB blocks; one pair longer than that must still load."""
    import datasets

    from data_prep.pairs import write_dataset, write_pairs

    pairs = build([conv(f"c{i}", ("친구1", "안녕"), ("민수", "응" * n)) for i, n in enumerate((3, 5_000_000))])
    write_pairs(tmp_path, "train", pairs)
    write_pairs(tmp_path, "validation", pairs.select([True, False]))
    write_dataset(tmp_path / "dataset", {s: tmp_path / f"{s}.jsonl" for s in ("train", "validation")})
    ds = datasets.load_from_disk(str(tmp_path / "dataset"))
    assert [len(r) for r in ds["train"]["response"]] == [3, 5_000_000] and ds["validation"].num_rows == 1


def test_dataset_from_blocks_parsed_while_writing_equals_reading_the_file(tmp_path, monkeypatch):
    """prepare hands each written block of lines to the worker (parse_jsonl_chunk); the saved
    dataset is the same as reading the whole file, and a split with missing blocks is re-read."""
    import datasets

    from data_prep import pairs as mod

    monkeypatch.setattr(mod, "CHUNK_PAIRS", 3)
    rows = build([conv(f"c{i}", ("친구1", f"질문 {i}"), ("민수", f"답 {i} 😀")) for i in range(10)], instruction="너는 민수야.")
    first4 = rows.select([i < 4 for i in range(10)])
    blocks = []
    mod.write_pairs(tmp_path, "train", rows, on_chunk=lambda *b: (blocks.append(b), mod.parse_jsonl_chunk(*b)))
    # validation: its first block is never parsed, so write_dataset reads that file whole
    mod.write_pairs(tmp_path, "validation", first4, on_chunk=lambda *b: mod.parse_jsonl_chunk(*b) if b[1] else None)
    assert blocks[0][1] == 0 and len(blocks) == 4  # 10 pairs in blocks of 3
    assert blocks[-1][2] == (tmp_path / "train.jsonl").stat().st_size
    mod.write_dataset(tmp_path / "blocks", {s: tmp_path / f"{s}.jsonl" for s in ("train", "validation")})
    assert not mod._PARSED
    mod.write_dataset(tmp_path / "whole", {s: tmp_path / f"{s}.jsonl" for s in ("train", "validation")})
    a, b = datasets.load_from_disk(str(tmp_path / "blocks")), datasets.load_from_disk(str(tmp_path / "whole"))
    for split in ("train", "validation"):
        expected = [json.loads(p.dumps()) for p in (rows if split == "train" else first4).pairs()]
        assert a[split].to_list() == b[split].to_list() == expected
