"""The chat format: special tokens declared once, one prompt builder for training and serving.

A rendered example, as token ids (text shown for reading only)::

    [bos] <|system|> {instruction} <|eot|>
          <|user|> {speaker} <|sep|> {text} <|eot|>      # a turn by anyone but the persona
          <|bot|> {text} <|eot|>                         # an earlier turn by the persona
          <|bot|> {response} <|eot|>                     # the reply: the only supervised part

Each text segment is encoded on its own and the special ids are inserted between
them, so the ids never depend on how a tokenizer treats spaces around special
tokens (SentencePiece drift). :data:`CHAT_TEMPLATE` renders the same thing as a
string so ``tokenizer.apply_chat_template`` gives the same ids; a test holds
them equal. User text is stripped of every special-token string first, so a
message containing ``<|eot|>`` or ``<usr>`` cannot inject that token.

With ``memory`` (the persona's own past exchanges, retrieved by :mod:`core.memory`), the
system turn is the instruction followed by :func:`memory_section`; that section does not
count against ``max_length``, so the conversation kept is the same with and without it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

IGNORE_INDEX = -100

SYSTEM = "<|system|>"  # opens the persona instruction (the rendered persona card)
USER = "<|user|>"  # opens a turn by someone other than the persona; name, SEP, text follow
BOT = "<|bot|>"  # opens a turn by the persona; in training the last one is the supervised reply
SEP = "<|sep|>"  # separates a speaker's name from what they said
EOT = "<|eot|>"  # ends every turn; supervised after the reply, generation stops on it
PAD = "<|pad|>"  # padding, added only when the base tokenizer has no pad distinct from EOS
SPECIAL_TOKENS: tuple[str, ...] = (SYSTEM, USER, BOT, SEP, EOT)

CHAT_TEMPLATE = (
    "{{- bos_token if bos_token else '' -}}"
    "{%- if not messages or messages[0]['role'] != 'system' -%}<|system|><|eot|>{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}<|system|>{{ m['content'] }}<|eot|>"
    "{%- elif m['role'] == 'assistant' -%}<|bot|>{{ m['content'] }}<|eot|>"
    "{%- else -%}<|user|>{{ m.get('name') or '' }}<|sep|>{{ m['content'] }}<|eot|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|bot|>{%- endif -%}"
)


MEMORY_HEADER = "예전에 비슷한 말에 이렇게 답했어:"  # "you once answered similar messages like this:"
MEMORY_CHARS = 200  # a remembered message or reply is cut to this many characters in the prompt


@dataclass(frozen=True)
class Rendered:
    """Token ids of one example; ``labels`` is -100 except on the reply and its EOT."""

    input_ids: list[int]
    labels: list[int]
    context_turns: int  # context turns kept after trimming from the left

    @property
    def supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    @property
    def reply_start(self) -> int:
        """Index of the first supervised token: the prompt (instruction, context, ``<|bot|>``) is before it."""
        return next(i for i, x in enumerate(self.labels) if x != IGNORE_INDEX)


def special_ids(tokenizer) -> dict[str, int]:
    """Map each chat special token to its id; raises if the tokenizer was not extended."""
    ids = {}
    for tok in SPECIAL_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is None or tid == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {tok!r}: extend it first (python -m pipeline.extend)")
        ids[tok] = tid
    return ids


def pad_id(tokenizer) -> int:
    """The padding id; never EOS or EOT, so padding cannot hide a supervised end of turn."""
    pid = tokenizer.pad_token_id
    eot = tokenizer.convert_tokens_to_ids(EOT)
    if pid is None or pid in (tokenizer.eos_token_id, eot):
        raise ValueError("tokenizer has no pad token distinct from EOS/EOT: extend it first")
    return pid


# a base model's own end-of-turn/end-of-text token: <|eot|>'s row starts as a copy of it (so a
# fresh adapter already knows where a turn ends), and generation stops on it too
NATIVE_END_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>")


def native_end_id(tokenizer) -> int | None:
    """The base's own end-of-turn token id (Gemma: ``<end_of_turn>``), else its EOS id.

    Looked up token by token: ``get_vocab()`` builds a dict of the whole vocabulary (0.2 s for
    Gemma's 262k tokens), and this runs for every reply."""
    unknown = (None, tokenizer.unk_token_id)
    for tok in NATIVE_END_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid not in unknown:
            return tid
    return tokenizer.eos_token_id


def stop_ids(tokenizer) -> list[int]:
    """Ids that end a generated reply: ``<|eot|>`` first, then the base's EOS and end-of-turn."""
    ids = [special_ids(tokenizer)[EOT], tokenizer.eos_token_id, native_end_id(tokenizer)]
    return list(dict.fromkeys(i for i in ids if i is not None))


@lru_cache(maxsize=16)
def _special_pattern(tokens: tuple[str, ...]) -> re.Pattern | None:
    toks = sorted({t for t in tokens if t}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, toks))) if toks else None


