"""Turn chat exports into persona instruction pairs.

    python -m pipeline.prepare KakaoTalkChats.txt other_chat.csv --out runs/minsu/data --persona 민수
    python -m pipeline.prepare KakaoTalkChats.txt --list-speakers

Stages, in order (see run()): parse -> normalise -> drop non-speech -> remove
personal data -> merge bursts -> split conversations -> split long turns (kss)
-> build and de-duplicate pairs (the writer process measures the persona cards
meanwhile) -> split train/validation by conversation -> persona cards (their
instructions head every pair) -> write.

Writes into --out: train.jsonl, validation.jsonl, dataset/ (datasets.DatasetDict),
personas/NAME.yaml (editable; an edited card is kept on re-runs), stats.json,
report.md + report.png, config.json, and with --export the same pairs as
train_alpaca.jsonl/validation_alpaca.jsonl or train_messages.jsonl/validation_messages.jsonl.
Output is built in a temporary folder beside --out and moved into place at the end.
The exporting user (회원님/You) is called 나 (--self-alias).
"""
from __future__ import annotations

import gc
import json
import logging
import shutil
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from core.cli import parser as make_parser
from core.cli import run_cli, setup_logging
from core.errors import UserError
from core.files import atomic_dir
from data_prep.background import BackgroundWriter
from data_prep.conversations import TurnConfig, merge_bursts, reply_counts, split_conversations
from data_prep import names
from data_prep.errors import ParseError
from data_prep.filters import drop_non_speech
from data_prep.normalize import NormalizeConfig, canonical_speaker, normalize
from data_prep.pairs import (
    EXPORTS,
    PairConfig,
    PairLines,
    build_pair_lines,
    count_by_persona,
    parse_jsonl_chunk,
    write_dataset,
    write_pairs,
)
from data_prep.persona_card import build_card, card_path, resolve_card, sample_texts
from data_prep.pii import PIIConfig, Pseudonymizer, read_redact_list, redact_text, remove_pii, scrub
from data_prep.records import Conversation, Message
from data_prep.report import FileInfo, build_stats, file_stats, write_report, write_stats
from data_prep.sentences import SentenceConfig, split_long_turns

log = logging.getLogger("prepare")
UNPARSED_SAMPLES = 5
BIG_INPUT_BYTES = 5_000_000  # progress bars only above this (small runs stay quiet)
STAGES = ("parse", "normalise", "drop_non_speech", "remove_pii", "merge_bursts", "split_conversations",
          "sentences", "build_pairs", "split", "persona_cards", "write")


# each stage's config holds its own defaults; PrepareConfig and the flags take them from there
_PAIRS, _TURNS, _SENTENCES = PairConfig(), TurnConfig(), SentenceConfig()
_NORMALIZE, _PII = NormalizeConfig(), PIIConfig()


