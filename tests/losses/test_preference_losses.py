"""DPO-family losses against hand-computed numbers, and against TRL 1.16.0's own code as an oracle.

The TRL oracles call TRL's real loss code: ``CPOTrainer.cpo_loss`` and ``ORPOTrainer.odds_ratio_loss``
directly, and ``DPOTrainer._compute_loss`` / ``KTOTrainer._compute_loss`` with a fake language model
that returns fixed per-token log-probs (those methods only read ``outputs.log_probs`` and a few metric
fields), on trainers made with ``object.__new__`` and the handful of attributes they read set by hand.
"""

import math
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from palate.losses.preference import (
    PREFERENCE_LOSSES,
    KTOLoss,
    PairLoss,
    cdpo_loss,
    dpo_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    requires_reference,
    robust_dpo_loss,
    rpo_loss,
    simpo_loss,
)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def softplus(x):  # −log σ(−x) = log(1 + eˣ), written out for the hand computations
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------- hand-computed values

# Two pairs used by the reference-based losses:
#   pair 0: π_c=-10, π_r=-12, ref_c=-11, ref_r=-11 → h = (1) − (−1) = 2
#   pair 1: π_c=-5,  π_r=-4,  ref_c=-5,  ref_r=-5  → h = 0 − 1 = −1
PAIRS = (t(-10.0, -5.0), t(-12.0, -4.0), t(-11.0, -5.0), t(-11.0, -5.0))


def test_dpo_hand_values():
    out = dpo_loss(*PAIRS, beta=0.1)
    assert isinstance(out, PairLoss)
    # −log σ(0.2) = log(1 + e^−0.2) = log(1.818730753) = 0.598138869
    # −log σ(−0.1) = log(1 + e^0.1) = log(2.105170918) = 0.744396660
    assert out.losses.tolist() == pytest.approx([0.598138869, 0.744396660], abs=1e-8)
    # rewards β·(π − ref): chosen 0.1·1, 0.1·0; rejected 0.1·(−1), 0.1·1
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.1, 0.1])


def test_cdpo_hand_value():
    # βh = 0.2, ε = 0.1: 0.9·log(1 + e^−0.2) + 0.1·log(1 + e^0.2) = 0.9·0.598138869 + 0.1·0.798138869 = 0.618138869
    # βh = −0.1:         0.9·log(1 + e^0.1) + 0.1·log(1 + e^−0.1) = 0.9·0.744396660 + 0.1·0.644396660 = 0.734396660
    out = cdpo_loss(*PAIRS, beta=0.1, label_smoothing=0.1)
    assert out.losses.tolist() == pytest.approx([0.618138869, 0.734396660], abs=1e-8)
    # ε = 0 is DPO
    assert torch.allclose(cdpo_loss(*PAIRS, label_smoothing=0.0).losses, dpo_loss(*PAIRS).losses)


def test_robust_dpo_hand_value():
    # (0.9·0.598138869 − 0.1·0.798138869) / 0.8 = (0.538324982 − 0.079813887) / 0.8 = 0.573138869
    # (0.9·0.744396660 − 0.1·0.644396660) / 0.8 = (0.669956994 − 0.064439666) / 0.8 = 0.756896660
    out = robust_dpo_loss(*PAIRS, beta=0.1, label_smoothing=0.1)
    assert out.losses.tolist() == pytest.approx([0.573138869, 0.756896660], abs=1e-8)
    with pytest.raises(ValueError, match="label_smoothing"):
        robust_dpo_loss(*PAIRS, label_smoothing=0.5)


def test_ipo_hand_value():
    # β = 0.1 → 1/(2β) = 5: (2 − 5)² = 9 and (−1 − 5)² = 36
    assert ipo_loss(*PAIRS, beta=0.1).losses.tolist() == pytest.approx([9.0, 36.0])
    # per-token averages, as the recipe passes them: h = (−1.0 + 1.2) − (−1.5 + 1.2) = 0.5; β = 0.5 → (0.5 − 1)² = 0.25
    out = ipo_loss(t(-1.0), t(-1.5), t(-1.2), t(-1.2), beta=0.5)
    assert float(out.losses[0]) == pytest.approx(0.25)
    assert float(out.chosen_rewards[0]) == pytest.approx(0.5 * 0.2)


