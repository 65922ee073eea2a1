"""Benchmark the whole prepare stage on a 1,000,000-message KakaoTalk PC export.

    .venv/bin/python bench/prepare_bench.py            # 1,000,000 messages
    .venv/bin/python bench/prepare_bench.py --messages 200000
    .venv/bin/python bench/prepare_bench.py --repeat 3   # best of three full runs (busy machines)

Builds the export from SmileStyle sentences (../shared/data; two to four speakers
per dialogue, each speaking in one style, with phone numbers, e-mails, media
placeholders, join lines and long turns sprinkled in) and writes it with
``PARSERS["kakao_windows"].write``. Then, each in a fresh child process so peak
RSS belongs to that run only (plus its forked writer process), it runs
``pipeline.prepare.run`` end to end: ``full`` (the default; ``--repeat N``
times, the best wall time counts), ``inline-writer`` (dataset and chart written
in the main process, as the stage did before data_prep.background) and
``keep-pii`` (the baseline without the PII stage). It also times the PII stage
against a naive version (one regex per kind, applied to every message, no
prefilter) on the same messages, and the cost of kss on long turns without
punctuation against the punctuation-only path.
Prints messages/s, peak MB, seconds per stage and the ratios. Target: >= 100,000
messages/s on 2 cores, peak < 2 GB.

    .venv/bin/python bench/prepare_bench.py --platforms            # 300,000 messages per platform, best of 3

``--platforms`` runs prepare as a user does, ``python -m pipeline.prepare FILE --out DIR
[--persona NAME]``, one fresh process per run (wall time includes start-up and
imports), on a generated export of each platform (Android Korean, Windows PC,
iOS, macOS CSV): four speakers, short messages (one to four words). Each case
runs with and without ``--persona`` (without: pairs for all four speakers), the
best of ``--repeat`` (default 3) wall times counts; the table gives messages/s,
peak memory of the process tree (RSS of prepare and its writer process, summed,
sampled every 20 ms) and the load average before each run. ``--baseline GITREF``
also runs the code at that git ref on every case, alternating with the current
code, and prints the CPU ratios (wall times on a busy machine mean little).

    .venv/bin/python bench/prepare_bench.py --platforms --baseline main --platform-messages 100000
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SMILESTYLE = ROOT.parent / "shared" / "data" / "smilestyle" / "smilestyle_dataset.tsv"
PERSONA = "김민수"  # the usage: --persona 민수
NAMES = ["김민수", "이지은", "박서준", "최유리", "정하늘", "강도윤", "윤서연", "회원님"]


def dialogues() -> list[list[dict[str, str]]]:
    """SmileStyle rows grouped into dialogues (a row of empty cells separates them)."""
    from data_prep.smilestyle import load_dialogues

    return load_dialogues(SMILESTYLE)


def build_messages(n: int, seed: int = 0) -> list:
    from data_prep.records import Message

    rng = random.Random(seed)
    dias = dialogues()
    styles = [c for c in dias[0][0] if c]
    msgs, ts = [], datetime(2020, 1, 1, 9, 0)
    while len(msgs) < n:
        dia = rng.choice(dias)
        people = rng.sample(NAMES, rng.randint(2, 4))
        voice = {p: rng.choice(styles) for p in people}
        ts += timedelta(hours=rng.choice((2, 5, 20)))
        if rng.random() < 0.05:
            msgs.append(Message(ts, "", f"{people[-1][1:]}님이 들어왔습니다."))
        for i, row in enumerate(dia):
            speaker = people[i % len(people)]
            text = (row.get(voice[speaker]) or row.get("informal") or "응").strip() or "응"
            r = rng.random()
            if r < 0.02:
                text += f" 내 번호 010-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
            elif r < 0.03:
                text += f" 메일은 user{rng.randint(1, 999)}@naver.com"
            elif r < 0.06:
                text = rng.choice(("사진", "이모티콘", "사진 3장", "삭제된 메시지입니다."))
            elif r < 0.0605:  # a long turn (rows of other dialogues pasted together): sentence stage
                text = " ".join((rng.choice(rng.choice(dias)).get("formal") or "") for _ in range(12))
            elif r < 0.1:
                text += f" {people[(i + 1) % len(people)][1:]}아"  # name in text
            ts += timedelta(seconds=rng.randint(5, 200))
            msgs.append(Message(ts, speaker, text))
            if len(msgs) >= n:
                break
    return msgs


MODES = {"full": {}, "keep-pii": {"keep_pii": True}, "inline-writer": {"background": False}}


def child(path: str, mode: str) -> None:
    """Run prepare once in ``mode`` (MODES) and print its figures as JSON (peak RSS: this process and its worker)."""
    from pipeline.prepare import PrepareConfig, Timer, run

    out = tempfile.mkdtemp(prefix="prepare-bench-")
    opts = MODES[mode]
    cfg = PrepareConfig(inputs=(path,), out=str(Path(out) / "data"), personas=(PERSONA,),
                        keep_pii=opts.get("keep_pii", False))
    timer = Timer()
    cpu0 = time.process_time()
    start = time.perf_counter()
    result = run(cfg, timer, background=opts.get("background"))
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    shutil.rmtree(out, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # child processes: the forked writer (data_prep.background), matplotlib's fc-list... A forked
    # child's peak counts the pages it shares with this process again: an upper bound
    worker = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"seconds": total, "cpu_seconds": cpu, "peak_mb": peak_mb,
                      "worker_peak_mb": worker.ru_maxrss / 1024, "worker_cpu_seconds": worker.ru_utime + worker.ru_stime,
                      "stages": timer.seconds, "stages_cpu": timer.cpu,
                      "messages": result.stats["messages"]["parsed"],
                      "pairs": sum(c["train"] + c["validation"] for c in result.stats["pairs"].values())}))


_NAIVE = [re.compile(p) for p in (
    r"https?://\S+|www\.\S+", r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", r"\d{6}-?[1-8]\d{6}",
    r"(?:\d{4}-){3}\d{4}", r"(?:\+82|0)1[016789]-?\d{3,4}-?\d{4}|0[2-6]\d?-?\d{3,4}-?\d{4}",
    r"\d{2,6}-\d{2,6}-\d{2,7}",
)]


def pii_ratio(msgs: list) -> tuple[float, float]:
    """(PII stage CPU seconds, naive CPU seconds) on the same messages.

    The naive version is what a first implementation looks like: every pattern
    and every name applied to every message, a new Message for every message.
    """
    from data_prep.pii import PIIConfig, Pseudonymizer, remove_pii
    from data_prep.records import Message

    pseudo = Pseudonymizer(NAMES, personas={PERSONA})
    t0 = time.process_time()
    remove_pii(msgs, pseudo, PIIConfig())
    fast = time.process_time() - t0
    t0 = time.process_time()
    out = []
    for m in msgs:
        text = m.text
        for pat in _NAIVE:
            text = pat.sub("<X>", text)
        for name, alias in pseudo.mapping.items():
            text = text.replace(name, alias)
        out.append(Message(m.ts, pseudo.speaker(m.speaker), text, m.source, m.line))
    return fast, time.process_time() - t0


def kss_cost(msgs: list, n: int = 200) -> tuple[float, float, float]:
    """(import s, ms per long unpunctuated turn with kss/mecab, ms per long turn cut at punctuation)."""
    from data_prep.sentences import KssSplitter, split_turn

    texts = [m.text for m in msgs if m.speaker][: n * 12]
    bare = [" ".join(re.sub(r"[.!?]", "", t) for t in texts[i:i + 12]) for i in range(0, len(texts), 12)][:n]
    punct = [" ".join(texts[i:i + 12]) for i in range(0, len(texts), 12)][:n]
    splitter, counts = KssSplitter("mecab"), Counter()
    t0 = time.perf_counter()
    splitter("준비.")  # the import and the model load
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    for text in bare:
        split_turn(text, 300, splitter, counts)
    bare_ms = (time.perf_counter() - t0) / len(bare) * 1000
    t0 = time.perf_counter()
    for text in punct:
        split_turn(text, 300, lambda t: [t], counts)
    return load, bare_ms, (time.perf_counter() - t0) / len(punct) * 1000


def run_child(label: str, path: Path) -> dict:
    """One prepare run (mode ``label``) in a fresh process; prints its figures."""
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, __file__, "--child", str(path), label], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"{label} run failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n{label}: {r['messages']:,} messages, {r['pairs']:,} pairs in {r['seconds']:.1f}s "
          f"-> {r['messages'] / r['seconds']:,.0f} messages/s (load average {load:.1f} on {os.cpu_count()} cores)")
    print(f"  CPU {r['cpu_seconds']:.1f}s main process -> {r['messages'] / r['cpu_seconds']:,.0f} messages per "
          f"CPU-second, + {r['worker_cpu_seconds']:.1f}s in child processes (the writer); wall > CPU means other "
          f"processes shared the cores")
    print(f"  peak RSS {r['peak_mb']:.0f} MB main + {r['worker_peak_mb']:.0f} MB largest child process "
          f"= {r['peak_mb'] + r['worker_peak_mb']:.0f} MB at most (a forked child's shared pages count twice)")
    print("  wall: " + ", ".join(f"{k} {v:.2f}s" for k, v in r["stages"].items()))
    print("  CPU:  " + ", ".join(f"{k} {v:.2f}s" for k, v in r["stages_cpu"].items()))
    return r


# --platforms: each platform's export of the same messages (writer options of data_prep.formats)
PLATFORMS = {"android-ko": ("kakao_android", {"locale": "ko"}), "windows": ("kakao_windows", {"lang": "ko"}),
             "ios": ("kakao_ios", {"locale": "ko"}), "macos": ("kakao_macos", {})}
FOUR = ["김민수", "이지은", "박서준", "회원님"]


def short_messages(n: int, seed: int = 0) -> list:
    """``n`` short messages (1-4 words of SmileStyle sentences) by four speakers, seconds apart."""
    from data_prep.records import Message

    rng = random.Random(seed)
    words = [w for dia in dialogues() for row in dia for text in row.values() for w in (text or "").split()]
    ts, msgs, speaker = datetime(2020, 1, 1, 9, 0), [], FOUR[0]
    while len(msgs) < n:
        ts += timedelta(seconds=rng.randint(3, 90) if rng.random() > 0.01 else rng.randint(3600, 90_000))
        if rng.random() < 0.7:  # mostly a new speaker: turns of one to a few messages
            speaker = rng.choice(FOUR)
        msgs.append(Message(ts, speaker, " ".join(rng.choices(words, k=rng.randint(1, 4)))))
    return msgs


def _tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and its children (Linux /proc), MB; 0 when gone."""
    total = 0
    for p in [str(pid), *_children(pid)]:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total / 2 ** 20


