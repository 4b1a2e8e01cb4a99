"""Critic-free online RL: GRPO, RLOO and REINFORCE++ (``palate grpo --advantage grpo|rloo|reinforce_pp``).

    split prompts into train / held-out; reward = a reward model or a Python function (+ penalties)
    for each step:
        sample n responses to each of P prompts (KV cache; each prompt's cache shared by its n samples)
        score them; reference log-probs of the sampled tokens (disabled LoRA adapter or frozen copy)
        advantages:  grpo          (r − mean_group) / std_group          (Shao et al. 2024)
                     rloo          r − mean of the other n−1 samples       (Ahmadian et al. 2024)
                     reinforce_pp  per-token returns with the KL in the reward, whitened over the batch (Hu 2025)
        for each of `epochs` passes over `minibatches`: clipped policy-gradient loss
            (+ β·KL(k3) in the loss for kl_in=loss) -> backward -> clip -> AdamW
        log reward, KL, entropy, clip fraction, lengths, throughput; held-out reward every eval_every steps

The sampling seed of step s is a function of (seed, s): a resumed run samples exactly what the
uninterrupted one would have. On several processes (train.sharding=ddp|fsdp) each samples its share of whole
prompt groups and updates on its share of each minibatch: see palate.recipes.online.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from palate.config import ConfigError, LogConfig, LoraConfig, ModelConfig, TrainConfig
from palate.eval.monitor import MonitorConfig
from palate.eval.watch import Watch
from palate.infra import ray_layout, session
from palate.infra.ray_layout import RayConfig
from palate.infra.run import recorded
from palate.losses.policy import (
    aggregate,
    discounted_returns,
    group_advantages,
    kl_penalty,
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
)
from palate.models.reference import Reference
from palate.recipes.online import OnlineRun, check_processes, start_online
from palate.recipes.prompts import PromptsConfig
from palate.rollout.experience import (
    Experience,
    experience_metrics,
    local_part,
    minibatches,
    policy_forward,
    require_finite,
    shares,
)
from palate.rollout.rewards import RewardConfig, Rewarder
from palate.rollout.sampling import RolloutConfig

log = logging.getLogger("palate.grpo")

ADVANTAGES = ("grpo", "rloo", "reinforce_pp")


@dataclass(frozen=True)
class GRPOSpec:
    advantage: str = "grpo"
    """grpo | rloo | reinforce_pp"""
    prompts_per_step: int = 4
    kl_coef: float = 0.04
    """β, the KL weight (0: no reference model at all)"""
    kl_in: str | None = None
    """loss (k3 term in the loss, as GRPO) | reward (per-token k1 in the reward, as REINFORCE++); None: reward for
    advantage=reinforce_pp, loss otherwise"""
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    """DAPO's asymmetric clip (e.g. 0.28); None: = clip_eps"""
    scale_by_std: bool = True
    """grpo: divide by the group's std (Dr. GRPO turns this off)"""
    loss_agg: str = "token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum"""
    epochs: int = 1
    """passes over each batch of experience (GRPO's μ)"""
    minibatches: int = 1
    """updates per pass, each over whole prompt groups"""
    reference_device: str = "same"
    """same | cpu: where a frozen reference copy lives"""
    sample_every: int = 10
    """write a few completions to samples.jsonl every N steps (0: never)"""

    def __post_init__(self):
        if self.kl_in is None:  # resolved here, so the run's config.yaml says which one trained
            object.__setattr__(self, "kl_in", "reward" if self.advantage == "reinforce_pp" else "loss")


