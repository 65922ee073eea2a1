"""The dialogue stage's training data: ChatbotData's *train* split as chat pairs.

Each question is the user's turn and its answer the bot's reply. The system turn alternates
between the empty instruction (what the bare base chat uses) and a neutral one, and the user's
name between a few names, so the stage does not tie its replies to one system text or speaker
(persona cards bring their own). On request (``cards``) a share of the rows gets a persona card
instead, measured on the answers themselves under a name of :data:`CARD_NAMES`: the shape of system
text every persona adapter is trained and served with. The held-out split of
:mod:`data_prep.chatbot_data` is never read.

``backward`` turns every pair around (:func:`reversed_pair`): the answer is the user's turn and the
question the reply, the data of the backward model p(message | reply) that reranks replies.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from core.errors import UserError
from data_prep.chatbot_data import DEFAULT_CSV, QA, hash_bucket, load_qa
from data_prep.persona_card import build_card, render_instruction
from data_prep.records import ContextTurn, Pair

PERSONA = "dialogue"  # the persona name the stage's pairs carry (never rendered: it marks the bot's turns)
INSTRUCTIONS = ("", "상대의 말에 자연스럽고 친절하게 답하세요.")  # the bare chat's, and a neutral one
USER_NAMES = ("나", "친구1", "사용자")  # the bare chat's user, prepare's pseudonym style, a generic one
CARD_NAMES = ("민지", "준호", "서연", "지훈", "하은", "도윤")  # names for persona-card instructions (none a user's)
VALIDATION_BUCKETS = 50  # one train-split answer in this many validates instead (~2%, ~210 pairs)


def qa_pair(qa: QA, cards: Sequence[str] = (), card_share: float = 0.0) -> Pair:
    """One ChatbotData row as a chat pair: the question is the user's turn, the answer the reply.

    ``card_share`` of the rows (by a hash of the question) take one of ``cards`` as the instruction."""
    instruction = INSTRUCTIONS[hash_bucket(qa.question, "instruction", len(INSTRUCTIONS))]
    if cards and hash_bucket(qa.question, "card", 1000) < card_share * 1000:
        instruction = cards[hash_bucket(qa.question, "card-name", len(cards))]
    user = USER_NAMES[hash_bucket(qa.question, "user", len(USER_NAMES))]
    return Pair(PERSONA, instruction, (ContextTurn(user, qa.question),), qa.answer,
                conversation_id=hashlib.sha256(qa.answer.encode("utf-8")).hexdigest()[:12], source="ChatbotData")


def reversed_pair(pair: Pair) -> Pair:
    """The exchange read the other way: the reply as the user's turn (same user), the message as the reply."""
    if len(pair.context) != 1:
        raise ValueError(f"a reversed pair needs exactly one message before the reply, not {len(pair.context)}")
    (turn,) = pair.context
    return replace(pair, context=(ContextTurn(turn.speaker, pair.response),), response=turn.text)


def dialogue_pairs(csv: str | Path = DEFAULT_CSV, no_context: float = 0.0,
                   cards: float = 0.0, backward: bool = False) -> tuple[list[Pair], list[Pair]]:
    """(train, validation) pairs from ChatbotData's train split only; split by a hash of the answer,
    so an answer shared by several questions is never on both sides.

    ``no_context``: the share of train rows (by a hash of the question) that also train their answer with
    no question at all, right after the instruction: the prompt PMI's p(reply) is read from, which
    training otherwise never shows (the condition dropout of classifier-free guidance).

    ``cards``: the share of rows (train and validation) whose instruction is a persona card instead,
    rendered by :func:`data_prep.persona_card.build_card` from the train answers under each of
    :data:`CARD_NAMES`, so that the stage answers the message under a card as it does without one.

    ``backward``: every pair reversed (:func:`reversed_pair`); the split is the same, by the original answer.
    """
    if backward and (no_context or cards):
        raise UserError("the backward model reads one message and one reply: no --no-context or --cards with it")
    rows = load_qa(csv, split="train")
    validation = [hash_bucket(qa.answer, "validation", VALIDATION_BUCKETS) == 0 for qa in rows]
    texts = [qa.answer for qa, v in zip(rows, validation) if not v]
    card = build_card(CARD_NAMES[0], texts) if cards and texts else None  # measured once, rendered per name
    instructions = [render_instruction(replace(card, name=name)) for name in CARD_NAMES] if card else []
    train, val = [], []
    for qa, held in zip(rows, validation):
        pair = qa_pair(qa, instructions, cards)
        pair = reversed_pair(pair) if backward else pair
        (val if held else train).append(pair)
        if not held and no_context and hash_bucket(qa.question, "no-context", 1000) < no_context * 1000:
            train.append(replace(pair, context=()))
    if not train or not val:
        raise UserError(f"{csv}: too few ChatbotData rows for a dialogue stage ({len(train)} train, {len(val)} "
                        "validation)")
    return train, val


def write_data(directory: Path, train: Sequence[Pair], val: Sequence[Pair]) -> Path:
    """Write ``train.jsonl`` / ``validation.jsonl`` as the prepare stage does; returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, pairs in (("train.jsonl", train), ("validation.jsonl", val)):
        (directory / name).write_text("".join(p.dumps() + "\n" for p in pairs), encoding="utf-8")
    return directory