# non-special added tokens that still act as control tokens (Gemma's <start_of_image>);
# HTML-like pieces such as <b> or </table> have no "_" or "|" and stay text
_CONTROL_LIKE = re.compile(r"<[^<>\s]*[_|][^<>\s]*>")


def _all_special_strings(tokenizer) -> tuple[str, ...]:
    # Only *special* (control) tokens can be injected. Plain added tokens are ordinary text
    # pieces: Gemma 3 adds "\n", "\t\t", "<b>", "</table>"... as added tokens, and stripping
    # them would eat newlines and markup from what people wrote.
    added = [
        str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
        if getattr(t, "special", True) or _CONTROL_LIKE.fullmatch(str(t))
    ]
    found = set(added) | set(tokenizer.all_special_tokens) | set(SPECIAL_TOKENS)
    return tuple(sorted(t for t in found if t.strip()))


def _special_strings(tokenizer) -> tuple[str, ...]:
    # added_tokens_decoder is rebuilt on every access: ~40 ms for Gemma's 6,400 added
    # tokens, 0.5 s per render() uncached. Cache it on the tokenizer, keyed by its
    # length so that adding tokens refreshes it.
    n = len(tokenizer)
    cached = getattr(tokenizer, "_chat_format_specials", None)
    if cached is None or cached[0] != n:
        cached = (n, _all_special_strings(tokenizer))
        setattr(tokenizer, "_chat_format_specials", cached)
    return cached[1]


def _strip_specials(text: str, pat: re.Pattern | None) -> str:
    prev = None
    while pat is not None and prev != text:
        prev, text = text, pat.sub("", text)
    return text


def sanitize(text: str, tokenizer) -> str:
    """Remove every special/added token string (``<|eot|>``, ``<usr>``, ``<bos>``...) from user text.

    Repeated until stable so that ``<|e<|eot|>ot|>`` cannot reassemble into a token.
    """
    return _strip_specials(text, _special_pattern(_special_strings(tokenizer)))


def speaker_text(t: Any) -> tuple[str, str]:
    """(speaker, text) of a turn given as an object with ``speaker``/``text`` or as a dict."""
    if isinstance(t, Mapping):
        return str(t.get("speaker", "")), str(t.get("text", ""))
    return str(t.speaker), str(t.text)


