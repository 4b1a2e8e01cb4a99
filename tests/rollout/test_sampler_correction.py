"""A rollout engine that is not the trainer (rollout.backend=vllm): the truncated importance-weight
correction against hand-computed numbers, the weighted PPO loss, and the glue in sample_rollout (the
trainer recomputes π_old, the engine's log-probs give the weights), driven by a test double in place of
vLLM, which cannot run here (no GPU, not installed)."""

import math

import pytest
import torch

from palate.config import ConfigError
from palate.losses.policy import ppo_policy_loss, sampler_correction
from palate.rollout.sampling import RolloutConfig, sample_rollout
from palate.rollout.generate import rollout


def test_token_level_weights_truncate_at_the_cap():
    trainer = torch.log(torch.tensor([[0.5, 0.2, 0.3]]))
    sampler = torch.log(torch.tensor([[0.25, 0.4, 0.9]]))
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    c = sampler_correction(trainer, sampler, mask, cap=1.5)
    # ratios π_trainer/π_sampler: 0.5/0.25 = 2 -> capped at 1.5; 0.2/0.4 = 0.5; padding 0
    assert torch.allclose(c.weights, torch.tensor([[1.5, 0.5, 0.0]]))
    assert float(c.weight_mean) == pytest.approx(1.0)
    assert float(c.truncated_fraction) == pytest.approx(0.5)
    # k3 = (ρ − 1) − log ρ: (2 − 1) − ln 2 = 0.306853; (0.5 − 1) − ln 0.5 = 0.193147; mean 0.25
    assert float(c.mismatch_kl) == pytest.approx(0.25, abs=1e-6)


def test_sequence_level_weights_use_the_product_of_ratios():
    trainer = torch.log(torch.tensor([[0.5, 0.2], [0.6, 0.3]]))
    sampler = torch.log(torch.tensor([[0.25, 0.4], [0.2, 0.3]]))
    mask = torch.ones(2, 2)
    c = sampler_correction(trainer, sampler, mask, cap=2.5, level="sequence")
    # row 0: 2 × 0.5 = 1 for both tokens; row 1: 3 × 1 = 3 -> capped at 2.5
    assert torch.allclose(c.weights, torch.tensor([[1.0, 1.0], [2.5, 2.5]]))
    assert float(c.truncated_fraction) == pytest.approx(0.5)
    same = sampler_correction(trainer, trainer, mask)
    assert torch.equal(same.weights, torch.ones(2, 2)) and float(same.mismatch_kl) == 0.0
    with pytest.raises(ValueError, match="level"):
        sampler_correction(trainer, sampler, mask, level="batch")


def test_weighted_ppo_loss_by_hand():
    logp = torch.zeros(1, 2, requires_grad=True)
    old = torch.zeros(1, 2)  # ρ = 1, inside the clip range
    adv = torch.ones(1, 2)
    w = torch.tensor([[1.5, 0.5]])
    out = ppo_policy_loss(logp, old, adv, torch.ones(1, 2), weights=w)
    assert float(out.loss.detach()) == pytest.approx(-1.0)  # token mean of −A·ρ·w = (−1.5 − 0.5) / 2
    out.loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.75, -0.25]]))  # −A·ρ·w / N
    plain = ppo_policy_loss(torch.zeros(1, 2), old, adv, torch.ones(1, 2))
    ones = ppo_policy_loss(torch.zeros(1, 2), old, adv, torch.ones(1, 2), weights=torch.ones(1, 2))
    assert float(ones.loss) == float(plain.loss) == pytest.approx(-1.0)
    skewed = ppo_policy_loss(torch.zeros(1, 2), old, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), weights=w)
    assert float(skewed.loss) == pytest.approx((-1.5 + 0.5) / 2)  # unweighted it would be 0


class ShiftedEngine:
    """Test double for the vLLM engine: samples with palate's own sampler, reports every log-prob 0.25
    nats higher than the trainer computes (a systematic mismatch), and records the weight syncs."""

    def __init__(self, tok, shift=0.25):
        self.tok, self.shift, self.synced = tok, shift, []
        self.model = None

    def sync(self, policy):
        self.synced.append(policy)
        self.model = policy

    def rollout(self, prompts, **settings):
        r = rollout(self.model, self.tok, prompts, **settings)
        r.logprobs = (r.logprobs + self.shift) * r.response_mask
        return r


def test_sample_rollout_recomputes_old_logprobs_and_weights_the_engines_mismatch(tok):
    from palate.models.load import load_model

    policy = load_model("tiny", tokenizer=tok)
    cfg = RolloutConfig(n=2, max_new_tokens=8, temperature=0.7)
    engine = ShiftedEngine(tok)
    r, c = sample_rollout(policy, tok, ["hello there", "what is two plus two?"], cfg, seed=3, engine=engine)
    assert engine.synced == [policy] and policy.training  # weights pushed once; train mode restored
    own, none = sample_rollout(policy, tok, ["hello there", "what is two plus two?"], cfg, seed=3)
    assert none is None and own.sampler_logprobs is None  # the built-in sampler needs no correction
    assert torch.equal(r.response_ids, own.response_ids)
    assert torch.allclose(r.logprobs, own.logprobs, atol=1e-5)  # π_old is the trainer's recomputation
    assert torch.allclose(r.sampler_logprobs, (own.logprobs + 0.25) * own.response_mask, atol=1e-5)
    m = r.response_mask
    assert torch.allclose(c.weights[m], torch.full_like(c.weights[m], math.exp(-0.25)), atol=1e-5)
    assert float(c.mismatch_kl) == pytest.approx(math.exp(-0.25) - 1 + 0.25, abs=1e-5)
    assert float(c.truncated_fraction) == 0.0


