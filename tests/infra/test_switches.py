"""The precision and gradient-checkpointing switches (train.precision, train.gradient_checkpointing) change
how a step is computed, not what it computes: same SFT losses to tolerance on the tiny model."""

import json
import logging

import pytest

from palate.config import load_config
from palate.recipes.sft import SFTConfig, train


def losses(run_dir):
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def run(tmp_path, name, data, *more):
    train(load_config(SFTConfig, None, [
        f"run_dir={tmp_path / name}", f"data.path={data}", "model.name=tiny", "train.max_steps=3",
        "train.batch_size=4", "train.lr=1e-3", "lora.enabled=false", "log.progress=false", "data.eval_fraction=0",
        *more]))
    return losses(tmp_path / name)


def test_gradient_checkpointing_and_bf16_switches(tmp_path, arithmetic_jsonl, caplog):
    caplog.set_level(logging.INFO, logger="palate")
    base = run(tmp_path, "base", arithmetic_jsonl, "train.precision=fp32")
    ckpt = run(tmp_path, "ckpt", arithmetic_jsonl, "train.precision=fp32", "train.gradient_checkpointing=true")
    assert "gradient checkpointing on" in caplog.text
    assert ckpt == pytest.approx(base, rel=1e-5)  # recomputation gives the same gradients
    bf16 = run(tmp_path, "bf16", arithmetic_jsonl, "train.precision=bf16")
    assert "precision bf16" in caplog.text
    assert bf16 == pytest.approx(base, rel=2e-2)
    assert bf16 != base  # the matmuls did run in bf16
