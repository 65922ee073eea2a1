"""Turns and conversations: merge bursts of one speaker, cut conversations at long gaps.

People type one thought as several quick messages; a *burst* (consecutive
messages of one speaker, each within ``burst_gap`` of the previous) becomes one
turn, joined with newlines. A *conversation* ends where the gap between two
turns is longer than ``conversation_gap`` or where the source file changes.
Messages without a timestamp never merge and never cut on time.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from itertools import chain

from data_prep.records import Conversation, Message


@dataclass(frozen=True)
class TurnConfig:
    burst_gap_s: float = 120.0  # messages of one speaker closer than this merge into one turn
    conversation_gap_s: float = 3600.0  # a longer silence starts a new conversation

    def validate(self) -> list[str]:
        problems = []
        if self.burst_gap_s < 0:
            problems.append("--burst-gap: must be >= 0 seconds")
        if self.conversation_gap_s <= 0:
            problems.append("--conversation-gap: must be > 0 seconds")
        return problems


# ends the last burst: no speaker equals None
_END = Message(None, None, None, None, None)  # type: ignore[arg-type]


def merge_bursts(messages: list[Message], burst_gap_s: float) -> list[Message]:
    """Stage: consecutive messages of one speaker within the gap become one turn (texts joined by newline).

    The turn keeps the first message's line and the last message's time, so the
    next gap is measured from where the burst ended. Runs on every message: fields
    are unpacked once, and a burst is a slice of ``messages`` closed when the next
    message does not continue it.
    """
    gap, zero = timedelta(seconds=burst_gap_s), timedelta(0)
    out: list[Message] = []
    append, new_tuple = out.append, tuple.__new__
    start, last_speaker, last_source, last_ts = 0, None, None, None
    for i, (ts, speaker, _, source, _) in enumerate(chain(messages, (_END,))):
        if (speaker != last_speaker or source != last_source or ts is None or last_ts is None
                or not zero <= ts - last_ts <= gap):
            if i - start > 1:  # Message(...) minus the NamedTuple's Python-level __new__
                first = messages[start]
                text = "\n".join([m[2] for m in messages[start:i]])
                append(new_tuple(Message, (last_ts, first.speaker, text, first.source, first.line)))
            elif i:
                append(messages[start])
            start = i
        last_speaker, last_source, last_ts = speaker, source, ts
    return out


def conversation_id(source: str, index: int) -> str:
    """Stable id that does not reveal the file name (it may hold a person's name)."""
    return f"c{hashlib.sha1(source.encode()).hexdigest()[:8]}-{index:05d}"


def split_conversations(turns: list[Message], conversation_gap_s: float) -> list[Conversation]:
    """Stage: cut the turn sequence where the silence exceeds the gap or the source file changes."""
    gap = timedelta(seconds=conversation_gap_s)
    convs: list[Conversation] = []
    current: list[Message] = []
    counters: dict[str, int] = {}
    for t in turns:
        if current and (t.source != current[-1].source or _breaks(current[-1], t, gap)):
            convs.append(_close(current, counters))
            current = []
        current.append(t)
    if current:
        convs.append(_close(current, counters))
    return convs


def _breaks(prev: Message, cur: Message, gap: timedelta) -> bool:
    if prev.ts is None or cur.ts is None:
        return False
    return cur.ts - prev.ts > gap or cur.ts < prev.ts - gap  # a clock jump backwards is a break too


def _close(turns: list[Message], counters: dict[str, int]) -> Conversation:
    src = turns[0].source
    counters[src] = counters.get(src, 0) + 1
    return Conversation(conversation_id(src, counters[src]), tuple(turns))


def reply_counts(messages: list[Message], conversation_gap_s: float) -> dict[str, int]:
    """Per speaker, messages that answer someone else (previous message by another speaker, same file, no long gap).

    Equals the number of pairs a speaker would get before de-duplication and
    splitting, computed cheaply on messages so personas can be chosen early.
    """
    gap = timedelta(seconds=conversation_gap_s)
    counts: dict[str, int] = {}
    prev: Message | None = None
    for m in messages:
        if prev is not None and prev.speaker != m.speaker and prev.source == m.source and not _breaks(prev, m, gap):
            counts[m.speaker] = counts.get(m.speaker, 0) + 1
        prev = m
    return counts