def test_rpo_hand_value():
    # DPO 0.598138869 + α·NLL = 0.598138869 + 0.5·2.0 = 1.598138869; pair 1: 0.744396660 + 0.5·1.0 = 1.244396660
    out = rpo_loss(*PAIRS, chosen_nll=t(2.0, 1.0), beta=0.1, alpha=0.5)
    assert out.losses.tolist() == pytest.approx([1.598138869, 1.244396660], abs=1e-8)


def test_simpo_hand_value():
    # avg_c = −6/3 = −2, avg_r = −12/4 = −3; β = 2, γ = 0.5: z = 2·(−2) − 2·(−3) − 0.5 = 1.5
    # loss = log(1 + e^−1.5) = log(1.223130160) = 0.201413277; rewards β·avg = −4, −6
    out = simpo_loss(t(-6.0), t(-12.0), t(3.0), t(4.0), beta=2.0, gamma=0.5)
    assert float(out.losses[0]) == pytest.approx(0.201413277, abs=1e-8)
    assert float(out.chosen_rewards[0]) == pytest.approx(-4.0)
    assert float(out.rejected_rewards[0]) == pytest.approx(-6.0)


def test_orpo_hand_value():
    # avg_c = −2/2 = −1, avg_r = −6/3 = −2
    # log odds_c = −1 − log(1 − e^−1) = −1 − log(0.632120559) = −1 + 0.458675145 = −0.541324855
    # log odds_r = −2 − log(1 − e^−2) = −2 − log(0.864664717) = −2 + 0.145413457 = −1.854586543
    # difference 1.313261688; loss = NLL + β·log(1 + e^−1.313261688) = 1.0 + 0.1·log(1.268941421)
    #                                 = 1.0 + 0.1·0.238183026 = 1.023818303
    lo_c = -1 - math.log(1 - math.exp(-1))
    lo_r = -2 - math.log(1 - math.exp(-2))
    assert lo_c - lo_r == pytest.approx(1.313261688, abs=1e-8)
    expected = 1.0 + 0.1 * softplus(-(lo_c - lo_r))
    assert expected == pytest.approx(1.023818303, abs=1e-9)
    out = orpo_loss(t(-2.0), t(-6.0), t(2.0), t(3.0), chosen_nll=t(1.0), beta=0.1)
    assert float(out.losses[0]) == pytest.approx(expected, abs=1e-10)
    assert float(out.chosen_rewards[0]) == pytest.approx(-0.1)
    assert float(out.rejected_rewards[0]) == pytest.approx(-0.2)


def test_kto_hand_values():
    # r = π − ref = [1, −1], z₀ = 0.5, β = 0.1
    # desirable:   1 − σ(0.1·(1 − 0.5)) = 1 − σ(0.05) = 0.487502604
    # undesirable: w_u·(1 − σ(0.1·(0.5 + 1))) = 2·(1 − σ(0.15)) = 2/(1 + e^0.15) = 2/2.161834243 = 0.925140309
    out = kto_loss(t(-10.0, -10.0), t(-11.0, -9.0), torch.tensor([True, False]), torch.tensor(0.5, dtype=torch.float64),
                   beta=0.1, desirable_weight=1.0, undesirable_weight=2.0)
    assert isinstance(out, KTOLoss)
    assert out.losses.tolist() == pytest.approx([0.487502604, 0.925140309], abs=1e-8)
    assert out.losses.tolist() == pytest.approx([1 - sigmoid(0.05), 2 * (1 - sigmoid(0.15))], abs=1e-12)
    assert out.rewards.tolist() == pytest.approx([0.1, -0.1])


def test_kto_reference_point_hand_values():
    # mean([−5 + 6, −7 + 7]) = mean([1, 0]) = 0.5
    z0 = kto_reference_point(t(-5.0, -7.0), t(-6.0, -7.0))
    assert z0.shape == () and float(z0) == pytest.approx(0.5)
    # a negative estimate is clamped to 0: mean([−1, −2]) = −1.5 → 0
    assert float(kto_reference_point(t(-7.0, -9.0), t(-6.0, -7.0))) == 0.0
    # detached: no gradient flows into the policy through z₀
    pol = t(-5.0, -7.0).requires_grad_()
    assert not kto_reference_point(pol, t(-6.0, -7.0)).requires_grad


def test_requires_reference():
    assert [n for n in PREFERENCE_LOSSES if not requires_reference(n)] == ["simpo", "orpo"]
    assert requires_reference("dpo") and requires_reference("ipo")
    with pytest.raises(ValueError, match="unknown preference loss"):
        requires_reference("kto-typo")


# ---------------------------------------------------------------- gradients, shapes, edge cases


