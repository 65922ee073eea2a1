"""burst merge and conversation split."""
from datetime import datetime, timedelta

from data_prep.conversations import merge_bursts, reply_counts, split_conversations
from data_prep.records import Message

T = datetime(2024, 1, 1, 9, 0)


def at(minutes, speaker, text, source="a.txt"):
    return Message(T + timedelta(minutes=minutes), speaker, text, source, int(minutes))


def test_burst_of_one_speaker_becomes_one_turn():
    msgs = [at(0, "민수", "야"), at(1, "민수", "뭐해"), at(2, "영희", "밥"), at(10, "영희", "먹어")]
    turns = merge_bursts(msgs, burst_gap_s=120)
    assert [(t.speaker, t.text) for t in turns] == [("민수", "야\n뭐해"), ("영희", "밥"), ("영희", "먹어")]
    assert turns[0].line == 0 and turns[0].ts == msgs[1].ts


def test_bursts_break_at_file_change_missing_time_clock_jump_and_gap():
    no_time = Message(None, "민수", "c", "a.txt", 3)
    msgs = [at(0, "민수", "a"), at(2, "민수", "b"), no_time, at(3, "민수", "d"), at(4, "민수", "e", "b.txt"),
            at(3, "민수", "f", "b.txt"), at(5.02, "민수", "g", "b.txt"), at(6, "민수", "h", "b.txt")]
    turns = merge_bursts(msgs, burst_gap_s=120)  # 2 minutes apart still merge, 121 s do not
    assert [t.text for t in turns] == ["a\nb", "c", "d", "e", "f", "g\nh"]
    assert [(t.line, t.ts) for t in turns][-1] == (5, msgs[-1].ts)
    assert merge_bursts([], 120) == [] and merge_bursts(msgs[:1], 0) == msgs[:1]


def test_conversations_cut_at_long_gap_and_file_change():
    turns = [at(0, "민수", "a"), at(5, "영희", "b"), at(200, "민수", "c"), at(201, "영희", "d", "b.txt")]
    convs = split_conversations(turns, conversation_gap_s=3600)
    assert [[t.text for t in c.turns] for c in convs] == [["a", "b"], ["c"], ["d"]]
    assert len({c.id for c in convs}) == 3
    assert "a.txt" not in convs[0].id  # ids do not reveal file names


def test_reply_counts():
    msgs = [at(0, "민수", "a"), at(1, "영희", "b"), at(2, "영희", "c"), at(3, "민수", "d"), at(300, "영희", "e")]
    assert reply_counts(msgs, 3600) == {"영희": 1, "민수": 1}
