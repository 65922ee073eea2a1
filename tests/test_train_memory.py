"""The allocator settings of pipeline.training.memory: freed tensors leave the process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# a big free raises glibc's dynamic mmap threshold; then 2 MB tensors (activation-sized) are
# allocated and every other one freed (the holes a step's freed activations leave between the
# ones still alive): printed is how much of the 300 MB the process still holds
_PROBE = """
import sys, torch
sys.path.insert(0, {repo!r})
from pipeline.training import memory
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon")) // 1024
fixed = memory.fix_mmap_threshold() if {fix} else False
big = torch.ones(4 << 20); del big  # 16 MB: under the 32 MB cap of the raise
before = rss()
ts = [torch.ones(1 << 19) for _ in range(150)]
held = rss() - before
del ts[::2]
memory.release_free_memory() if {fix} else None
print(fixed, held, rss() - before)
"""


def _probe(fix: bool) -> tuple[bool, int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(repo=str(REPO), fix=fix)], capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_activations_go_back_to_the_os():
    _, _, left_by_default = _probe(fix=False)
    assert left_by_default > 250  # the problem: glibc keeps the holes resident
    fixed, held, left = _probe(fix=True)
    assert fixed
    assert held > 250  # 150 x 2 MB were really resident
    assert left < 150 + 30, f"{left} MB resident after freeing half of 300 MB"


def test_release_is_safe_to_call_anywhere():
    from pipeline.training import memory

    memory.release_free_memory()  # no-op off glibc, a trim on it: never raises
