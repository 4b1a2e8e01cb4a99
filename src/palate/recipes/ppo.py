"""PPO with KL control (``palate ppo``): Ziegler et al. 2019 / Ouyang et al. 2022, the canonical RLHF loop.

    for each step:
        sample responses to P prompts; score them (reward model or function, + penalties)
        reference log-probs of the sampled tokens; values of every response token (no grad)
        per-token reward  = −kl_coef · KL_t(π‖π_ref)  (+ the sequence's reward on its last token)
        advantages, returns = GAE(γ, λ) on those rewards and values; advantages whitened
        for each of ppo_epochs passes over shuffled minibatches:
            clipped policy loss + vf_coef · clipped value loss − ent_coef · entropy -> backward -> AdamW
            stop this update early when approx-KL(π_old‖π) exceeds max_approx_kl
        adapt kl_coef toward target_kl (adaptive controller) or keep it fixed

The value head reads the policy's final hidden states (critic=shared: one forward serves both) or a
separate copy of the starting model (critic=separate: twice the memory, no interference).

On several processes (train.sharding=ddp|fsdp) each samples its share of the prompts (and takes their values while
the policy is whole), the shares are gathered so GAE, whitening and the KL controller see the whole step, and
each process updates on its share of each minibatch: see palate.recipes.online.
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
    explained_variance,
    gae,
    kl_controller,
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    value_loss,
)
from palate.models.logprobs import response_hidden
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

log = logging.getLogger("palate.ppo")


@dataclass(frozen=True)
class PPOSpec:
    prompts_per_step: int = 64
    """the rollout batch"""
    minibatches: int = 4
    """updates per PPO epoch"""
    ppo_epochs: int = 4
    critic: str = "shared"
    """shared (value head on the policy's backbone) | separate (a second backbone)"""
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.1
    """β: initial (adaptive) or fixed KL coefficient"""
    kl_controller: str = "fixed"
    """fixed | adaptive"""
    target_kl: float = 6.0
    """adaptive: target KL per sequence (nats)"""
    kl_horizon: int = 10000
    """adaptive: samples over which β moves by at most ±20%"""
    kl_estimator: str = "k1"
    """k1 | k2 | k3 | abs: the per-token penalty in the reward"""
    whiten_advantages: bool = True
    clip_eps: float = 0.2
    clip_value: float | None = 0.2
    vf_coef: float = 0.1
    value_lr_scale: float = 10.0
    """the value head (and a separate critic) learn at lr × this: it starts at zero"""
    ent_coef: float = 0.0
    max_approx_kl: float | None = None
    """stop an update's remaining minibatches when approx-KL exceeds this"""
    reference_device: str = "same"
    sample_every: int = 10


@dataclass(frozen=True)
class PPOConfig:
    run_dir: str = "runs/ppo"
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(n=1))
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOSpec = field(default_factory=PPOSpec)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, max_steps=100, warmup_ratio=0.0,
                                                                    min_lr_ratio=1.0, eval_every=20, save_every=20))
    lora: LoraConfig = field(default_factory=LoraConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """reward-hacking checks (warn or stop)"""
    gold: RewardConfig = field(default_factory=RewardConfig)
    """optional held-out gold reward for the monitor"""
    ray: RayConfig = field(default_factory=RayConfig)
    """rollout, reward and reference workers as Ray actors"""
    log: LogConfig = field(default_factory=LogConfig)


def check(cfg: PPOConfig) -> None:
    p = cfg.ppo
    if p.critic not in ("shared", "separate"):
        raise ConfigError(f"ppo.critic must be shared or separate, got {p.critic!r}")
    if p.kl_controller not in ("fixed", "adaptive"):
        raise ConfigError(f"ppo.kl_controller must be fixed or adaptive, got {p.kl_controller!r}")
    if p.prompts_per_step % p.minibatches:
        raise ConfigError("ppo.prompts_per_step must be a multiple of ppo.minibatches")
    if cfg.train.grad_accum != 1:
        raise ConfigError("train.grad_accum is not used by ppo: use ppo.prompts_per_step and ppo.minibatches")
    ray_layout.check(cfg.ray, cfg.rollout)
    check_processes(cfg, "ppo", p.prompts_per_step, p.minibatches)


class ActorCritic(torch.nn.Module):
    """The trained modules in one: the policy, its value head, and (critic=separate) the critic backbone."""

    def __init__(self, policy, critic=None):
        super().__init__()
        self.policy, self.critic = policy, critic
        hidden = (critic or policy).config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def values(self, r, pidx, rows, policy_hidden: torch.Tensor) -> torch.Tensor:
        """Value of the state before each response token: [b, T]."""
        hidden = policy_hidden if self.critic is None else response_hidden(
            self.critic, r.prompt_ids[pidx], r.prompt_mask[pidx], r.response_ids[rows], r.n)
        return self.value_head(hidden).squeeze(-1).float()


def actor_critic_forward(ac: ActorCritic, r, pidx, rows, temperature: float):
    """Log-probs, entropies and values [b, T] of rows ``rows`` with gradients (one backbone forward serves the
    shared value head)."""
    hidden, logp, ent = policy_forward(ac.policy, r, pidx, rows, temperature)
    return logp, ent, ac.values(r, pidx, rows, hidden)


@recorded
def train(cfg: PPOConfig, *, overwrite: bool = False) -> Path:
    check(cfg)
    p, rc = cfg.ppo, cfg.rollout
    run, env, tok, stream, held = start_online(cfg, p.prompts_per_step, overwrite)
    with ray_layout.place(cfg.ray, run, cfg.model, cfg.reward, tok, cfg.train.seed, reference=True,
                          precision=env.precision) as placed:
        rewarder = placed.rewarder or Rewarder(cfg.reward)
        policy = session.policy(cfg.model, cfg.lora, cfg.train, env, tok)
        critic = session.policy(cfg.model, cfg.lora, cfg.train, env, tok) if p.critic == "separate" else None
        ac = ActorCritic(policy, critic).to(env.device)
        reference = placed.reference or Reference(policy, p.reference_device)
        ctl = kl_controller(p.kl_controller, p.kl_coef, p.target_kl if p.kl_controller == "adaptive" else None,
                            p.kl_horizon)
        loop = session.Loop(run, ac, cfg.train, env, stream,
                            lr_scale={"value_head.": p.value_lr_scale, "critic.": p.value_lr_scale},
                            split_batches=False)  # each process: its share of the prompts
        if "kl_controller" in loop.resumed:
            ctl.load_state_dict(loop.resumed["kl_controller"])
        loop.extra_state = lambda: {"kl_controller": ctl.state_dict()}
        rl = OnlineRun(loop, run, policy, tok, held, rc, rewarder, reference,
                       Watch(run, policy, tok, cfg.monitor, cfg.gold, loop.start_step), cfg.train.seed,
                       p.sample_every, cfg.train.eval_every, cfg.prompts.eval_samples, placed.engine)
        log.info("ppo: %d prompts x %d per step, %d epochs x %d minibatches, critic %s, β=%g (%s), reward from %s",
                 p.prompts_per_step, rc.n, p.ppo_epochs, p.minibatches, p.critic, p.kl_coef, p.kl_controller,
                 cfg.reward.model or cfg.reward.function)
        rl.before_training()
        for step, (prompts,) in loop:
            with rl.guard(step):  # a NaN/inf reward or loss: stop, the last good state saved
                # sample, score, reference log-probs of the sampled tokens, values V(s_t) before the update
                exp, old_values = rl.collect(step, prompts, also=lambda e: values_before_update(ac, e, p.minibatches))
                metrics = experience_metrics(exp)
                require_finite(step, reward=exp.rewards.total)
                mask, kl = exp.mask, exp.kl_tokens(p.kl_estimator)
                rewards = kl_shaped_rewards(exp.rewards.total, kl, mask, ctl.value)  # −β·KL_t, + score at the end
                adv, returns = gae(rewards, old_values, mask, p.gamma, p.lam)
                if p.whiten_advantages:
                    adv = masked_whiten(adv, mask)
                metrics.update(update(ac, loop, exp, old_values, adv, returns, p, rc.temperature, step))
                metrics.update(kl_coef=ctl.value, kl_penalty=float(kl.sum(-1).mean()),
                               explained_variance=float(explained_variance(old_values, returns, mask)),
                               value_mean=float(masked_mean(old_values, mask)),
                               advantage_abs=float(masked_mean(adv.abs(), mask)))
                ctl.update(float(exp.kl_tokens("k1").sum(-1).mean()), len(mask))  # adapt β to the KL per answer
            if rl.end_step(step, exp, metrics):  # log, samples, held-out reward, monitor (True: it stopped the run)
                break
        return rl.finish(cfg.lora.merge, model=policy)


@torch.no_grad()
def values_before_update(ac: ActorCritic, exp: Experience, minibatches_per_epoch: int) -> torch.Tensor:
    """V(s_t) of every sampled state under the critic before any update: [B, T], 0 at padding."""
    r, mask = exp.rollout, exp.mask
    values = torch.zeros(mask.shape)
    for pidx, rows in minibatches(len(exp.prompts), r.n, min(minibatches_per_epoch, len(exp.prompts)), None):
        hidden = response_hidden(ac.policy, r.prompt_ids[pidx], r.prompt_mask[pidx], r.response_ids[rows], r.n) \
            if ac.critic is None else None
        values[rows] = ac.values(r, pidx, rows, hidden).cpu() * mask[rows]
    return values


def update(ac: ActorCritic, loop, exp: Experience, old_values: torch.Tensor, adv: torch.Tensor,
           returns: torch.Tensor, p: PPOSpec, temperature: float, step: int) -> dict:
    """``p.ppo_epochs`` passes over shuffled minibatches of whole prompt groups: clipped policy loss +
    vf_coef · clipped value loss − ent_coef · entropy, one AdamW step each; an epoch's remaining minibatches
    are skipped once approx-KL(π_old‖π) exceeds ``p.max_approx_kl``. Returns the averaged diagnostics. Each
    process runs its share of a minibatch's groups, its token means scaled to its part of the minibatch's
    (:func:`shares`); the numbers (approx-KL for the early stop too) are the minibatch's, summed over processes."""
    r, mask = exp.rollout, exp.mask
    gen = torch.Generator().manual_seed(step)
    sums: dict[str, float] = {}
    count, tokens, stopped_at = 0, 0, None
    for epoch in range(p.ppo_epochs):
        for pidx, rows in minibatches(len(exp.prompts), r.n, p.minibatches, gen):
            mine, my_rows = local_part(pidx, r.n, loop.rank, loop.world)  # this process's groups
            _, s = shares(mask, rows, my_rows)  # every term is a token mean
            logp, ent, values = loop.forward(actor_critic_forward, r, mine, my_rows, temperature)
            dev = logp.device
            m = mask[my_rows].to(dev)
            w = exp.correction.weights[my_rows].to(dev) if exp.correction is not None else None  # vllm backend
            pl = ppo_policy_loss(logp, r.logprobs[my_rows].to(dev), adv[my_rows].to(dev), m, p.clip_eps, weights=w)
            vl = value_loss(values, old_values[my_rows].to(dev), returns[my_rows].to(dev), m, p.clip_value)
            entropy = masked_mean(ent, m)
            loss = (pl.loss + p.vf_coef * vl.loss - p.ent_coef * entropy) * s
            parts = loop.all_sum({  # the minibatch's numbers
                "loss": float(loss.detach()), "policy_loss": float(pl.loss.detach()) * s,
                "value_loss": float(vl.loss.detach()) * s, "clip_fraction": float(pl.clip_fraction) * s,
                "value_clip_fraction": float(vl.clip_fraction) * s, "approx_kl": float(pl.approx_kl) * s,
                "entropy": float(entropy.detach()) * s})
            require_finite(step, loss=parts["loss"])
            loop.backward(loss)
            parts["grad_norm"] = loop.apply_gradients()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            tokens += int(r.prompt_mask[pidx].sum()) + int(mask[rows].sum())
            if p.max_approx_kl is not None and parts["approx_kl"] > p.max_approx_kl:
                stopped_at = epoch + 1
                break
        if stopped_at is not None:
            log.info("step %d: approx-KL %.4f > %g: update stopped in epoch %d", step, parts["approx_kl"],
                     p.max_approx_kl, stopped_at)
            break
    out = {k: v / count for k, v in sums.items()}
    out.update(tokens=tokens, updates=count)
    if stopped_at is not None:
        out["early_stop_epoch"] = stopped_at
    return out
