"""End to end on the real bundled SmolLM2-135M-Instruct: fine-tune a few steps on bundled
demonstrations, check the loss falls, reload the saved model and generate."""

import json
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from palate.data.readers import bundled_path
from palate.models.load import load_tokenizer
from palate.rollout.generate import reply
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow


def test_bundled_model_finetunes_reloads_and_generates(tmp_path):
    rows = [json.loads(x) for x in bundled_path("demonstrations").read_text().splitlines()[:8]]
    data = write_jsonl(tmp_path / "eight.jsonl", rows)
    heldout = write_jsonl(tmp_path / "four.jsonl", rows[:4])  # a subset of training: loss must fall
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "palate", "sft", f"run_dir={run}", "model.name=bundled", f"data.path={data}",
           f"data.eval_path={heldout}", "data.max_length=192", "train.batch_size=4", "train.max_steps=6",
           "train.lr=5e-5", "train.warmup_ratio=0", "train.eval_every=1", "train.save_every=-1", "log.progress=false"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"precision (fp32|bf16) \(auto: ", out.stderr)  # the choice is said out loud, with its reason
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m["eval_loss"] for m in metrics]
    assert len(evals) == 6
    assert evals[-1] < evals[0] * 0.9, evals  

    model = AutoModelForCausalLM.from_pretrained(run / "final").eval()
    tok = load_tokenizer(str(run))
    text = reply(model, tok, "What is the capital of France?", max_new_tokens=24)
    assert len(text.split()) >= 2 and "<|im_end|>" not in text
    assert "paris" in text.lower()

    chat = subprocess.run([sys.executable, "-m", "palate", "chat", str(run), "Say hello in French.",
                           "--max-new-tokens", "16"], capture_output=True, text=True)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.strip()
