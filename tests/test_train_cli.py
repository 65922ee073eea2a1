"""The CLI end to end: user errors, Ctrl-C + --resume == uninterrupted, fresh-process reload, DDP."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.cli import run_cli
from pipeline.train import main, parse_args
from pipeline.training.run import train
from tests.test_train_helpers import persona_data, train_cache  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
IDS = [[2, 10, 20, 30, 40, 50, 60, 70]]


def _flags(data, out, base, cache, steps=12):
    return ["--data", str(data), "--out", str(out), "--persona", "민수", "--base-model", str(base),
            "--cache-dir", str(cache), "--max-steps", str(steps), "--batch-size", "2", "--lr", "5e-3",
            "--eval-every", "4", "--save-every", "0", "--log-every", "1", "--threads", "1", "--seed", "3"]


def _env():
    """The CPU path, also on a GPU machine (test_gpu.py covers CUDA)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture
def no_gpu(monkeypatch):
    """In-process training on the CPU, as on a machine without CUDA (accelerate's process-wide state,
    set by an earlier in-process training on the GPU, is cleared before and after)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _wait_for_steps(proc, metrics: Path, n: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text(encoding="utf-8").splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"training did not reach {n} logged steps (rc={proc.poll()})")


def test_user_errors_are_one_line(tmp_path, capsys):
    assert run_cli(main, ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "train.jsonl" in err and "--batch-size" in err


def test_qlora_on_cpu_is_refused(persona_data, tmp_path, capsys, no_gpu):
    assert run_cli(main, ["--data", str(persona_data), "--out", str(tmp_path / "o"), "--qlora"]) == 2
    assert "--qlora needs a CUDA GPU" in capsys.readouterr().err


def test_gradient_checkpointing_is_on_by_default(persona_data, tmp_path, capsys):
    flags = ["--data", str(persona_data), "--out", str(tmp_path / "o")]
    assert parse_args(flags).gradient_checkpointing is True
    assert parse_args(flags + ["--no-gradient-checkpointing"]).gradient_checkpointing is False
    with pytest.raises(SystemExit):  # the removed methods are refused by argparse
        parse_args(flags + ["--method", "prefix"])
    assert "invalid choice: 'prefix'" in capsys.readouterr().err


def test_ctrl_c_then_resume_matches_uninterrupted_and_reloads(tiny_gemma_dir, persona_data, train_cache, tmp_path,
                                                              no_gpu):
    threads = torch.get_num_threads()
    try:
        reference = train(parse_args(_flags(persona_data, tmp_path / "ref", tiny_gemma_dir, train_cache)))
    finally:
        torch.set_num_threads(threads)
    if importlib.util.find_spec("bitsandbytes") is None:  # where it is installed, PEFT imports it on its own
        assert "bitsandbytes" not in sys.modules  # the CPU path never imports it

    out = tmp_path / "run"
    flags = _flags(persona_data, out, tiny_gemma_dir, train_cache)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", *flags], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_steps(proc, out / "metrics.jsonl", 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and list((out / "checkpoints").glob("step-*"))
    assert not (out / "adapter_model.safetensors").exists()

    changed = [f if f != "5e-3" else "1e-3" for f in flags]  # another --lr: another run, refused
    assert run_cli(main, [*changed, "--resume"]) == 2
    try:
        assert run_cli(main, [*flags, "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    ours, ref = load_file(out / "adapter_model.safetensors"), load_file(tmp_path / "ref" / "adapter_model.safetensors")
    assert ours.keys() == ref.keys()
    assert all(torch.allclose(ours[k], ref[k], atol=1e-6) for k in ref)
    m_ours = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["metrics"]
    assert m_ours["val_loss"] == pytest.approx(reference.manifest["metrics"]["val_loss"], abs=1e-6)

    # a fresh process: extended base + adapter reproduces the trained model's logits
    code = ("import json,sys,torch; from pipeline.extension import load_trained;"
            f"m,_,_=load_trained(sys.argv[1], cache_dir=sys.argv[2]);"
            f"print(json.dumps(m(input_ids=torch.tensor({IDS})).logits[0,-1].tolist()))")
    fresh = subprocess.run([sys.executable, "-c", code, str(out), str(train_cache)], cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=180)
    assert fresh.returncode == 0, fresh.stderr
    with torch.no_grad():
        expected = reference.model.eval()(input_ids=torch.tensor(IDS)).logits[0, -1]
    assert torch.allclose(torch.tensor(json.loads(fresh.stdout.strip().splitlines()[-1])), expected, atol=1e-5)


def test_two_process_ddp_ranks_agree_rank0_writes(tiny_gpt2_dir, persona_data, train_cache, tmp_path):
    out = tmp_path / "ddp"
    flags = _flags(persona_data, out, tiny_gpt2_dir, train_cache, steps=3)
    flags[flags.index("--threads") + 1] = "1"
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "pipeline.train", *flags],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all 2 ranks agree" in proc.stderr and "2 process(es)" in proc.stderr
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == [1, 2, 3]  # one writer: every step logged once
    assert proc.stderr.count(f"saved {out} (") == 1 and (out / "adapter_model.safetensors").is_file()
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp")]


def test_command_lines_hide_peft_deprecation_noise_only():
    from core.cli import setup_logging

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup_logging()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("something the user should see", FutureWarning)
    assert [str(w.message) for w in caught] == ["something the user should see"]


def test_more_processes_than_gpus_is_one_clear_line(monkeypatch):
    from core.errors import UserError
    from pipeline.training.run import make_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UserError, match="2 processes on this machine but 1 GPU"):
        make_accelerator()


def test_a_checkpoint_restores_its_loop_state_including_the_older_best_val_key(tmp_path):
    from pipeline.training import checkpoint as ckpt_io

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = ckpt_io.LoopState(step=7, best_objective=2.5, best_step=5, bad_evals=1, tokens=99)
    saved = ckpt_io.save_checkpoint(tmp_path, model, opt, sched, state, None, "fp", keep=2)
    meta = ckpt_io.read_meta(saved, "fp")
    assert ckpt_io.restore(saved, meta, model, opt, sched)[0] == state
    old = {**meta, "loop": {("best_val" if k == "best_objective" else k): v for k, v in meta["loop"].items()}}
    assert ckpt_io.restore(saved, old, model, opt, sched)[0] == state  # the key's older name
