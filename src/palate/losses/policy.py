"""Policy-gradient RL (PPO, GRPO, RLOO, REINFORCE++): pure functions of per-token tensors.

Conventions:

* Per-token tensors are ``[B, T]`` over the **response** tokens; ``mask`` (bool or 0/1 float, same
  shape) marks the real ones. Sequences are right padded (1s then 0s) where a docstring says so.
  Masked reductions read only masked positions (``torch.where``, so NaN/inf in padding cannot leak)
  and divide by ``max(count, 1)``: an all-padding reduction is 0, not NaN.
* Log-probs are of the sampled tokens (``log π(y_t | x, y_<t)``), ``old_logp`` from the policy that
  generated the rollout, ``ref_logp`` from the frozen reference.
* Advantage/return targets (:func:`gae`, :func:`discounted_returns`, :func:`group_advantages`) are
  computed from **detached** inputs; metrics in :class:`PolicyLoss`/:class:`ValueLoss` are detached.
* Reductions of losses go through :func:`aggregate`, whose modes name the choice explicitly.

References are arXiv ids. Where TRL 1.16.0 differs it is said in the docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

KL_KINDS = ("k1", "k2", "k3", "abs")
GROUP_ADVANTAGE_KINDS = ("grpo", "rloo")
AGGREGATE_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


# --------------------------------------------------------------------------- masked statistics


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def masked_mean(
    x: torch.Tensor,  # [...] any shape
    mask: torch.Tensor,  # same shape as x, bool or 0/1
    dim: int | tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Mean of ``x`` over the masked positions:

        mean = Σ x·m / max(Σ m, 1)

    ``dim=None`` reduces everything to a scalar; otherwise reduces ``dim`` (not kept). A reduction
    with no masked position gives 0.
    """
    m = _as_bool(mask)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    count = m.sum() if dim is None else m.sum(dim=dim)
    total = total.sum() if dim is None else total.sum(dim=dim)
    return total / count.clamp(min=1).to(total.dtype)


def masked_var(
    x: torch.Tensor,  # [...] any shape
    mask: torch.Tensor,  # same shape, bool or 0/1
    unbiased: bool = True,
) -> torch.Tensor:
    """Variance of ``x`` over all masked positions, a scalar:

        var = Σ m·(x − μ)² / (n − 1)   (unbiased, Bessel)   or   / n   (biased),   n = Σ m

    The unbiased variance of fewer than two masked values is NaN, as ``torch.var`` of one element is
    (TRL's old ``masked_var`` raised instead; this stays free of host syncs). No masked value at all
    with ``unbiased=False`` gives 0.
    """
    m = _as_bool(mask)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = m.sum().to(var.dtype)
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1), torch.full_like(var, float("nan")))
    return var


def masked_whiten(
    x: torch.Tensor,  # [...] any shape, e.g. [B, T] advantages
    mask: torch.Tensor,  # same shape, bool or 0/1
    shift_mean: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:  # same shape as x, 0 where mask is 0
    """Whitening over the masked positions (the PPO advantage normalisation of Ziegler et al. 2019,
    arXiv:1909.08593, and TRL's former ``trl.core.masked_whiten``):

        x̂ = (x − μ) / √(σ² + ε)          (shift_mean=True)
        x̂ = (x − μ) / √(σ² + ε) + μ      (shift_mean=False: rescale only, keep the mean)

    μ and the **unbiased** σ² are over masked positions (:func:`masked_mean`, :func:`masked_var`), so
    the whitened masked values have mean 0 and unbiased variance 1 (up to ε). Padding is set to 0.
    TRL 1.16.0 no longer ships ``masked_whiten`` (it went with the old PPO trainer).
    """
    m = _as_bool(mask)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))


# --------------------------------------------------------------------------- KL penalty


def kl_penalty(
    logp: torch.Tensor,  # [B, T] log π(y_t) of the sampled tokens
    ref_logp: torch.Tensor,  # [B, T] log π_ref(y_t)
    kind: str = "k1",
) -> torch.Tensor:  # [B, T] per-token penalty, shape preserved
    """Per-token estimators of KL(π‖π_ref) from tokens sampled from π (Schulman 2020, "Approximating
    KL divergence", http://joschu.net/blog/kl-approx.html), with d = log π − log π_ref:

        k1  = d                       unbiased, can be negative per token
        k2  = ½·d²                    biased, ≥ 0, low variance
        k3  = exp(−d) − (−d) − 1      unbiased, ≥ 0 (the GRPO penalty, Shao et al. 2024, arXiv:2402.03300)
        abs = |d|

    k1 is the reward penalty of Ziegler et al. 2019 / InstructGPT. TRL 1.16.0's GRPOTrainer uses k3.
    """
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return torch.exp(-d) + d - 1
    if kind == "abs":
        return d.abs()
    raise ValueError(f"kl_penalty: unknown kind {kind!r}; allowed kinds are {', '.join(KL_KINDS)}")