@dataclass(frozen=True)
class PrepareConfig:
    """Everything one prepare run needs; written to ``config.json`` next to the output."""

    inputs: tuple[str, ...]  # chat export files (any supported format, mixed)
    out: str = ""  # output folder; replaced as a whole at the end of a successful run
    personas: tuple[str, ...] = ()  # speakers to imitate; empty: everyone with >= min_replies replies
    min_replies: int = 20  # replies a speaker needs to become a persona when none is named
    context_turns: int = _PAIRS.context_turns  # previous turns (any speakers) given as context per pair
    burst_gap_s: float = _TURNS.burst_gap_s  # one speaker's messages closer than this merge into one turn
    conversation_gap_s: float = _TURNS.conversation_gap_s  # a longer silence starts a new conversation
    max_turn_chars: int = _SENTENCES.max_turn_chars  # longer turns are split at sentence boundaries
    cap_laughter: int = _NORMALIZE.cap_repeats  # longest run of one repeated character kept (ㅋㅋㅋㅋ); 0 = off
    val_ratio: float = _PAIRS.val_ratio  # share of conversations held out for validation
    seed: int = _PAIRS.seed  # seeds the conversation split
    keep_pii: bool = False  # True: no placeholders, no pseudonyms
    redact_list: str = ""  # file of the user's own terms (one a line) replaced by <이름> everywhere
    pseudonym_prefix: str = _PII.pseudonym_prefix  # other speakers become 친구1, 친구2...
    strict: bool = False  # any unparsed line is an error
    exports: tuple[str, ...] = ()  # extra shapes: "alpaca", "messages"
    self_alias: str = _NORMALIZE.self_alias  # name of the exporting user (회원님/You/you)
    kss_backend: str = _SENTENCES.backend  # kss backend for long turns (pecab when mecab is missing)
    list_speakers: bool = False  # print speakers and exit; writes nothing

    @property
    def normalize(self) -> NormalizeConfig:
        return NormalizeConfig(self.cap_laughter, self.self_alias)

    @property
    def turns(self) -> TurnConfig:
        return TurnConfig(self.burst_gap_s, self.conversation_gap_s)

    @property
    def sentences(self) -> SentenceConfig:
        return SentenceConfig(self.max_turn_chars, self.kss_backend)

    @property
    def pairs(self) -> PairConfig:
        return PairConfig(self.context_turns, self.val_ratio, self.seed)

    @property
    def pii(self) -> PIIConfig:
        return PIIConfig(enabled=not self.keep_pii, pseudonym_prefix=self.pseudonym_prefix)

    def validate(self) -> None:
        """Raise one UserError listing every problem, each naming the flag or file to fix."""
        problems = [f"{p}: no such file" for p in self.inputs if not Path(p).is_file()]
        if self.redact_list and not Path(self.redact_list).is_file():
            problems.append(f"--redact-list {self.redact_list}: no such file")
        if not self.inputs:
            problems.append("FILES: give at least one chat export")
        if not self.out and not self.list_speakers:
            problems.append("--out: required (the output folder)")
        elif self.out and Path(self.out).exists() and not Path(self.out).is_dir():
            problems.append(f"--out {self.out}: exists and is not a folder")
        if self.min_replies < 1:
            problems.append("--min-replies: must be at least 1")
        problems += [f"--export: unknown shape {e!r} (choose from {', '.join(EXPORTS)})"
                     for e in self.exports if e not in EXPORTS]
        for cfg in (self.normalize, self.turns, self.sentences, self.pairs, self.pii):
            problems += cfg.validate()
        if problems:
            raise UserError("; ".join(problems))


@dataclass
class Timer:
    """Seconds per stage, in run order (printed by the bench, logged by the CLI); optional tqdm bar."""

    seconds: dict[str, float] = field(default_factory=dict)  # wall clock
    cpu: dict[str, float] = field(default_factory=dict)  # this process's CPU time (robust to busy machines)
    bar: Any = None  # a tqdm over STAGES, advanced after each stage

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.bar is not None:
            self.bar.set_postfix_str(stage)
        start, cpu = time.perf_counter(), time.process_time()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - cpu
        log.debug("%s: %.2fs", stage, self.seconds[stage])
        if self.bar is not None:
            self.bar.update(1)


@dataclass(frozen=True)
class Result:
    stats: dict[str, Any]
    seconds: dict[str, float]


# ---------------------------------------------------------------- the run

def run(cfg: PrepareConfig, timer: Timer | None = None, background: bool | None = None) -> Result:
    """All stages in order; raises UserError for bad input; writes nothing until everything worked.

    ``background``: write the dataset and the chart in a forked worker process
    (data_prep.background); None = only for big inputs, where it saves seconds.
    """
    cfg.validate()
    t = timer or Timer()
    big = sum(Path(p).stat().st_size for p in cfg.inputs) >= BIG_INPUT_BYTES
    # the worker loads the name analyser first (remove_pii needs it soon) while this process parses
    bg = BackgroundWriter(enabled=big and not cfg.list_speakers if background is None else background,
                          first=() if cfg.keep_pii else (names.warm_up,))
    if t.bar is None and big:
        from tqdm import tqdm

        t.bar = tqdm(total=len(STAGES), desc="prepare", unit="stage", leave=False)
    # millions of small acyclic records: the cyclic GC would rescan them on every
    # allocation burst (~25% of stage time) and never free anything, so pause it
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with bg:
            return _stages(cfg, t, bg)
    finally:
        if gc_was_enabled:
            gc.enable()
        if t.bar is not None:
            t.bar.close()


