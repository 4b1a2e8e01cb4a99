"""Exact resume: SIGKILL a real `palate sft` process mid-run, rerun the same command, and the metrics
must continue bit-identical to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

COMPARED = ("loss", "grad_norm", "lr", "tokens", "targets", "eval_loss")


def sft_command(run_dir: Path, data: Path) -> list[str]:
    return [
        sys.executable, "-m", "palate", "sft",
        f"run_dir={run_dir}", f"data.path={data}", "model.name=tiny",
        "train.max_steps=24", "train.batch_size=2", "train.grad_accum=2", "train.lr=1e-3",
        "train.save_every=3", "train.eval_every=7", "train.keep_last=2", "lora.enabled=false",
        "lora.dropout=0.1", "log.progress=false",
    ]


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: r[k] for k in ("step", *COMPARED) if k in r} for r in rows]


def test_sigkill_then_rerun_continues_identically(tmp_path, arithmetic_jsonl):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = tmp_path / "straight"
    subprocess.run(sft_command(straight, arithmetic_jsonl), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(sft_command(killed, arithmetic_jsonl), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-00000006").exists():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert json.loads((killed / "status.json").read_text())["state"] == "running"
    assert not (killed / "final").exists()
    lines_before = len(metrics(killed))

    rerun = subprocess.run(sft_command(killed, arithmetic_jsonl), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from step-" in rerun.stderr
    assert lines_before >= 6
    assert metrics(killed) == metrics(straight)  # every logged number, bit for bit
    assert len(metrics(straight)) == 24  # one line per step (eval rides on its step's line)

    from transformers import AutoModelForCausalLM
    import torch

    a = AutoModelForCausalLM.from_pretrained(straight / "final")
    b = AutoModelForCausalLM.from_pretrained(killed / "final")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_finished_run_is_not_overwritten(tmp_path, arithmetic_jsonl):
    cmd = sft_command(tmp_path / "r", arithmetic_jsonl)
    cmd = [c if not c.startswith("train.max_steps") else "train.max_steps=2" for c in cmd]
    subprocess.run(cmd, check=True, capture_output=True)
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2
    assert "finished run" in again.stderr and "--overwrite" in again.stderr
    forced = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr


def test_changed_config_is_refused_on_resume(tmp_path, arithmetic_jsonl):
    run = tmp_path / "r"
    cmd = sft_command(run, arithmetic_jsonl)
    (run).mkdir()
    from palate.config import load_config
    from palate.infra.run import RunDir, RunExistsError
    from palate.recipes.sft import SFTConfig

    cfg = load_config(SFTConfig, None, [f"run_dir={run}", "model.name=tiny"])
    RunDir.open(run, cfg)  # an unfinished run with this config
    other = load_config(SFTConfig, None, [f"run_dir={run}", "model.name=tiny", "train.lr=0.5"])
    with pytest.raises(RunExistsError, match=r"train.lr: 2e-05 -> 0.5"):
        RunDir.open(run, other)