def test_backend_is_checked_when_the_config_is_built():
    with pytest.raises(ConfigError, match="rollout.backend must be hf or vllm"):
        RolloutConfig(backend="sglang")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install 'palate\[vllm\]'"):
            RolloutConfig(backend="vllm")


def test_bf16_sampler_copy_follows_the_policy_and_its_mismatch_is_corrected(tok):
    """rollout.backend=hf with a bf16 trainer on fp32 weights: a bf16 copy samples (CastSampler), synced from
    the policy every step; the trainer's recomputed log-probs are π_old and the copy's rounding becomes
    importance weights near 1."""
    from palate.models.load import load_model
    from palate.rollout.sampling import CastSampler, cast_sampler

    policy = load_model("tiny", tokenizer=tok)
    cfg = RolloutConfig(n=2, max_new_tokens=8)
    assert cast_sampler(policy, tok, cfg, "fp32") is None  # fp32 trainer: the policy samples itself
    assert cast_sampler(policy, tok, cfg, "bf16", sharding="fsdp") is None
    engine = cast_sampler(policy, tok, cfg, "bf16")
    assert isinstance(engine, CastSampler) and next(engine.model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        policy.lm_head.weight.add_(0.5)  # a training step happened
    prompts = ["hello there", "what is two plus two?"]
    seconds = {}
    r, c = sample_rollout(policy, tok, prompts, cfg, seed=3, engine=engine, seconds=seconds)
    assert set(seconds) == {"generate", "recompute"}  # sampling timed apart from the trainer's recomputation
    copy = dict(engine.model.named_parameters())
    for name, p in policy.named_parameters():  # the copy holds the policy's current weights, rounded to bf16
        assert torch.equal(copy[name], p.detach().to(torch.bfloat16)), name
    assert not any(p.requires_grad for p in engine.model.parameters())
    floats = [b for b in engine.model.buffers() if b.is_floating_point()]
    assert floats and all(b.dtype == torch.float32 for b in floats)  # rotary frequencies keep their precision
    mask = r.response_mask.bool()
    again = sample_rollout(policy, tok, prompts, cfg, seed=3, engine=engine)[0]
    assert torch.equal(again.response_ids, r.response_ids)  # same seed, same weights: same samples
    from palate.models.reference import rollout_logprobs

    assert torch.equal(r.logprobs, rollout_logprobs(policy, r, cfg.temperature))  # π_old: the fp32 trainer's
    gap = (r.logprobs - r.sampler_logprobs)[mask].abs()
    assert 0 < float(gap.max()) < 0.5, gap  # bf16 rounding: small, not zero
    assert torch.allclose(c.weights[mask], torch.exp(r.logprobs - r.sampler_logprobs)[mask].clamp(max=cfg.correction_cap))


def test_joined_shares_weigh_like_one_batch():
    """Processes each correct their share of the rows; joined, the weights and token means are those of one
    process correcting every row (shares of different widths and token counts)."""
    from palate.rollout.experience import join_corrections

    g = torch.Generator().manual_seed(0)
    trainer, sampler = torch.randn(5, 6, generator=g) * 0.3 - 1, torch.randn(5, 6, generator=g) * 0.3 - 1
    mask = torch.rand(5, 6, generator=g) > 0.3
    mask[:2, 4:] = False  # the first share is narrower: its rows end by column 4
    whole = sampler_correction(trainer, sampler, mask, cap=1.2)
    parts = [sampler_correction(trainer[:2, :4], sampler[:2, :4], mask[:2, :4], cap=1.2),
             sampler_correction(trainer[2:], sampler[2:], mask[2:], cap=1.2)]
    joined = join_corrections(parts, [mask[:2, :4], mask[2:]], 6)
    assert torch.allclose(joined.weights, whole.weights)
    for field in ("weight_mean", "truncated_fraction", "mismatch_kl"):
        assert float(getattr(joined, field)) == pytest.approx(float(getattr(whole, field)), abs=1e-6), field
    assert join_corrections([None, None], [mask, mask], 6) is None


def test_held_out_evaluation_samples_with_the_sampler_copy_and_scores_under_the_policy(tok):
    """A bf16 run's held-out evaluation samples as its steps do (the copy, same seed: same answers) and the
    KL is the policy's (its recomputed log-probs), not the copy's."""
    from palate.models.load import load_model
    from palate.rollout.experience import evaluate
    from palate.rollout.rewards import RewardConfig, Rewarder
    from palate.rollout.sampling import cast_sampler

    rewards = __file__.replace("test_sampler_correction.py", "rl_rewards.py")
    policy = load_model("tiny", tokenizer=tok)
    cfg = RolloutConfig(n=2, max_new_tokens=8)
    engine = cast_sampler(policy, tok, cfg, "bf16")
    with torch.no_grad():
        policy.lm_head.weight.add_(0.5)  # trained since the copy was made: evaluation syncs it first
    prompts = ["hello there", "what is two plus two?"]
    metrics, exp = evaluate(policy, tok, prompts, cfg, Rewarder(RewardConfig(function=f"{rewards}:the_count")),
                            None, seed=5, samples=2, engine=engine)
    direct = engine.rollout(prompts, n=2, max_new_tokens=8, temperature=cfg.temperature, top_p=cfg.top_p,
                            top_k=cfg.top_k, stop=tuple(cfg.stop), seed=5)
    assert torch.equal(exp.rollout.response_ids, direct.response_ids)
    from palate.models.reference import rollout_logprobs

    assert torch.equal(exp.rollout.logprobs, rollout_logprobs(policy, exp.rollout, cfg.temperature))
    assert exp.correction is not None and set(metrics) >= {"eval_reward", "eval_response_length"}