def _stages(cfg: PrepareConfig, t: Timer, bg: BackgroundWriter) -> Result:
    """The stages, in the order they run (names as in STAGES and in the timing log)."""
    with t("parse"):
        parsed = parse_all(cfg)
        messages = [m for pf in parsed for m in pf.messages]
        files = [FileInfo.of(pf, UNPARSED_SAMPLES) for pf in parsed]
        del parsed  # the parsers' message lists would otherwise live until the end (memory)
    with t("normalise"):
        messages, cleaning = normalize(messages, cfg.normalize)
    with t("drop_non_speech"):
        messages, dropped = drop_non_speech(messages)
    speakers = Counter(m.speaker for m in messages)
    if cfg.list_speakers:
        print_speakers(speakers, reply_counts(messages, cfg.conversation_gap_s))
        return Result({}, t.seconds)
    terms = read_redact_list(cfg.redact_list) if cfg.redact_list else ()
    if cfg.strict:  # even with --keep-pii: errors carry no PII
        hide = Pseudonymizer(list(speakers), set(cfg.personas), redact=terms)
        check_strict(files, lambda s: scrub(s, hide, Counter()))
    personas = choose_personas(cfg, speakers, messages)
    pseudo = Pseudonymizer([s for s, _ in speakers.most_common()], set(personas), cfg.pseudonym_prefix,
                           keep={cfg.self_alias}, redact=terms)
    with t("remove_pii"):
        # names are classified where the analyser was loaded: the worker, when there is one
        classify = lambda words: bg.call(names.classify_words, words)  # noqa: E731
        messages, redactions = remove_pii(messages, pseudo, cfg.pii, classify)
    with t("merge_bursts"):
        turns = merge_bursts(messages, cfg.burst_gap_s)
    with t("split_conversations"):
        convs = split_conversations(turns, cfg.conversation_gap_s)
    with t("sentences"):
        convs, sentence_counts = split_long_turns(convs, cfg.sentences)
    out = Path(cfg.out)
    with staging(out) as tmp, bg:  # bg: a failed run stops the worker before tmp is removed
        with t("build_pairs"):  # de-duplicated as they are built; the worker measures the cards meanwhile
            cards = bg.start(persona_cards, card_texts(convs, personas), out / "personas", tmp / "personas")
            sources = {f.path: _label(f.path, pseudo, cfg) for f in files}
            pairs = build_pair_lines(convs, personas, cfg.context_turns, sources)
        with t("split"):
            train, val = pairs.split(cfg.val_ratio, cfg.seed)
        with t("persona_cards"):
            instructions, kept = cards()
            for name in kept:
                log.info("persona %s: using your edited card %s", name, card_path(out / "personas", name))
            train.instruct(instructions)
            val.instruct(instructions)
        counts = count_by_persona(train, val)
        check_pairs(personas, counts, speakers)
        shown = speakers if cfg.keep_pii else Counter({pseudo.speaker(s): n for s, n in speakers.items()})
        stats = build_stats(
            [file_stats(f, _cleaner(pseudo, cfg)) for f in files], shown, personas, len(messages),
            dropped=dropped, redactions=redactions, cleaning=cleaning, sentences=sentence_counts,
            conversations=len(convs), turns=sum(len(c.turns) for c in convs), duplicates_removed=pairs.duplicates,
            pairs=counts,
        )
        with t("write"):
            write_outputs(tmp, cfg, train, val, stats, _cleaner(pseudo, cfg), bg)
    log_summary(stats, t.seconds)
    return Result(stats, t.seconds)


def parse_all(cfg: PrepareConfig) -> list:
    """read_export on every input, with a tqdm bar in bytes for big inputs; ParseError names the file."""
    from tqdm import tqdm

    from data_prep.formats import read_export

    sizes = [Path(p).stat().st_size for p in cfg.inputs]
    parsed = []
    with tqdm(total=sum(sizes), desc="reading", unit="B", unit_scale=True,
              disable=sum(sizes) < BIG_INPUT_BYTES or None) as bar:
        for path in cfg.inputs:
            try:
                # --strict is checked later, once names can be pseudonymised
                parsed.append(read_export(path, progress=bar.update))
            except ParseError as e:  # no reason quotes raw text; redact anyway (defence in depth)
                raise ParseError(e.file, redact_text(e.reason, Counter()), e.line) from e
    return parsed


def check_strict(files: list[FileInfo], clean: Callable[[str], str]) -> None:
    """--strict: any unparsed line is an error naming the file and line (the line's text scrubbed)."""
    for f in files:
        if f.unparsed_lines:
            line, raw = f.unparsed_samples[0]
            why = f"{f.unparsed_lines} unparsed lines (--strict), first: {clean(raw)[:80]!r}"
            raise ParseError(clean(f.path), why, line)


def print_speakers(speakers: Counter, replies: dict[str, int]) -> None:
    print(f"{'messages':>9} {'replies':>8}  speaker")
    for name, n in speakers.most_common():
        print(f"{n:>9} {replies.get(name, 0):>8}  {name}")


def _speaker_list(speakers: Counter) -> str:
    return ", ".join(f"{s} ({n})" for s, n in speakers.most_common(30)) or "none"


