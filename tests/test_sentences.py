"""Long turns split at sentence boundaries; join-back check; one real kss (mecab) call."""
import re
from collections import Counter
from datetime import datetime

from data_prep.records import Conversation, Message
from data_prep.sentences import KssSplitter, SentenceConfig, joins_back, pack, split_long_turns, split_turn

T = datetime(2024, 1, 1, 9, 0)


def naive(text):  # a stand-in splitter: cut before every "두"/"세"/"그"
    return re.split(r" (?=[두세그])", text)


def test_pack_keeps_separators_and_join_back():
    items = [("가나다.", "\n"), ("라마.", " "), ("바사아자차카.", "")]
    assert pack(items, 8) == ["가나다.\n라마.", "바사아자차카."]
    assert joins_back("가 나. 다", ["가나.", "다"])
    assert not joins_back("가나다", ["가나"])


def test_short_conversations_never_call_the_splitter():
    conv = Conversation("c1", (Message(T, "a", "짧아"),))
    def boom(text):
        raise AssertionError("splitter called")
    out, counts = split_long_turns([conv], SentenceConfig(max_turn_chars=20), boom)
    assert out == [conv] and not counts


def test_certain_boundaries_need_no_splitter():
    c = Counter()
    text = "첫 문장이야. 두 번째 문장이야!\n세 번째도 있어"
    assert split_turn(text, 20, lambda t: 1 / 0, c) == ["첫 문장이야. 두 번째 문장이야!", "세 번째도 있어"]
    assert c == {"long_turns": 1}


def test_long_turn_becomes_consecutive_turns():
    text = "첫 문장이야 두 번째 문장이야 세 번째도 있어 그리고 네 번째"
    conv = Conversation("c1", (Message(T, "b", "응"), Message(T, "a", text)))
    out, counts = split_long_turns([conv], SentenceConfig(max_turn_chars=20), naive)
    assert [t.text for t in out[0].turns] == ["응", "첫 문장이야 두 번째 문장이야", "세 번째도 있어 그리고 네 번째"]
    assert all(t.speaker == "a" for t in out[0].turns[1:])
    assert counts["long_turns"] == 1


def test_lossy_splitter_falls_back_to_whole_text():
    c = Counter()
    assert split_turn("a" * 30 + " 끝", 20, lambda t: ["a" * 30], c) == ["a" * 30 + " 끝"]
    assert c["kss_mismatch"] == 1


def test_real_kss_with_mecab_joins_back():
    splitter = KssSplitter("mecab")
    text = "오늘 회사에서 진짜 힘들었어 ㅠㅠ 팀장님이 또 야근하래 그래서 밥도 못 먹었어 너는 뭐 했어"
    c = Counter()
    chunks = split_turn(text, 30, splitter, c)
    assert c["kss_calls"] == 1
    assert splitter.used_backend == "mecab"
    assert len(chunks) >= 2 and joins_back(text, chunks) and not c["kss_mismatch"]
