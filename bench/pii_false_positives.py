"""False positives of the PII stage on ordinary Korean chat text, where nothing is personal.

    python bench/pii_false_positives.py                 # SmileStyle + ChatbotData (../shared/data)
    python bench/pii_false_positives.py --examples 30

Runs the non-speaker name detector (data_prep.names.PersonNames: regex pre-filter,
then kiwipiepy) and the pattern redactor (data_prep.pii_patterns.find) over every
utterance of SmileStyle (all styles) and every question and answer of ChatbotData.
Neither corpus holds real personal data; the few names there (characters of the
made-up dialogues, a singer: KNOWN_NAMES) are real detections, every other word
replaced is a false positive. Prints, per corpus: messages, messages the cheap
name pre-filter sends on, words replaced by a pseudonym (count, distinct words),
the false positives (count and per 1,000 messages), pattern matches by kind
(all false positives) with a sample, and the seconds taken.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
# words this bench replaces that are names in these corpora (read off its own output): the characters
# of SmileStyle's made-up dialogues, a girl addressed in ChatbotData, a singer (JK김동욱)
KNOWN_NAMES = {"철수", "김철수", "영희", "세리", "혜진", "김동욱"}


def smilestyle_texts() -> list[str]:
    from data_prep.smilestyle import load_dialogues

    return [cell for dia in load_dialogues(DATA / "smilestyle" / "smilestyle_dataset.tsv")
            for row in dia for cell in row.values() if cell and cell.strip()]


def chatbot_texts() -> list[str]:
    from data_prep.chatbot_data import load_qa

    return [t for qa in load_qa(DATA / "chatbot_data" / "ChatbotData.csv") for t in (qa.question, qa.answer)]


def measure(label: str, texts: list[str], examples: int, rng: random.Random) -> dict:
    from data_prep.names import PersonNames, may_hold_name
    from data_prep.pii_patterns import find

    t0 = time.perf_counter()
    flagged = sum(1 for t in texts if may_hold_name(t))
    people = PersonNames()
    people.learn(texts)
    hits = [(m.group(), t) for t in texts for m in people.finditer(t)]
    names_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    kinds: Counter = Counter()
    pattern_hits: list[tuple[str, str]] = []
    for t in texts:
        for s, e, kind in find(t):
            kinds[kind] += 1
            pattern_hits.append((kind, t[s:e]))
    patterns_s = time.perf_counter() - t0
    wrong = [(w, t) for w, t in hits if w not in KNOWN_NAMES]
    per_k = 1000 * len(wrong) / len(texts)
    print(f"\n== {label}: {len(texts):,} messages; name pre-filter flags {flagged:,} "
          f"({100 * flagged / len(texts):.1f}%)")
    print(f"names: {len(hits):,} words replaced, {len(set(w for w, _ in hits))} distinct ({names_s:.1f}s): "
          + ", ".join(f"{w} {n}" for w, n in Counter(w for w, _ in hits).most_common()))
    print(f"  not names: {len(wrong)} = {per_k:.2f} per 1,000 messages")
    for word, text in rng.sample(wrong, min(examples, len(wrong))):
        print(f"  {word}: {text[:70]}")
    print(f"patterns: {sum(kinds.values())} matches {dict(kinds)} ({patterns_s:.1f}s)")
    for kind, text in pattern_hits[:examples]:
        print(f"  {kind}: {text}")
    return {"messages": len(texts), "wrong": len(wrong), "patterns": sum(kinds.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=15, help="sample replacements printed per corpus (default 15)")
    a = ap.parse_args()
    rng = random.Random(0)
    results = {"SmileStyle": measure("SmileStyle", smilestyle_texts(), a.examples, rng),
               "ChatbotData": measure("ChatbotData", chatbot_texts(), a.examples, rng)}
    total = sum(r["messages"] for r in results.values())
    names = sum(r["wrong"] for r in results.values())
    print(f"\nall: {names} non-names replaced in {total:,} messages = {1000 * names / total:.2f} per 1,000; "
          f"pattern matches {sum(r['patterns'] for r in results.values())}")


if __name__ == "__main__":
    main()
