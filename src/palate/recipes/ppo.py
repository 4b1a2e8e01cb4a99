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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from palate.config import ConfigError, LogConfig, LoraConfig, ModelConfig, TrainConfig
from palate.data.errors import SkipLog
from palate.eval.monitor import MonitorConfig
from palate.infra import ray_layout, session
from palate.infra.ray_layout import RayConfig
from palate.infra.run import RunDir, recorded
from palate.losses.policy import (
    explained_variance,
    gae,
    kl_controller,
    kl_penalty,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    value_loss,
)
from palate.models.logprobs import response_hidden
from palate.recipes.prompts import PromptsConfig, prompt_limit, prompt_stream
from palate.rollout.experience import (
    Experience,
    Reference,
    Watch,
    RolloutConfig,
    drive,
    finish_rl,
    minibatches,
    policy_forward,
    require_finite,
)
from palate.rollout.rewards import RewardConfig, Rewarder

log = logging.getLogger("palate.ppo")


@dataclass(frozen=True)
class PPOSpec:
    prompts_per_step: int = 64  # the rollout batch
    minibatches: int = 4  # updates per PPO epoch
    ppo_epochs: int = 4
    critic: str = "shared"  # shared (value head on the policy's backbone) | separate (a second backbone)
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.1  # β: initial (adaptive) or fixed KL coefficient
    kl_controller: str = "fixed"  # fixed | adaptive
    target_kl: float = 6.0  # adaptive: target KL per sequence (nats)
    kl_horizon: int = 10000  # adaptive: samples over which β moves by at most ±20%
    kl_estimator: str = "k1"  # k1 | k2 | k3 | abs: the per-token penalty in the reward
    whiten_advantages: bool = True
    clip_eps: float = 0.2
    clip_value: float | None = 0.2
    vf_coef: float = 0.1
    value_lr_scale: float = 10.0  # the value head (and a separate critic) learn at lr × this: it starts at zero
    ent_coef: float = 0.0
    max_approx_kl: float | None = None  # stop an update's remaining minibatches when approx-KL exceeds this
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
    monitor: MonitorConfig = field(default_factory=MonitorConfig)  # reward-hacking checks (warn or stop)
    gold: RewardConfig = field(default_factory=RewardConfig)  # optional held-out gold reward for the monitor
    ray: RayConfig = field(default_factory=RayConfig)  # rollout, reward and reference workers as Ray actors
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


@recorded
def train(cfg: PPOConfig, *, overwrite: bool = False) -> Path:
    check(cfg)
    p, rc = cfg.ppo, cfg.rollout
    run = RunDir.open(cfg.run_dir, cfg, overwrite=overwrite)
    env = session.start(cfg.train, cfg.model, run, cfg.log, cfg)
    tok = session.tokenizer(cfg.model)
    skips = SkipLog()
    stream, held = prompt_stream(cfg.prompts, p.prompts_per_step, cfg.train.seed, tok, room=rc.max_new_tokens,
                                 max_length=prompt_limit(cfg.prompts, cfg.reward), skips=skips)
    session.report_data(run, skips, n_held_out_prompts=len(held))
    with ray_layout.place(cfg.ray, run, cfg.model, cfg.reward, tok, cfg.train.seed, reference=True) as placed:
        rewarder = placed.rewarder or Rewarder(cfg.reward)
        policy = session.policy(cfg.model, cfg.lora, cfg.train, env, tok)
        critic = session.policy(cfg.model, cfg.lora, cfg.train, env, tok) if p.critic == "separate" else None
        ac = ActorCritic(policy, critic).to(env.device)
        reference = placed.reference or Reference(policy, p.reference_device)
        ctl = kl_controller(p.kl_controller, p.kl_coef, p.target_kl if p.kl_controller == "adaptive" else None,
                            p.kl_horizon)
        loop = session.Loop(run, ac, cfg.train, env, stream,
                            lr_scale={"value_head.": p.value_lr_scale, "critic.": p.value_lr_scale})
        if "kl_controller" in loop.resumed:
            ctl.load_state_dict(loop.resumed["kl_controller"])
        loop.extra_state = lambda: {"kl_controller": ctl.state_dict()}
        log.info("ppo: %d prompts x %d per step, %d epochs x %d minibatches, critic %s, β=%g (%s), reward from %s",
                 p.prompts_per_step, rc.n, p.ppo_epochs, p.minibatches, p.critic, p.kl_coef, p.kl_controller,
                 cfg.reward.model or cfg.reward.function)
        watch = Watch(run, policy, tok, cfg.monitor, cfg.gold, loop.start_step)
        drive(loop, run, policy, tok, held, rc, rewarder, reference, cfg.train.seed, p.sample_every,
              cfg.train.eval_every, lambda step, exp: update(ac, loop, exp, ctl, p, rc, step), watch,
              engine=placed.engine, eval_samples=cfg.prompts.eval_samples)
        return finish_rl(loop, run, tok, cfg.lora.merge, watch, model=policy)


