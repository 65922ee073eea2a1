"""Look for personal data left in a prepared folder or an adapter folder.

    python -m pipeline.audit runs/minsu/data
    python -m pipeline.audit runs/minsu/adapters/민수 --redact-list mine.txt

Scans every text file the pipeline writes (train/validation JSONL, dataset/
Arrow files, stats.json, config.json, report.md, persona cards, an adapter's
eval.md/eval.json, which quote held-out messages) with the same patterns the
redactor uses (data_prep.pii_patterns), and the terms of --redact-list.
Prints FILE:LINE: KIND for every match (never the matched text itself).
Exit 0: nothing found; 1: something found; 2: bad input.
Not looked for: names of people (pseudonyms cannot be told from names by a pattern).
"""
from __future__ import annotations

import itertools
import json
import re
import sys
from bisect import bisect_right
from pathlib import Path
from typing import Iterator, Sequence

from core.errors import UserError
from data_prep.pii import read_redact_list
from data_prep.pii_patterns import LISTED, find, terms_pattern
from core.cli import parser as make_parser, run_cli

TEXT_SUFFIXES = {".jsonl", ".json", ".md", ".yaml", ".yml", ".txt", ".csv", ".arrow"}
PROSE_SUFFIXES = {".md", ".yaml", ".yml", ".txt"}
# machine-written files holding no chat text: vocabularies (full of digit pieces), PEFT's
# model-card template README.md (links to papers)
SKIPPED = ("tokenizer", "special_tokens_map", "vocab", "merges", "adapter_config", "generation_config", "README")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def files_to_scan(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
                  and not p.name.startswith(SKIPPED))


def _strings(line: str, suffix: str) -> list[str]:
    """The texts a line carries: JSON string literals decoded (so an escaped line break joins a number
    again), else the line itself."""
    if suffix not in (".json", ".jsonl"):
        return [line]
    out = []
    for lit in _JSON_STRING.findall(line):
        try:
            out.append(json.loads(lit))
        except ValueError:
            out.append(lit)
    return out or [line]


def _matches(text: str, terms: re.Pattern | None) -> Iterator[tuple[int, str]]:
    """(offset, kind) of every pattern match and every listed term in ``text``."""
    yield from ((begin, kind) for begin, _, kind in find(text))
    if terms is not None:
        yield from ((m.start(), LISTED) for m in terms.finditer(text))


def scan_text(text: str, suffix: str, terms: re.Pattern | None = None) -> Iterator[tuple[int, str]]:
    """(line number, kind) of every match in ``text``, a file's content with that ``suffix``.

    Prose files are scanned whole (a number broken over a line break is still found, at its
    first line); data files, which can be big, line by line, JSON strings decoded (their
    escaped line breaks join a number again).
    """
    if suffix in PROSE_SUFFIXES:
        starts = list(itertools.accumulate((len(line) + 1 for line in text.split("\n")), initial=0))
        yield from ((bisect_right(starts, begin), kind) for begin, kind in _matches(text, terms))
        return
    for number, line in enumerate(text.split("\n"), 1):
        for chunk in _strings(line, suffix):
            yield from ((number, kind) for _, kind in _matches(chunk, terms))


def audit(folder: Path, terms: Sequence[str] = ()) -> list[tuple[Path, int, str]]:
    """Every (file, line, kind) found under ``folder``."""
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder (give a prepared data folder or an adapter folder)")
    files = files_to_scan(folder)
    if not files:
        raise UserError(f"{folder}: no file the pipeline writes (train.jsonl, eval.md...) in it")
    pattern = terms_pattern(list(terms))
    found = []
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        found += [(path, line, kind) for line, kind in scan_text(text, path.suffix, pattern)]
    return found


def build_parser():
    p = make_parser("python -m pipeline.audit", __doc__)
    p.add_argument("folder", type=Path, metavar="DIR", help="a prepared data folder or an adapter folder")
    p.add_argument("--redact-list", default=None, metavar="FILE",
                   help="also look for these terms (one a line, as given to prepare)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.redact_list and not Path(a.redact_list).is_file():
        raise UserError(f"--redact-list {a.redact_list}: no such file")
    found = audit(a.folder, read_redact_list(a.redact_list) if a.redact_list else ())
    for path, line, kind in found:
        print(f"{path}:{line}: {kind}")
    print(f"{len(found)} possible personal data item(s) in {a.folder}" if found else f"{a.folder}: clean",
          file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