def test_dpo_gradient_is_minus_beta_sigmoid_minus_beta_h():
    # ∂h/∂π_c = 1 and d/dx[−log σ(x)] = −(1 − σ(x)) = −σ(−x), so ∂loss/∂π_c = −β·σ(−βh), per example
    beta = 0.1
    pc = t(-10.0, -5.0).requires_grad_()
    out = dpo_loss(pc, *PAIRS[1:], beta=beta)
    out.losses.sum().backward()
    expected = [-beta * sigmoid(-beta * 2.0), -beta * sigmoid(-beta * -1.0)]  # h = 2, −1
    assert pc.grad.tolist() == pytest.approx(expected, abs=1e-12)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def _random_args(name, b, g):
    def r(scale=10.0):
        return -scale * torch.rand(b, generator=g, dtype=torch.float64)

    lengths = lambda: torch.randint(1, 20, (b,), generator=g).double()  # noqa: E731
    if name in ("simpo", "orpo"):
        args = [r(), r(), lengths(), lengths()]
        return args + ([r(2.0)] if name == "orpo" else [])
    return [r(), r(), r(), r()] + ([r(2.0)] if name == "rpo" else [])


@pytest.mark.parametrize("name", list(PREFERENCE_LOSSES))
def test_shapes_in_and_out(name):
    g = torch.Generator().manual_seed(3)
    args = _random_args(name, 5, g)
    args[0].requires_grad_()
    out = PREFERENCE_LOSSES[name](*args)
    assert isinstance(out, PairLoss)
    assert [x.shape for x in out] == [torch.Size([5])] * 3
    assert out.losses.requires_grad and torch.isfinite(out.losses).all()
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    out.losses.sum().backward()
    assert torch.isfinite(args[0].grad).all() and args[0].grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orpo_near_certain_response_stays_finite(dtype):
    # avg log-prob −1e-8 (p ≈ 1) and exactly 0.0 (float32 log-probs of a sure token): finite loss and gradient
    pc = torch.tensor([-1e-8, 0.0], dtype=dtype, requires_grad=True)
    ones = torch.ones(2, dtype=dtype)
    out = orpo_loss(pc, torch.tensor([-2.0, -2.0], dtype=dtype), ones, ones, chosen_nll=torch.zeros(2, dtype=dtype))
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(pc.grad).all()


def test_orpo_log_odds_are_accurate_near_zero():
    # avg_c = −1e-12, avg_r = −4e-12 (float64). log(1 − eˣ) = log(−x) + x/2 + O(x²), so
    # log odds_c − log odds_r = (−1e-12 + 4e-12) − (log 1e-12 − 0.5e-12) + (log 4e-12 − 2e-12) = log 4 + 1.5e-12
    # loss = β·log(1 + e^−log 4) = 0.1·log(1.25) = 0.022314355 (to ~1e-13). A naive log1p(−exp(x)) here
    # rounds 1 − e^−1e-12 to ~1e-4 relative error and misses this.
    out = orpo_loss(t(-1e-12), t(-4e-12), t(1.0), t(1.0), chosen_nll=t(0.0), beta=0.1)
    assert float(out.losses[0]) == pytest.approx(0.1 * math.log(1.25), rel=1e-9)
    assert float(out.losses[0]) == pytest.approx(0.022314355, abs=1e-9)


def test_kto_all_desirable():
    g = torch.Generator().manual_seed(4)
    pol, ref = -10 * torch.rand(6, generator=g), -10 * torch.rand(6, generator=g)
    z0 = kto_reference_point(-10 * torch.rand(6, generator=g), -10 * torch.rand(6, generator=g))
    out = kto_loss(pol, ref, torch.ones(6, dtype=torch.bool), z0, beta=0.1)
    assert out.losses.shape == (6,) and out.rewards.shape == (6,)
    assert torch.allclose(out.losses, 1 - torch.sigmoid(0.1 * (pol - ref - z0)))
    none = kto_loss(pol, ref, torch.zeros(6, dtype=torch.bool), z0, beta=0.1)
    assert torch.allclose(none.losses, 1 - torch.sigmoid(0.1 * (z0 - (pol - ref))))


# ---------------------------------------------------------------- TRL 1.16.0 as an oracle