def choose_personas(cfg: PrepareConfig, speakers: Counter, messages: list[Message]) -> tuple[str, ...]:
    """--persona names (each must exist), else every speaker with at least --min-replies replies."""
    if cfg.personas:
        # the same spelling rules as the speaker field: NFC (macOS terminals may pass NFD), 회원님/You -> alias
        wanted = [canonical_speaker(p, cfg.self_alias) for p in cfg.personas]
        missing = [p for p in wanted if p not in speakers]
        if missing:
            raise UserError(f"--persona: unknown {', '.join(missing)}; speakers: {_speaker_list(speakers)}")
        return tuple(dict.fromkeys(wanted))
    replies = reply_counts(messages, cfg.conversation_gap_s)
    chosen = tuple(s for s, _ in speakers.most_common() if replies.get(s, 0) >= cfg.min_replies)
    if not chosen:
        raise UserError(f"--min-replies {cfg.min_replies}: no speaker has that many replies; "
                        f"pick one with --persona; speakers: {_speaker_list(speakers)}")
    return chosen


def card_texts(convs: list[Conversation], personas: Sequence[str]) -> dict[str, tuple[int, list[str]]]:
    """persona -> (their turn count, the sample of their turn texts a card is measured on)."""
    texts: dict[str, list[str]] = {p: [] for p in personas}
    for conv in convs:
        for turn in conv.turns:
            if turn.speaker in texts:
                texts[turn.speaker].append(turn.text)
    return {p: (len(t), sample_texts(t)) for p, t in texts.items()}  # the sample: less to send to the worker


def persona_cards(texts: dict[str, tuple[int, list[str]]], previous: Path,
                  target: Path) -> tuple[dict[str, str], list[str]]:
    """Card per persona of ``texts`` (card_texts), the user's edited card when there is one, written to
    ``target``; returns (persona -> instruction, the personas whose edited card was kept)."""
    instructions, kept = {}, []
    for name, (turns, sample) in texts.items():
        generated = build_card(name, sample, turns=turns)
        card, edited = resolve_card(card_path(previous, name), card_path(target, name), generated)
        if edited:
            kept.append(name)
        instructions[name] = card.instruction
    return instructions, kept


def check_pairs(personas: Sequence[str], counts: dict[str, dict[str, int]], speakers: Counter) -> None:
    """Zero pairs for a persona (``counts``: count_by_persona) is an error naming it and the speakers that exist."""
    empty = [p for p in personas if p not in counts]
    if empty:
        raise UserError(f"no pairs for persona {', '.join(empty)} (they never answer anyone); "
                        f"speakers: {_speaker_list(speakers)}")


def _cleaner(pseudo: Pseudonymizer, cfg: PrepareConfig) -> Callable[[str], str]:
    """Free text (paths, unparsed lines) as it may appear in outputs: scrubbed unless --keep-pii."""
    return (lambda s: s) if cfg.keep_pii else (lambda s: scrub(s, pseudo, Counter()))


def _label(path: str, pseudo: Pseudonymizer, cfg: PrepareConfig) -> str:
    return _cleaner(pseudo, cfg)(Path(path).name)


# ---------------------------------------------------------------- stats and writing