def _encode_all(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    pat = _special_pattern(_special_strings(tokenizer))
    clean = [_strip_specials(t, pat) for t in texts]
    return [list(x) for x in tokenizer(clean, add_special_tokens=False)["input_ids"]]


def _cut(text: str) -> str:
    text = " / ".join(line.strip() for line in str(text).splitlines() if line.strip())
    return text if len(text) <= MEMORY_CHARS else text[:MEMORY_CHARS - 1] + "…"


def memory_section(memory: Sequence[Any]) -> str:
    """The remembered exchanges as system-turn text: a header, then ``- "message" → "reply"`` a line.

    ``memory`` items have ``message`` and ``reply`` (a :class:`core.memory.Recalled`) or are
    (message, reply) pairs; "" when there are none. A multi-line message or reply is joined with " / "."""
    lines = []
    for m in memory:
        message, reply = (m.message, m.reply) if hasattr(m, "reply") else (m[0], m[1])
        lines.append(f'- "{_cut(message)}" → "{_cut(reply)}"')
    return MEMORY_HEADER + "\n" + "\n".join(lines) if lines else ""


def with_memory(instruction: str, memory: Sequence[Any]) -> str:
    """The system-turn text: the instruction, then the memory section after a blank line (if any)."""
    section = memory_section(memory)
    if not section:
        return instruction
    return f"{instruction}\n\n{section}" if instruction else section


def render_backward(tokenizer, speaker: str, reply: str, message: str) -> Rendered:
    """The backward model's example (``core.models.BACKWARD_DIR``): ``reply`` as ``speaker``'s turn after the
    empty instruction, ``message`` as the supervised reply, so its score is log p(message | reply). The reply
    is the one turn shown: the message is what it must explain."""
    return render(tokenizer, "", ({"speaker": speaker, "text": reply},), "", message)


def render(
    tokenizer,
    instruction: str,
    context: Sequence[Any],
    persona: str,
    response: str | None = None,
    max_length: int | None = None,
    memory: Sequence[Any] = (),
) -> Rendered | None:
    """Build token ids (and labels) for one example.

    ``context`` holds turns with ``speaker``/``text`` (objects or dicts); a turn
    whose speaker is ``persona`` is rendered as the persona's own (BOT) turn.
    With ``response`` the result ends with the supervised reply + EOT; without
    it, with ``<|bot|>`` as the generation prompt. Context is trimmed from the
    oldest turn to fit ``max_length``; the reply is never cut: if instruction
    plus reply alone do not fit, returns None (the caller counts the drop).
    ``memory``: past exchanges shown after the instruction (:func:`with_memory`);
    their tokens come on top of ``max_length``.
    """
    sid = special_ids(tokenizer)
    turns = [speaker_text(t) for t in context]
    system = with_memory(instruction, memory)
    # one batched encode call: system text, then (speaker, text) per turn, then the reply (then the bare
    # instruction, to know what the memory adds)
    texts = [system] + [x for sp, tx in turns for x in (sp, tx)]
    if response is not None:
        texts.append(response)
    if system != instruction:
        texts.append(instruction)
    enc = _encode_all(tokenizer, texts)
    bare = enc.pop() if system != instruction else enc[0]
    extra = max(len(enc[0]) - len(bare), 0)  # the memory's tokens
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    head = bos + [sid[SYSTEM]] + enc[0] + [sid[EOT]]
    body = []
    for i, (speaker, _) in enumerate(turns):
        name_ids, text_ids = enc[1 + 2 * i], enc[2 + 2 * i]
        if speaker == persona:
            body.append([sid[BOT]] + text_ids + [sid[EOT]])
        else:
            body.append([sid[USER]] + name_ids + [sid[SEP]] + text_ids + [sid[EOT]])
    if response is not None:
        reply = enc[-1] + [sid[EOT]]
        tail, tail_labels = [sid[BOT]] + reply, [IGNORE_INDEX] + reply
    else:
        tail, tail_labels = [sid[BOT]], [IGNORE_INDEX]
    budget = None if max_length is None else max_length + extra - len(head) - len(tail)
    if budget is not None and budget < 0:
        return None
    kept: list[list[int]] = []
    used = 0
    for ids in reversed(body):
        if budget is not None and used + len(ids) > budget:
            break
        kept.append(ids)
        used += len(ids)
    kept.reverse()
    ctx = [i for ids in kept for i in ids]
    input_ids = head + ctx + tail
    labels = [IGNORE_INDEX] * (len(head) + len(ctx)) + tail_labels
    return Rendered(input_ids, labels, len(kept))


def to_messages(
    instruction: str, context: Iterable[Any], persona: str, response: str | None = None,
    tokenizer=None, memory: Sequence[Any] = (),
) -> list[dict[str, str]]:
    """The same example as chat ``messages`` (system/user/assistant) for ``apply_chat_template``.

    Pass ``tokenizer`` to sanitize the texts exactly as :func:`render` does; ``memory`` as in :func:`render`.
    """
    clean = (lambda s: sanitize(s, tokenizer)) if tokenizer is not None else (lambda s: s)
    msgs = [{"role": "system", "content": clean(with_memory(instruction, memory))}]
    for t in context:
        speaker, text = speaker_text(t)
        if speaker == persona:
            msgs.append({"role": "assistant", "content": clean(text)})
        else:
            msgs.append({"role": "user", "name": clean(speaker), "content": clean(text)})
    if response is not None:
        msgs.append({"role": "assistant", "content": clean(response)})
    return msgs