def kl_shaped_rewards(
    score: torch.Tensor,  # [B] each response's reward (reward model or function, with penalties)
    kl: torch.Tensor | None,  # [B, T] per-token KL estimate to the reference (kl_penalty), None: no KL term
    mask: torch.Tensor,  # [B, T] response tokens, right padded
    kl_coef: float,  # β
) -> torch.Tensor:  # [B, T] per-token rewards, 0 at padding
    """Per-token rewards of RLHF with the KL in the reward (Ziegler et al. 2019; InstructGPT; REINFORCE++):

        r_t = −β·KL_t + [t = last token]·score

    the input of :func:`gae` (PPO) and :func:`discounted_returns` (REINFORCE++). ``kl`` should be 0 at
    padding (``kl_penalty(...) * mask``); without it only the last token is rewarded.
    """
    rewards = torch.zeros(mask.shape, dtype=score.dtype, device=score.device) if kl is None else -kl_coef * kl
    last = _as_bool(mask).sum(-1) - 1
    rewards[torch.arange(len(last), device=rewards.device), last] += score
    return rewards


# --------------------------------------------------------------------------- advantages and returns


def gae(
    rewards: torch.Tensor,  # [B, T] per-token rewards (e.g. −β·KL per token + score on the last token)
    values: torch.Tensor,  # [B, T] V(s_t) from the critic
    mask: torch.Tensor,  # [B, T] response tokens, right padded (1s then 0s)
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:  # (advantages [B, T], returns [B, T]), 0 where mask is 0
    """Generalised advantage estimation (Schulman, Moritz, Levine, Jordan, Abbeel 2016, arXiv:1506.02438):

        δ_t = r_t + γ·V_{t+1} − V_t,      V_{t+1} = 0 past the last valid token (episode end)
        A_t = δ_t + γ·λ·A_{t+1},           A = 0 past the last valid token
        R_t = A_t + V_t                    (the value-function target, TD(λ) return)

    Inputs are detached (these are targets). Rewards and values at padding are ignored, so nothing
    leaks across the end of a sequence. The mask is assumed contiguous: a 0 inside a response would
    act as an episode end. No whitening here; see :func:`masked_whiten`.
    """
    m = _as_bool(mask)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    r = torch.where(m, rewards.detach().to(values.dtype), zero)
    v = torch.where(m, values.detach(), zero)
    T = r.shape[-1]
    advantages = torch.zeros_like(v)
    next_value = torch.zeros_like(v[..., 0])  # V_{t+1}, 0 beyond the last token
    next_adv = torch.zeros_like(v[..., 0])  # A_{t+1}
    for t in reversed(range(T)):
        delta = r[..., t] + gamma * next_value - v[..., t]
        adv = torch.where(m[..., t], delta + gamma * lam * next_adv, zero)
        advantages[..., t] = adv
        next_value, next_adv = v[..., t], adv
    returns = torch.where(m, advantages + v, zero)
    return advantages, returns


def discounted_returns(
    rewards: torch.Tensor,  # [B, T] per-token rewards
    mask: torch.Tensor,  # [B, T] response tokens, right padded
    gamma: float = 1.0,
) -> torch.Tensor:  # [B, T], 0 where mask is 0
    """Discounted reward-to-go per token, the REINFORCE++ token return (Hu 2025, arXiv:2501.03262):

        G_t = r_t + γ·G_{t+1},   G = 0 past the last valid token

    Inputs are detached. Rewards at padding are ignored.
    """
    m = _as_bool(mask)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    r = torch.where(m, rewards.detach(), zero)
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[..., 0])
    for t in reversed(range(r.shape[-1])):
        running = torch.where(m[..., t], r[..., t] + gamma * running, zero)
        out[..., t] = running
    return out