def _children(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return f.read().split()
    except OSError:
        return []


def _cpu_seconds(pid: int) -> float | None:
    """User + system seconds of ``pid`` so far (its own, not its children's); None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_cli_once(path: Path, persona: str | None, root: Path = ROOT) -> tuple[float, float, float, float, int]:
    """(wall s, CPU s, main CPU s, peak tree RSS MB, pairs) of one ``python -m pipeline.prepare`` (the code
    under ``root``), fresh process.

    CPU: user + system seconds of the process and the writer process it waited
    for (RUSAGE_CHILDREN before/after); on a busy machine wall > CPU. Main CPU:
    the prepare process alone (sampled every 20 ms until it exits), the
    critical path when its writer process has a core of its own.
    """
    out = Path(tempfile.mkdtemp(prefix="prepare-bench-")) / "data"
    cmd = [sys.executable, "-m", "pipeline.prepare", str(path), "--out", str(out)]
    cmd += ["--persona", persona] if persona else []
    env = {**os.environ, "PYTHONPATH": str(root)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    log = tempfile.TemporaryFile("w+")  # not a pipe: progress bars would fill it and block the run
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    peak = main_cpu = 0.0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mb(proc.pid))
        main_cpu = _cpu_seconds(proc.pid) or main_cpu
        time.sleep(0.02)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode:
        log.seek(0)
        sys.exit(f"{' '.join(cmd)} failed:\n{log.read()[-2000:]}")
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    shutil.rmtree(out.parent, ignore_errors=True)
    return wall, cpu, main_cpu, peak, sum(c["train"] + c["validation"] for c in stats["pairs"].values())


def checkout(ref: str, folder: str) -> Path:
    """The repository's files at git ``ref`` extracted into ``folder`` (a baseline to run side by side)."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return Path(folder)


def platforms(n: int, repeat: int, baseline: str | None = None) -> None:
    """The --platforms table: every platform, with and without --persona, best of ``repeat`` fresh processes.

    ``baseline``: a git ref whose code runs each case too, alternating with the
    current code, and gets a row of its own plus the ratios (robust on a busy machine).
    """
    from data_prep.formats import PARSERS

    msgs = short_messages(n)
    work = tempfile.TemporaryDirectory(prefix="prepare-bench-")
    roots = {"": ROOT}
    if baseline:
        roots[baseline] = checkout(baseline, tempfile.mkdtemp(dir=work.name))
    print(f"{'export':<11} {'persona':<8} {'MB':>5} {'pairs':>9} {'best s':>7} {'msg/s':>9} {'CPU s':>6} "
          f"{'main CPU':>8} {'msg/main-CPU-s':>14} {'peak MB':>8}  wall s@load average, every run")
    met = True
    for name, (fmt, opts) in PLATFORMS.items():
        path = Path(work.name) / f"KakaoTalk_{name}.{'csv' if fmt == 'kakao_macos' else 'txt'}"
        path.write_text(PARSERS[fmt].write(msgs, **opts), encoding="utf-8")
        for persona in (FOUR[0], None):
            runs: dict[str, list] = {label: [] for label in roots}
            for _ in range(repeat):
                for label, root in roots.items():  # alternating: both see the same load
                    load = os.getloadavg()[0]
                    runs[label].append((*run_cli_once(path, persona, root), load))  # (wall, cpu, main, peak, pairs, load)
            best = {}
            for label, rs in runs.items():
                wall, pairs = min(rs)[0], rs[0][4]
                best[label] = cpu, main_cpu, peak = min(r[1] for r in rs), min(r[2] for r in rs), max(r[3] for r in rs)
                met &= bool(label) or (n / wall >= 100_000 and peak < 2048)
                walls = " ".join(f"{r[0]:.2f}@{r[5]:.1f}" for r in rs)
                print(f"{name + (f' @{label}' if label else ''):<11} {'yes' if persona else 'no':<8} "
                      f"{path.stat().st_size / 1e6:>5.0f} {pairs:>9,} {wall:>7.2f} {n / wall:>9,.0f} {cpu:>6.2f} "
                      f"{main_cpu:>8.2f} {n / main_cpu:>14,.0f} {peak:>8.0f}  {walls}", flush=True)
            if baseline:
                (cpu, main_cpu, _), (base_cpu, base_main, _) = best[""], best[baseline]
                print(f"{'':<11} {'':<8} current/{baseline}: CPU s {cpu / base_cpu:.2f}x, main CPU {main_cpu / base_main:.2f}x")
    print(f"({os.cpu_count()} cores. best s: the best wall time, start-up included. CPU s: the least user+system "
          "time of prepare and its writer process together; main CPU: of prepare alone, what bounds the wall time "
          "when the writer has a core of its own, i.e. on an idle machine)")
    print(f"target >= 100,000 messages/s wall and < 2 GB on every case: {'met' if met else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000, help="messages in the generated export")
    ap.add_argument("--repeat", type=int, default=None,
                    help="run the full case (--platforms: every case) this many times (default 1; --platforms 3)")
    ap.add_argument("--platforms", action="store_true",
                    help="instead: the per-platform table, python -m pipeline.prepare in fresh processes")
    ap.add_argument("--platform-messages", type=int, default=300_000, help="messages per platform export (--platforms)")
    ap.add_argument("--baseline", metavar="GITREF",
                    help="--platforms: also run the code at this git ref, alternating, and print the CPU ratios")
    ap.add_argument("--child", nargs=2, metavar=("FILE", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(*a.child)
    if a.platforms:
        return platforms(a.platform_messages, a.repeat or 3, a.baseline)
    from data_prep.formats import PARSERS

    t0 = time.perf_counter()
    msgs = build_messages(a.messages)
    workdir = tempfile.TemporaryDirectory(prefix="prepare-bench-")  # removed at exit (90 MB per million)
    path = Path(workdir.name) / "KakaoTalkChats.txt"
    path.write_text(PARSERS["kakao_windows"].write(msgs), encoding="utf-8")
    print(f"built {len(msgs):,} messages ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s")
    from data_prep.normalize import NormalizeConfig, normalize

    fast, naive = pii_ratio(normalize(msgs[:200_000], NormalizeConfig())[0])
    print(f"PII stage on 200,000 messages: {fast:.2f} CPU-s vs naive (every pattern on every message) "
          f"{naive:.2f} CPU-s -> {naive / fast:.1f}x")
    load, bare_ms, punct_ms = kss_cost(msgs)
    print(f"long turns: kss (mecab) import {load:.1f}s, {bare_ms:.1f} ms per unpunctuated 12-sentence turn; "
          f"{punct_ms:.2f} ms when punctuation gives the boundaries (kss not called) -> {bare_ms / punct_ms:.0f}x")
    runs: dict[str, list[dict]] = {}
    for mode in ["full"] * max(1, a.repeat or 1) + ["inline-writer", "keep-pii"]:
        runs.setdefault(mode, []).append(run_child(mode, path))
    full = min(runs["full"], key=lambda r: r["seconds"])
    base, inline = runs["keep-pii"][0], runs["inline-writer"][0]
    if len(runs["full"]) > 1:
        walls = ", ".join(f"{r['seconds']:.1f}s" for r in runs["full"])
        print(f"\nfull, best of {len(runs['full'])}: {full['seconds']:.1f}s wall (all runs: {walls})")
    print(f"\nratio full/keep-pii (baseline without the PII stage) wall time: {full['seconds'] / base['seconds']:.2f} "
          f"(PII stage costs {full['stages'].get('remove_pii', 0):.2f}s)")
    print(f"ratio inline-writer (dataset + chart in the main process, as before)/full: wall "
          f"{inline['seconds'] / full['seconds']:.2f}x, main-process CPU {inline['cpu_seconds'] / full['cpu_seconds']:.2f}x")
    ok = full["messages"] / full["seconds"] >= 100_000 and full["peak_mb"] + full["worker_peak_mb"] < 2048
    print(f"target >= 100,000 messages/s and < 2 GB: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
