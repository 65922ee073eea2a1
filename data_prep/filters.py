"""Drop what is not speech: system events, deleted messages, media placeholders, calls, blanks.

Every dropped message is counted under one reason, so the report accounts for
every message the parsers produced. Patterns cover the Korean and English UIs
of the PC, Android, iOS and macOS exports.
"""
from __future__ import annotations

import re
from collections import Counter

from data_prep.records import Message

REASONS = ("system", "deleted", "media", "call", "empty")

_DELETED = re.compile(
    r"(?:메시지가 삭제되었습니다\.?|삭제된 메시지입니다\.?|This message (?:was|has been) deleted\.?"
    r"|Deleted message\.?|Message deleted\.?)",
    re.IGNORECASE,
)
# the whole (stripped) text is a placeholder; `‹` is how some years print `<`
_MEDIA = re.compile(
    r"[<‹(]?(?:사진|동영상|이모티콘|음성메시지|음성 메시지|움짤|파일|사진 읽지 않음|동영상 읽지 않음"
    r"|Photo|Photos|Video|Videos|Emoticons?|Sticker|Voice message|File)[>›)]?"
    r"|사진 \d+장|Photos? \d+|\d+ Photos"
    r"|(?:파일|File|샵검색|#검색|지도|Map|연락처|Contact)\s?:.*",
    re.IGNORECASE | re.DOTALL,
)
_CALL = re.compile(
    r"(?:보이스톡|페이스톡|그룹콜|Voice ?Talk|Face ?Talk|Voice Call|Video Call)"
    r"(?:\s*(?:해요|취소|부재중|Canceled|Cancelled|Missed|\d{1,2}:\d{2}(?::\d{2})?))?"
    r"|통화시간 \d{1,2}:\d{2}(?::\d{2})?|부재중 (?:통화|보이스톡|페이스톡)",
    re.IGNORECASE,
)


# one fullmatch instead of three: the group that matched names the reason
_NOT_SPEECH = re.compile(
    "|".join(f"(?P<{name}>{p.pattern})" for name, p in (("deleted", _DELETED), ("media", _MEDIA), ("call", _CALL))),
    re.IGNORECASE | re.DOTALL,
)


def drop_reason(m: Message) -> str | None:
    """Why ``m`` is not speech, or None when it is. Speaker "" marks a system event."""
    if not m.speaker:
        return "system"
    text = m.text.strip()
    if not text:
        return "empty"
    if len(text) > 40 and not text.startswith(("파일", "File", "샵검색", "#검색", "지도", "Map", "연락처", "Contact")):
        return None  # placeholders are short; skip the regexes for ordinary long text
    m = _NOT_SPEECH.fullmatch(text)
    return m.lastgroup if m else None


def drop_non_speech(messages: list[Message]) -> tuple[list[Message], Counter]:
    """Stage: keep speech; returns (kept, dropped count per reason)."""
    dropped: Counter = Counter()
    kept = []
    for m in messages:
        reason = drop_reason(m)
        if reason is None:
            kept.append(m)
        else:
            dropped[reason] += 1
    return kept, dropped