def group_advantages(
    rewards: torch.Tensor,  # [P, n] scalar reward of each of the n samples of each of P prompts
    kind: str = "grpo",
    scale_by_std: bool = True,
    eps: float = 1e-4,
) -> torch.Tensor:  # [P, n] one advantage per sample (broadcast over its tokens by the caller)
    """Critic-free advantages from a group of n samples per prompt (inputs detached).

    ``grpo`` (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300):

        A_i = (r_i − mean(r)) / (std(r) + ε)    (scale_by_std=True; std is the UNBIASED group std)
        A_i =  r_i − mean(r)                    (scale_by_std=False: Dr. GRPO, Liu et al. 2025, arXiv:2503.20783)

    matching TRL 1.16.0 ``GRPOTrainer`` (``scale_rewards="group"`` / ``"none"``, ε = 1e-4, ``nanstd``
    with Bessel's correction). A zero-variance group gives 0, not NaN; n = 1 gives 0.

    ``rloo`` (Ahmadian et al. 2024, "Back to Basics", arXiv:2402.14740; Kool et al. 2019):

        A_i = r_i − mean_{j≠i} r_j = n/(n−1) · (r_i − mean(r))

    the leave-one-out baseline, as TRL 1.16.0 ``RLOOTrainer`` (before its optional batch-level
    ``normalize_advantages``). ``scale_by_std`` and ``eps`` are ignored; n ≥ 2 is required.
    """
    if rewards.dim() != 2:
        raise ValueError(f"group_advantages: rewards must be [P, n], got shape {tuple(rewards.shape)}")
    r = rewards.detach()
    n = r.shape[-1]
    mean = r.mean(dim=-1, keepdim=True)
    if kind == "grpo":
        centered = r - mean
        if not scale_by_std:
            return centered
        std = r.std(dim=-1, keepdim=True) if n > 1 else torch.zeros_like(mean)  # unbiased (torch default)
        return centered / (std + eps)
    if kind == "rloo":
        if n < 2:
            raise ValueError(f"group_advantages: rloo needs at least 2 samples per prompt, got n={n}")
        baseline = (r.sum(dim=-1, keepdim=True) - r) / (n - 1)
        return r - baseline
    raise ValueError(f"group_advantages: unknown kind {kind!r}; allowed kinds are {', '.join(GROUP_ADVANTAGE_KINDS)}")


# --------------------------------------------------------------------------- loss aggregation


def aggregate(
    loss_tokens: torch.Tensor,  # [B, T] per-token loss
    mask: torch.Tensor,  # [B, T] bool or 0/1
    mode: str = "token-mean",
) -> torch.Tensor:  # scalar
    """Reduce per-token losses to a scalar:

        token-mean           Σ_{b,t} ℓ·m / max(Σ_{b,t} m, 1)       every token weighs the same
                             (DAPO, Yu et al. 2025, arXiv:2503.14476; TRL 1.16.0 ``loss_type="bnpo"``)
        seq-mean-token-mean  (1/B) Σ_b [Σ_t ℓ·m / max(Σ_t m, 1)]   original GRPO (arXiv:2402.03300),
                             TRL ``loss_type="grpo"``; short sequences' tokens weigh more
        seq-mean-token-sum   (1/B) Σ_b Σ_t ℓ·m                      sum over tokens, mean over sequences
                             (TRL ``loss_type="luspo"``'s reduction)

    Sequences with no masked token count in B in the sequence modes (contributing 0), as in TRL.
    TRL 1.16.0's ``loss_type="dapo"`` divides the token sum by the token count of the whole
    generation batch (all processes, all accumulation steps) instead of this micro-batch's count;
    the caller gets that by rescaling token-mean by (local tokens / global tokens).
    """
    m = _as_bool(mask)
    if mode == "token-mean":
        return masked_mean(loss_tokens, m)
    if mode == "seq-mean-token-mean":
        return masked_mean(loss_tokens, m, dim=-1).mean()
    if mode == "seq-mean-token-sum":
        zero = torch.zeros((), dtype=loss_tokens.dtype, device=loss_tokens.device)
        return torch.where(m, loss_tokens, zero).sum(dim=-1).mean()
    raise ValueError(f"aggregate: unknown mode {mode!r}; allowed modes are {', '.join(AGGREGATE_MODES)}")


# --------------------------------------------------------------------------- PPO losses


@dataclass(frozen=True)
class PolicyLoss:
    loss: torch.Tensor
    """scalar, with gradient"""
    clip_fraction: torch.Tensor
    """scalar, detached: fraction of masked tokens where the clipped term was used"""
    approx_kl: torch.Tensor
    """scalar, detached: masked mean of (ρ − 1) − log ρ, k3 estimate of KL(π_old‖π_θ)"""
    ratio_mean: torch.Tensor
    """scalar, detached: masked mean of ρ"""