@pytest.fixture(scope="module")
def trl():
    pytest.importorskip("trl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRLExperimentalWarning on trl.experimental imports
        from trl import DPOTrainer, KTOTrainer
        from trl.experimental.cpo import CPOTrainer
        from trl.experimental.orpo import ORPOTrainer
    return SimpleNamespace(DPOTrainer=DPOTrainer, KTOTrainer=KTOTrainer, CPOTrainer=CPOTrainer, ORPOTrainer=ORPOTrainer)


_ACCEL = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)


class _FakeLM(torch.nn.Module):
    """Stands in for the model in TRL's fused-LM-head call: log_probs[b, t] = table[label at t+1] on
    completion tokens (labels ≠ −100), 0 elsewhere, which is what the real fused head returns."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.train(False)

    def forward(self, *, labels, **_):
        shifted = labels[:, 1:]
        logps = torch.where(shifted != -100, self.table[shifted.clamp(min=0)], torch.zeros((), dtype=self.table.dtype))
        zeros = torch.zeros_like(logps)
        return SimpleNamespace(log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def _bare(cls, **attrs):
    obj = object.__new__(cls)
    obj.__dict__.update(accelerator=_ACCEL, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0,
                        _tp_size=1, aux_loss_enabled=False, **attrs)
    return obj


def _sequences(n, g, vocab=50, width=12, lengths=None):
    """n prompt+completion rows: prompt of 2–4 tokens, completion of the given (or random 1–7) lengths,
    right padding. Returns input_ids, attention_mask, completion_mask, completion lengths."""
    ids = torch.randint(0, vocab, (n, width), generator=g)
    attn = torch.zeros(n, width, dtype=torch.long)
    comp = torch.zeros(n, width, dtype=torch.long)
    lens = lengths if lengths is not None else torch.randint(1, 8, (n,), generator=g)
    for i in range(n):
        p = int(torch.randint(2, 5, (1,), generator=g))
        attn[i, : p + int(lens[i])] = 1
        comp[i, p : p + int(lens[i])] = 1
    return ids, attn, comp, lens.double()


def _summed(table, ids, comp):
    """Independent of the fake model: Σ table[token] over each row's completion tokens."""
    return (table[ids] * comp).sum(dim=1)


def _trl_dpo(trl, g, b, loss_types, beta, label_smoothing=0.0, loss_weights=None, chosen_lengths=None):
    """Runs TRL's DPOTrainer._compute_loss on a random batch; returns (TRL mean loss, TRL metrics, our inputs)."""
    table = -5 * torch.rand(50, generator=g, dtype=torch.float64)
    lengths = None if chosen_lengths is None else torch.cat([chosen_lengths, torch.randint(1, 8, (b,), generator=g)])
    ids, attn, comp, lens = _sequences(2 * b, g, lengths=lengths)
    ref = -20 * torch.rand(2 * b, generator=g, dtype=torch.float64)
    fake = _FakeLM(table)
    trainer = _bare(
        trl.DPOTrainer, model=fake, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=loss_types, loss_weights=loss_weights or [1.0] * len(loss_types), beta=beta,
        label_smoothing=label_smoothing, use_weighting=False, args=SimpleNamespace(),
    )
    inputs = {"input_ids": ids, "attention_mask": attn, "completion_mask": comp,
              "ref_chosen_logps": ref[:b], "ref_rejected_logps": ref[b:]}
    loss = trainer._compute_loss(fake, inputs, return_outputs=False)
    logps = _summed(table, ids, comp)
    ours = SimpleNamespace(pc=logps[:b], pr=logps[b:], rc=ref[:b], rr=ref[b:], len_c=lens[:b], len_r=lens[b:],
                           table=table, ids=ids, comp=comp)
    return float(loss), trainer._metrics["eval"], ours


def test_dpo_matches_trl_sigmoid(trl):
    # trl/trainer/dpo_trainer.py DPOTrainer._compute_loss, loss_type="sigmoid"
    g = torch.Generator().manual_seed(10)
    trl_loss, metrics, o = _trl_dpo(trl, g, 8, ["sigmoid"], beta=0.1)
    out = dpo_loss(o.pc, o.pr, o.rc, o.rr, beta=0.1)
    assert float(out.losses.mean()) == pytest.approx(trl_loss, abs=1e-6)
    assert float(out.chosen_rewards.mean()) == pytest.approx(metrics["rewards/chosen"][-1], abs=1e-6)
    assert float(out.rejected_rewards.mean()) == pytest.approx(metrics["rewards/rejected"][-1], abs=1e-6)


