"""Reward batches in length buckets: a pair's chosen and rejected responses no longer pad each other, and
the scores (and the loss and its gradient) equal one padded forward's to float rounding."""

import random

import torch

from palate.data.batching import bucketed_padding_stats, group_batches, padding_stats, row_buckets, split_rows
from palate.data.errors import SkipLog
from palate.data.records import Preference
from palate.data.tokenize import encode_groups
from palate.models.heads import distinct_pad_token, reward_scores
from palate.models.load import tiny_model
from palate.recipes.reward import ROW_PARTS, RewardSpec, batch_scores, comparison_loss


def mixed_pairs(n: int, seed: int = 0) -> list[Preference]:
    """Pairs whose two responses differ a lot in length (one short, one long, either way round)."""
    rng = random.Random(seed)
    words = "river stone lamp paper sunshine window table cloud".split()
    out = []
    for i in range(n):
        short = " ".join(rng.choices(words, k=rng.randint(1, 3)))
        long = " ".join(rng.choices(words, k=rng.randint(25, 40)))
        out.append(Preference(f"Question {i}?", short, long) if i % 2 else Preference(f"Question {i}?", long, short))
    return out


def test_row_buckets_hand_checked():
    # sorted by length, cut where it saves the most padding; every row once, shortest run first
    assert row_buckets([10, 2, 9, 3], max_parts=2, part_cost=0) == [[1, 3], [2, 0]]
    assert row_buckets([10, 2, 9, 3], max_parts=1, part_cost=0) == [[1, 3, 2, 0]]
    assert row_buckets([5, 5, 5], max_parts=4, part_cost=1) == [[0, 1, 2]]  # nothing to save: one forward
    assert row_buckets([], max_parts=4) == []


def test_padding_of_a_reward_batch_plan_with_mixed_lengths_drops(tok):
    distinct_pad_token(tok)
    groups = encode_groups(tok, mixed_pairs(32), 256, skips=SkipLog())
    batches = group_batches(groups, 4, tok.pad_token_id, 0, 0)
    before = padding_stats(batches)
    after = bucketed_padding_stats(batches, max_parts=ROW_PARTS)  # what training runs
    parts = [s for b in batches for _, s in split_rows(b, ROW_PARTS)]
    assert padding_stats(parts) == after  # computed from the lengths = what the sub-batches hold
    assert after["tokens"] == before["tokens"]
    assert before["padding_fraction"] > 0.2  # chosen and rejected pad each other in one tensor
    assert after["padding_fraction"] < before["padding_fraction"] / 2, (before, after)
    assert bucketed_padding_stats(batches, max_parts=4)["padding_fraction"] <= after["padding_fraction"]
    for b in batches:  # every row exactly once, trimmed to its own bucket's longest
        rows = sorted(r for rows, _ in split_rows(b, ROW_PARTS) for r in rows)
        assert rows == list(range(b.input_ids.shape[0]))


def test_bucketed_scores_equal_unbucketed_ones(tok):
    distinct_pad_token(tok)
    model = tiny_model(tok, seed=5, num_labels=2)
    model.config.pad_token_id = tok.pad_token_id
    records = mixed_pairs(8, seed=1)
    groups = encode_groups(tok, records, 256, skips=SkipLog())
    (batch,) = group_batches(groups, 8, tok.pad_token_id, 0, 0)
    assert len(split_rows(batch, ROW_PARTS)) > 1

    plain = reward_scores(model, batch, share_prompts=False)
    bucketed = reward_scores(model, batch, ROW_PARTS, share_prompts=False)
    assert bucketed.shape == plain.shape == (16, 2)
    assert torch.allclose(bucketed, plain, atol=1e-5, rtol=1e-5)
    # what training runs: each pair's prompt once, its cache shared by both responses (cheaper than the buckets)
    shared = batch_scores(model, batch)
    assert torch.allclose(shared, plain, atol=1e-5, rtol=1e-5)
    # HF's own forward (head on every position, read at the last non-pad token) agrees too
    with torch.no_grad():
        hf = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(bucketed.detach(), hf, atol=1e-5, rtol=1e-5)
    # same loss and gradient: the pairing for the loss holds (chosen rows 0::2, rejected 1::2)
    spec = RewardSpec()
    l1 = comparison_loss(plain, batch, records, spec).mean()
    l2 = comparison_loss(bucketed, batch, records, spec).mean()
    l3 = comparison_loss(shared, batch, records, spec).mean()
    assert torch.allclose(l1, l2, atol=1e-6) and torch.allclose(l1, l3, atol=1e-6)
    w = model.model.embed_tokens.weight
    g1, g2, g3 = (torch.autograd.grad(x, w)[0] for x in (l1, l2, l3))
    assert torch.allclose(g1, g2, atol=1e-6, rtol=1e-4) and torch.allclose(g1, g3, atol=1e-6, rtol=1e-4)