def ppo_policy_loss(
    logp: torch.Tensor,  # [B, T] log π_θ(y_t), with gradient
    old_logp: torch.Tensor,  # [B, T] log π_old(y_t) from the rollout policy
    advantages: torch.Tensor,  # [B, T] (a [B, 1] per-sequence advantage broadcasts)
    mask: torch.Tensor,  # [B, T] bool or 0/1
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    mode: str = "token-mean",
    weights: torch.Tensor | None = None,  # [B, T] per-token loss weights, e.g. sampler_correction().weights
) -> PolicyLoss:
    """PPO clipped surrogate (Schulman, Wolski, Dhariwal, Radford, Klimov 2017, arXiv:1707.06347), per token:

        ρ = exp(log π_θ − log π_old)
        ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high))

    reduced by :func:`aggregate` (``mode``). ``clip_eps_high=None`` means ε_high = ε_low = ``clip_eps``;
    a larger ε_high is DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476). A clipped token has zero
    gradient. Metrics (detached): ``clip_fraction`` = masked fraction with −A·clip(ρ) > −A·ρ (ρ beyond
    the bound on the side the advantage pushes toward; TRL's ``clip_ratio/region_mean``);
    ``approx_kl`` = masked mean of (ρ − 1) − log ρ, the k3 estimator of KL(π_old‖π_θ) on tokens sampled
    from π_old; ``ratio_mean`` = masked mean of ρ. ``weights`` (no gradient) multiply each token's ℓ before
    the reduction: the truncated importance weights of :func:`sampler_correction` when the rollout engine
    is not the trainer.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high)
    per_token = torch.maximum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * weights.detach()
    loss = aggregate(per_token, mask, mode)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(ratio.dtype), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
        ratio_mean = masked_mean(ratio, mask)
    return PolicyLoss(loss, clip_fraction, approx_kl, ratio_mean)


@dataclass(frozen=True)
class SamplerCorrection:
    weights: torch.Tensor
    """[B, T] detached truncated importance weights, 0 at padding"""
    weight_mean: torch.Tensor
    """scalar: masked mean of the weights"""
    truncated_fraction: torch.Tensor
    """scalar: masked fraction of tokens whose ratio exceeded the cap"""
    mismatch_kl: torch.Tensor
    """scalar: k3 estimate of KL(π_sampler ‖ π_trainer) on the sampled tokens"""


def sampler_correction(
    trainer_logp: torch.Tensor,  # [B, T] log π_trainer(y_t): the trainer's own log-probs of the sampled tokens
    sampler_logp: torch.Tensor,  # [B, T] log π_sampler(y_t): what the rollout engine (vLLM) reported
    mask: torch.Tensor,  # [B, T] bool or 0/1
    cap: float = 2.0,
    level: str = "token",
) -> SamplerCorrection:
    """Truncated importance sampling for a rollout engine whose numbers differ from the trainer's (different
    kernels, precision, or weights a sync behind). Yao, Liu et al. 2025, "Your Efficient RL Framework
    Secretly Brings You Off-Policy RL Training" (fengyao.notion.site/off-policy-rl); the truncation is
    Ionides 2008. With ρ_t = π_trainer(y_t) / π_sampler(y_t):

        token:    w_t = min(ρ_t, C)
        sequence: w_t = min(Π_t ρ_t, C)  for every token of the row

    The samples come from π_sampler but the policy gradient is taken for π_trainer (π_old of the PPO ratio
    is the trainer's log-prob), so each token's loss is multiplied by ``w`` (detached; see ``weights`` of
    :func:`ppo_policy_loss`). Truncating at ``C`` bounds the variance at the price of a small bias.
    ``mismatch_kl`` = masked mean of (ρ − 1) − log ρ, the k3 estimator of KL(π_sampler ‖ π_trainer) from
    sampler draws: 0 when the engines agree, the first number to watch when they do not.
    """
    if level not in ("token", "sequence"):
        raise ValueError(f"level must be token or sequence, got {level!r}")
    m = _as_bool(mask)
    zero = torch.zeros((), device=trainer_logp.device)
    with torch.no_grad():
        log_ratio = torch.where(m, trainer_logp.float() - sampler_logp.float(), zero)
        if level == "sequence":
            log_ratio_w = log_ratio.sum(-1, keepdim=True).expand_as(log_ratio)
        else:
            log_ratio_w = log_ratio
        ratio_w = torch.exp(log_ratio_w)
        weights = torch.where(m, torch.clamp(ratio_w, max=cap), zero)
        ratio = torch.exp(log_ratio)
        return SamplerCorrection(
            weights=weights,
            weight_mean=masked_mean(weights, m),
            truncated_fraction=masked_mean((ratio_w > cap).float(), m),
            mismatch_kl=masked_mean((ratio - 1) - log_ratio, m),
        )


@dataclass(frozen=True)
class ValueLoss:
    loss: torch.Tensor
    """scalar, with gradient"""
    clip_fraction: torch.Tensor
    """scalar, detached: fraction of masked tokens where the clipped error was larger"""


def value_loss(
    values: torch.Tensor,  # [B, T] V_θ(s_t), with gradient
    old_values: torch.Tensor,  # [B, T] V at rollout time
    returns: torch.Tensor,  # [B, T] targets, e.g. from :func:`gae`
    mask: torch.Tensor,  # [B, T] bool or 0/1
    clip: float | None = 0.2,
) -> ValueLoss:
    """PPO value loss with value clipping (the OpenAI baselines PPO2 critic loss; Ziegler et al. 2019,
    arXiv:1909.08593; TRL's former PPOTrainer ``cliprange_value``):

        V_clip = V_old + clip(V − V_old, −c, c)
        loss   = ½ · masked_mean(max((V − R)², (V_clip − R)²))
        loss   = ½ · masked_mean((V − R)²)                            (clip=None)

    ``clip_fraction`` = masked fraction of tokens with (V_clip − R)² > (V − R)² (0 when clip=None).
    """
    err = (values - returns) ** 2
    if clip is None:
        return ValueLoss(0.5 * masked_mean(err, mask), torch.zeros((), dtype=values.dtype, device=values.device))
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((err_clipped > err).to(values.dtype), mask)
    return ValueLoss(loss, clip_fraction)


# --------------------------------------------------------------------------- diagnostics


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:  # [..., V] -> [...]
    """Entropy (nats) of softmax(logits) over the last axis:

        H = logsumexp(l) − Σ_v softmax(l)_v · l_v

    shift-invariant and stable for large logits; −inf logits (banned tokens) contribute 0, and the
    gradient stays finite. Computed in the input dtype (upcast bf16 logits first for precise values).
    Same value as TRL 1.16.0 ``trl.trainer.utils.entropy_from_logits`` (which chunks rows to save memory).
    """
    probs = torch.softmax(logits, dim=-1)
    finite = torch.where(torch.isneginf(logits), torch.zeros((), dtype=logits.dtype, device=logits.device), logits)
    return torch.logsumexp(logits, dim=-1) - (probs * finite).sum(dim=-1)


def explained_variance(
    values: torch.Tensor,  # [B, T] predicted values
    returns: torch.Tensor,  # [B, T] targets
    mask: torch.Tensor,  # [B, T] bool or 0/1
) -> torch.Tensor:  # scalar, detached
    """Explained variance of the critic over masked positions (as in OpenAI baselines):

        EV = 1 − Var(R − V) / Var(R)

    1 is a perfect critic, 0 is no better than a constant, negative is worse. NaN when Var(R) = 0.
    """
    with torch.no_grad():
        var_r = masked_var(returns, mask)
        var_diff = masked_var(returns - values, mask)
        return torch.where(var_r == 0, torch.full_like(var_r, float("nan")), 1 - var_diff / var_r)


# --------------------------------------------------------------------------- KL coefficient controllers


class FixedKLController:
    """Constant KL coefficient β. ``update`` is a no-op."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", arXiv:1909.08593, Sec. 2.2), a proportional controller toward ``target`` KL:

        e = clip(KL / KL_target − 1, −0.2, 0.2)
        β ← β · (1 + e · n_steps / horizon)

    ``n_steps`` is the number of samples (or steps) since the last update. Only β is state;
    ``target`` and ``horizon`` are configuration.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0:
            raise ValueError(f"AdaptiveKLController: target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"AdaptiveKLController: horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


def kl_controller(
    kind: str,
    init: float,
    target: float | None = None,
    horizon: int = 10000,
) -> FixedKLController | AdaptiveKLController:
    """Build a KL coefficient controller: ``"fixed"`` (β = init) or ``"adaptive"`` (needs ``target``)."""
    if kind == "fixed":
        return FixedKLController(init)
    if kind == "adaptive":
        if target is None:
            raise ValueError("kl_controller: kind='adaptive' requires a target KL")
        return AdaptiveKLController(init, target, horizon)
    raise ValueError(f"kl_controller: unknown kind {kind!r}; allowed kinds are fixed, adaptive")