def test_cdpo_matches_trl_label_smoothed_sigmoid(trl):
    # TRL 1.16.0 DPOTrainer ignores label_smoothing for loss_type="sigmoid" (plain DPO, not cDPO) ...
    g = torch.Generator().manual_seed(11)
    trl_loss, _, o = _trl_dpo(trl, g, 8, ["sigmoid"], beta=0.1, label_smoothing=0.2)
    assert float(dpo_loss(o.pc, o.pr, o.rc, o.rr).losses.mean()) == pytest.approx(trl_loss, abs=1e-6)
    assert float(cdpo_loss(o.pc, o.pr, o.rc, o.rr, label_smoothing=0.2).losses.mean()) != pytest.approx(trl_loss, abs=1e-3)
    # ... the cDPO expression lives on in trl/experimental/cpo/cpo_trainer.py CPOTrainer.cpo_loss ("sigmoid"),
    # which is reference-free: feeding it the log-ratios π − ref makes its logits exactly h.
    cpo = _bare(trl.CPOTrainer, alpha=0.0, beta=0.1, loss_type="sigmoid", label_smoothing=0.2)
    trl_losses, _, _ = cpo.cpo_loss(o.pc - o.rc, o.pr - o.rr)
    ours = cdpo_loss(o.pc, o.pr, o.rc, o.rr, beta=0.1, label_smoothing=0.2).losses
    assert torch.allclose(ours, trl_losses, atol=1e-6)


def test_robust_matches_trl(trl):
    # trl/trainer/dpo_trainer.py DPOTrainer._compute_loss, loss_type="robust"
    g = torch.Generator().manual_seed(12)
    trl_loss, _, o = _trl_dpo(trl, g, 8, ["robust"], beta=0.1, label_smoothing=0.1)
    ours = robust_dpo_loss(o.pc, o.pr, o.rc, o.rr, beta=0.1, label_smoothing=0.1).losses.mean()
    assert float(ours) == pytest.approx(trl_loss, abs=1e-6)


def test_ipo_matches_trl_with_average_logps(trl):
    # trl/trainer/dpo_trainer.py DPOTrainer._compute_loss, loss_type="ipo": log-ratios divided by the
    # completion token count; palate gets the per-token averages of policy and reference.
    g = torch.Generator().manual_seed(13)
    trl_loss, _, o = _trl_dpo(trl, g, 8, ["ipo"], beta=0.5)
    ours = ipo_loss(o.pc / o.len_c, o.pr / o.len_r, o.rc / o.len_c, o.rr / o.len_r, beta=0.5).losses.mean()
    assert float(ours) == pytest.approx(trl_loss, abs=1e-6)
    # with summed log-probs it would be a different (length-scaled) loss
    assert float(ipo_loss(o.pc, o.pr, o.rc, o.rr, beta=0.5).losses.mean()) != pytest.approx(trl_loss, abs=1e-3)


def test_rpo_matches_trl_sigmoid_plus_sft(trl):
    # TRL 1.16.0 RPO = loss_type=["sigmoid", "sft"], loss_weights=[1, α] (DPOTrainer._compute_loss); its "sft"
    # term is a token mean over all chosen tokens, equal to the mean of per-example averages when the chosen
    # completions have the same length, as here.
    g = torch.Generator().manual_seed(14)
    alpha, b = 0.7, 8
    trl_loss, _, o = _trl_dpo(trl, g, b, ["sigmoid", "sft"], beta=0.1, loss_weights=[1.0, alpha],
                              chosen_lengths=torch.full((b,), 5))
    chosen_nll = -o.pc / o.len_c
    ours = rpo_loss(o.pc, o.pr, o.rc, o.rr, chosen_nll, beta=0.1, alpha=alpha).losses.mean()
    assert float(ours) == pytest.approx(trl_loss, abs=1e-6)


