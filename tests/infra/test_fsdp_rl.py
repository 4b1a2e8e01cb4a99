"""Online RL (GRPO, PPO) on 2 processes over gloo (CPU), FSDP2 and DDP, against 1-process runs of the same config.

Each process samples its share of the step's prompts; ``rollout.seed_block=2`` (= prompts_per_step / 2) makes the
1-process run draw the same seed blocks, so step 1 (sampled from identical weights) sees identical experience
and its logged update (loss, grad_norm, clip fraction, KL, ...) and the weights after it must agree; so must the
held-out evaluation before training. Later steps are sampled from weights that differ in their last bits (FSDP
reduces gradient shards in another order than one process sums them), and inverse-CDF sampling over the tiny
random model's near-uniform 49k-token distribution turns such a difference into another token now and then,
so multi-step curves are compared only between runs on the same number of processes (the resume test) and
through quantities fixed by step 1 (PPO's adaptive KL coefficient at step 2).

Tolerance: relative 1e-4 (absolute 1e-6), as for SFT/DPO. Measured at the commit that added these tests: see the
module's report (notes/helper-fsdp-rl.md); the largest relative step-1 difference was ~1e-6 (grad_norm, losses).

A reward function of the response's length in characters gives the random tiny model a reward with signal
(GRPO's group advantages are not all zero); no reward model is loaded.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from palate.config import ConfigError, load_config
from tests.infra.test_distributed import (
    ROOT,
    TIMEOUT,
    child_env,
    kill_at_checkpoint,
    launch,
    metrics,
    one_process,
)
from tests.infra.test_fsdp import torchrun

STEP1 = ("reward", "reward_std", "response_length", "generated_tokens", "tokens", "kl", "kl_k3", "loss",
         "policy_loss", "kl_loss", "grad_norm", "clip_fraction", "approx_kl", "entropy", "advantage_abs",
         "value_loss", "value_mean", "explained_variance", "kl_coef")
EVAL = ("eval_reward", "eval_kl", "eval_response_length")


@pytest.fixture(scope="module")
def chars(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("reward") / "chars.py"
    path.write_text("def chars(prompt, response):\n    return len(response) / 10.0\n")
    return f"{path}:chars"


def common(reward: str, *extra: str) -> list[str]:
    return ["model.name=tiny", f"reward.function={reward}", "rollout.max_new_tokens=8", "prompts.limit=40",
            "prompts.eval_max=4", "train.lr=1e-3", "log.progress=false", "rollout.seed_block=2", *extra]


def grpo(reward: str, *extra: str) -> list[str]:
    return common(reward, "rollout.n=2", "grpo.prompts_per_step=4", "grpo.minibatches=2", *extra)


def by_step(run: Path) -> dict[int, dict]:
    rows = metrics(run)
    assert len({m["step"] for m in rows}) == len(rows)  # the main process alone logs
    return {m["step"]: m for m in rows}


def assert_same(one: dict, two: dict, keys, rel=1e-4):
    shared = [k for k in keys if k in one]
    assert shared and shared == [k for k in keys if k in two], (sorted(one), sorted(two))
    for k in shared:
        assert two[k] == pytest.approx(one[k], rel=rel, abs=1e-6), (one["step"], k, one[k], two[k])


def assert_same_weights(a: Path, b: Path, lr: float = 1e-3):
    """Equal to rtol 1e-4 / atol 1e-6, but for a handful of entries (at most 1 in 100,000) that may differ by up
    to lr: AdamW's first update is about lr·g/(|g| + eps), so an entry whose gradient is of the order of eps
    (1e-8: e.g. tied-embedding rows of tokens nobody sampled) moves by a fraction of lr set by its gradient's
    last bits, which the processes' reduction order changes."""
    from transformers import AutoModelForCausalLM

    sa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    sb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert sorted(sa) == sorted(sb)
    total = off = 0
    for k in sa:
        d = (sb[k] - sa[k]).abs()
        assert float(d.max()) < lr, k
        off += int((d > 1e-6 + 1e-4 * sa[k].abs()).sum())
        total += d.numel()
    assert off <= total * 1e-5, (off, total)


# ----------------------------------------------------------------------------- pure


