"""Build KakaoTalk-style chat exports from the SmileStyle parallel dialogues (test/bench helper).

SmileStyle (Smilegate AI, CC BY-NC 4.0) holds casual two-person dialogues, one
utterance per row, each rewritten in 17 speaking styles (one TSV column each); a
row of empty cells ends a dialogue. Here one speaker of every dialogue becomes
a *persona* who always talks in style X, the other a partner in a plain style:

    python -m data_prep.smilestyle --out /tmp/chats --format kakao_windows \\
        --styles halbae,king --partner informal

writes one 1:1 chat per style (``--group``: one group chat, dialogues dealt
round-robin to the personas). Dialogues are hours apart, so conversation
splitting sees each as its own conversation; timestamps are deterministic.
"""
from __future__ import annotations

import csv
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Sequence

from core.errors import UserError
from data_prep.records import Message

DEFAULT_TSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "smilestyle" / "smilestyle_dataset.tsv"
# Display names for the personas (a Korean chat shows Korean names).
PERSONA_NAMES = {
    "formal": "존댓말", "informal": "반말", "android": "안드로이드", "azae": "아재", "chat": "채팅러",
    "choding": "초딩", "emoticon": "이모지", "enfp": "엔프피", "gentle": "신사", "halbae": "할배",
    "halmae": "할매", "joongding": "중딩", "king": "왕", "naruto": "나루토", "seonbi": "선비",
    "sosim": "소심이", "translator": "번역기",
}
START = datetime(2024, 1, 1, 9, 0)
TURN = timedelta(minutes=1)  # between rows of one dialogue
GAP = timedelta(hours=6)  # between dialogues: far above any conversation-split threshold
EXTENSIONS = {"kakao_macos": ".csv", "generic_csv": ".csv", "generic_jsonl": ".jsonl"}

Dialogue = list[dict[str, str]]