def test_simpo_matches_trl_cpo_simpo(trl):
    # trl/experimental/cpo/cpo_trainer.py: CPOTrainer.get_batch_logps(average_log_prob=True) for the averages
    # (loss_type "simpo") and CPOTrainer.cpo_loss with loss_type="simpo", simpo_gamma = palate's gamma.
    g = torch.Generator().manual_seed(15)
    b, width, vocab = 6, 10, 11
    logits = torch.randn(2 * b, width, vocab, generator=g, dtype=torch.float64)
    labels = torch.randint(0, vocab, (2 * b, width), generator=g)
    for i in range(2 * b):  # prompt of 3 tokens, then a completion of random length, then padding
        labels[i, :3] = -100
        labels[i, 3 + int(torch.randint(1, width - 3, (1,), generator=g)):] = -100
    avg = trl.CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    summed = trl.CPOTrainer.get_batch_logps(logits, labels, average_log_prob=False)
    lengths = (labels[:, 1:] != -100).sum(dim=1).double()
    cpo = _bare(trl.CPOTrainer, alpha=0.0, beta=2.5, loss_type="simpo", simpo_gamma=1.375, label_smoothing=0.0)
    trl_losses, trl_cr, trl_rr = cpo.cpo_loss(avg[:b], avg[b:])
    out = simpo_loss(summed[:b], summed[b:], lengths[:b], lengths[b:], beta=2.5, gamma=1.375)
    assert torch.allclose(out.losses, trl_losses, atol=1e-6)
    assert torch.allclose(out.chosen_rewards, trl_cr, atol=1e-6)
    assert torch.allclose(out.rejected_rewards, trl_rr, atol=1e-6)


def test_orpo_matches_trl_odds_ratio_loss(trl):
    # trl/experimental/orpo/orpo_trainer.py ORPOTrainer.odds_ratio_loss returns β·log σ(log odds ratio) per
    # example (get_batch_loss_metrics then takes nll − mean of it); inputs are average log-probs, cast to float32.
    g = torch.Generator().manual_seed(16)
    b = 8
    lens_c, lens_r = torch.randint(1, 30, (b,), generator=g).float(), torch.randint(1, 30, (b,), generator=g).float()
    avg_c, avg_r = -3 * torch.rand(b, generator=g), -3 * torch.rand(b, generator=g)
    nll = 2 * torch.rand(b, generator=g)
    orpo = _bare(trl.ORPOTrainer, beta=0.25)
    trl_losses, trl_cr, trl_rr, _, _ = orpo.odds_ratio_loss(avg_c, avg_r)
    out = orpo_loss(avg_c * lens_c, avg_r * lens_r, lens_c, lens_r, chosen_nll=nll, beta=0.25)
    assert torch.allclose(out.losses, nll - trl_losses, atol=1e-6)
    assert torch.allclose(out.chosen_rewards, trl_cr, atol=1e-6)
    assert torch.allclose(out.rejected_rewards, trl_rr, atol=1e-6)


@pytest.mark.parametrize("labels", [[True, False, True, True, False, False, True], [True] * 7])
def test_kto_matches_trl(trl, labels):
    # trl/trainer/kto_trainer.py KTOTrainer._compute_loss (loss_type="kto", precomputed reference log-probs),
    # KL term from the mismatched "KL_" sequences: z₀ = clamp(mean(KL_logps − ref_KL_logps), min=0).
    g = torch.Generator().manual_seed(17)
    b = len(labels)
    table = -5 * torch.rand(50, generator=g, dtype=torch.float64)
    ids, attn, comp, _ = _sequences(b, g)
    kl_ids, kl_attn, kl_comp, _ = _sequences(b, g)
    ref = -15 * torch.rand(b, generator=g, dtype=torch.float64)
    ref_kl = -25 - 10 * torch.rand(b, generator=g, dtype=torch.float64)  # below the policy's, so z₀ > 0
    fake = _FakeLM(table)
    kto = _bare(trl.KTOTrainer, model=fake, calculate_KL=True, precompute_ref_logps=True, loss_type="kto",
                beta=0.1, desirable_weight=1.3, undesirable_weight=0.8)
    desirable = torch.tensor(labels)
    batch = {"label": desirable, "input_ids": ids, "attention_mask": attn, "completion_mask": comp,
             "KL_input_ids": kl_ids, "KL_attention_mask": kl_attn, "KL_completion_mask": kl_comp,
             "ref_logps": ref, "ref_KL_logps": ref_kl}
    trl_loss = float(kto._compute_loss(fake, batch, return_outputs=False))

    z0 = kto_reference_point(_summed(table, kl_ids, kl_comp), ref_kl)
    assert float(z0) > 0
    assert float(z0) == pytest.approx(kto._metrics["eval"]["kl"][-1], abs=1e-6)
    out = kto_loss(_summed(table, ids, comp), ref, desirable, z0, beta=0.1, desirable_weight=1.3, undesirable_weight=0.8)
    assert float(out.losses.mean()) == pytest.approx(trl_loss, abs=1e-6)
    assert float(out.rewards[desirable].mean()) == pytest.approx(kto._metrics["eval"]["rewards/chosen"][-1], abs=1e-6)
