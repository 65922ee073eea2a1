"""drop stage: system events, deleted messages, media placeholders, calls; counted per reason."""
from datetime import datetime

from data_prep.filters import drop_non_speech, drop_reason
from data_prep.records import Message

T = datetime(2024, 1, 1, 9, 0)


def m(text, speaker="민수"):
    return Message(T, speaker, text)


def test_drops_counted_per_reason():
    msgs = [m("영희님이 들어왔습니다.", ""), m("사진"), m("삭제된 메시지입니다."), m("보이스톡 해요"),
            m("사진 읽는 중이야"), m("이모티콘 귀엽다")]
    kept, dropped = drop_non_speech(msgs)
    assert [x.text for x in kept] == ["사진 읽는 중이야", "이모티콘 귀엽다"]
    assert dropped == {"system": 1, "media": 1, "deleted": 1, "call": 1}
    assert len(kept) + sum(dropped.values()) == len(msgs)


def test_placeholder_variants():
    for text in ("사진 3장", "‹사진>", "<사진 읽지 않음>", "이모티콘 ", "동영상", "파일: 보고서.pdf",
                 "샵검색: 맛집", "음성메시지", "Photo", "통화시간 1:23"):
        assert drop_reason(m(text)) in ("media", "call"), text
    assert drop_reason(m("This message was deleted.")) == "deleted"
    assert drop_reason(m("   ")) == "empty"
    assert drop_reason(m("파일 보냈어")) is None