def test_seed_blocks_give_the_same_samples_whoever_draws_them():
    """Two processes' shares (prompts 0-1 and 2-3, seed blocks of 2) sampled separately and joined are the
    one-process rollout of the 4 prompts in blocks of 2: same tokens, log-probs and texts."""
    from palate.models.load import load_model, load_tokenizer
    from palate.rollout.generate import concat_rollouts
    from palate.rollout.sampling import RolloutConfig, sample_rollout

    tok = load_tokenizer("tiny")
    model = load_model("tiny", dtype="fp32", device="cpu", tokenizer=tok, seed=0)
    prompts = ["Hi there", "What is the capital of France, and why?", "Name a colour.", "Count to three"]
    cfg = RolloutConfig(n=2, max_new_tokens=5, seed_block=2)
    whole, _ = sample_rollout(model, tok, prompts, cfg, seed=7)
    parts = [sample_rollout(model, tok, prompts[lo : lo + 2], cfg, seed=7, first=lo)[0] for lo in (0, 2)]
    joined = concat_rollouts(parts, tok.pad_token_id)
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs"):
        assert torch.equal(getattr(joined, name), getattr(whole, name)), name
    assert joined.texts == whole.texts
    one_block, _ = sample_rollout(model, tok, prompts, RolloutConfig(n=2, max_new_tokens=5), seed=7)
    assert not torch.equal(one_block.response_ids[4:], whole.response_ids[4:])  # block 1 has a seed of its own
    with pytest.raises(ValueError, match="cuts a seed block"):
        sample_rollout(model, tok, prompts[1:3], cfg, seed=7, first=1)


def test_what_online_rl_cannot_do_on_several_processes_is_refused_by_name(monkeypatch, chars):
    from palate.recipes.grpo import GRPOConfig, check
    from palate.recipes.ppo import PPOConfig
    from palate.recipes.ppo import check as check_ppo

    monkeypatch.setenv("WORLD_SIZE", "2")
    check(load_config(GRPOConfig, None, grpo(chars)))  # fine
    for extra, key in ((["grpo.prompts_per_step=3", "grpo.minibatches=1"], "grpo.prompts_per_step=3"),
                       (["grpo.minibatches=4"], "grpo.minibatches"),
                       (["rollout.seed_block=4", "grpo.prompts_per_step=12"], "rollout.seed_block=4"),
                       (["ray.enabled=true"], "ray.enabled"),
                       (["gold.function=" + chars, "train.sharding=fsdp"], "gold")):
        with pytest.raises(ConfigError, match=key):
            check(load_config(GRPOConfig, None, grpo(chars, *extra)))
    check(load_config(GRPOConfig, None, grpo(chars, "gold.function=" + chars, "train.sharding=ddp")))
    with pytest.raises(ConfigError, match="ppo.prompts_per_step=5"):
        check_ppo(load_config(PPOConfig, None, common(chars, "ppo.prompts_per_step=5", "ppo.minibatches=1")))


# ----------------------------------------------------------------------------- recipes on 2 processes


@pytest.mark.slow
def test_grpo_step_on_two_processes_fsdp_and_ddp_is_the_one_process_step(tmp_path, chars):
    """One GRPO step (2 minibatches of 2 prompts x 2 answers, each minibatch split over the processes): FSDP
    (torchrun) and DDP (accelerate launch) log the 1-process step and held-out evaluation, and final/ (a whole
    HF model, AutoModelForCausalLM) holds the 1-process weights."""
    from palate.recipes.grpo import GRPOConfig, train

    args = grpo(chars, "train.max_steps=1", "train.eval_every=1", "train.save_every=0")
    one_process(train, GRPOConfig, [f"run_dir={tmp_path / 'one'}", *args])
    out = launch("torchrun", "grpo", [f"run_dir={tmp_path / 'fsdp'}", *args, "train.sharding=fsdp"])
    assert "FSDP2: 2 decoder layers + root sharded over 2 processes" in out.stderr
    launch("accelerate", "grpo", [f"run_dir={tmp_path / 'ddp'}", *args, "train.sharding=ddp"])
    one = by_step(tmp_path / "one")
    assert sorted(one) == [0, 1] and one[1]["grad_norm"] > 0 and one[1]["reward_std"] > 0
    for two in ("fsdp", "ddp"):
        m = by_step(tmp_path / two)
        assert sorted(m) == [0, 1]
        assert_same(one[0], m[0], EVAL)
        assert_same(one[1], m[1], STEP1 + EVAL)
        assert_same_weights(tmp_path / "one" / "final", tmp_path / two / "final")
        summary = json.loads((tmp_path / two / "status.json").read_text())["summary"]
        assert summary["sharding"] == two
    samples = (tmp_path / "fsdp" / "samples.jsonl").read_text().splitlines()
    assert samples == (tmp_path / "one" / "samples.jsonl").read_text().splitlines()  # written once, same samples


