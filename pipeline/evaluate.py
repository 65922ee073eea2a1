"""Evaluate persona adapters: does it sound like them, and did the model forget Korean?

    python -m pipeline.evaluate --adapter runs/minsu/adapters/민수 --data runs/minsu/data
    python -m pipeline.evaluate --adapter A --adapter B --data runs/x/data --out runs/x/eval
    python -m pipeline.evaluate --adapter A --data D --max-examples 40 --samples 5 --general my_korean.txt

Writes eval.json, eval.md and PNG charts next to the adapter (several adapters: into PARENT/eval,
PARENT being their common parent folder; or --out). For each adapter, three systems are compared on the same
held-out replies (validation split) of its persona:

  base      the extended base model, prompted with the persona instruction;
  few-shot  the same, with --shots real train replies added to the instruction (no training);
  adapter   the fine-tuned persona adapter;
  adapter + memory (--memory, next-reply selection only): the adapter with the persona's own past
            replies to similar messages (its train pairs in --data, core.memory) in the system turn.

Measured: perplexity of held-out replies; next-reply selection (the true held-out reply ranked
among 20 candidates by mean log-prob and by PMI, on the persona's replies and on general Korean
Q/A, and with --switch-items on general Q/A after a change of topic; Hits@1, chance 0.05); persona
identification when the data comes from
SmileStyle (each held-out reply's 17 style variants ranked by mean log-prob per token; chance
1/17; a persona x style matrix when several adapters are given); speaker attribution when
several adapters are given (each held-out reply given to the adapter that scores it highest;
chance 1/N; a confusion matrix); style statistics of sampled
replies vs real ones (length, ㅋ/ㅎ/ㅠ, emoji, emoticons, endings, distinct-n); forgetting
(perplexity of general Korean text not seen in training, base vs adapter); seeded samples.
Defaults keep the default model at about 2-3 minutes on 2 CPU cores, plus 1-2 for next-reply selection
(--selection-items 0 skips it).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from core.cli import parser as make_parser
from core.cli import run_cli, setup_logging
from core.errors import UserError
from pipeline.evaluation.selection import MARGINAL_CONTEXTS

log = logging.getLogger(__name__)
OUTPUTS = ("eval.json", "eval.md")


@dataclass(frozen=True)
class EvalConfig:
    """Flags of ``python -m pipeline.evaluate``."""

    adapters: tuple[Path, ...]  # --adapter (repeatable): adapter directories written by pipeline.train
    data: tuple[Path, ...]  # --data: one prepare output folder for all adapters, or one per adapter
    out: Path | None = None  # --out: where eval.json/eval.md/PNGs go (default: next to the adapter)
    smilestyle: Path | None = None  # --smilestyle: the SmileStyle TSV (default ../shared/data/... if present)
    general: Path | None = None  # --general: general Korean text (.txt lines or a CSV with an A column)
    max_examples: int = 12  # --max-examples: held-out replies scored (and identification items) per persona
    general_lines: int = 40  # --general-lines: general Korean replies scored for forgetting
    shots: int = 5  # --shots: real train replies in the few-shot prompt
    samples: int = 3  # --samples: side-by-side samples shown in eval.md
    generate: int = 12  # --generate: replies sampled per system for the style statistics
    max_new_tokens: int = 40  # --max-new-tokens: per sampled reply
    seed: int = 0  # --seed: example choice, few-shot choice and sampling
    cache_dir: Path | None = None  # --cache-dir: extended-base cache (default $KAKAO_PERSONA_CACHE)
    no_identification: bool = False  # --no-identification: skip SmileStyle persona identification
    selection_items: int = 8  # --selection-items: next-reply selection items per item set (0: skip)
    switch_items: int = 0  # --switch-items: change-of-topic selection items on general Q/A (0: off)
    marginal_contexts: int = 0  # --marginal-contexts: Q/A messages p(reply) is averaged over (0: off)
    persona_marginal_contexts: int = 0  # --persona-marginal-contexts: the same on the persona's own replies
    qa: Path | None = None  # --qa: ChatbotData-format CSV (Q, A) for selection on general Q/A (held-out split)
    threads: int | None = None  # --threads: torch CPU threads (default: torch's choice)
    memory: bool = False  # --memory: also rank the selection items with the adapter plus its memory

    def validate(self) -> None:
        problems = [f"--adapter {a}: not a directory" for a in self.adapters if not a.is_dir()]
        problems += [f"--data {d}: not a directory" for d in self.data if not d.is_dir()]
        if not self.adapters:
            problems.append("--adapter is required")
        if len(self.data) not in (1, len(self.adapters)):
            problems.append(f"--data: give one folder, or one per --adapter ({len(self.adapters)})")
        for flag, path in (("--smilestyle", self.smilestyle), ("--general", self.general), ("--qa", self.qa)):
            if path is not None and not path.is_file():
                problems.append(f"{flag} {path}: no such file")
        for flag, v, low in (("--max-examples", self.max_examples, 1), ("--general-lines", self.general_lines, 0),
                             ("--shots", self.shots, 0), ("--samples", self.samples, 0),
                             ("--generate", self.generate, 0), ("--max-new-tokens", self.max_new_tokens, 1),
                             ("--threads", self.threads or 1, 1), ("--selection-items", self.selection_items, 0),
                             ("--switch-items", self.switch_items, 0),
                             ("--marginal-contexts", self.marginal_contexts, 0),
                             ("--persona-marginal-contexts", self.persona_marginal_contexts, 0)):
            if v < low:
                problems.append(f"{flag} must be >= {low}")
        if self.memory and not self.selection_items:
            problems.append("--memory is measured by next-reply selection: give --selection-items above 0")
        if problems:
            raise UserError("; ".join(problems))

    def out_dir(self) -> Path:
        if self.out is not None:
            return self.out
        if len(self.adapters) == 1:
            return self.adapters[0]
        return Path(*_common_parts([a.resolve().parts for a in self.adapters])) / "eval"


def _common_parts(parts: list[tuple[str, ...]]) -> tuple[str, ...]:
    common = []
    for group in zip(*parts):
        if len(set(group)) != 1:
            break
        common.append(group[0])
    return tuple(common) or ("/",)


def build_parser():
    p = make_parser("python -m pipeline.evaluate", __doc__)
    d = EvalConfig((), ())
    p.add_argument("--adapter", action="append", type=Path, default=[], required=True,
                   help="adapter directory from pipeline.train; repeat to evaluate several personas together")
    p.add_argument("--data", action="append", type=Path, default=[], required=True,
                   help="prepare output folder (train.jsonl, validation.jsonl); once, or once per --adapter")
    p.add_argument("--out", type=Path, help="output folder (default: the adapter folder; several: their parent/eval)")
    p.add_argument("--smilestyle", type=Path,
                   help="SmileStyle TSV for persona identification (default ../shared/data/smilestyle/"
                        "smilestyle_dataset.tsv when it exists; used only when the replies match it)")
    p.add_argument("--general", type=Path, help="general Korean text for the forgetting check: .txt (a sentence "
                   "a line) or .csv with an A column (default: ChatbotData answers, else a shipped text)")
    p.add_argument("--max-examples", type=int, default=d.max_examples,
                   help=f"held-out replies per persona, also the identification items (default {d.max_examples})")
    p.add_argument("--general-lines", type=int, default=d.general_lines,
                   help=f"general Korean replies scored (default {d.general_lines})")
    p.add_argument("--shots", type=int, default=d.shots,
                   help=f"real train replies in the few-shot prompt (default {d.shots})")
    p.add_argument("--samples", type=int, default=d.samples,
                   help=f"side-by-side samples in eval.md (default {d.samples})")
    p.add_argument("--generate", type=int, default=d.generate,
                   help=f"replies sampled per system for the style statistics (default {d.generate})")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help=f"tokens per sampled reply (default {d.max_new_tokens})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of example choice and sampling (default {d.seed})")
    p.add_argument("--cache-dir", type=Path, help="extended-base cache (default $KAKAO_PERSONA_CACHE or "
                   "~/.cache/kakao-persona)")
    p.add_argument("--no-identification", action="store_true", help="skip SmileStyle persona identification")
    p.add_argument("--selection-items", type=int, default=8,
                   help="next-reply selection (Hits@1 of 20): items per set, the persona's held-out replies and "
                        "general Q/A; an item costs about 2 CPU-seconds per system with the default model, so the "
                        "default adds 1-2 minutes on 2 CPU cores (default 8; 0 skips)")
    p.add_argument("--switch-items", type=int, default=d.switch_items, metavar="N",
                   help="next-reply selection after a change of topic: N items of a held-out Q/A exchange (its answer "
                        "as the persona's turn) then another held-out question; reports how often the answer to the "
                        "question before ranks first (a persona answering the previous message). About 3 CPU-seconds "
                        "per item and system (default 0: off)")
    p.add_argument("--marginal-contexts", type=int, default=d.marginal_contexts, metavar="K",
                   help="next-reply selection on general Q/A, also by marginal PMI: p(reply) is the mean of p(reply "
                        "| question) over K other held-out questions (no item's, none answered by a candidate); K "
                        "passes per answer of a small pool, about 40 CPU-seconds per system with 8 items and K "
                        f"{MARGINAL_CONTEXTS} (default 0: not computed)")
    p.add_argument("--persona-marginal-contexts", type=int, default=d.persona_marginal_contexts, metavar="K",
                   help="the same on the persona's own held-out replies, over K contexts of other pairs (held-out "
                        "first); K passes per distinct candidate, about 19 per item: costly on a CPU (30 items, K 32: "
                        "several minutes per system) (default 0: not computed)")
    p.add_argument("--qa", type=Path, help="Q/A CSV with Q and A columns for selection on general Korean "
                   "(its fixed held-out split; default ../shared/data/chatbot_data/ChatbotData.csv when it exists)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all CPUs available)")
    p.add_argument("--memory", action="store_true",
                   help="also rank the next-reply selection items with the adapter plus the persona's memory (its "
                        "own past replies to the most similar messages of --data's train.jsonl, as the chat's "
                        "--memory shows them): system 'adapter + memory', same items, same model")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(a) -> EvalConfig:
    return EvalConfig(
        adapters=tuple(a.adapter), data=tuple(a.data), out=a.out, smilestyle=a.smilestyle, general=a.general,
        max_examples=a.max_examples, general_lines=a.general_lines, shots=a.shots, samples=a.samples,
        generate=a.generate, max_new_tokens=a.max_new_tokens, seed=a.seed, cache_dir=a.cache_dir,
        no_identification=a.no_identification, selection_items=a.selection_items, switch_items=a.switch_items,
        marginal_contexts=a.marginal_contexts, persona_marginal_contexts=a.persona_marginal_contexts, qa=a.qa,
        threads=a.threads,
        memory=a.memory,
    )


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    setup_logging(a.verbose)
    cfg = config_from_args(a)
    cfg.validate()
    out = evaluate(cfg)
    print(f"wrote {out / 'eval.md'}")
    return 0


def evaluate(cfg: EvalConfig) -> Path:
    """Run every measurement for every adapter; write eval.json, eval.md and charts; return the folder."""
    import torch

    from pipeline.evaluation import orchestrate as ev

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or threads)
    try:
        tasks = ev.build_tasks(cfg)
        data = ev.run_all(cfg, tasks)
    finally:  # evaluate also runs in-process (pipeline.run): leave the thread count as it was
        torch.set_num_threads(threads)
    data["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    data["config"]["adapters"] = [str(x) for x in cfg.adapters]
    data["config"]["data"] = [str(x) for x in cfg.data]
    data["seconds"] = round(time.perf_counter() - t0, 1)
    out = cfg.out_dir()
    ev.write_outputs(out, data)
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main))
