"""The child side of the kill tests: one process imports and builds once, then forks one copy per case.

Each fork sets ``core.files.KILL_ENV`` to its case's kill point (or none), runs the write and
dies there with SIGKILL as a killed run would (no ``finally``, no cleanup); the parent prints
every case's exit status as one JSON line. Forking keeps the cost of importing torch to one
process per test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable

from core.files import KILL_ENV

REPO = Path(__file__).resolve().parents[1]


def run_cases(write: Callable[[str], None], cases: dict[str, str | None]) -> None:
    """In the child: ``write(case)`` in a fork per case, killed at ``cases[case]``; prints {case: status}."""
    status = {}
    for case, kill in cases.items():
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.environ.pop(KILL_ENV, None)
            if kill:
                os.environ[KILL_ENV] = kill
            code = 0
            try:
                write(case)
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        _, st = os.waitpid(pid, 0)
        status[case] = -os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st)
    print(json.dumps(status), flush=True)


def run_child(code: str, *args, timeout: float = 300) -> dict[str, int]:
    """In the test: run ``code`` (which ends with :func:`run_cases`) in a fresh interpreter; its statuses."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop(KILL_ENV, None)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save_two_checkpoints(out: Path) -> None:
    """Checkpoints step-2 and step-4 of a tiny linear model (with optimizer state) under ``out``."""
    import torch

    from pipeline.training.checkpoint import LoopState, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in (2, 4):
        model(torch.ones(1, 4)).sum().backward()
        opt.step()
        save_checkpoint(out, model, opt, sched, LoopState(step=step), None, "fp", keep=3)