def load_dialogues(path: str | Path = DEFAULT_TSV) -> list[Dialogue]:
    """Read the TSV: a list of dialogues, each a list of rows ``{style: utterance}`` (cells may be "")."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except OSError as e:
        raise UserError(f"{path}: cannot read the SmileStyle TSV ({e.strerror or e})") from e
    if not rows:
        raise UserError(f"{path}: empty file")
    styles = [s.strip() for s in rows[0]]
    dialogues: list[Dialogue] = [[]]
    for row in rows[1:]:
        cells = [c.strip() for c in row]
        if not any(cells):
            dialogues.append([])
        else:
            dialogues[-1].append(dict(zip(styles, cells)))
    return [d for d in dialogues if d]


def styles_of(dialogues: list[Dialogue]) -> list[str]:
    return list(dialogues[0][0]) if dialogues and dialogues[0] else []


def _check_styles(dialogues: list[Dialogue], *styles: str) -> None:
    known = styles_of(dialogues)
    bad = [s for s in styles if s not in known]
    if bad:
        raise UserError(f"unknown style(s) {', '.join(bad)}; known: {', '.join(known)}")


def _dialogue_messages(dialogue: Dialogue, persona: tuple[str, str], partner: tuple[str, str],
                       start: datetime, persona_parity: int, skipped: Counter) -> list[Message]:
    """One dialogue as messages; row i belongs to the persona when i % 2 == persona_parity."""
    out = []
    for i, row in enumerate(dialogue):
        style, name = persona if i % 2 == persona_parity else partner
        text = row.get(style, "")
        if not text:
            skipped[f"empty {style} cell"] += 1
            continue
        out.append(Message(start + i * TURN, name, text, "smilestyle", 0))
    return out


def build_chat(dialogues: list[Dialogue], persona_style: str, partner_style: str = "informal",
               persona_name: str | None = None, partner_name: str = "친구", start: datetime = START,
               persona_parity: int = 1, skipped: Counter | None = None) -> list[Message]:
    """A 1:1 chat over all dialogues: the persona speaks rows of ``persona_parity`` in ``persona_style``.

    ``persona_parity=1`` (default): the second speaker of each dialogue, so the
    persona always replies. Rows whose cell is empty are skipped and counted
    in ``skipped`` (by reason) when given.
    """
    return build_group_chat(dialogues, [persona_style], partner_style,
                            {persona_style: persona_name} if persona_name else None,
                            partner_name, start, persona_parity, skipped)


def build_group_chat(dialogues: list[Dialogue], persona_styles: Sequence[str], partner_style: str = "informal",
                     names: dict[str, str] | None = None, partner_name: str = "친구", start: datetime = START,
                     persona_parity: int = 1, skipped: Counter | None = None) -> list[Message]:
    """One chat where dialogue k is between the partner and persona ``persona_styles[k % n]``."""
    _check_styles(dialogues, *persona_styles, partner_style)
    if persona_parity not in (0, 1):
        raise UserError(f"persona_parity must be 0 or 1, not {persona_parity}")
    names = {s: (names or {}).get(s) or PERSONA_NAMES.get(s, s) for s in persona_styles}
    skipped = Counter() if skipped is None else skipped
    messages: list[Message] = []
    t = start
    for k, dialogue in enumerate(dialogues):
        style = persona_styles[k % len(persona_styles)]
        messages += _dialogue_messages(dialogue, (style, names[style]), (partner_style, partner_name),
                                       t, persona_parity, skipped)
        t += len(dialogue) * TURN + GAP
    return messages


def build_chats(dialogues: list[Dialogue], persona_styles: Sequence[str], partner_style: str = "informal",
                **kwargs) -> dict[str, list[Message]]:
    """Separate 1:1 chats, one per persona style, each over all dialogues."""
    return {s: build_chat(dialogues, s, partner_style, **kwargs) for s in persona_styles}


def write_export(messages: list[Message], fmt: str = "kakao_windows", **opts) -> str:
    """Render messages as export text of format ``fmt`` (a key of ``data_prep.formats.PARSERS``)."""
    from data_prep.formats import PARSERS

    if fmt not in PARSERS:
        raise UserError(f"--format {fmt}: unknown; choose from {', '.join(PARSERS)}")
    return PARSERS[fmt].write(messages, **opts)


def main(argv: Sequence[str] | None = None) -> int:
    from core.cli import parser

    ap = parser("python -m data_prep.smilestyle", __doc__)
    ap.add_argument("--out", required=True, type=Path, help="directory to write the chat exports into")
    ap.add_argument("--format", default="kakao_windows", help="export format (a data_prep.formats.PARSERS key)")
    ap.add_argument("--styles", default="halbae,king", help="comma-separated persona styles (TSV column names)")
    ap.add_argument("--partner", default="informal", help="style of the partner who talks to every persona")
    ap.add_argument("--partner-name", default="친구", help="display name of the partner")
    ap.add_argument("--group", action="store_true", help="one group chat instead of one 1:1 chat per style")
    ap.add_argument("--persona-first", action="store_true",
                    help="the persona speaks the first row of each dialogue (default: it replies)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N dialogues (0: all)")
    ap.add_argument("--tsv", type=Path, default=DEFAULT_TSV, help="path of smilestyle_dataset.tsv")
    args = ap.parse_args(argv)
    dialogues = load_dialogues(args.tsv)[: args.limit or None]
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    opts = dict(partner_name=args.partner_name, persona_parity=0 if args.persona_first else 1)
    skipped: Counter = Counter()
    if args.group:
        chats = {"group": build_group_chat(dialogues, styles, args.partner, skipped=skipped, **opts)}
    else:
        chats = {s: build_chat(dialogues, s, args.partner, skipped=skipped, **opts) for s in styles}
    args.out.mkdir(parents=True, exist_ok=True)
    for key, messages in chats.items():
        path = args.out / f"smilestyle_{key}{EXTENSIONS.get(args.format, '.txt')}"
        path.write_text(write_export(messages, args.format), encoding="utf-8")
        print(f"{path}: {len(messages)} messages from {len(dialogues)} dialogues")
    detail = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    print(f"skipped {sum(skipped.values())} rows with an empty cell" + (f" ({detail})" if detail else ""))
    return 0


if __name__ == "__main__":
    from core.cli import run_cli

    sys.exit(run_cli(main))
