"""One batch of experience for online RL, shared by PPO and GRPO/RLOO/REINFORCE++:

    sample n responses per prompt (KV cache, prefix shared) -> score them (reward model or function,
    penalties) -> reference log-probs of the sampled tokens (the disabled LoRA adapter, or a frozen copy)

the diagnostics every step reports (reward, KL to the reference, lengths, truncation, throughput), the
held-out evaluation, and the minibatches of whole prompt groups the updates iterate over.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from palate.losses.policy import SamplerCorrection, kl_penalty, masked_mean
from palate.models.logprobs import response_hidden, response_logprobs
from palate.models.reference import Reference
from palate.rollout.generate import Rollout, concat_rollouts
from palate.rollout.rewards import NonFiniteError, Rewarder, Rewards
from palate.rollout.sampling import RolloutConfig, sample_rollout

log = logging.getLogger("palate.rl")


@dataclass
class Experience:
    prompts: list
    """[P]"""
    rollout: Rollout
    """B = P * n responses"""
    rewards: Rewards
    ref_logprobs: torch.Tensor | None
    """[B, T], None without a KL term"""
    seconds: dict[str, float]
    correction: SamplerCorrection | None = None
    """rollout.backend=vllm: per-token importance weights"""

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.response_mask

    def kl_tokens(self, kind: str = "k1") -> torch.Tensor | None:
        """Per-token KL estimate of the sampled responses to the reference: [B, T] (0 at padding)."""
        if self.ref_logprobs is None:
            return None
        return kl_penalty(self.rollout.logprobs, self.ref_logprobs, kind) * self.mask


def score_rollout(rewarder: Rewarder, prompts: list, r: Rollout) -> Rewards:
    """Score every sampled response of ``r`` (row b answers prompt b // n)."""
    return rewarder([prompts[b // r.n] for b in range(len(r.texts))], r.texts, r.lengths, r.finished)


def collect(policy, tok, prompts: list, cfg: RolloutConfig, rewarder: Rewarder, reference: Reference | None,
            seed: int, engine=None, first: int = 0, block: int | None = None) -> Experience:
    """Sample, score and reference log-probs for ``prompts`` (global indices ``first`` .. of the step, seed
    blocks of ``block`` prompts: see :func:`palate.rollout.sampling.sample_rollout`)."""
    seconds: dict[str, float] = {}
    r, correction = sample_rollout(policy, tok, prompts, cfg, seed, engine, first=first, block=block,
                                   seconds=seconds)  # generate (and recompute: the trainer's π_old of an engine's)
    t1 = time.perf_counter()
    rewards = score_rollout(rewarder, prompts, r)
    t2 = time.perf_counter()
    ref = reference.response_logprobs(r, cfg.temperature) if reference is not None else None
    t3 = time.perf_counter()
    return Experience(prompts, r, rewards, ref, {**seconds, "score": t2 - t1, "reference": t3 - t2}, correction)


def _widen(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros((x.shape[0], width - x.shape[1]))], dim=1)


def join_experience(parts: list[Experience], pad: int) -> Experience:
    """One batch of experience from consecutive shares of a step's prompts (one per process, in rank order), as
    one process would have collected it: rollouts re-padded (:func:`concat_rollouts`), rewards and reference
    log-probs concatenated row by row; each phase's seconds are the slowest share's."""
    if len(parts) == 1:
        return parts[0]
    rollout = concat_rollouts([e.rollout for e in parts], pad)
    T = rollout.response_ids.shape[1]
    rw = [e.rewards for e in parts]
    rewards = Rewards(torch.cat([x.total for x in rw]), torch.cat([x.score for x in rw]),
                      torch.cat([x.std for x in rw]) if rw[0].std is not None else None,
                      {k: torch.cat([x.penalties[k] for x in rw]) for k in rw[0].penalties})
    ref = torch.cat([_widen(e.ref_logprobs, T) for e in parts]) if parts[0].ref_logprobs is not None else None
    seconds = {k: max(e.seconds[k] for e in parts) for k in parts[0].seconds}
    correction = join_corrections([e.correction for e in parts], [e.mask for e in parts], T)
    return Experience([p for e in parts for p in e.prompts], rollout, rewards, ref, seconds, correction)


def join_corrections(parts: list[SamplerCorrection | None], masks: list[torch.Tensor],
                     width: int) -> SamplerCorrection | None:
    """The importance weights of consecutive row shares as one batch's: weights re-padded and stacked, the
    token means (weight mean, truncated fraction, mismatch KL) weighted by each share's response tokens, which is
    what one process computing them over all rows gets."""
    if parts[0] is None:
        return None
    tokens = torch.tensor([float(m.sum()) for m in masks])
    share = tokens / tokens.sum().clamp_min(1.0)

    def mean(field: str) -> torch.Tensor:
        return torch.tensor(sum(float(getattr(c, field)) * s for c, s in zip(parts, share.tolist())))

    return SamplerCorrection(torch.cat([_widen(c.weights, width) for c in parts]), mean("weight_mean"),
                             mean("truncated_fraction"), mean("mismatch_kl"))


def join_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-token tensors [b_i, T_i] of consecutive row shares, right-padded with 0 to the widest and stacked."""
    T = max(x.shape[1] for x in parts)
    return torch.cat([_widen(x, T) for x in parts])


def experience_metrics(exp: Experience) -> dict[str, float]:
    """Reward, KL, length and throughput figures of one batch of experience (the per-step diagnostics)."""
    r, rw = exp.rollout, exp.rewards
    lengths = r.lengths.float()
    m = {
        "reward": float(rw.total.mean()), "reward_std": float(rw.total.std()) if len(rw.total) > 1 else 0.0,
        "score": float(rw.score.mean()),
        "response_length": float(lengths.mean()),
        "truncated_fraction": float((~r.finished).float().mean()),
        "generated_tokens": float(lengths.sum()),
        "generate_tokens_per_s": float(lengths.sum()) / max(exp.seconds["generate"], 1e-9),
        **{f"seconds_{k}": v for k, v in exp.seconds.items()},
    }
    if rw.std is not None:
        m["ensemble_std"] = float(rw.std.mean())
    for name, values in rw.penalties.items():
        m[f"penalty_{name}"] = float(values.mean())
    kl = exp.kl_tokens("k1")
    if kl is not None:
        m["kl"] = float(kl.sum(-1).mean())  # per sequence, nats
        m["kl_k3"] = float(exp.kl_tokens("k3").sum(-1).mean())
    m["sample_entropy_proxy"] = float(-masked_mean(r.logprobs, r.response_mask))  # −log p of sampled tokens
    if exp.correction is not None:  # rollout engine != trainer: how far apart they are, and the weights used
        c = exp.correction
        m.update(sampler_mismatch_kl=float(c.mismatch_kl), sampler_weight_mean=float(c.weight_mean),
                 sampler_truncated_fraction=float(c.truncated_fraction))
    return m


def warn_negative_kl(step: int, kl: float) -> None:
    if kl < 0:
        log.warning(
            "step %d: the KL estimate to the reference is negative (%.4f). The k1 estimator is unbiased but noisy: "
            "a negative mean means too few samples for the current divergence, or sampling differs from the "
            "distribution the log-probs describe (top-p/top-k truncate it). Use more samples, top_p=1/top_k=0, "
            "or kl_estimator=k3 (always >= 0).", step, kl)


def require_finite(step: int, **values) -> None:
    """Raise :class:`NonFiniteError` naming the quantity when a loss or reward is NaN or infinite."""
    for name, v in values.items():
        bad = not torch.isfinite(v).all() if isinstance(v, torch.Tensor) else not math.isfinite(v)
        if bad:
            raise NonFiniteError(f"step {step}: {name} is not finite")


@torch.no_grad()
def evaluate(policy, tok, prompts: list, cfg: RolloutConfig, rewarder: Rewarder, reference: Reference | None,
             seed: int, samples: int = 1, engine=None) -> tuple[dict[str, float], Experience]:
    """Held-out reward (and KL to the reference) of ``samples`` fresh samples per prompt, with a fixed seed
    so every evaluation of a run sees the same sampling noise; sampled by ``engine`` when given (the run's bf16
    sampler copy), as the training steps are."""
    if samples < 1:
        raise ValueError(f"held-out samples per prompt must be >= 1, got {samples}")
    exp = collect(policy, tok, prompts, RolloutConfig(n=samples, max_new_tokens=cfg.max_new_tokens,
                                                      temperature=cfg.temperature, top_p=cfg.top_p,
                                                      top_k=cfg.top_k, stop=cfg.stop, correction_cap=cfg.correction_cap,
                                                      correction_level=cfg.correction_level),
                  rewarder, reference, seed, engine=engine)
    m = experience_metrics(exp)
    out = {f"eval_{k}": m[k] for k in ("reward", "score", "response_length", "kl") if k in m}
    return out, exp


def eval_seed(seed: int) -> int:
    """The sampling seed of every held-out evaluation of a run trained with ``seed``."""
    return seed * 7919 + 1


def minibatches(n_prompts: int, n: int, count: int, generator: torch.Generator | None):
    """Split a batch into ``count`` minibatches of whole prompt groups (so each group's prompt is still
    encoded once): yields ``(prompt_indices [p], row_indices [p * n])``; shuffled when a generator is given."""
    order = torch.randperm(n_prompts, generator=generator) if generator is not None else torch.arange(n_prompts)
    per = n_prompts // count
    for s in range(0, n_prompts, per):
        pidx = order[s : s + per]
        yield pidx, (pidx[:, None] * n + torch.arange(n)[None, :]).reshape(-1)


def share(count: int, rank: int, world: int) -> tuple[int, int]:
    """``[lo, hi)``: process ``rank``'s consecutive share of ``count`` items (sizes differ by at most one, the
    larger ones first), as :func:`palate.data.batching.shard` slices a batch."""
    per, extra = divmod(count, world)
    lo = rank * per + min(rank, extra)
    return lo, lo + per + (rank < extra)


def local_part(pidx: torch.Tensor, n: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's part of a minibatch of whole prompt groups (``pidx`` from :func:`minibatches`):
    ``(prompt_indices, row_indices)`` of its consecutive share of the minibatch's prompts, each with all its
    ``n`` samples (a group's advantages were computed over the whole step before)."""
    lo, hi = share(len(pidx), rank, world)
    mine = pidx[lo:hi]
    return mine, (mine[:, None] * n + torch.arange(n)[None, :]).reshape(-1)


def shares(mask: torch.Tensor, rows: torch.Tensor, mine: torch.Tensor, mode: str = "token-mean") -> tuple[float, float]:
    """What a process's loss over rows ``mine`` of a minibatch (rows ``rows``) is multiplied by, so that the
    processes' losses sum to the minibatch's loss: ``(for the loss, for token means)``. The loss reduced with
    ``mode`` (:func:`palate.losses.policy.aggregate`) over this process's rows is a mean over its tokens
    (token-mean) or rows (seq-*); times local / global count it becomes its part of the global mean. Token means
    (entropy, clip fraction, value loss) take the token share. Both are 1 when ``mine`` is ``rows``."""
    tokens, all_tokens = int(mask[mine].sum()), int(mask[rows].sum())
    token_share = tokens / max(all_tokens, 1) if len(mine) != len(rows) else 1.0
    if mode == "token-mean":
        return token_share, token_share
    return (len(mine) / len(rows), token_share)


def policy_forward(model, r: Rollout, pidx: torch.Tensor, rows: torch.Tensor, temperature: float,
                   with_entropy: bool = True):
    """Hidden states, log-probs and entropies [b, T] of rows ``rows`` (answers to prompts ``pidx``) under
    ``model``, with gradients; the hidden states serve a shared value head."""
    hidden = response_hidden(model, r.prompt_ids[pidx], r.prompt_mask[pidx], r.response_ids[rows], r.n)
    logp, ent = response_logprobs(model, hidden, r.response_ids[rows], r.response_mask[rows], temperature,
                                  with_entropy=with_entropy)
    return hidden, logp, ent