def update(ac: ActorCritic, loop, exp: Experience, ctl, p: PPOSpec, rc: RolloutConfig, step: int) -> dict:
    r, mask = exp.rollout, exp.mask
    P = len(exp.prompts)
    with torch.no_grad():  # values of the sampled states, before any update
        old_values = torch.zeros(mask.shape)
        for pidx, rows in minibatches(P, rc.n, p.minibatches, None):
            hidden = response_hidden(ac.policy, r.prompt_ids[pidx], r.prompt_mask[pidx], r.response_ids[rows], r.n) \
                if ac.critic is None else None
            old_values[rows] = ac.values(r, pidx, rows, hidden).cpu() * mask[rows]
    kl_tok = kl_penalty(r.logprobs, exp.ref_logprobs, p.kl_estimator) * mask
    token_rewards = -ctl.value * kl_tok
    last = mask.sum(-1) - 1
    token_rewards[torch.arange(len(last)), last] += exp.rewards.total
    adv, returns = gae(token_rewards, old_values, mask, p.gamma, p.lam)
    if p.whiten_advantages:
        adv = masked_whiten(adv, mask)
    gen = torch.Generator().manual_seed(step)
    sums: dict[str, float] = {}
    count, tokens, stopped_at = 0, 0, None
    for epoch in range(p.ppo_epochs):
        for pidx, rows in minibatches(P, rc.n, p.minibatches, gen):
            hidden, logp, ent = policy_forward(ac.policy, r, pidx, rows, rc.temperature)
            dev = logp.device
            m = mask[rows].to(dev)
            w = exp.correction.weights[rows].to(dev) if exp.correction is not None else None  # vllm backend
            pl = ppo_policy_loss(logp, r.logprobs[rows].to(dev), adv[rows].to(dev), m, p.clip_eps, weights=w)
            vl = value_loss(ac.values(r, pidx, rows, hidden), old_values[rows].to(dev), returns[rows].to(dev), m,
                            p.clip_value)
            entropy = masked_mean(ent, m)
            loss = pl.loss + p.vf_coef * vl.loss - p.ent_coef * entropy
            require_finite(step, loss=loss.detach())
            loss.backward()
            parts = {"loss": float(loss.detach()), "policy_loss": float(pl.loss.detach()),
                     "value_loss": float(vl.loss.detach()),
                     "clip_fraction": float(pl.clip_fraction), "value_clip_fraction": float(vl.clip_fraction),
                     "approx_kl": float(pl.approx_kl), "entropy": float(entropy.detach()), "grad_norm": loop.apply_gradients()}
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            tokens += int(r.prompt_mask[pidx].sum()) + int(m.sum())
            if p.max_approx_kl is not None and parts["approx_kl"] > p.max_approx_kl:
                stopped_at = epoch + 1
                break
        if stopped_at is not None:
            log.info("step %d: approx-KL %.4f > %g: update stopped in epoch %d", step, parts["approx_kl"],
                     p.max_approx_kl, stopped_at)
            break
    seq_kl = float(kl_penalty(r.logprobs, exp.ref_logprobs, "k1").mul(mask).sum(-1).mean())
    out = {k: v / count for k, v in sums.items()}
    out.update(tokens=tokens, kl_coef=ctl.value, updates=count,
               explained_variance=float(explained_variance(old_values, returns, mask)),
               value_mean=float(masked_mean(old_values, mask)), kl_penalty=float(kl_tok.sum(-1).mean()),
               advantage_abs=float(masked_mean(adv.abs(), mask)))
    if stopped_at is not None:
        out["early_stop_epoch"] = stopped_at
    ctl.update(seq_kl, len(last))
    return out
