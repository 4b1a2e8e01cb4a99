"""Sharded training on PyTorch FSDP2 over gloo (CPU), 2 processes: SFT (full and LoRA), reward model and DPO give the loss
curve of a 1-process run with the same global batch; a run SIGKILLed after a (DCP, sharded) checkpoint
resumes on 2 processes and on 1 and continues the same curve; ``final/`` is a whole HF model equal to the
gathered weights; each process holds half of the parameters.

Tolerance: relative 1e-4 on every logged number (absolute 1e-6), as for DDP. Measured at the commit that
added these tests: the largest relative difference from the 1-process curve is ~5e-5 (SFT grad_norm;
losses agree to ~1e-7): FSDP2 reduces gradient shards in another order than one process sums them.
LoRA under FSDP2 (frozen base + trainable adapter in the same groups), same tolerance: measured ~2e-7 on
grad_norm and ~1e-7 on the loss (resumed on 2 processes), ~7e-8 on the loss resumed on 1; reward model
~1.5e-5 (reward_gap, a small number), DPO ~2e-5 (reward_margin, near zero early); the adapter needs
``lora.dropout=0`` for the comparison (each process draws its own dropout masks)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from palate.config import ConfigError
from tests.conftest import marker_preferences, write_jsonl
from tests.infra.test_distributed import (
    ROOT,
    SFT,
    TIMEOUT,
    assert_same_curve,
    child_env,
    fp32,
    free_port,
    kill_at_checkpoint,
    launch,
    metrics,
    one_process,
)

FSDP = ["train.sharding=fsdp"]


def torchrun(args: list[str]) -> list[str]:
    if args[:2] == ["-m", "palate"]:
        args = [*args[:3], *fp32(args[3:])]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *args]


def accelerate_fsdp(recipe: str, overrides: list[str]) -> subprocess.CompletedProcess:
    """``accelerate launch`` with the shipped FSDP config (its 8 processes overridden to 2)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "examples/accelerate/fsdp.yaml"),
           "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "palate", recipe, *fp32(overrides)]
    out = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


# ----------------------------------------------------------------------------- choosing the engine (pure)


