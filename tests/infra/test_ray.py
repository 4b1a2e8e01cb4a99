"""Online RL over a local Ray cluster (``ray.enabled``): the rollout, reward and reference workers in actors give
the same run as the in-process layout, and several rollout workers split a step's prompts in order."""

import json
import os
from pathlib import Path

import pytest
import torch

from palate.config import ConfigError, load_config
from palate.rollout.generate import Rollout, concat_rollouts

REWARDS = Path(__file__).parents[1] / "rollout" / "rl_rewards.py"


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def part(prompt_rows: list[list[int]], responses: list[list[int]], n: int, pad: int = 0) -> Rollout:
    W, T = max(map(len, prompt_rows)), max(map(len, responses))
    pids = torch.tensor([[pad] * (W - len(p)) + p for p in prompt_rows])
    pmask = torch.tensor([[0] * (W - len(p)) + [1] * len(p) for p in prompt_rows])
    rids = torch.tensor([r + [pad] * (T - len(r)) for r in responses])
    rmask = torch.tensor([[True] * len(r) + [False] * (T - len(r)) for r in responses])
    lps = torch.tensor([[-0.5] * len(r) + [0.0] * (T - len(r)) for r in responses])
    return Rollout(pids, pmask, n, rids, rmask, lps, ["eos"] * len(responses), [str(r) for r in responses])


def test_concat_rollouts_repads_prompts_left_and_responses_right():
    a = part([[5, 6, 7]], [[1, 2], [3]], n=2)
    b = part([[8], [9, 9]], [[4, 4, 4], [5], [6], [7, 7]], n=2)
    r = concat_rollouts([a, b], pad=0)
    assert r.prompt_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 9]]
    assert r.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert r.response_ids.tolist() == [[1, 2, 0], [3, 0, 0], [4, 4, 4], [5, 0, 0], [6, 0, 0], [7, 7, 0]]
    assert r.lengths.tolist() == [2, 1, 3, 1, 1, 2]
    assert r.logprobs.sum().item() == pytest.approx(-0.5 * 10)
    assert r.texts == ["[1, 2]", "[3]", "[4, 4, 4]", "[5]", "[6]", "[7, 7]"] and r.n == 2
    with pytest.raises(ValueError, match="different n"):
        concat_rollouts([a, part([[1]], [[1]], n=1)], pad=0)


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module (a run that finds Ray started uses it and leaves it running)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=4, include_dashboard=False)
    yield ray
    ray.shutdown()


def grpo_args(run_dir: Path, *extra: str, precision: str = "fp32") -> list[str]:
    return [f"run_dir={run_dir}", "model.name=tiny", f"train.precision={precision}",
            f"reward.function={REWARDS}:the_count",
            "reward.length_penalty=0.05", "reward.missing_eos_penalty=0.5", "rollout.max_new_tokens=12",
            "prompts.eval_max=4", "train.max_steps=3", "train.lr=1e-3", "train.eval_every=3", "train.save_every=0",
            "train.threads=1", "grpo.prompts_per_step=2", "rollout.n=2", "grpo.kl_coef=0.04", "log.progress=false",
            *extra]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_grpo_over_ray_workers_matches_the_in_process_run(tmp_path, cluster, precision):
    """Same run in process and over Ray, in fp32 and in bf16 (where the trainer samples with its bf16 copy and the
    rollout and reference workers follow the trainer's precision)."""
    from palate.recipes.grpo import GRPOConfig, train

    train(load_config(GRPOConfig, None, grpo_args(tmp_path / "local", precision=precision)))
    train(load_config(GRPOConfig, None, grpo_args(tmp_path / "ray", "ray.enabled=true", "ray.worker_threads=1",
                                                  precision=precision)))
    local, remote = metrics(tmp_path / "local"), metrics(tmp_path / "ray")
    assert [r["step"] for r in local] == [r["step"] for r in remote] == [0, 1, 2, 3]
    for a, b in zip(local, remote):
        # the same tokens sampled (worker weights synced from the trainer, same seed), so the same rewards
        for k in ("reward", "score", "response_length", "eval_reward"):
            if k in a:
                assert b[k] == a[k], (a["step"], k)
        # log-probs recomputed by the trainer and the reference in an actor: equal up to rounding
        for k in ("kl", "kl_k3", "policy_loss", "eval_kl"):
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-5), (a["step"], k)
    placed = json.loads((tmp_path / "ray" / "ray.json").read_text())
    assert sorted(w["role"] for w in placed["actors"]) == ["reference", "reward", "rollout"]
    assert all(w["node"] and w["pid"] and w["threads"] == 1 for w in placed["actors"])
    assert placed["cluster"]["CPU"] == 4
    assert cluster.is_initialized()  # a cluster the run did not start is left running


@pytest.mark.slow
def test_ppo_with_two_rollout_workers_splits_the_prompts(tmp_path, cluster):
    from palate.recipes.ppo import PPOConfig, train

    args = [f"run_dir={tmp_path / 'ppo'}", "model.name=tiny", f"reward.function={REWARDS}:the_count",
            "reward.length_penalty=0.05", "rollout.max_new_tokens=10", "prompts.eval_max=0", "train.max_steps=2",
            "train.save_every=0", "train.eval_every=0", "train.threads=1", "ppo.prompts_per_step=6",
            "ppo.minibatches=2", "ppo.ppo_epochs=1", "log.progress=false", "ray.enabled=true",
            "ray.rollout_workers=2", "ray.worker_threads=1"]
    train(load_config(PPOConfig, None, args))
    steps = [r for r in metrics(tmp_path / "ppo") if r["step"] > 0]
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    placed = json.loads((tmp_path / "ppo" / "ray.json").read_text())
    assert sorted(w["role"] for w in placed["actors"]) == ["reference", "reward", "rollout", "rollout"]
    assert len({w["pid"] for w in placed["actors"]}) == 4
    samples = [json.loads(x) for x in (tmp_path / "ppo" / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1}


def test_ray_config_errors():
    from types import SimpleNamespace

    from palate.infra.ray_layout import RayConfig, check

    with pytest.raises(ConfigError, match="rollout_workers must be >= 0"):
        RayConfig(rollout_workers=-1)
    check(RayConfig(enabled=True), SimpleNamespace(backend="hf"))
    with pytest.raises(ConfigError, match="rollout.backend=vllm"):
        check(RayConfig(enabled=True), SimpleNamespace(backend="vllm"))
    check(RayConfig(enabled=True, rollout_workers=0), SimpleNamespace(backend="vllm"))  # only reward/reference
