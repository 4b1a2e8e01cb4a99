import math
import warnings

import pytest
import torch

from palate.losses.policy import (
    AdaptiveKLController,
    FixedKLController,
    PolicyLoss,
    ValueLoss,
    aggregate,
    discounted_returns,
    entropy_from_logits,
    explained_variance,
    gae,
    group_advantages,
    kl_controller,
    kl_penalty,
    kl_shaped_rewards,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    value_loss,
)

LN2 = math.log(2.0)  # 0.6931472
LN1_5 = math.log(1.5)  # 0.4054651


def close(a, b, atol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=atol)


# --------------------------------------------------------------------------- masked statistics

X = torch.tensor([[1.0, 2.0, 30.0], [4.0, 50.0, 60.0]])
M = torch.tensor([[1, 1, 0], [1, 0, 0]])  # masked values {1, 2, 4}


def test_masked_mean_hand_values():
    assert close(masked_mean(X, M), 7 / 3)  # (1 + 2 + 4) / 3
    assert close(masked_mean(X, M.bool()), 7 / 3)
    assert close(masked_mean(X, M.float()), 7 / 3)
    assert close(masked_mean(X, M, dim=-1), [1.5, 4.0])  # (1+2)/2, 4/1
    assert close(masked_mean(X, M, dim=0), [2.5, 2.0, 0.0])  # (1+4)/2, 2/1, no token -> 0
    assert close(masked_mean(X, torch.zeros_like(M)), 0.0)  # divide by max(count, 1)
    # NaN / inf in padding does not leak
    assert close(masked_mean(torch.tensor([[1.0, float("nan"), float("-inf")]]), torch.tensor([[1, 0, 0]])), 1.0)


def test_masked_var_hand_values():
    # mean 7/3; deviations -4/3, -1/3, 5/3; squares 16/9 + 1/9 + 25/9 = 42/9 = 14/3
    assert close(masked_var(X, M), 7 / 3)  # unbiased: (14/3) / 2
    assert close(masked_var(X, M, unbiased=False), 14 / 9)  # biased: (14/3) / 3
    assert torch.isnan(masked_var(X, torch.tensor([[1, 0, 0], [0, 0, 0]])))  # one value: unbiased var undefined


def test_masked_whiten_hand_values_and_moments():
    w = masked_whiten(X, M)
    # (x - 7/3) / sqrt(7/3): sqrt(7/3) = 1.5275252
    # 1 -> -1.3333333/1.5275252 = -0.8728716 ; 2 -> -0.3333333/1.5275252 = -0.2182179
    # 4 ->  1.6666667/1.5275252 =  1.0910895
    assert close(w, [[-0.8728716, -0.2182179, 0.0], [1.0910895, 0.0, 0.0]])
    assert close(masked_mean(w, M), 0.0)
    assert close(masked_var(w, M), 1.0, atol=1e-5)  # unbiased var 1 (eps=1e-8)
    assert (w[~M.bool()] == 0).all()  # padding zeroed
    w_keep = masked_whiten(X, M, shift_mean=False)  # add the mean 7/3 = 2.3333333 back
    assert close(w_keep, [[1.4604617, 2.1151154, 0.0], [3.4244228, 0.0, 0.0]])


def test_masked_whiten_random_moments():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g) * 3 + 5
    mask = torch.rand(4, 9, generator=g) > 0.3
    w = masked_whiten(x, mask)
    assert close(masked_mean(w, mask), 0.0, atol=1e-5)
    assert close(masked_var(w, mask), 1.0, atol=1e-5)
    assert (w[~mask] == 0).all()


# --------------------------------------------------------------------------- KL penalty


def test_kl_penalty_kinds_hand_values():
    # logp = log 0.5, ref = log 0.25 -> d = ln 2 = 0.6931472
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert close(kl_penalty(logp, ref, "k1"), [LN2])
    assert close(kl_penalty(logp, ref), [LN2])  # default k1
    assert close(kl_penalty(logp, ref, "k2"), [0.2402265])  # 0.5 * 0.4804530
    assert close(kl_penalty(logp, ref, "k3"), [0.1931472])  # exp(-ln2) + ln2 - 1 = 0.5 + 0.6931472 - 1
    assert close(kl_penalty(logp, ref, "abs"), [LN2])
    # swapped: d = -ln 2
    assert close(kl_penalty(ref, logp, "k1"), [-LN2])  # k1 can be negative
    assert close(kl_penalty(ref, logp, "k2"), [0.2402265])
    assert close(kl_penalty(ref, logp, "k3"), [0.3068528])  # exp(ln2) - ln2 - 1 = 2 - 0.6931472 - 1
    assert close(kl_penalty(ref, logp, "abs"), [LN2])