def test_sharding_follows_the_launcher_and_refuses_what_cannot_work(monkeypatch):
    from palate.config import TrainConfig
    from palate.infra.distributed import sharding

    for k in ("WORLD_SIZE", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(k, raising=False)
    assert sharding(None) == "none"
    assert sharding("fsdp") == "none"  # one process: nothing to shard (resumes a sharded run's checkpoint)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert sharding(None) == "ddp"  # as before this option existed
    assert sharding("fsdp") == "fsdp"
    with pytest.raises(ValueError, match="launched on 2 processes"):
        sharding("none")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --config_file fsdp.yaml
    assert sharding(None) == "fsdp"
    with pytest.raises(ValueError, match="asks for FSDP"):
        sharding("ddp")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(RuntimeError, match="ZeRO-3 is not supported"):
        sharding(None)
    with pytest.raises(ConfigError, match="train.sharding must be"):
        TrainConfig(sharding="zero3")


# ----------------------------------------------------------------------------- FSDP2 itself


def test_cpu_offload_on_cpu_is_refused_before_anything_is_sharded():
    from palate.infra import fsdp
    from palate.models.load import load_model, load_tokenizer

    tok = load_tokenizer("tiny")
    model = load_model("tiny", dtype="fp32", device="cpu", tokenizer=tok, seed=0)
    assert len(fsdp.decoder_layers(model)) == 2
    with pytest.raises(RuntimeError, match="drop train.cpu_offload"):
        fsdp.shard(model, torch.device("cpu"), 2, "fp32", cpu_offload=True)
    assert not fsdp.is_sharded(model)


@pytest.mark.slow
def test_fsdp_final_model_equals_the_gathered_weights_and_each_process_holds_half(tmp_path):
    """fully_shard per decoder layer + root, two AdamW steps, then final/ through save_model: it loads with
    AutoModelForCausalLM and equals the gathered weights and each process's shards; per-process parameter
    memory is half the model's (the tiny model: 6.14 of 12.28 MiB)."""
    out = subprocess.run(torchrun([str(ROOT / "tests/infra/fsdp_worker.py"), str(tmp_path)]), env=child_env(),
                         capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    for r in range(2):
        res = json.loads((tmp_path / f"rank{r}.json").read_text())
        for check in ("keys_equal", "loaded_equals_gathered", "main_gather_equals_everywhere", "shards_match", "trained"):
            assert res[check], (r, check)
        assert res["local_bytes"] / res["full_bytes"] == pytest.approx(0.5, abs=0.01), res


@pytest.mark.slow
def test_fsdp_lora_trains_the_adapter_only_and_final_loads_merged_and_as_an_adapter(tmp_path):
    """Weights that differ between processes are refused on every process. LoRA applied, then fully_shard
    per decoder layer + root (frozen base and trainable adapter weights in
    the same groups): gradients reach the adapter only, the optimizer holds the adapter only, the base
    weights stay as loaded; the gathered copy saved merged loads with AutoModelForCausalLM and equals
    ``W + (alpha/r) B A`` of the gathered weights, saved as an adapter loads with PEFT and equals them. The
    disabled adapter as a live reference (dpo/kto reference=live) is refused on the sharded policy."""
    out = subprocess.run(torchrun([str(ROOT / "tests/infra/fsdp_worker.py"), str(tmp_path), "lora"]), env=child_env(),
                         capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    for r in range(2):
        res = json.loads((tmp_path / f"rank{r}.json").read_text())
        for check in ("different_weights_refused", "live_reference_refused", "grads_only_adapter", "optimizer_holds_adapter_only", "optimizer_state_adapter_only",
                      "base_unchanged", "adapter_trained", "merged_keys", "merged_equals_gathered", "merged_moved",
                      "adapter_equals_gathered"):
            assert res[check], (r, check)
        assert res["local_bytes"] / res["full_bytes"] == pytest.approx(0.5, abs=0.01), res


# ----------------------------------------------------------------------------- recipes


@pytest.mark.slow
def test_fsdp_sft_sigkilled_resumes_on_two_and_on_one_process_on_the_one_process_curve(tmp_path, arithmetic_jsonl):
    from palate.recipes.sft import SFTConfig, train

    common = [*SFT, *FSDP, f"data.path={arithmetic_jsonl}"]
    one_process(train, SFTConfig, [f"run_dir={tmp_path / 'one'}", *common])

    two = tmp_path / "two"
    kill_at_checkpoint(torchrun(["-m", "palate", "sft", f"run_dir={two}", *common]), two)
    ckpt = two / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in (ckpt / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (ckpt / "trainable.safetensors").exists()  # the weights are the shards
    shutil.copytree(two, tmp_path / "two-then-one")

    rerun = launch("torchrun", "sft", [f"run_dir={two}", *common])
    assert "resuming from step-" in rerun.stderr
    keys = ("loss", "grad_norm", "tokens", "targets", "eval_loss")
    assert_same_curve(tmp_path / "one", two, keys)
    assert [m["lr"] for m in metrics(tmp_path / "one")] == [m["lr"] for m in metrics(two)]
    state = torch.load(two / "checkpoints" / "step-00000006" / "state.pt", weights_only=False)
    assert len(state["rng_per_rank"]) == 2 and "optimizer" not in state  # the optimizer is in dcp/, sharded

    # the same killed run resumed on one process: DCP reshards the 2-process checkpoint onto a plain model
    one_process(train, SFTConfig, [f"run_dir={tmp_path / 'two-then-one'}", *common])
    assert_same_curve(tmp_path / "one", tmp_path / "two-then-one", keys)

    summary = json.loads((two / "status.json").read_text())["summary"]
    assert summary["sharding"] == "fsdp"
    assert [m / summary["param_mib_unsharded"] for m in summary["param_mib_per_rank"]] == pytest.approx([0.5, 0.5], abs=0.01)
    # final/ of the sharded run is a whole HF model: the 1-process run's weights, to float tolerance
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(two / "final").state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fsdp_reward_model_under_accelerate_launch_fsdp_yaml_matches_one_process(tmp_path):
    from palate.recipes.reward import RewardConfig, train

    # 33 training pairs in batches of 4: the last batch holds one pair, so one process has no slice of that
    # step and runs a dummy forward (every FSDP forward is a collective) with a zero loss.
    data = write_jsonl(tmp_path / "prefs.jsonl", marker_preferences(44))
    common = ["model.name=tiny", f"data.path={data}", "data.eval_fraction=0.25", "train.batch_size=4",
              "train.max_steps=9", "train.lr=3e-3", "train.eval_every=4", "train.save_every=0", "log.progress=false",
              "reward.normalize_samples=16"]
    one_process(train, RewardConfig, [f"run_dir={tmp_path / 'one'}", *common])
    out = accelerate_fsdp("rm", [f"run_dir={tmp_path / 'two'}", *common])  # FSDP from the launcher's config
    assert "FSDP2: 2 decoder layers + root sharded over 2 processes" in out.stderr
    assert_same_curve(tmp_path / "one", tmp_path / "two",
                      ("loss", "grad_norm", "accuracy", "reward_gap", "tokens", "eval_loss", "eval_accuracy"))
    s1, s2 = (json.loads((tmp_path / r / "status.json").read_text())["summary"] for r in ("one", "two"))
    assert s2["eval_accuracy"] == pytest.approx(s1["eval_accuracy"])
    assert (tmp_path / "two" / "eval" / "rm_eval.json").exists()
    m1, m2 = (json.loads((tmp_path / r / "final" / "palate_reward.json").read_text()) for r in ("one", "two"))
    assert m2["mean"] == pytest.approx(m1["mean"], rel=1e-4, abs=1e-5)  # normalisation from the gathered model


@pytest.mark.slow
def test_fsdp_dpo_with_precomputed_reference_and_activation_checkpointing_matches_one_process(tmp_path):
    from palate.recipes.dpo import DPOConfig, train

    data = write_jsonl(tmp_path / "prefs.jsonl", marker_preferences(40))
    common = ["model.name=tiny", f"data.path={data}", "data.eval_fraction=0.1", "train.batch_size=4",
              "train.grad_accum=2", "train.max_steps=4", "train.lr=2e-3", "train.warmup_ratio=0",
              "train.eval_every=2", "train.save_every=0", "dpo.samples=0", "log.progress=false", *FSDP]
    one_process(train, DPOConfig, [f"run_dir={tmp_path / 'one'}", *common])
    # per-layer activation checkpointing on the sharded layers: recomputation changes no number
    launch("torchrun", "dpo", [f"run_dir={tmp_path / 'two'}", *common, "train.gradient_checkpointing=true"])
    keys = ("loss", "grad_norm", "reward_accuracy", "reward_margin", "logp_chosen", "tokens", "eval_loss")
    assert_same_curve(tmp_path / "one", tmp_path / "two", keys)
    assert metrics(tmp_path / "one")[-1]["loss"] < metrics(tmp_path / "one")[0]["loss"]


@pytest.mark.slow
def test_fsdp_lora_sft_sigkilled_resumes_on_two_and_on_one_process_on_the_one_process_curve(tmp_path, arithmetic_jsonl):
    """LoRA under FSDP2, 2 processes: the 1-process curve (same global batch); SIGKILLed after its step-2
    (DCP) checkpoint, it resumes on 2 processes and on 1 on the same curve; final/ is the merged model,
    equal to the 1-process run's."""
    from palate.recipes.sft import SFTConfig, train

    lora = ["lora.enabled=true", "lora.r=4", "lora.dropout=0.0", "train.lr=5e-3"]  # no dropout: no per-rank noise
    common = [*[o for o in SFT if o not in ("lora.enabled=false", "train.lr=1e-3")], *lora, *FSDP,
              f"data.path={arithmetic_jsonl}"]
    one_process(train, SFTConfig, [f"run_dir={tmp_path / 'one'}", *common])

    two = tmp_path / "two"
    kill_at_checkpoint(torchrun(["-m", "palate", "sft", f"run_dir={two}", *common]), two)
    assert sorted(p.name for p in (two / "checkpoints" / "step-00000002" / "dcp").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]
    shutil.copytree(two, tmp_path / "two-then-one")

    rerun = launch("torchrun", "sft", [f"run_dir={two}", *common])
    assert "resuming from step-" in rerun.stderr and "frozen base weights + trainable adapter" in rerun.stderr
    keys = ("loss", "grad_norm", "tokens", "targets", "eval_loss")
    assert_same_curve(tmp_path / "one", two, keys)
    assert metrics(tmp_path / "one")[-1]["loss"] < metrics(tmp_path / "one")[0]["loss"]

    one_process(train, SFTConfig, [f"run_dir={tmp_path / 'two-then-one'}", *common])  # DCP reshards onto 1 process
    assert_same_curve(tmp_path / "one", tmp_path / "two-then-one", keys)

    summary = json.loads((two / "status.json").read_text())["summary"]
    assert summary["sharding"] == "fsdp"
    adapter = [s["optimizer"] for s in summary["state_mib_per_rank"]]  # AdamW moments of the adapter's shards only
    assert all(0 < a < 0.1 * summary["param_mib_unsharded"] for a in adapter), summary
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(two / "final").state_dict()
    assert sorted(a) == sorted(b) and not any("lora" in k for k in b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


LORA = ["lora.enabled=true", "lora.r=4", "lora.dropout=0.0"]


@pytest.mark.slow
def test_fsdp_lora_reward_model_matches_one_process_and_saves_the_merged_model(tmp_path):
    """LoRA on a sequence-classification model (the adapter plus the score head, trained in full) under
    FSDP2 from accelerate's fsdp.yaml: the 1-process curve, with a dummy forward on the process without a
    slice of the last batch; normalisation on a gathered PEFT copy; final/ merged, equal to the 1-process one."""
    from transformers import AutoModelForSequenceClassification

    from palate.recipes.reward import RewardConfig, train

    data = write_jsonl(tmp_path / "prefs.jsonl", marker_preferences(44))
    common = ["model.name=tiny", f"data.path={data}", "data.eval_fraction=0.25", "train.batch_size=4",
              "train.max_steps=9", "train.lr=3e-3", "train.eval_every=4", "train.save_every=0", "log.progress=false",
              "reward.normalize_samples=16", *LORA]
    one_process(train, RewardConfig, [f"run_dir={tmp_path / 'one'}", *common])
    out = accelerate_fsdp("rm", [f"run_dir={tmp_path / 'two'}", *common])
    assert "frozen base weights + trainable adapter" in out.stderr
    assert_same_curve(tmp_path / "one", tmp_path / "two",
                      ("loss", "grad_norm", "accuracy", "reward_gap", "tokens", "eval_loss", "eval_accuracy"))
    m1, m2 = (json.loads((tmp_path / r / "final" / "palate_reward.json").read_text()) for r in ("one", "two"))
    assert m2["mean"] == pytest.approx(m1["mean"], rel=1e-4, abs=1e-5)
    a, b = (AutoModelForSequenceClassification.from_pretrained(tmp_path / r / "final").state_dict() for r in ("one", "two"))
    assert sorted(a) == sorted(b) and not any("lora" in k for k in b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fsdp_lora_dpo_with_precomputed_reference_matches_one_process(tmp_path):
    """DPO with LoRA under FSDP2: the reference (the disabled adapter) precomputed before sharding; the
    1-process curve. (reference=live with LoRA is refused under FSDP: see the LoRA worker test.)"""
    from palate.recipes.dpo import DPOConfig, train

    data = write_jsonl(tmp_path / "prefs.jsonl", marker_preferences(40))
    common = ["model.name=tiny", f"data.path={data}", "data.eval_fraction=0.1", "train.batch_size=4",
              "train.grad_accum=2", "train.max_steps=4", "train.lr=2e-3", "train.warmup_ratio=0",
              "train.eval_every=2", "train.save_every=0", "dpo.samples=0", "log.progress=false", *FSDP, *LORA]
    one_process(train, DPOConfig, [f"run_dir={tmp_path / 'one'}", *common])
    launch("torchrun", "dpo", [f"run_dir={tmp_path / 'two'}", *common])
    keys = ("loss", "grad_norm", "reward_accuracy", "reward_margin", "logp_chosen", "tokens", "eval_loss")
    assert_same_curve(tmp_path / "one", tmp_path / "two", keys)