def write_outputs(tmp: Path, cfg: PrepareConfig, train: PairLines, val: PairLines, stats: dict,
                  clean: Callable[[str], str], bg: BackgroundWriter) -> None:
    """Every output file into ``tmp``.

    The chart and the dataset go to ``bg``: its worker, when it has one, draws
    the chart and parses each block of JSONL lines into Arrow while the next
    block is encoded here; only the last block and the save are left to wait for.
    """
    bg.submit(write_report, tmp, stats, train.response_chars + val.response_chars)
    for split, pairs in (("train", train), ("validation", val)):
        write_pairs(tmp, split, pairs, cfg.exports, on_chunk=lambda *block: bg.submit(parse_jsonl_chunk, *block))
    bg.submit(write_dataset, tmp / "dataset", {s: tmp / f"{s}.jsonl" for s in ("train", "validation")})
    write_stats(tmp / "stats.json", stats)
    # input paths may hold a friend's name (KakaoTalk_김영희.txt): ``clean`` pseudonymises them
    config = {**asdict(cfg), "inputs": [clean(str(Path(p).resolve())) for p in cfg.inputs]}
    (tmp / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    bg.wait()


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temp folder beside ``out``, moved into place only when the block succeeds.

    On any error the temp folder (and any parent folder this run created) is removed.
    """
    created = _first_missing_ancestor(out.parent)
    try:
        with atomic_dir(out) as tmp:
            yield tmp
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _first_missing_ancestor(path: Path) -> Path | None:
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def log_summary(stats: dict, seconds: dict[str, float]) -> None:
    pairs = ", ".join(f"{p}: {c['train']}+{c['validation']}" for p, c in stats["pairs"].items())
    log.info("%d messages, %d dropped, %d conversations; pairs (train+validation) %s",
             stats["messages"]["parsed"], stats["messages"]["dropped"], stats["conversations"], pairs)
    for f in stats["files"]:
        if f["unparsed_lines"]:
            log.warning("%s: %d lines not parsed, e.g. %s", f["path"], f["unparsed_lines"],
                        "; ".join(f"line {s['line']}: {s['text'][:80]!r}" for s in f["unparsed_samples"][:3]))
    log.info("time: %s", ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items()))


# ---------------------------------------------------------------- CLI

def build_parser():
    p = make_parser("python -m pipeline.prepare", __doc__)
    d = PrepareConfig(())
    a = p.add_argument
    a("inputs", nargs="+", metavar="FILES", help="chat exports (KakaoTalk PC/Android/iOS txt, macOS csv)")
    a("--out", default=d.out, help="output folder (created; replaced as a whole at the end of a successful run)")
    a("--persona", action="append", default=[],
      help="speaker to imitate; repeat for several (default: everyone with --min-replies replies)")
    a("--list-speakers", action="store_true", help="print speakers with message and reply counts, then exit")
    a("--min-replies", type=int, default=d.min_replies,
      help=f"without --persona, a speaker needs this many replies to become a persona (default {d.min_replies})")
    a("--context-turns", type=int, default=d.context_turns,
      help=f"previous turns given as context per pair (default {d.context_turns})")
    a("--burst-gap", type=float, default=d.burst_gap_s,
      help=f"seconds: one speaker's messages closer than this merge into one turn (default {d.burst_gap_s:g})")
    a("--conversation-gap", type=float, default=d.conversation_gap_s,
      help=f"seconds of silence that start a new conversation (default {d.conversation_gap_s:g})")
    a("--max-turn-chars", type=int, default=d.max_turn_chars,
      help=f"longer turns are split at sentence boundaries (kss, mecab backend) (default {d.max_turn_chars})")
    a("--cap-laughter", type=int, default=d.cap_laughter,
      help="cap runs of one repeated jamo/punctuation/emoji (ㅋㅋㅋㅋㅋㅋ) to this many; 0 = off "
           f"(default {d.cap_laughter})")
    a("--val-ratio", type=float, default=d.val_ratio,
      help=f"share of conversations held out for validation (default {d.val_ratio:g})")
    a("--seed", type=int, default=d.seed, help=f"seed of the train/validation split (default {d.seed})")
    a("--keep-pii", action="store_true",
      help="keep phone numbers, e-mails, card/account/resident numbers, URLs and names (default: replace them)")
    a("--redact-list", default="", metavar="FILE",
      help="file of your own terms to hide, one a line (your real name, nicknames, school, workplace): "
           "each becomes <이름> everywhere")
    a("--pseudonym-prefix", default=d.pseudonym_prefix,
      help=f"other speakers become PREFIX1, PREFIX2... (default {d.pseudonym_prefix})")
    a("--strict", action="store_true", help="any line that cannot be parsed is an error")
    a("--export", action="append", default=[], choices=EXPORTS,
      help="also write the pairs as alpaca (instruction/input/output) or chat messages; repeatable")
    a("--self-alias", default=d.self_alias,
      help=f"name for the exporting user (회원님/You/you), usable with --persona (default {d.self_alias})")
    a("--kss-backend", default=d.kss_backend, choices=("mecab", "pecab"),
      help=f"kss sentence backend for long turns (default {d.kss_backend}; pecab if mecab is not installed)")
    a("-v", "--verbose", action="store_true", help="log the time of every stage")
    return p


def config_from_args(a) -> PrepareConfig:
    return PrepareConfig(
        inputs=tuple(a.inputs), out=a.out, personas=tuple(a.persona), min_replies=a.min_replies,
        context_turns=a.context_turns, burst_gap_s=a.burst_gap, conversation_gap_s=a.conversation_gap,
        max_turn_chars=a.max_turn_chars, cap_laughter=a.cap_laughter, val_ratio=a.val_ratio, seed=a.seed,
        keep_pii=a.keep_pii, redact_list=a.redact_list, pseudonym_prefix=a.pseudonym_prefix, strict=a.strict,
        exports=tuple(dict.fromkeys(a.export)), self_alias=a.self_alias, kss_backend=a.kss_backend,
        list_speakers=a.list_speakers,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)  # only ours: libraries stay quiet
    run(config_from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