@pytest.mark.slow
def test_ppo_on_two_processes_fsdp_is_the_one_process_run_with_a_global_kl_controller(tmp_path, chars):
    """PPO (shared critic, 2 epochs x 2 minibatches, whitened advantages, adaptive KL) under FSDP: step 1 is the
    1-process step; step 2's KL coefficient, set by the controller from step 1's KL over all processes' answers,
    is the 1-process one; final/ is the policy alone (no value head), a whole HF model."""
    from palate.recipes.ppo import PPOConfig, train

    args = common(chars, "rollout.n=1", "ppo.prompts_per_step=4", "ppo.minibatches=2", "ppo.ppo_epochs=2",
                  "ppo.kl_controller=adaptive", "ppo.target_kl=0.01", "ppo.kl_horizon=20", "train.max_steps=2",
                  "train.eval_every=0", "train.save_every=0")
    one_process(train, PPOConfig, [f"run_dir={tmp_path / 'one'}", *args])
    launch("torchrun", "ppo", [f"run_dir={tmp_path / 'fsdp'}", *args, "train.sharding=fsdp"])
    one, two = by_step(tmp_path / "one"), by_step(tmp_path / "fsdp")
    assert sorted(one) == sorted(two) == [0, 1, 2]  # step 0: held-out evaluation before training
    assert_same(one[0], two[0], EVAL)
    assert_same(one[1], two[1], STEP1)
    assert one[2]["kl_coef"] != one[1]["kl_coef"]  # the controller moved
    assert two[2]["kl_coef"] == pytest.approx(one[2]["kl_coef"], rel=1e-6)
    assert two[2]["updates"] == one[2]["updates"] == 4
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "final").state_dict()
    assert not any("value_head" in k for k in final)
    assert sorted(final) == sorted(AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final").state_dict())


@pytest.mark.slow
def test_fsdp_grpo_sigkilled_resumes_on_two_and_on_one_process(tmp_path, chars):
    """A 2-process FSDP GRPO run with LoRA (frozen base + adapter in the same FSDP groups; the reference is the
    disabled adapter, evaluated while the policy is unsharded) SIGKILLed after its step-2 (DCP, sharded)
    checkpoint resumes on 2 processes on the uninterrupted 2-process curve, and on 1 process (DCP reshards the
    checkpoint) with that curve's step 3 (sampled from the restored weights); both finish with a whole, merged
    final/ that AutoModelForCausalLM loads."""
    from transformers import AutoModelForCausalLM

    from palate.recipes.grpo import GRPOConfig, train

    args = [*grpo(chars, "train.max_steps=4", "train.eval_every=2", "train.save_every=2", "train.keep_last=2",
                  "lora.enabled=true", "lora.r=4", "lora.dropout=0.0", "train.lr=5e-3"), "train.sharding=fsdp"]
    out = launch("torchrun", "grpo", [f"run_dir={tmp_path / 'whole'}", *args])
    assert "frozen base weights + trainable adapter" in out.stderr

    two = tmp_path / "two"
    ckpt = kill_at_checkpoint(torchrun(["-m", "palate", "grpo", f"run_dir={two}", *args]), two)
    assert sorted(p.name for p in (ckpt / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    shutil.copytree(two, tmp_path / "two-then-one")

    rerun = launch("torchrun", "grpo", [f"run_dir={two}", *args])
    assert "resuming from step-" in rerun.stderr
    whole, resumed = by_step(tmp_path / "whole"), by_step(two)
    assert sorted(whole) == sorted(resumed) == [0, 1, 2, 3, 4]
    for s in whole:
        assert_same(whole[s], resumed[s], STEP1 + EVAL, rel=1e-6)

    one_process(train, GRPOConfig, [f"run_dir={tmp_path / 'two-then-one'}", *args])
    on_one = by_step(tmp_path / "two-then-one")
    assert sorted(on_one) == [0, 1, 2, 3, 4]
    assert_same(whole[3], on_one[3], STEP1)
    for run in (two, tmp_path / "two-then-one"):
        assert json.loads((run / "status.json").read_text())["state"] == "finished"
        model = AutoModelForCausalLM.from_pretrained(run / "final")
        assert sum(p.numel() for p in model.parameters()) > 3e6  # whole, not a shard
        assert not any("lora" in k for k in model.state_dict())  # merged
    assert whole[4]["kl"] != 0.0  # the adapter moved the policy away from its disabled-adapter reference


@pytest.mark.slow
def test_a_nan_reward_on_one_process_stops_every_process_with_the_state_saved(tmp_path):
    """The reward function fails (NaN) on rank 1's answers only: both processes stop at the same step, the last
    good state saved as a checkpoint, instead of one waiting forever in a collective the other never reaches."""
    reward = tmp_path / "nan.py"
    reward.write_text("import os\n\ndef nan_on_rank1(prompt, response):\n"
                      "    return float('nan') if os.environ.get('RANK') == '1' else 1.0\n")
    cmd = torchrun(["-m", "palate", "grpo", f"run_dir={tmp_path / 'run'}",
                    *grpo(f"{reward}:nan_on_rank1", "train.max_steps=2", "train.save_every=0", "train.sharding=fsdp")])
    out = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert out.returncode != 0
    assert out.stderr.count("stopped. The last good state is saved at") >= 2, out.stderr[-3000:]  # each process
    assert (tmp_path / "run" / "checkpoints" / "step-00000000").is_dir()