def test_kl_penalty_shape_and_signs():
    g = torch.Generator().manual_seed(1)
    logp, ref = torch.randn(3, 7, generator=g) * 2, torch.randn(3, 7, generator=g) * 2
    for kind in ("k1", "k2", "k3", "abs"):
        assert kl_penalty(logp, ref, kind).shape == (3, 7)
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k2") >= 0).all()
    assert (kl_penalty(logp, ref, "k1") < 0).any()
    assert close(kl_penalty(logp, logp, "k3"), torch.zeros(3, 7))


def test_kl_penalty_unknown_kind():
    with pytest.raises(ValueError, match="k1.*k2.*k3.*abs"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


# --------------------------------------------------------------------------- GAE and returns


def test_gae_hand_values_1x3():
    # gamma = 0.9, lam = 0.5, gamma*lam = 0.45; r = [0, 0, 1], V = [0.5, 0.6, 0.7]
    # delta_2 = 1 + 0.9*0   - 0.7 = 0.3        (V beyond the last token = 0)
    # delta_1 = 0 + 0.9*0.7 - 0.6 = 0.03
    # delta_0 = 0 + 0.9*0.6 - 0.5 = 0.04
    # A_2 = 0.3 ; A_1 = 0.03 + 0.45*0.3 = 0.165 ; A_0 = 0.04 + 0.45*0.165 = 0.11425
    # R = A + V = [0.61425, 0.765, 1.0]
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=0.9, lam=0.5)
    assert close(adv, [[0.11425, 0.165, 0.3]])
    assert close(ret, [[0.61425, 0.765, 1.0]])


def test_gae_hand_values_right_padded_2x3():
    # row 0 as above; row 1: mask [1, 1, 0], r = [0.5, 1.0, <9>], V = [0.2, 0.3, <5>] (<> = padding garbage)
    # delta_1 = 1.0 + 0.9*0 - 0.3 = 0.7            (V beyond the last valid token = 0, not 5)
    # delta_0 = 0.5 + 0.9*0.3 - 0.2 = 0.57
    # A_1 = 0.7 ; A_0 = 0.57 + 0.45*0.7 = 0.885 ; R = [1.085, 1.0, 0]
    r = torch.tensor([[0.0, 0.0, 1.0], [0.5, 1.0, 9.0]])
    v = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.3, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(r, v, mask, gamma=0.9, lam=0.5)
    assert close(adv, [[0.11425, 0.165, 0.3], [0.885, 0.7, 0.0]])
    assert close(ret, [[0.61425, 0.765, 1.0], [1.085, 1.0, 0.0]])
    # padding does not leak: other garbage, same answer
    adv2, ret2 = gae(torch.tensor([[0.0, 0.0, 1.0], [0.5, 1.0, -100.0]]),
                     torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.3, float("nan")]]), mask, gamma=0.9, lam=0.5)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)


def test_gae_defaults_and_detached():
    # gamma = 1, lam = 0.95; r = [0, 1], V = [0.5, 0.25]
    # delta_1 = 1 - 0.25 = 0.75 ; delta_0 = 0 + 0.25 - 0.5 = -0.25 ; A_0 = -0.25 + 0.95*0.75 = 0.4625
    v = torch.tensor([[0.5, 0.25]], requires_grad=True)
    adv, ret = gae(torch.tensor([[0.0, 1.0]]), v, torch.ones(1, 2))
    assert close(adv, [[0.4625, 0.75]])
    assert close(ret, [[0.9625, 1.0]])
    assert not adv.requires_grad and not ret.requires_grad


def test_discounted_returns_hand_values():
    # gamma = 0.9: row 0 r = [1, 0, 2] -> G_2 = 2, G_1 = 0 + 0.9*2 = 1.8, G_0 = 1 + 0.9*1.8 = 2.62
    #              row 1 r = [0.5, 1.0, <7>], mask [1, 1, 0] -> G_1 = 1.0, G_0 = 0.5 + 0.9*1.0 = 1.4, G_2 = 0
    r = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert close(discounted_returns(r, mask, gamma=0.9), [[2.62, 1.8, 2.0], [1.4, 1.0, 0.0]])
    # gamma = 1 (default): plain reward-to-go: [3, 2, 2], [1.5, 1.0, 0]
    assert close(discounted_returns(r, mask), [[3.0, 2.0, 2.0], [1.5, 1.0, 0.0]])


# --------------------------------------------------------------------------- group advantages

GROUPS = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])


