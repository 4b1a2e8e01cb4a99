"""Reward-model losses: pure functions of scalar rewards, per example, reduced by the caller.

Every function returns per-example losses so a recipe can weight them (labeler confidence, bootstrap
resampling of ensemble heads) with :func:`weighted_mean`. Rewards may carry a trailing ensemble axis:
``[B]`` or ``[B, K]`` for K heads; everything broadcasts over it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    r_chosen: torch.Tensor,  # [B] or [B, K]
    r_rejected: torch.Tensor,  # same shape
    margin: torch.Tensor | float | None = None,  # [B] or scalar, in reward units
    label_smoothing: torch.Tensor | float = 0.0,  # [B] or scalar, probability the label is flipped
) -> torch.Tensor:
    """Bradley–Terry pairwise loss (Bradley & Terry 1952; Ouyang et al. 2022, InstructGPT):

        d = r_w − r_l − m
        loss = −(1 − ε)·log σ(d) − ε·log σ(−d)

    ``m`` is the Llama-2 margin (Touvron et al. 2023, arXiv:2307.09288): pairs labelled "much better"
    must be separated by at least ``m`` before the loss relaxes. ``ε`` is label smoothing for noisy
    labels (the conservative/robust variant: the label is assumed flipped with probability ε). A tie
    is ``ε = 0.5``: the loss −½log σ(d) − ½log σ(−d) is minimised when the two rewards are equal.
    Returns per-example losses with the shape of ``r_chosen``.
    """
    d = r_chosen - r_rejected
    if margin is not None:
        d = d - _along_batch(margin, d)
    eps = _along_batch(label_smoothing, d)
    return -(1 - eps) * F.logsigmoid(d) - eps * F.logsigmoid(-d)


def plackett_luce_loss(
    scores: torch.Tensor,  # [G, K] or [G, K, H]: rewards of each group's responses, best first
    mask: torch.Tensor | None = None,  # [G, K] bool, False for padding slots of groups shorter than K
) -> torch.Tensor:
    """Plackett–Luce listwise loss for rankings (Plackett 1975; Luce 1959; Zhu et al. 2023, arXiv:2301.11270):

        loss = −Σ_{i=1}^{K−1} [ s_i − log Σ_{j=i}^{K} exp(s_j) ]

    the negative log-likelihood of the observed order when each position is filled by a softmax over the
    responses not yet placed. With K = 2 it equals :func:`bradley_terry_loss`. Returns ``[G]`` (or ``[G, H]``).
    """
    if mask is None:
        mask = torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device)
    m = mask if scores.dim() == 2 else mask[..., None]
    neg_inf = torch.finfo(scores.dtype).min
    masked = scores.masked_fill(~m, neg_inf)
    # log Σ_{j>=i} exp(s_j): a reversed cumulative logsumexp over the ranking axis.
    tail = torch.logcumsumexp(masked.flip(1), dim=1).flip(1)
    terms = (masked - tail).masked_fill(~m, 0.0)
    # the last placed response contributes s_K − log exp(s_K) = 0, so summing every valid slot is exact
    return -terms.sum(dim=1)


def centering_penalty(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Reward-centering regulariser (Eisenstein et al. 2023, arXiv:2312.09244): (r_w + r_l)², per example.

    Bradley–Terry only sees differences, so the reward's offset drifts freely; this keeps rewards near
    zero (the recipe adds ``coef · mean`` of it, as TRL's ``center_rewards_coefficient`` does).
    """
    return (r_chosen + r_rejected) ** 2


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ w·l / Σ w over the batch (and ensemble axis); plain mean without weights. Zero total weight gives 0."""
    if weights is None:
        return losses.mean()
    w = _along_batch(weights, losses)
    w = w.expand_as(losses)
    total = w.sum()
    return (w * losses).sum() / total.clamp_min(torch.finfo(losses.dtype).tiny) if total > 0 else losses.sum() * 0.0


def _along_batch(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or ``[B]`` value shaped to broadcast against ``like`` (``[B]`` or ``[B, K]``)."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    while t.dim() and t.dim() < like.dim():
        t = t[..., None]
    return t