@dataclass(frozen=True)
class GRPOConfig:
    run_dir: str = "runs/grpo"
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOSpec = field(default_factory=GRPOSpec)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6, max_steps=100, warmup_ratio=0.0,
                                                                    min_lr_ratio=1.0, eval_every=20, save_every=20))
    lora: LoraConfig = field(default_factory=LoraConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """reward-hacking checks (warn or stop)"""
    gold: RewardConfig = field(default_factory=RewardConfig)
    """optional held-out gold reward for the monitor"""
    ray: RayConfig = field(default_factory=RayConfig)
    """rollout, reward and reference workers as Ray actors"""
    log: LogConfig = field(default_factory=LogConfig)


def check(cfg: GRPOConfig) -> None:
    g = cfg.grpo
    if g.advantage not in ADVANTAGES:
        raise ConfigError(f"grpo.advantage must be one of {', '.join(ADVANTAGES)}, got {g.advantage!r}")
    if g.kl_in not in ("loss", "reward"):
        raise ConfigError(f"grpo.kl_in must be loss or reward, got {g.kl_in!r}")
    if g.advantage == "reinforce_pp" and g.kl_in == "loss" and g.kl_coef > 0:
        raise ConfigError("reinforce_pp puts the KL in the per-token reward: set grpo.kl_in=reward")
    if cfg.rollout.n < 2 and g.advantage in ("grpo", "rloo"):
        raise ConfigError(f"grpo.advantage={g.advantage} compares samples of a prompt: rollout.n must be >= 2")
    if g.prompts_per_step % g.minibatches:
        raise ConfigError("grpo.prompts_per_step must be a multiple of grpo.minibatches")
    if cfg.train.grad_accum != 1:
        raise ConfigError("train.grad_accum is not used by grpo: use grpo.prompts_per_step and grpo.minibatches")
    ray_layout.check(cfg.ray, cfg.rollout)
    check_processes(cfg, "grpo", g.prompts_per_step, g.minibatches)


def advantages(exp: Experience, spec: GRPOSpec, n: int) -> torch.Tensor:
    """Per-token advantages [B, T] (0 at padding)."""
    mask = exp.mask
    reward = exp.rewards.total
    kl = exp.kl_tokens("k1") if spec.kl_in == "reward" and spec.kl_coef > 0 else None
    if spec.advantage == "reinforce_pp":
        token_rewards = kl_shaped_rewards(reward, kl, mask, spec.kl_coef)
        return masked_whiten(discounted_returns(token_rewards, mask, gamma=1.0), mask)
    if kl is not None:  # the sequence's KL penalty enters its reward before the group baseline
        reward = reward - spec.kl_coef * kl.sum(-1)
    adv = group_advantages(reward.view(-1, n), kind=spec.advantage, scale_by_std=spec.scale_by_std).reshape(-1)
    return adv[:, None] * mask


@recorded
def train(cfg: GRPOConfig, *, overwrite: bool = False) -> Path:
    check(cfg)
    g, rc = cfg.grpo, cfg.rollout
    run, env, tok, stream, held = start_online(cfg, g.prompts_per_step, overwrite)
    with ray_layout.place(cfg.ray, run, cfg.model, cfg.reward, tok, cfg.train.seed, reference=g.kl_coef > 0,
                          precision=env.precision) as placed:
        rewarder = placed.rewarder or Rewarder(cfg.reward)
        policy = session.policy(cfg.model, cfg.lora, cfg.train, env, tok)
        reference = placed.reference or (Reference(policy, g.reference_device) if g.kl_coef > 0 else None)
        loop = session.Loop(run, policy, cfg.train, env, stream, split_batches=False)  # each process: its share
        rl = OnlineRun(loop, run, policy, tok, held, rc, rewarder, reference,
                       Watch(run, policy, tok, cfg.monitor, cfg.gold, loop.start_step), cfg.train.seed,
                       g.sample_every, cfg.train.eval_every, cfg.prompts.eval_samples, placed.engine)
        log.info("%s: %d prompts x %d samples per step, β=%g (KL in %s), reward from %s; %d held-out prompts",
                 g.advantage, g.prompts_per_step, rc.n, g.kl_coef, g.kl_in, cfg.reward.model or cfg.reward.function,
                 len(held))
        rl.before_training()
        for step, (prompts,) in loop:
            with rl.guard(step):  # a NaN/inf reward or loss: stop, the last good state saved
                exp = rl.collect(step, prompts)  # sample n answers per prompt, score them, reference log-probs
                metrics = experience_metrics(exp)
                require_finite(step, reward=exp.rewards.total)
                adv = advantages(exp, g, rc.n)
                metrics.update(update(loop, exp, adv, g, rc, step))  # epochs x minibatches of clipped PG
            if rl.end_step(step, exp, metrics):  # log, samples, held-out reward, monitor (True: it stopped the run)
                break
        return rl.finish(cfg.lora.merge)


def update(loop, exp: Experience, adv: torch.Tensor, g: GRPOSpec, rc: RolloutConfig, step: int) -> dict[str, float]:
    """``g.epochs`` passes of clipped policy-gradient updates over ``g.minibatches`` groups of prompts. Each
    process runs the forward of its share of a minibatch's groups (all of them on one process), its loss
    scaled to its part of the minibatch's global mean (:func:`shares`); the logged numbers are summed over
    processes (the minibatch's)."""
    r = exp.rollout
    gen = torch.Generator().manual_seed(step) if g.minibatches > 1 else None
    sums: dict[str, float] = {}
    count, tokens = 0, 0
    for _ in range(g.epochs):
        for pidx, rows in minibatches(len(exp.prompts), rc.n, g.minibatches, gen):
            mine, my_rows = local_part(pidx, rc.n, loop.rank, loop.world)  # this process's groups
            s, s_tok = shares(exp.mask, rows, my_rows, g.loss_agg)
            _, logp, ent = loop.forward(policy_forward, r, mine, my_rows, rc.temperature)
            dev = logp.device
            mask = r.response_mask[my_rows].to(dev)
            w = exp.correction.weights[my_rows].to(dev) if exp.correction is not None else None  # vllm backend
            pl = ppo_policy_loss(logp, r.logprobs[my_rows].to(dev), adv[my_rows].to(dev), mask, g.clip_eps,
                                 g.clip_eps_high, mode=g.loss_agg, weights=w)
            loss = pl.loss * s
            parts = {"policy_loss": float(pl.loss.detach()) * s, "clip_fraction": float(pl.clip_fraction) * s_tok,
                     "approx_kl": float(pl.approx_kl) * s_tok, "entropy": float(masked_mean(ent.detach(), mask)) * s_tok}
            if g.kl_in == "loss" and g.kl_coef > 0:
                kl_loss = aggregate(kl_penalty(logp, exp.ref_logprobs[my_rows].to(dev), "k3"), mask, g.loss_agg) * s
                loss = loss + g.kl_coef * kl_loss
                parts["kl_loss"] = float(kl_loss.detach())
            parts = loop.all_sum({**parts, "loss": float(loss.detach())})  # the minibatch's numbers
            require_finite(step, loss=parts["loss"])
            loop.backward(loss)
            parts["grad_norm"] = loop.apply_gradients()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            tokens += int(r.prompt_mask[pidx].sum()) + int(r.response_mask[rows].sum())
    out = {k: v / count for k, v in sums.items()}
    out["tokens"] = tokens
    out["advantage_abs"] = float(masked_mean(adv.abs(), exp.mask))
    return out
