"""End to end on the real bundled SmolLM2-135M-Instruct with the bundled preference pairs: a reward
model that beats chance on held-out pairs (with its CI, calibration and length bias reported), and
DPO that raises held-out implicit-reward accuracy and writes before/after samples."""

import json
import subprocess
import sys

import pytest

from palate.data.readers import bundled_path
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow


def run_cli(*args):
    out = subprocess.run([sys.executable, "-m", "palate", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_bundled_reward_model_beats_chance_on_held_out_pairs(tmp_path):
    run = tmp_path / "rm"
    out = run_cli("rm", f"run_dir={run}", "model.name=bundled", "data.path=bundled:preferences", "data.max_length=192",
                  "data.eval_fraction=0.2", "train.batch_size=4", "train.max_steps=12", "train.lr=2e-5",
                  "train.warmup_ratio=0.1", "train.eval_every=0", "train.save_every=-1", "reward.normalize_samples=32",
                  "log.progress=false")
    report = json.loads((run / "eval" / "rm_eval.json").read_text())
    acc = report["accuracy"]
    assert report["n_pairs"] == 52
    assert acc["ci_low"] > 0.5, acc  # above chance, and the CI says so
    assert "pairwise accuracy" in out.stderr and "ECE" in out.stderr and "longer answer loses" in out.stderr
    assert 0 <= report["calibration"]["ece"] <= 1
    assert report["length_bias"]["accuracy_when_longer_loses"]["n"] > 0
    assert set(report["accuracy_by_group"]) >= {"key", "A", "B"}
    meta = json.loads((run / "final" / "palate_reward.json").read_text())
    assert meta["std"] > 0


def test_bundled_dpo_raises_held_out_implicit_reward_accuracy(tmp_path):
    # 64 of the bundled pairs keep the one-off reference pass short; 16 are held out
    rows = [json.loads(x) for x in bundled_path("preferences").read_text().splitlines()[:64]]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    run = tmp_path / "dpo"
    run_cli("dpo", f"run_dir={run}", "model.name=bundled", f"data.path={data}", "data.max_length=192",
            "data.eval_fraction=0.25", "train.batch_size=4", "train.max_steps=8", "train.lr=5e-6",
            "train.warmup_ratio=0.1", "train.eval_every=4", "train.save_every=-1", "dpo.samples=2",
            "dpo.sample_max_new_tokens=32", "log.progress=false")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in rows if "eval_reward_accuracy" in m]
    assert evals[-1]["eval_reward_accuracy"] > 0.75, evals[-1]
    assert evals[-1]["eval_reward_margin"] > evals[0]["eval_reward_margin"] > 0
    assert evals[-1]["eval_loss"] < 0.6931  # below −log σ(0), where policy = reference
    samples = json.loads((run / "samples.json").read_text())
    assert len(samples) == 2 and all(s["before"] and s["after"] for s in samples)
