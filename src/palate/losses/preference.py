"""Direct preference optimisation, the DPO family: pure functions of sequence log-probs.

Conventions (the DPO recipe relies on them):

* Inputs are per-example completion log-probs, shape ``[B]``: **summed** over the completion's tokens
  unless a docstring says otherwise. The policy's carry gradients; the reference's do not need to.
* Pairwise losses return :class:`PairLoss` ``(losses [B], chosen_rewards [B], rejected_rewards [B])``:
  per-example losses (the caller takes the (weighted) mean) and detached implicit rewards for metrics.
* ``h = (π_c − ref_c) − (π_r − ref_r)`` below is the difference of the policy/reference log-ratios.

References are arXiv ids. Where TRL 1.16.0 differs from the paper it is said in the docstring.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F


class PairLoss(NamedTuple):
    losses: torch.Tensor  # [B] per-example loss
    chosen_rewards: torch.Tensor  # [B] detached implicit reward of the chosen response
    rejected_rewards: torch.Tensor  # [B] detached implicit reward of the rejected response


class KTOLoss(NamedTuple):
    losses: torch.Tensor  # [B] per-example loss
    rewards: torch.Tensor  # [B] detached implicit reward β·(π − ref)


def _h(policy_chosen, policy_rejected, ref_chosen, ref_rejected) -> torch.Tensor:
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)  # [B]


def _ratio_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected) -> tuple[torch.Tensor, torch.Tensor]:
    return beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach()


def dpo_loss(
    policy_chosen: torch.Tensor,  # [B] summed log π(y_c|x)
    policy_rejected: torch.Tensor,  # [B]
    ref_chosen: torch.Tensor,  # [B] summed log π_ref(y_c|x)
    ref_rejected: torch.Tensor,  # [B]
    beta: float = 0.1,
) -> PairLoss:
    """DPO, sigmoid loss (Rafailov, Sharma, Mitchell, Ermon, Manning, Finn 2023, arXiv:2305.18290):

        loss = −log σ(β·h),   rewards = β·(π − ref)

    Gradient: ∂loss/∂π_c = −β·σ(−β·h). TRL: ``DPOConfig(loss_type="sigmoid")``.
    """
    losses = -F.logsigmoid(beta * _h(policy_chosen, policy_rejected, ref_chosen, ref_rejected))
    return PairLoss(losses, *_ratio_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def cdpo_loss(
    policy_chosen: torch.Tensor,  # [B] summed log-probs
    policy_rejected: torch.Tensor,  # [B]
    ref_chosen: torch.Tensor,  # [B]
    ref_rejected: torch.Tensor,  # [B]
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> PairLoss:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO",
    a technical note with no arXiv id; the DPO reference code's ``label_smoothing``):

        loss = (1 − ε)·(−log σ(β·h)) + ε·(−log σ(−β·h))

    the DPO loss with the label assumed flipped with probability ε. It is biased: its minimiser keeps
    the implicit preference probability at 1 − ε rather than pushing it to 1 (compare :func:`robust_dpo_loss`).

    TRL 1.16.0 difference: ``DPOTrainer`` no longer applies ``label_smoothing`` to ``loss_type="sigmoid"``
    (trl/trainer/dpo_trainer.py ``_compute_loss``: ``-F.logsigmoid(self.beta * delta_score)``); the
    expression survives in the reference-free ``CPOTrainer.cpo_loss`` (trl/experimental/cpo) and in
    DPO's "aot" losses. A TRL 1.16 DPO run with ``label_smoothing=0.1`` is plain DPO.
    """
    logits = beta * _h(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PairLoss(losses, *_ratio_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def robust_dpo_loss(
    policy_chosen: torch.Tensor,  # [B] summed log-probs
    policy_rejected: torch.Tensor,  # [B]
    ref_chosen: torch.Tensor,  # [B]
    ref_rejected: torch.Tensor,  # [B]
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> PairLoss:
    """Robust DPO (Chowdhury, Kini, Natarajan 2024, "Provably Robust DPO", arXiv:2403.00409):

        loss = [(1 − ε)·(−log σ(β·h)) − ε·(−log σ(−β·h))] / (1 − 2ε)

    an unbiased estimate of the clean-label DPO loss when each label is flipped with probability
    ε ∈ [0, ½). Equivalently ``−log σ(β·h) − ε·β·h / (1 − 2ε)``. Matches TRL ``loss_type="robust"``.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust_dpo_loss: label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    logits = beta * _h(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    clean = -(1 - label_smoothing) * F.logsigmoid(logits)
    flipped = -label_smoothing * F.logsigmoid(-logits)
    losses = (clean - flipped) / (1 - 2 * label_smoothing)
    return PairLoss(losses, *_ratio_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def ipo_loss(
    policy_chosen: torch.Tensor,  # [B] log-probs: the recipe passes per-token AVERAGES here (see below)
    policy_rejected: torch.Tensor,  # [B]
    ref_chosen: torch.Tensor,  # [B]
    ref_rejected: torch.Tensor,  # [B]
    beta: float = 0.1,
) -> PairLoss:
    """IPO (Azar, Rowland, Piot, Guo, Calandriello, Valko, Munos 2023, arXiv:2310.12036, Eq. 17):

        loss = (h − 1/(2β))²      (β is the paper's τ)

    The function uses whatever log-probs it is given. With summed log-probs the squared loss grows
    with completion length, so TRL (``loss_type="ipo"``) divides each log-ratio by its completion's
    token count, a choice TRL says it confirmed with the IPO authors; the DPO recipe therefore passes
    per-token **average** log-probs (policy and reference divided by the same length). The rewards
    are β·(π − ref) of the inputs, i.e. per-token for the recipe; TRL logs β·(summed log-ratio).
    """
    h = _h(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = (h - 1 / (2 * beta)) ** 2
    return PairLoss(losses, *_ratio_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def rpo_loss(
    policy_chosen: torch.Tensor,  # [B] summed log-probs
    policy_rejected: torch.Tensor,  # [B]
    ref_chosen: torch.Tensor,  # [B]
    ref_rejected: torch.Tensor,  # [B]
    chosen_nll: torch.Tensor,  # [B] per-token-average NLL of the chosen response, with gradient
    beta: float = 0.1,
    alpha: float = 1.0,
) -> PairLoss:
    """RPO, DPO plus NLL on the chosen response (Pang, Yuan, Cho, He, Sukhbaatar, Weston 2024,
    "Iterative Reasoning Preference Optimization", arXiv:2404.19733):

        loss = −log σ(β·h) + α·NLL_c,   NLL_c = −log π(y_c|x) / |y_c|

    TRL 1.16.0 has no ``rpo_alpha`` any more; the equivalent is ``loss_type=["sigmoid", "sft"]`` with
    ``loss_weights=[1, α]``, whose "sft" term is the token-level mean over *all* chosen tokens of the
    batch (longer responses weigh more) rather than the mean of per-example averages used here; the
    two agree when the chosen responses have equal lengths.
    """
    dpo = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return PairLoss(dpo.losses + alpha * chosen_nll, dpo.chosen_rewards, dpo.rejected_rewards)


def simpo_loss(
    policy_chosen: torch.Tensor,  # [B] summed log-probs
    policy_rejected: torch.Tensor,  # [B]
    chosen_lengths: torch.Tensor,  # [B] completion token counts
    rejected_lengths: torch.Tensor,  # [B]
    beta: float = 2.0,
    gamma: float = 0.5,
) -> PairLoss:
    """SimPO (Meng, Xia, Chen 2024, arXiv:2405.14734), reference-free and length-normalised:

        loss = −log σ(β·avg_c − β·avg_r − γ),   avg = log π(y|x) / |y|,   rewards = β·avg

    ``gamma`` is the paper's γ, the target margin in reward units. Coming from elsewhere:

    * TRL ``CPOConfig(loss_type="simpo", simpo_gamma=g, beta=b)``: set ``gamma=g`` (TRL's ``simpo_gamma``
      is γ: ``cpo_loss`` subtracts ``simpo_gamma / beta`` inside ``β·(…)``). Also note TRL's default
      ``cpo_alpha=1.0`` adds an NLL term (CPO-SimPO); plain SimPO needs ``cpo_alpha=0``.
    * the authors' code (princeton-nlp/SimPO ``gamma_beta_ratio``): that is γ/β, so
      ``gamma = gamma_beta_ratio * beta``.
    """
    avg_chosen = policy_chosen / chosen_lengths.clamp_min(1)  # [B]
    avg_rejected = policy_rejected / rejected_lengths.clamp_min(1)
    losses = -F.logsigmoid(beta * (avg_chosen - avg_rejected) - gamma)
    return PairLoss(losses, beta * avg_chosen.detach(), beta * avg_rejected.detach())


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x < 0, accurate on both sides of −ln 2 (Mächler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    policy_chosen: torch.Tensor,  # [B] summed log-probs
    policy_rejected: torch.Tensor,  # [B]
    chosen_lengths: torch.Tensor,  # [B] completion token counts
    rejected_lengths: torch.Tensor,  # [B]
    chosen_nll: torch.Tensor,  # [B] per-token-average NLL of the chosen response, with gradient
    beta: float = 0.1,
) -> PairLoss:
    """ORPO (Hong, Lee, Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference
    Model", arXiv:2403.07691, Eqs. 4–7), reference-free:

        loss = NLL_c + β·(−log σ(log odds_c − log odds_r)),   log odds = avg − log(1 − e^avg)

    with avg the per-token average log-prob. β is the paper's λ (and TRL's ``beta``); rewards are
    β·avg, as TRL logs them. avg is clamped to ≤ −machine-ε so a response the model is sure of
    (avg = 0, common in float32) gives a finite loss and gradient instead of inf/NaN; TRL does not clamp.

    TRL 1.16.0 (trl/experimental/orpo/orpo_trainer.py ``concatenated_forward``) takes NLL_c as one
    token-level mean over the batch's chosen sequences *including the prompt tokens* ("orpo chosen
    nll loss is computed over the full prompt and response"); palate's NLL_c is the caller's
    per-example average over the response, as in the paper's L_SFT.
    """
    eps = torch.finfo(policy_chosen.dtype).eps
    avg_chosen = (policy_chosen / chosen_lengths.clamp_min(1)).clamp(max=-eps)  # [B]
    avg_rejected = (policy_rejected / rejected_lengths.clamp_min(1)).clamp(max=-eps)
    log_odds = (avg_chosen - _log1mexp(avg_chosen)) - (avg_rejected - _log1mexp(avg_rejected))
    losses = chosen_nll - beta * F.logsigmoid(log_odds)
    return PairLoss(losses, beta * avg_chosen.detach(), beta * avg_rejected.detach())


def kto_reference_point(
    policy_kl_logps: torch.Tensor,  # [B] summed log π(y'|x) on mismatched pairs (y' from another prompt)
    ref_kl_logps: torch.Tensor,  # [B] summed log π_ref(y'|x)
) -> torch.Tensor:  # [] scalar
    """KTO reference point z₀ (Ethayarajh et al. 2024, arXiv:2402.01306, §4.1):

        z₀ = max(0, mean(log π(y'|x) − log π_ref(y'|x)))

    a biased batch estimate of KL(π‖π_ref) from mismatched (prompt, other response) pairs, detached so
    no gradient flows through it. Under data parallelism average the per-process means before the
    clamp, as TRL does (``gather_for_metrics(kl).mean().clamp(min=0)``).
    """
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(
    policy_logps: torch.Tensor,  # [B] summed log π(y|x)
    ref_logps: torch.Tensor,  # [B] summed log π_ref(y|x)
    desirable: torch.Tensor,  # [B] bool, True for desirable (thumbs-up) examples
    kl_ref: torch.Tensor,  # [] z₀ from kto_reference_point
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KTOLoss:
    """KTO (Ethayarajh, Xu, Muennighoff, Jurafsky, Kiela 2024, arXiv:2402.01306, Eq. 7), unpaired:

        r = π − ref
        loss = λ_D·(1 − σ(β·(r − z₀)))   if desirable
               λ_U·(1 − σ(β·(z₀ − r)))   otherwise

    rewards = β·r. The paper suggests λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3]. Matches TRL ``KTOTrainer``
    (``loss_type="kto"``), whose batch mean over the concatenated desirable then undesirable losses
    equals the mean of these per-example losses.
    """
    r = policy_logps - ref_logps  # [B]
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (r - kl_ref))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl_ref - r))),
    )
    return KTOLoss(losses, beta * r.detach())


PREFERENCE_LOSSES: dict[str, Callable[..., PairLoss]] = {
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "cdpo": cdpo_loss,
    "robust": robust_dpo_loss,
    "rpo": rpo_loss,
    "simpo": simpo_loss,
    "orpo": orpo_loss,
}

_REFERENCE_FREE = {"simpo", "orpo"}


def requires_reference(name: str) -> bool:
    """Whether the pairwise loss ``name`` needs reference-model log-probs (False for SimPO and ORPO)."""
    if name not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; known: {', '.join(PREFERENCE_LOSSES)}")
    return name not in _REFERENCE_FREE