def test_group_advantages_grpo_hand_values():
    # row 0: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1] / (1 + 1e-4) = ±0.9999000
    # row 1: zero variance -> 0 / (0 + 1e-4) = 0
    a = group_advantages(GROUPS)
    assert close(a, [[-0.9999000, 0.0, 0.9999000], [0.0, 0.0, 0.0]])
    assert torch.isfinite(a).all()
    assert close(group_advantages(GROUPS, "grpo", scale_by_std=False), [[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    # n = 2: [0, 4] -> mean 2, unbiased std sqrt((4 + 4)/1) = 2.8284271 -> ±2/2.8285271 = ±0.7070817
    assert close(group_advantages(torch.tensor([[0.0, 4.0]])), [[-0.7070817, 0.7070817]])
    # one sample per prompt: 0, finite
    assert close(group_advantages(torch.tensor([[5.0], [1.0]])), [[0.0], [0.0]])


def test_group_advantages_rloo_hand_values():
    # row 0: 1 - (2+3)/2 = -1.5 ; 2 - (1+3)/2 = 0 ; 3 - (1+2)/2 = 1.5 ; row 1: 0
    a = group_advantages(GROUPS, "rloo")
    assert close(a, [[-1.5, 0.0, 1.5], [0.0, 0.0, 0.0]])
    assert close(group_advantages(GROUPS, "rloo", scale_by_std=False), a)  # scale_by_std ignored for rloo
    with pytest.raises(ValueError, match="rloo"):
        group_advantages(torch.tensor([[1.0], [2.0]]), "rloo")
    with pytest.raises(ValueError, match="grpo.*rloo"):
        group_advantages(GROUPS, "ppo")


def test_rloo_identity():
    g = torch.Generator().manual_seed(2)
    r = torch.randn(5, 4, generator=g)
    n = 4
    assert close(group_advantages(r, "rloo"), n / (n - 1) * (r - r.mean(dim=1, keepdim=True)))


# --------------------------------------------------------------------------- aggregation


def test_aggregate_modes_hand_values():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert close(aggregate(loss, mask), 2.5)  # (1+2+3+4) / 4
    assert close(aggregate(loss, mask, "token-mean"), 2.5)
    assert close(aggregate(loss, mask, "seq-mean-token-mean"), 3.0)  # (6/3 + 4/1) / 2
    assert close(aggregate(loss, mask, "seq-mean-token-sum"), 5.0)  # (6 + 4) / 2
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(loss, mask, "mean")


# --------------------------------------------------------------------------- PPO policy loss

# Tokens (old_logp = 0 so ratio = exp(logp)), clip_eps = 0.2:
#   a: ratio 1.5, A = +1 -> max(-1.5, -1.2) = -1.2   clipped (high side, positive advantage)
#   b: ratio 0.5, A = -1 -> max( 0.5,  0.8) =  0.8   clipped (low side, negative advantage)
#   c: ratio 1.5, A = -1 -> max( 1.5,  1.2) =  1.5   not clipped (pessimistic term is the unclipped one)
#   d: ratio 1.0, A = +2 -> max(-2.0, -2.0) = -2.0   not clipped
#   row 1 positions 1, 2: padding (ratio 10, A = 5)
PPO_LOGP = torch.tensor([[LN1_5, math.log(0.5), LN1_5], [0.0, math.log(10.0), math.log(10.0)]])
PPO_ADV = torch.tensor([[1.0, -1.0, -1.0], [2.0, 5.0, 5.0]])
PPO_MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_ppo_policy_loss_hand_values():
    logp = PPO_LOGP.clone().requires_grad_(True)
    out = ppo_policy_loss(logp, torch.zeros(2, 3), PPO_ADV, PPO_MASK, clip_eps=0.2)
    assert isinstance(out, PolicyLoss)
    assert close(out.loss, -0.225)  # (-1.2 + 0.8 + 1.5 - 2.0) / 4 = -0.9 / 4
    assert close(out.clip_fraction, 0.5)  # a and b of 4 tokens
    assert close(out.ratio_mean, 1.125)  # (1.5 + 0.5 + 1.5 + 1.0) / 4
    # (ρ-1) - ln ρ: a, c: 0.5 - 0.4054651 = 0.0945349 ; b: -0.5 + 0.6931472 = 0.1931472 ; d: 0
    # (2*0.0945349 + 0.1931472) / 4 = 0.3822170 / 4 = 0.0955542
    assert close(out.approx_kl, 0.0955542)
    for metric in (out.clip_fraction, out.approx_kl, out.ratio_mean):
        assert not metric.requires_grad and metric.dim() == 0
    out.loss.backward()
    # d/dlogp of -A*ρ is -A*ρ, divided by the 4 tokens: c: 1.5/4 = 0.375, d: -2/4 = -0.5; clipped a, b: 0
    assert close(logp.grad, [[0.0, 0.0, 0.375], [-0.5, 0.0, 0.0]])


def test_ppo_policy_loss_modes_and_clip_higher():
    old = torch.zeros(2, 3)
    # seq-mean-token-mean: row 0 (-1.2 + 0.8 + 1.5)/3 = 0.3666667, row 1 -2.0 -> (0.3666667 - 2)/2 = -0.8166667
    out = ppo_policy_loss(PPO_LOGP, old, PPO_ADV, PPO_MASK, mode="seq-mean-token-mean")
    assert close(out.loss, -0.8166667)
    # clip-higher 0.28: a -> -1 * clip(1.5, 0.8, 1.28) = -1.28 ; (-1.28 + 0.8 + 1.5 - 2.0) / 4 = -0.245
    out = ppo_policy_loss(PPO_LOGP, old, PPO_ADV, PPO_MASK, clip_eps=0.2, clip_eps_high=0.28)
    assert close(out.loss, -0.245)
    assert close(out.clip_fraction, 0.5)
    # clip-higher 0.6 leaves a (ratio 1.5) unclipped: (-1.5 + 0.8 + 1.5 - 2.0) / 4 = -0.3, only b clipped
    out = ppo_policy_loss(PPO_LOGP, old, PPO_ADV, PPO_MASK, clip_eps=0.2, clip_eps_high=0.6)
    assert close(out.loss, -0.3)
    assert close(out.clip_fraction, 0.25)


def test_ppo_policy_loss_on_policy_is_minus_mean_advantage():
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(2, 5, generator=g)
    adv = torch.randn(2, 5, generator=g)
    mask = torch.ones(2, 5)
    out = ppo_policy_loss(logp, logp, adv, mask)
    assert close(out.loss, -adv.mean())
    assert close(out.clip_fraction, 0.0) and close(out.approx_kl, 0.0) and close(out.ratio_mean, 1.0)


# --------------------------------------------------------------------------- value loss


def test_value_loss_hand_values():
    # clip 0.2:
    #   t1: V 1.0, V_old 0.5, R 1.0 -> V_clip 0.7: (V-R)^2 = 0,    (V_clip-R)^2 = 0.09 -> 0.09 clipped
    #   t2: V 0.6, V_old 0.5, R 0.0 -> V_clip 0.6: 0.36,           0.36               -> 0.36 not clipped
    #   t3: V 0.0, V_old 0.5, R 1.0 -> V_clip 0.3: 1.0,            0.49               -> 1.0  not clipped
    #   t4: padding
    v = torch.tensor([[1.0, 0.6, 0.0, 100.0]])
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    ret = torch.tensor([[1.0, 0.0, 1.0, -100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = value_loss(v, old, ret, mask, clip=0.2)
    assert isinstance(out, ValueLoss)
    assert close(out.loss, 0.2416667)  # 0.5 * (0.09 + 0.36 + 1.0) / 3 = 0.5 * 1.45 / 3
    assert close(out.clip_fraction, 1 / 3)
    out = value_loss(v, old, ret, mask, clip=None)
    assert close(out.loss, 0.2266667)  # 0.5 * (0 + 0.36 + 1.0) / 3
    assert close(out.clip_fraction, 0.0)


# --------------------------------------------------------------------------- diagnostics


def test_entropy_from_logits_hand_values():
    assert close(entropy_from_logits(torch.zeros(2, 5)), torch.full((2,), math.log(5)))  # uniform: ln 5 = 1.6094379
    # p = (1/2, 1/4, 1/4): H = 0.5*ln2 + 2*0.25*ln4 = 0.3465736 + 0.6931472 = 1.0397208
    p = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    assert close(entropy_from_logits(p), 1.0397208)
    assert close(entropy_from_logits(p + 1000.0), 1.0397208, atol=1e-4)  # shift-invariant, no overflow
    assert entropy_from_logits(torch.zeros(2, 3, 7)).shape == (2, 3)


def test_entropy_from_logits_with_banned_tokens_has_finite_grad():
    logits = torch.tensor([[0.0, 0.0, float("-inf")], [3.0, float("-inf"), float("-inf")]], requires_grad=True)
    h = entropy_from_logits(logits)
    assert close(h, [LN2, 0.0])
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_explained_variance():
    ret = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert close(explained_variance(ret, ret, mask), 1.0)  # perfect critic
    assert close(explained_variance(torch.zeros_like(ret), ret, mask), 0.0)  # Var(R - 0) / Var(R) = 1
    # V = [1, 2, 2]: R - V = [0, 0, 1], unbiased var (1/9 + 1/9 + 4/9)/2 = 1/3 ; Var(R) = 1 -> 1 - 1/3
    assert close(explained_variance(torch.tensor([[1.0, 2.0, 2.0, -5.0]]), ret, mask), 2 / 3)
    assert torch.isnan(explained_variance(torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1, 3)))


# --------------------------------------------------------------------------- KL controllers


def test_fixed_kl_controller():
    c = FixedKLController(0.05)
    c.update(100.0, 1000)
    assert c.value == 0.05
    c2 = FixedKLController(1.0)
    c2.load_state_dict(c.state_dict())
    assert c2.value == 0.05


def test_adaptive_kl_controller_hand_values():
    # target 6, horizon 10000, n_steps 1000 -> mult = 1 + e * 0.1
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(7.2, 1000)  # e = 7.2/6 - 1 = 0.2 -> x1.02
    assert c.value == pytest.approx(0.102)
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(6.6, 1000)  # e = 6.6/6 - 1 = 0.1 -> x1.01
    assert c.value == pytest.approx(0.101)
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(5.4, 1000)  # e = 5.4/6 - 1 = -0.1 -> x0.99
    assert c.value == pytest.approx(0.099)
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(60.0, 1000)  # e = 9 clipped to 0.2 -> x1.02
    assert c.value == pytest.approx(0.102)
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(0.0, 1000)  # e = -1 clipped to -0.2 -> x0.98
    assert c.value == pytest.approx(0.098)
    c.update(0.0, 1000)  # compounding: 0.098 * 0.98 = 0.09604
    assert c.value == pytest.approx(0.09604)


def test_adaptive_kl_controller_state_dict_roundtrip():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(7.2, 1000)
    c.update(5.4, 500)  # 0.102 * (1 - 0.1*0.05) = 0.102 * 0.995 = 0.10149
    assert c.value == pytest.approx(0.10149)
    c2 = AdaptiveKLController(0.5, target=6.0, horizon=10000)
    c2.load_state_dict(c.state_dict())
    assert c2.value == c.value
    c.update(9.0, 100)
    c2.update(9.0, 100)
    assert c2.value == c.value


def test_kl_controller_factory():
    assert isinstance(kl_controller("fixed", 0.1), FixedKLController)
    a = kl_controller("adaptive", 0.2, target=6.0, horizon=500)
    assert isinstance(a, AdaptiveKLController) and a.value == 0.2 and a.horizon == 500
    with pytest.raises(ValueError, match="target"):
        kl_controller("adaptive", 0.2)
    with pytest.raises(ValueError, match="fixed"):
        kl_controller("linear", 0.2)


# --------------------------------------------------------------------------- TRL 1.16.0 oracles


@pytest.fixture(scope="module")
def trl_utils():
    pytest.importorskip("trl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.trainer import utils
    return utils


def test_entropy_matches_trl(trl_utils):
    # trl/trainer/utils.py entropy_from_logits (chunked -(p * log p).sum(-1))
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    assert torch.allclose(entropy_from_logits(logits), trl_utils.entropy_from_logits(logits, chunk_size=4), atol=1e-5)


def test_grpo_advantages_match_trl_formula(trl_utils):
    # trl/trainer/grpo_trainer.py GRPOTrainer._generate_and_score_completions, scale_rewards="group":
    #   (rewards - nanmean(group)) / (nanstd(group) + 1e-4), nanstd with Bessel's correction
    g = torch.Generator().manual_seed(5)
    r = torch.cat([torch.randn(4, 6, generator=g), torch.zeros(1, 6)])
    trl_adv = (r - r.nanmean(dim=1, keepdim=True)) / (trl_utils.nanstd(r, dim=1, keepdim=True) + 1e-4)
    assert torch.allclose(group_advantages(r, "grpo"), trl_adv, atol=1e-6)
    assert torch.allclose(masked_var(r[0], torch.ones(6)).sqrt(), trl_utils.nanstd(r[0]), atol=1e-6)


def test_kl_shaped_rewards_hand_values():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.5, 0.0]])
    score = torch.tensor([1.0, 2.0])
    # r_t = −β·KL_t, plus the score on each response's last token (β = 0.5)
    assert close(kl_shaped_rewards(score, kl, mask, 0.5), [[-0.05, -0.1, 0.85], [-0.25, 2.25, 0.0]])
    assert close(kl_shaped_rewards(score, None, mask, 0.5), [[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    assert close(kl_shaped_rewards(score, kl, mask.bool(), 0.0), [[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
