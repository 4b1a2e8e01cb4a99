"""Reward losses against hand-computed numbers (and TRL RewardTrainer's expression as an oracle)."""

import math

import pytest
import torch
import torch.nn.functional as F

from palate.losses.reward import bradley_terry_loss, centering_penalty, plackett_luce_loss, weighted_mean


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_bradley_terry_hand_values():
    # d = 2 - 0 = 2: -log σ(2) = log(1 + e^-2) = 0.126928011
    # d = 0.5 - 1.5 = -1: -log σ(-1) = log(1 + e^1) = 1.313261687
    got = bradley_terry_loss(t(2.0, 0.5), t(0.0, 1.5))
    assert got.tolist() == pytest.approx([0.126928011, 1.313261687], abs=1e-8)


def test_margin_shifts_the_difference():
    # d = 2 - 0 - 1 = 1: log(1 + e^-1) = 0.313261687; second pair m = 0 → unchanged 0.126928011
    got = bradley_terry_loss(t(2.0, 2.0), t(0.0, 0.0), margin=t(1.0, 0.0))
    assert got.tolist() == pytest.approx([0.313261687, 0.126928011], abs=1e-8)


def test_label_smoothing_and_ties():
    # ε = 0.1, d = 2: 0.9·log(1+e^-2) + 0.1·log(1+e^2) = 0.9·0.126928011 + 0.1·2.126928011 = 0.326928011
    assert float(bradley_terry_loss(t(2.0), t(0.0), label_smoothing=0.1)) == pytest.approx(0.326928011, abs=1e-8)
    # a tie is ε = 0.5: at d = 0 the loss is log 2; it is smallest when the rewards are equal
    tie = bradley_terry_loss(t(0.3, 1.3), t(0.3, 0.3), label_smoothing=0.5)
    assert float(tie[0]) == pytest.approx(math.log(2), abs=1e-12)
    assert float(tie[1]) > float(tie[0])
    # per-example ε: only the second pair is smoothed
    mixed = bradley_terry_loss(t(2.0, 2.0), t(0.0, 0.0), label_smoothing=t(0.0, 0.1))
    assert mixed.tolist() == pytest.approx([0.126928011, 0.326928011], abs=1e-8)


def test_matches_trl_reward_trainer_expression():
    # trl/trainer/reward_trainer.py compute_loss: -logsigmoid(r_c - r_r - margin).mean()
    # plus center_rewards_coefficient * mean((r_c + r_r) ** 2)
    g = torch.Generator().manual_seed(0)
    rc, rr, m = torch.randn(16, generator=g), torch.randn(16, generator=g), torch.rand(16, generator=g)
    trl = -F.logsigmoid(rc - rr - m).mean() + 0.01 * torch.mean((rc + rr) ** 2)
    ours = weighted_mean(bradley_terry_loss(rc, rr, margin=m)) + 0.01 * centering_penalty(rc, rr).mean()
    assert float(ours) == pytest.approx(float(trl), abs=1e-6)


def test_weighted_mean_hand_values_and_ensemble_axis():
    # (1·1 + 3·2) / (1 + 3) = 1.75
    assert float(weighted_mean(t(1.0, 2.0), t(1.0, 3.0))) == pytest.approx(1.75)
    # [B, K] losses with per-example weights broadcast over heads: rows weighted 1 and 0
    losses = t(1.0, 2.0, 5.0, 7.0).reshape(2, 2)
    assert float(weighted_mean(losses, t(1.0, 0.0))) == pytest.approx(1.5)
    # per-(example, head) bootstrap weights
    w = t(2.0, 0.0, 1.0, 1.0).reshape(2, 2)
    assert float(weighted_mean(losses, w)) == pytest.approx((2 * 1 + 5 + 7) / 4)
    assert float(weighted_mean(losses, torch.zeros(2, dtype=torch.float64))) == 0.0


def test_plackett_luce_hand_value():
    # order best first s = [3, 1, 0]:
    # -( (3 - log(e^3 + e^1 + e^0)) + (1 - log(e^1 + e^0)) )
    # log(20.0855369 + 2.7182818 + 1) = log(23.8038187) = 3.1698460; log(3.7182818) = 1.3132617
    # = -((3 - 3.1698460) + (1 - 1.3132617)) = 0.4831077
    got = plackett_luce_loss(t(3.0, 1.0, 0.0)[None])
    assert float(got[0]) == pytest.approx(0.4831077, abs=1e-6)


def test_plackett_luce_with_two_equals_bradley_terry():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(8, 2, generator=g, dtype=torch.float64)
    assert torch.allclose(plackett_luce_loss(s), bradley_terry_loss(s[:, 0], s[:, 1]), atol=1e-12)


def test_plackett_luce_padding_slots_are_ignored():
    # a group of 2 padded to K=3 gives the K=2 value whatever sits in the padding slot
    full = plackett_luce_loss(t(1.0, -1.0)[None])
    for junk in (-100.0, 0.0, 50.0):
        padded = plackett_luce_loss(t(1.0, -1.0, junk)[None], mask=torch.tensor([[True, True, False]]))
        assert torch.allclose(padded, full, atol=1e-12)


def test_plackett_luce_ensemble_axis():
    s = torch.randn(4, 3, 2, dtype=torch.float64)
    both = plackett_luce_loss(s)
    assert both.shape == (4, 2)
    assert torch.allclose(both[:, 1], plackett_luce_loss(s[..., 1]))


def test_losses_decrease_when_the_chosen_reward_rises():
    rc = torch.zeros(3, requires_grad=True)
    bradley_terry_loss(rc, torch.zeros(3), margin=0.5).sum().backward()
    assert (rc.grad < 0).all()  # gradient descent raises r_chosen
