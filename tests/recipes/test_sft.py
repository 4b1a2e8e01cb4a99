"""SFT recipe on the tiny model: learning, LoRA save/merge, packing, in-process resume, skip reporting."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from palate.config import load_config
from palate.data.split import split_heldout
from palate.recipes.sft import SFTConfig, train
from tests.conftest import write_jsonl


def config(run_dir, data, *more):
    return load_config(SFTConfig, None, [
        f"run_dir={run_dir}", f"data.path={data}", "model.name=tiny", "train.lr=1e-3", "train.batch_size=4",
        "log.progress=false", *more,
    ])


def losses(run_dir, key="loss"):
    return [json.loads(x)[key] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if key in json.loads(x)]


def test_full_finetune_learns_and_saves_hf_loadable(tmp_path, arithmetic_jsonl):
    final = train(config(tmp_path / "r", arithmetic_jsonl, "train.max_steps=40", "train.eval_every=10"))
    ev = losses(tmp_path / "r", "eval_loss")
    assert len(ev) == 4 and ev[-1] < ev[0] - 1.0, ev
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.num_hidden_layers == 2
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "finished" and status["summary"]["steps"] == 40
    report = json.loads((tmp_path / "r" / "data_report.json").read_text())
    assert report["skipped"] == 0 and report["n_train"] + report["n_eval"] == 60


def test_lora_trains_adapter_only_and_merges(tmp_path, arithmetic_jsonl):
    run = tmp_path / "lora"
    final = train(config(run, arithmetic_jsonl, "train.max_steps=8", "train.save_every=4", "lora.enabled=true", "lora.r=4",
                         "lora.dropout=0.0", "train.lr=5e-3"))
    from safetensors.torch import load_file

    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    saved = load_file(str(ckpt / "trainable.safetensors"))
    assert saved and all("lora_" in k for k in saved), "LoRA checkpoints hold the adapter only"
    merged = AutoModelForCausalLM.from_pretrained(final)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    from palate.models.load import load_model, load_tokenizer

    base = load_model("tiny", tokenizer=load_tokenizer("tiny"))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-4), "merged weights moved"


def test_adapter_only_save(tmp_path, arithmetic_jsonl):
    final = train(config(tmp_path / "a", arithmetic_jsonl, "train.max_steps=2", "lora.enabled=true",
                         "lora.merge=false"))
    assert (final / "adapter_config.json").exists() and (final / "adapter_model.safetensors").exists()
    assert [c.name for c in (tmp_path / "a" / "checkpoints").iterdir()] == ["step-00000002"]  # the last step is always saved


def test_save_every_minus_one_writes_no_checkpoint_and_bad_values_are_refused(tmp_path, arithmetic_jsonl):
    from palate.config import ConfigError

    final = train(config(tmp_path / "n", arithmetic_jsonl, "train.max_steps=2", "train.save_every=-1"))
    assert (final / "model.safetensors").exists()
    assert not (tmp_path / "n" / "checkpoints").exists() or not any((tmp_path / "n" / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match="train.save_every"):
        config(tmp_path / "m", arithmetic_jsonl, "train.save_every=-2")
    with pytest.raises(ConfigError, match="train.keep_last"):
        config(tmp_path / "m", arithmetic_jsonl, "train.keep_last=-1")


def test_resume_in_process_is_exact_with_lora_dropout(tmp_path, arithmetic_jsonl):
    """Finish a run, then pretend it died after step 3: rerunning must redo steps 4-6 identically."""
    run = tmp_path / "r"
    args = ("train.max_steps=6", "train.save_every=3", "lora.enabled=true", "lora.dropout=0.2", "train.grad_accum=2")
    train(config(run, arithmetic_jsonl, *args))
    first = losses(run)
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints" / "step-00000006")  # written after the last step: it died before that
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "running"}))
    train(config(run, arithmetic_jsonl, *args))
    assert losses(run) == first
    assert json.loads((run / "status.json").read_text())["summary"]["resumed_from_step"] == 3


def test_packing_trains_on_fewer_padded_slots(tmp_path, arithmetic_jsonl):
    train(config(tmp_path / "p", arithmetic_jsonl, "train.max_steps=3", "data.packing=true", "data.max_length=64"))
    rows = [json.loads(x) for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    # 4 packed rows of up to 64 tokens hold far more than 4 short examples (~25 tokens each)
    assert all(r["tokens"] > 4 * 30 for r in rows), rows


def test_skips_are_reported_in_the_run_dir(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Say hi.", "response": "Hi!"},
        {"prompt": "Say nothing.", "response": "   "},
        {"prompt": "word " * 300, "response": "too long a prompt"},
        *[{"prompt": f"Count to {i}.", "response": " ".join(map(str, range(1, i + 1)))} for i in range(2, 12)],
    ])
    train(config(tmp_path / "r", data, "train.max_steps=1", "data.max_length=64", "data.eval_fraction=0"))
    report = json.loads((tmp_path / "r" / "data_report.json").read_text())
    assert report["skipped"] == 2
    assert report["skipped_by_reason"] == {"empty completion": 1, "prompt longer than max_length": 1}
    rows = {(s["row"], s["field"]) for s in report["skips"]}
    assert rows == {(2, "response"), (3, "prompt")}


def test_heldout_split_is_deterministic_and_disjoint():
    recs = list(range(100))
    tr, ev = split_heldout(recs, 0.1, seed=0)
    assert len(ev) == 10 and set(tr).isdisjoint(ev) and sorted(tr + ev) == recs
    assert split_heldout(recs, 0.1, seed=0) == (tr, ev)
    assert split_heldout(recs, 0.1, seed=1)[1] != ev
    assert split_heldout(recs, 0.0, seed=0) == (recs, [])
