"""Persona fidelity on SmileStyle: can each adapter tell its own persona's wording from 16 others?

    python bench/persona_fidelity.py                      # default model, 4 personas, default training
    python bench/persona_fidelity.py --max-steps 100      # shorter training
    python bench/persona_fidelity.py --tiny               # quick check on a tiny random model (~1 min)
    python bench/persona_fidelity.py --style emoticon --dialogue   # one persona, on the dialogue base
    python bench/persona_fidelity.py --style king --rehearsal ../shared/data/chatbot_data/ChatbotData.csv

Builds one KakaoTalk (Windows PC) export per persona from SmileStyle with
data_prep.smilestyle: four contrasting personas (halbae, king, sosim, emoticon) each
talk with the same neutral partner "친구" who writes informal Korean. Then
``pipeline.run`` prepares, extends (cached), trains an adapter per persona with the
defaults and evaluates all adapters together. Prints, for the base model, the
few-shot prompt and the adapters, the persona-identification matrix on held-out
dialogues (row: persona; column: the style whose version of the reply ranked first
among the 17 SmileStyle variants; chance 1/17) and each persona's top-1 accuracy.
Target on the default model: adapter top-1 >= 0.8 on its own persona.
Re-running with the same flags reuses the finished stages (runs/.../run_state.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep import smilestyle  # noqa: E402
from pipeline.training.data import CONTRAST_NEGATIVES  # noqa: E402

STYLES = ("halbae", "king", "sosim", "emoticon")
TARGET = 0.8


def write_exports(out: Path, styles: tuple[str, ...], limit: int) -> list[Path]:
    """One Windows-PC KakaoTalk export per persona style; the partner writes informal Korean."""
    dialogues = smilestyle.load_dialogues()
    if limit:
        dialogues = dialogues[:limit]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for style, messages in smilestyle.build_chats(dialogues, styles, "informal").items():
        path = out / f"KakaoTalk_{style}.txt"
        path.write_text(smilestyle.write_export(messages, "kakao_windows"), encoding="utf-8")
        paths.append(path)
    return paths


def print_matrix(conf: dict, system: str) -> None:
    """Rows: persona (its style); columns: the four persona styles + everything else."""
    styles = conf["styles"]
    cols = [s for s in conf["truth"]]
    print(f"\n{system}: share of held-out replies whose top-ranked variant is each style")
    print(f"{'persona (style)':24s}" + "".join(f"{c:>10s}" for c in cols) + f"{'other':>10s}")
    for persona, truth, row in zip(conf["personas"], conf["truth"], conf[system]):
        vals = dict(zip(styles, row))
        other = 1 - sum(vals.get(c, 0.0) for c in cols)
        print(f"{persona + ' (' + truth + ')':24s}" + "".join(f"{vals.get(c, 0.0):10.2f}" for c in cols)
              + f"{other:10.2f}")


def report(result: dict, seconds: float) -> dict[str, dict[str, float]]:
    conf = result["confusion"]
    top1 = {}
    for system in ("base", "few_shot", "adapter"):
        if conf and system in conf:
            print_matrix(conf, system)
        top1[system] = {p: r["identification"][system]["top1"] for p, r in result["personas"].items()
                        if r["identification"]}
    print("\ntop-1 identification on the persona's own held-out replies (chance 1/17 = 0.059)")
    print(f"{'persona':12s}{'n':>5s}{'base':>10s}{'few-shot':>10s}{'adapter':>10s}{'adapter/base':>14s}")
    for p, r in result["personas"].items():
        if not r["identification"]:
            continue
        b, f, a = (top1[s][p] for s in ("base", "few_shot", "adapter"))
        ratio = f"{a / b:.1f}x" if b else "inf"
        print(f"{p:12s}{r['identification']['adapter']['n']:5d}{b:10.3f}{f:10.3f}{a:10.3f}{ratio:>14s}")
    mean = {s: sum(v.values()) / max(len(v), 1) for s, v in top1.items()}
    ok = all(v >= TARGET for v in top1["adapter"].values())
    print(f"{'mean':12s}{'':5s}{mean['base']:10.3f}{mean['few_shot']:10.3f}{mean['adapter']:10.3f}")
    print(f"\ntarget adapter top-1 >= {TARGET} on every persona: {'MET' if ok else 'NOT MET'}; total {seconds / 60:.1f} min")
    return top1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random base model and 40 dialogues: a quick check")
    ap.add_argument("--max-steps", type=int, help="training steps per persona (default: pipeline.train's)")
    ap.add_argument("--max-examples", type=int, default=30, help="held-out replies per persona (default 30)")
    ap.add_argument("--contrast", type=float, help="pipeline.train --contrast (default: pipeline.train's)")
    ap.add_argument("--contrast-negatives", choices=CONTRAST_NEGATIVES,
                    help="pipeline.train --contrast-negatives (default: pipeline.train's)")
    ap.add_argument("--rehearsal", type=Path,
                    help="pipeline.train --rehearsal: general Q/A mixed into each persona's training (its held-out "
                         "split left out), e.g. ../shared/data/chatbot_data/ChatbotData.csv")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N SmileStyle dialogues (0: all)")
    ap.add_argument("--base-model", help="base model (default: the project's default model)")
    ap.add_argument("--out", type=Path, help="run folder (default runs/bench_fidelity, or a temp dir with --tiny)")
    ap.add_argument("--style", action="append", choices=STYLES,
                    help="persona style to run (repeatable; default all four)")
    from pipeline.dialogue_stage import add_flag

    add_flag(ap)
    a = ap.parse_args(argv)
    from pipeline.run import main as run_main

    t0 = time.perf_counter()
    out = a.out or (Path(tempfile.mkdtemp(prefix="fidelity-")) if a.tiny else ROOT / "runs" / "bench_fidelity")
    argv_run = []
    if a.tiny:
        from tests.tiny_models import make_tiny_gemma

        base = out / "tiny-base"
        if not (base / "config.json").is_file():
            make_tiny_gemma(base)
        argv_run += ["--base-model", str(base), "--cache-dir", str(out / "cache"), "--max-new-tokens", "8"]
        a.limit = a.limit or 40
        a.max_steps = a.max_steps or 20
    elif a.base_model:
        argv_run += ["--base-model", a.base_model]
    styles = tuple(a.style or STYLES)
    exports = write_exports(out / "exports", styles, a.limit)
    names = [smilestyle.PERSONA_NAMES[s] for s in styles]
    argv_run = [*map(str, exports), *[x for n in names for x in ("--persona", n)], "--out", str(out),
                "--max-examples", str(a.max_examples), "--dialogue" if a.dialogue else "--no-dialogue", *argv_run]
    if a.max_steps:
        argv_run += ["--max-steps", str(a.max_steps)]
    if a.contrast is not None:
        argv_run += ["--contrast", str(a.contrast)]
    if a.contrast_negatives:
        argv_run += ["--contrast-negatives", a.contrast_negatives]
    if a.rehearsal:
        argv_run += ["--rehearsal", str(a.rehearsal)]
    print("python -m pipeline.run " + " ".join(argv_run), flush=True)
    code = run_main(argv_run)
    if code:
        return code
    eval_dir = out / "adapters" / ("eval" if len(names) > 1 else names[0])  # where pipeline.run writes it
    result = json.loads((eval_dir / "eval.json").read_text(encoding="utf-8"))
    report(result, time.perf_counter() - t0)
    print(f"\nfull report: {eval_dir / 'eval.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
