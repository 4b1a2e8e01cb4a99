"""End-to-end online RL on a tiny model: GRPO, RLOO, REINFORCE++ and PPO raise a programmatic reward with the
KL finite; a SIGKILLed GRPO run resumes identically; a NaN reward stops the run with its state saved."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from palate.config import ConfigError, load_config
from palate.rollout.rewards import NonFiniteError

REWARDS = Path(__file__).parents[1] / "rollout" / "rl_rewards.py"


@pytest.fixture(scope="session")
def talking_tiny(tmp_path_factory) -> Path:
    """The tiny random model after a short SFT on the bundled demonstrations: its samples are word-like, so
    a word-level reward has signal (a random model spreads its mass over 49k tokens)."""
    from palate.recipes.sft import SFTConfig, train

    run = tmp_path_factory.mktemp("talking-tiny") / "sft"
    cfg = load_config(SFTConfig, None, [f"run_dir={run}", "model.name=tiny", "train.lr=3e-3", "train.max_steps=60",
                                        "train.batch_size=8", "data.max_length=96", "train.eval_every=0",
                                        "train.save_every=0", "log.progress=false"])
    return train(cfg)


def rl_args(run_dir: Path, model: Path, *extra: str) -> list[str]:
    return [f"run_dir={run_dir}", f"model.name={model}", f"reward.function={REWARDS}:the_count",
            "rollout.max_new_tokens=16", "prompts.eval_max=8", "log.progress=false", *extra]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def mean(xs):
    return sum(xs) / len(xs)


def test_grpo_raises_the_reward_with_finite_kl(tmp_path, talking_tiny):
    from palate.recipes.grpo import GRPOConfig, train

    cfg = load_config(GRPOConfig, None, rl_args(tmp_path / "g", talking_tiny, "train.lr=2e-3", "train.max_steps=16",
                                                "train.eval_every=16", "grpo.prompts_per_step=4", "rollout.n=4",
                                                "prompts.eval_samples=2"))
    train(cfg)
    rows = metrics(tmp_path / "g")
    steps = [r for r in rows if r["step"] > 0]
    assert mean([r["reward"] for r in steps[-4:]]) > mean([r["reward"] for r in steps[:4]]) + 0.3
    assert rows[-1]["eval_reward"] > rows[0]["eval_reward"]
    for r in steps:
        assert 0 <= r["kl_k3"] < 50 and r["entropy"] > 0 and 0 <= r["clip_fraction"] <= 1
    assert {"generate_tokens_per_s", "tokens_per_s", "truncated_fraction", "response_length"} <= set(steps[-1])
    samples = [json.loads(x) for x in (tmp_path / "g" / "samples.jsonl").read_text().splitlines()]
    assert samples and {"step", "prompt", "response", "reward"} <= set(samples[0])
    report = json.loads((tmp_path / "g" / "report" / "rl_report.json").read_text())
    assert report["improvement"]["after"] == pytest.approx(rows[-1]["eval_reward"])
    assert report["improvement"]["before"] == pytest.approx(rows[0]["eval_reward"])
    assert [p["step"] for p in report["eval_curve"]] == [0, 16]
    status = json.loads((tmp_path / "g" / "status.json").read_text())
    assert status["summary"]["heldout_reward_after"] == pytest.approx(report["improvement"]["after"])
    held = [json.loads(x) for x in (tmp_path / "g" / "eval_samples.jsonl").read_text().splitlines()]
    assert len(held) == 2 * 8 * 2 and {(r["i"], r["j"]) for r in held if r["step"] == 16} == {
        (i, j) for i in range(8) for j in range(2)}  # 8 held-out prompts x 2 answers, at steps 0 and 16
    assert report["improvement"]["samples_per_prompt"] == 2
    per_prompt = [mean([r["reward"] for r in held if r["step"] == 0 and r["i"] == i]) for i in range(8)]
    assert report["improvement"]["before"] == pytest.approx(mean(per_prompt))

    # palate rl-eval: the start and the trained policy, 3 answers per held-out prompt each, paired by prompt
    out = subprocess.run([sys.executable, "-m", "palate", "rl-eval", str(tmp_path / "g"), "--samples", "3"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "8 prompts x 3 samples" in out.stdout
    again = json.loads((tmp_path / "g" / "report" / "rl_reeval.json").read_text())
    answers = [json.loads(x) for x in (tmp_path / "g" / "report" / "reeval" / "eval_samples.jsonl").read_text()
               .splitlines()]
    assert len(answers) == 2 * 8 * 3 and again["n"] == 8 and again["samples_per_prompt"] == 3
    assert again["after"] == pytest.approx(mean([r["reward"] for r in answers if r["step"] == 1]))
    assert again["delta_ci"][0] > 0 and again["kl"] > 0  # what training bought, seen again on fresh samples
    assert again["score"]["delta"] == pytest.approx(again["delta"])  # no penalties configured: score == reward
    assert {"score", "truncated"} <= set(answers[0]) and "score alone" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "palate", "rl-eval", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "no config.yaml" in bad.stderr


@pytest.mark.parametrize("advantage,extra", [("rloo", ["grpo.epochs=2", "grpo.minibatches=2"]),
                                             ("reinforce_pp", [])])
def test_rloo_and_reinforce_pp_train(tmp_path, talking_tiny, advantage, extra):
    from palate.recipes.grpo import GRPOConfig, train

    cfg = load_config(GRPOConfig, None, rl_args(tmp_path / advantage, talking_tiny, "train.lr=1e-3",
                                                "train.max_steps=3", f"grpo.advantage={advantage}",
                                                "grpo.prompts_per_step=2", "rollout.n=2", *extra))
    train(cfg)
    steps = [r for r in metrics(tmp_path / advantage) if r["step"] > 0]
    assert len(steps) == 3 and all(abs(r["loss"]) < 100 for r in steps)
    assert any(r["advantage_abs"] > 0 for r in steps)  # (a group whose samples all score alike teaches nothing)


def test_ppo_raises_the_reward_and_learns_values(tmp_path, talking_tiny):
    from palate.recipes.ppo import PPOConfig, train

    cfg = load_config(PPOConfig, None, rl_args(tmp_path / "p", talking_tiny, "train.lr=1e-3", "train.max_steps=12",
                                               "train.eval_every=12", "ppo.prompts_per_step=8", "ppo.minibatches=2",
                                               "ppo.ppo_epochs=2", "ppo.vf_coef=0.5", "ppo.kl_controller=adaptive",
                                               "ppo.target_kl=1.0", "ppo.kl_horizon=100"))
    final = train(cfg)
    rows = metrics(tmp_path / "p")
    steps = [r for r in rows if r["step"] > 0]
    assert mean([r["reward"] for r in steps[-4:]]) > mean([r["reward"] for r in steps[:4]]) + 0.3
    assert rows[-1]["eval_reward"] > rows[0]["eval_reward"]
    # the adaptive controller raised β while KL exceeded the target
    assert steps[-1]["kl"] > 1.0 and steps[-1]["kl_coef"] > steps[0]["kl_coef"]
    assert all(r["value_loss"] >= 0 and r["updates"] == 4 for r in steps)
    # the value head (zero at the start, lr × value_lr_scale) learns the return level as the reward rises; a word
    # count sampled from a tiny model is barely predictable from the prefix, so explained variance stays near 0
    late = mean([r["reward"] for r in steps[-4:]])
    assert steps[0]["value_mean"] == 0 and abs(steps[-1]["value_mean"] - late) < 0.5 * late
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(final)  # the saved policy alone, without the value head


def test_sigkilled_grpo_resumes_identically(tmp_path, talking_tiny):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def command(run_dir):
        return [sys.executable, "-m", "palate", "grpo", *rl_args(run_dir, talking_tiny, "train.lr=1e-3",
                "train.max_steps=6", "train.save_every=2", "train.eval_every=3", "grpo.prompts_per_step=2",
                "rollout.n=2", "grpo.sample_every=0")]

    straight = tmp_path / "straight"
    subprocess.run(command(straight), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-00000002").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(command(killed), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from step-" in rerun.stderr
    keys = ("step", "reward", "loss", "kl", "grad_norm", "response_length", "eval_reward")
    strip = [{k: r[k] for k in keys if k in r} for r in metrics(straight)]
    assert [{k: r[k] for k in keys if k in r} for r in metrics(killed)] == strip
    assert len(strip) == 7  # step 0 (held-out reward before training) + 6 steps


def test_nan_reward_stops_with_the_last_good_state_saved(tmp_path, talking_tiny):
    from palate.recipes.grpo import GRPOConfig, train

    args = rl_args(tmp_path / "nan", talking_tiny, "train.max_steps=3", "grpo.prompts_per_step=2", "rollout.n=2",
                   "prompts.eval_fraction=0")
    args = [a if not a.startswith("reward.function") else f"reward.function={REWARDS}:nan_after_start" for a in args]
    with pytest.raises(NonFiniteError, match="not finite|returned nan") as e:
        train(load_config(GRPOConfig, None, args))
    assert "last good state is saved" in str(e.value)
    assert (tmp_path / "nan" / "checkpoints" / "step-00000000").exists()


def test_monitor_stops_when_proxy_rises_and_gold_falls_and_keeps_the_best_gold_policy(tmp_path, talking_tiny):
    """Optimise the count of "the" while the gold signal is its negative: the monitor must stop the run and
    final/ must be the policy of the best gold step; a gold signal that agrees never alerts."""
    from palate.recipes.grpo import GRPOConfig, train

    common = ("train.lr=2e-3", "train.max_steps=12", "train.eval_every=1", "grpo.prompts_per_step=4",
              "rollout.n=4", "monitor.window=3", "monitor.gold_tolerance=0.2", "monitor.length_corr=1.0",
              "monitor.repetition=1.0")
    stop = tmp_path / "stop"
    train(load_config(GRPOConfig, None, rl_args(stop, talking_tiny, *common, "monitor.action=stop",
                                                f"gold.function={REWARDS}:fewer_the")))
    status = json.loads((stop / "status.json").read_text())["summary"]
    alerts = [json.loads(x) for x in (stop / "monitor.jsonl").read_text().splitlines()]
    assert alerts and alerts[0]["check"] == "proxy_gold" and alerts[0]["severity"] == "stop"
    stopped = status["stopped_by_monitor_at_step"]
    assert stopped < 12 and alerts[0]["step"] == stopped
    rows = metrics(stop)
    assert rows[-1]["step"] == stopped  # nothing ran after the stop
    best = status["best_gold_step"]
    assert best == max(rows, key=lambda r: r.get("eval_gold", -1e9))["step"] and best < stopped
    assert json.loads((stop / "final" / "palate_best_gold.json").read_text())["step"] == best
    assert (stop / "final_at_stop" / "model.safetensors").exists()

    agree = tmp_path / "agree"
    train(load_config(GRPOConfig, None, rl_args(agree, talking_tiny, *common, "train.max_steps=6",
                                                "monitor.action=stop", f"gold.function={REWARDS}:the_count")))
    assert not (agree / "monitor.jsonl").exists()
    assert "stopped_by_monitor_at_step" not in json.loads((agree / "status.json").read_text())["summary"]


def test_config_errors(tmp_path):
    from palate.recipes.grpo import GRPOConfig, check

    with pytest.raises(ConfigError, match="rollout.n must be >= 2"):
        check(load_config(GRPOConfig, None, ["rollout.n=1"]))
    with pytest.raises(ConfigError, match="kl_in=reward"):
        check(load_config(GRPOConfig, None, ["grpo.advantage=reinforce_pp", "grpo.kl_in=loss"]))
    # the KL's place follows the advantage unless it is set: the same from the CLI flag and from YAML
    assert load_config(GRPOConfig, None, ["grpo.advantage=reinforce_pp"]).grpo.kl_in == "reward"
    assert load_config(GRPOConfig, None, ["grpo.advantage=rloo"]).grpo.kl_in == "loss"
    with pytest.raises(ConfigError, match="grpo.beta was renamed: use grpo.kl_coef"):
        load_config(GRPOConfig, None, ["grpo.beta=0.1"])
    with pytest.raises(ConfigError, match="advantage must be one of"):
        check(load_config(GRPOConfig, None, ["grpo.advantage=ppo"]))
