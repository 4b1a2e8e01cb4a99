"""Batching: padding, label masks, token counts, deterministic bucketed plans, packing (checked on a model)."""

import random

import pytest
import torch

from palate.data.batching import IGNORE, collate, collate_packed, epoch_batches, pack, padding_stats, plan_batches
from palate.data.errors import SkipLog
from palate.data.records import Demonstration
from palate.data.tokenize import Example, encode_demonstrations

X = IGNORE


def ex(n: int, completion_start: int, index: int, first: int = 10) -> Example:
    return Example(tuple(range(first, first + n)), completion_start, index)


# ----------------------------------------------------------------------------- collate


def test_collate_two_examples_hand_checked():
    a = Example((5, 6, 7, 8, 9), 2, 0)
    b = Example((11, 12, 13), 1, 1)
    batch = collate([a, b], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [11, 12, 13, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch.labels.tolist() == [[X, X, 7, 8, 9], [X, 12, 13, X, X]]
    assert batch.position_ids is None
    assert batch.indices == [0, 1]
    assert batch.n_tokens == 8  # 5 + 3 real tokens
    # labels[:, 1:] = [[X, 7, 8, 9], [12, 13, X, X]] -> 3 + 2 targets
    assert batch.n_targets == 5
    assert batch.n_slots == 10
    inputs = batch.model_inputs()
    assert set(inputs) == {"input_ids", "attention_mask"}


def test_n_targets_never_counts_a_rows_first_label():
    # completion_start 0: label at position 0 is set but no logit predicts it after the shift
    batch = collate([Example((3, 4, 5), 0, 0)], pad_id=0)
    assert batch.labels.tolist() == [[3, 4, 5]]
    assert batch.n_targets == 2


def test_collate_pads_with_pad_id_even_when_it_is_a_real_token():
    # SmolLM2 pads with <|im_end|> (id 2), which is also the trained stop token
    a = Example((7, 2), 1, 0)
    b = Example((7, 8, 9, 2), 2, 1)
    batch = collate([a, b], pad_id=2)
    assert batch.input_ids.tolist() == [[7, 2, 2, 2], [7, 8, 9, 2]]
    assert batch.attention_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch.labels.tolist() == [[X, 2, X, X], [X, X, 9, 2]]


# ----------------------------------------------------------------------------- plan_batches


def test_plan_is_deterministic_in_seed_and_epoch():
    lengths = [random.Random(1).randint(1, 100) for _ in range(200)]
    for bucket in (True, False):
        p = plan_batches(lengths, 8, seed=3, epoch=0, bucket=bucket)
        assert p == plan_batches(lengths, 8, seed=3, epoch=0, bucket=bucket)
        assert p != plan_batches(lengths, 8, seed=3, epoch=1, bucket=bucket)
        assert p != plan_batches(lengths, 8, seed=4, epoch=0, bucket=bucket)


@pytest.mark.parametrize("bucket", [True, False])
def test_plan_covers_every_index_once_with_a_last_partial_batch(bucket):
    lengths = [random.Random(2).randint(1, 50) for _ in range(103)]
    plan = plan_batches(lengths, 8, seed=0, epoch=0, bucket=bucket, bucket_batches=4)
    flat = [i for b in plan for i in b]
    assert sorted(flat) == list(range(103))
    assert sorted(len(b) for b in plan) == [7] + [8] * 12  # 103 = 12 * 8 + 7: nothing dropped


def test_plan_of_fewer_examples_than_a_batch():
    # one partial batch; bucketing sorts it by length: 2 (index 1), 4 (index 0), 9 (index 2)
    assert plan_batches([4, 2, 9], 8, seed=0, epoch=0) == [[1, 0, 2]]
    assert plan_batches([4, 2, 9], 8, seed=5, epoch=7) == [[1, 0, 2]]


def _padding_fraction(plan, lengths):
    real = sum(lengths[i] for b in plan for i in b)
    slots = sum(len(b) * max(lengths[i] for i in b) for b in plan)
    return 1 - real / slots


def test_bucketing_reduces_padding():
    rng = random.Random(0)
    lengths = [rng.randint(1, 200) for _ in range(1000)]
    plain = _padding_fraction(plan_batches(lengths, 16, seed=0, epoch=0, bucket=False), lengths)
    bucketed = _padding_fraction(plan_batches(lengths, 16, seed=0, epoch=0, bucket=True), lengths)
    # uniform 1..200 in random batches of 16: E[max] ~ 189, mean 100.5 -> about 47% padding;
    # sorted chunks of 512 leave neighbours within a few tokens of each other
    assert 0.35 < plain < 0.6
    assert bucketed < 0.05
    assert bucketed < plain / 5


def test_epoch_batches_and_padding_stats_agree_with_hand_count():
    examples = [ex(n, 1, i) for i, n in enumerate([3, 5, 2, 6])]
    batches = epoch_batches(examples, 2, pad_id=0, seed=0, epoch=0, bucket=True)
    # one chunk (default 32 batches) sorted by length -> batches {2, 3} and {5, 6}: slots 2*3 + 2*6 = 18, real 16
    assert sorted(sorted(b.indices) for b in batches) == [[0, 2], [1, 3]]
    stats = padding_stats(batches)
    assert (stats["tokens"], stats["slots"]) == (16, 18)
    assert stats["padding_fraction"] == pytest.approx(2 / 18)


# ----------------------------------------------------------------------------- packing


def test_pack_first_fit_decreasing_hand_checked():
    lengths = [5, 4, 3, 3, 2, 1]
    rows = pack([ex(n, 0, i) for i, n in enumerate(lengths)], width=8)
    # 5 -> row0 (3 left); 4 -> row1 (4 left); 3 -> row0 (0 left); 3 -> row1 (1 left); 2 -> row2; 1 -> row1
    assert [[e.index for e in r] for r in rows] == [[0, 2], [1, 3, 5], [4]]


def test_pack_respects_width_and_keeps_every_example_once():
    rng = random.Random(0)
    examples = [ex(rng.randint(1, 64), 0, i) for i in range(300)]
    rows = pack(examples, width=64)
    assert all(sum(len(e) for e in r) <= 64 for r in rows)
    assert sorted(e.index for r in rows for e in r) == list(range(300))
    total = sum(len(e) for e in examples)
    assert len(rows) < 1.15 * total / 64  # first-fit-decreasing wastes little on uniform lengths


def test_collate_packed_hand_checked():
    a = Example((21, 22, 23), 1, 0)
    b = Example((31, 32, 33, 34), 2, 1)
    c = Example((41, 42, 43, 44, 45), 3, 2)
    batch = collate_packed([[a, b], [c]], pad_id=0, width=8)
    assert batch.input_ids.tolist() == [[21, 22, 23, 31, 32, 33, 34, 0], [41, 42, 43, 44, 45, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 0, 1, 2]]
    assert batch.labels.tolist() == [[X, 22, 23, X, X, 33, 34, X], [X, X, X, 44, 45, X, X, X]]
    assert batch.attention_mask is None
    assert batch.indices == [0, 1, 2]
    assert batch.n_tokens == 12
    assert batch.n_targets == 6  # 22 23 33 34 | 44 45
    assert set(batch.model_inputs()) == {"input_ids", "position_ids"}


def test_epoch_batches_with_packing_keeps_every_example():
    rng = random.Random(3)
    examples = [ex(rng.randint(2, 30), 1, i) for i in range(40)]
    batches = epoch_batches(examples, 3, pad_id=0, seed=0, epoch=0, packing=True, max_length=32)
    assert sorted(i for b in batches for i in b.indices) == list(range(40))
    assert all(b.input_ids.shape[1] <= 32 for b in batches)
    assert sum(b.n_tokens for b in batches) == sum(len(e) for e in examples)
    assert sum(int((b.labels != IGNORE).sum()) for b in batches) == sum(e.n_targets for e in examples)


def test_packed_row_gives_the_same_logits_as_each_example_alone(tok):
    """With attention_mask=None, transformers must build a block-diagonal mask from the position ids."""
    from palate.models.load import load_model

    model = load_model("tiny", tokenizer=tok).eval()
    recs = [Demonstration("What is 2+2?", "4."), Demonstration("Name a colour.", "Blue, like the sea."),
            Demonstration("Hi", "Hello!")]
    examples = encode_demonstrations(tok, recs, max_length=128, skips=SkipLog())
    total = sum(len(e) for e in examples)
    batch = collate_packed([examples], pad_id=tok.pad_token_id, width=total + 5)  # with tail padding
    with torch.no_grad():
        packed = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                       attention_mask=None, use_cache=False).logits[0]
        unmasked = model(input_ids=batch.input_ids, use_cache=False).logits[0]  # one causal sequence
        at = 0
        for e in examples:
            alone = model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[at : at + len(e)], alone, atol=1e-5, rtol=0)
            if at > 0:  # the check is sensitive: attending across examples changes the logits
                assert (unmasked[at : at + len(e)] - alone).abs().max() > 1e-3
            at += len(e)
