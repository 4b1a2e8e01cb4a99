"""Agreement statistics against textbook numbers, and Dawid–Skene on synthetic labelers."""

import math
import random

import pytest

from palate.feedback.agreement import (cohen_kappa, dawid_skene, fleiss_kappa, group_differences, item_disagreement,
                                       krippendorff_alpha, majority_vote)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the 4-observer x 12-unit example with
# missing values (None). Published: nominal .743, ordinal .815, interval .849.
N = None
KRIPP = list(zip([1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
                 [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
                 [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
                 [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N]))

# Fleiss (1971) as reproduced on Wikipedia: 10 subjects, 14 raters, 5 categories -> kappa = 0.210.
FLEISS = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
          [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]

# Krippendorff's binary 2-coder example: alpha = 0.095; Cohen's kappa by hand:
# p_o = 6/10, p_e = .2*.4 + .8*.6 = .56, kappa = (.6 - .56) / .44 = 0.0909.
A = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0]
B = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]


def test_krippendorff_alpha_textbook_values():
    assert krippendorff_alpha(KRIPP, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(KRIPP, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(KRIPP, "interval") == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha(list(zip(A, B))) == pytest.approx(0.095, abs=5e-4)


def test_krippendorff_alpha_edge_cases():
    assert krippendorff_alpha([[1, 1], [2, 2], [3, 3, 3]]) == 1.0
    assert krippendorff_alpha([[1, None], [2]]) != krippendorff_alpha([[1, None], [2]])  # nothing pairable: NaN
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(KRIPP, "ratio-ish")
    # perfect disagreement on two binary units: alpha is negative
    assert krippendorff_alpha([[0, 1], [1, 0]]) < 0


def test_fleiss_kappa_classic_example():
    assert fleiss_kappa(FLEISS) == pytest.approx(0.2099, abs=1e-4)
    assert fleiss_kappa([[3, 0], [0, 3]]) == 1.0
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[2, 1], [1, 1]])


def test_cohen_kappa_hand_computed():
    assert cohen_kappa(A, B) == pytest.approx(0.04 / 0.44)
    assert cohen_kappa(["a", "b", "a"], ["a", "b", "a"]) == 1.0
    # 2x2 table [[20, 5], [10, 15]]: p_o = .7, p_e = .5*.6 + .5*.4 = .5, kappa = .4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_item_disagreement_and_majority_vote():
    assert item_disagreement({1: [0, 0, 0], 2: [0, 1, 1, 1], 3: [1]}) == {1: 0.0, 2: 0.25}
    agg = majority_vote([(1, "x", 0), (1, "y", 0), (1, "z", 1), (2, "x", 0), (2, "y", 1)], 2)
    assert agg.labels == {1: 0, 2: None}
    assert agg.soft[1] == pytest.approx([2 / 3, 1 / 3]) and agg.soft[2] == [0.5, 0.5]


def test_group_differences():
    votes = [(1, "g1", 0), (1, "g1", 0), (1, "g2", 1), (2, "g1", 1), (2, "g2", 1), (2, "g2", 0), (3, "g1", 0)]
    out = group_differences(votes)
    # item 1: g1 p=1, g2 p=0 -> 1; item 2: g1 p=0, g2 p=.5 -> .5; item 3 only g1
    assert out["pairs"]["g1 vs g2"] == {"mean_abs_difference": 0.75, "items": 2}


def test_dawid_skene_recovers_labeler_reliabilities():
    rng = random.Random(0)
    accuracy = {"good1": 0.95, "good2": 0.9, "ok": 0.75, "coin": 0.5, "spam": 0.55}
    truth = {i: rng.randrange(2) for i in range(400)}
    triples = [(i, j, t if rng.random() < acc else 1 - t) for i, t in truth.items() for j, acc in accuracy.items()]
    ds = dawid_skene(triples, 2)
    for j, acc in accuracy.items():
        assert ds.reliability[j] == pytest.approx(acc, abs=0.06), (j, ds.reliability[j])
    ds_acc = sum(ds.labels[i] == t for i, t in truth.items()) / len(truth)
    mv = majority_vote(triples, 2)
    mv_acc = sum(mv.labels[i] == t for i, t in truth.items()) / len(truth)
    assert ds_acc >= mv_acc and ds_acc > 0.95
    assert all(math.isclose(sum(p), 1.0) for p in ds.soft.values())
    assert ds.priors[0] == pytest.approx(sum(t == 0 for t in truth.values()) / 400, abs=0.05)


def test_dawid_skene_down_weights_an_adversarial_labeler():
    rng = random.Random(1)
    truth = {i: rng.randrange(3) for i in range(300)}
    triples = []
    for i, t in truth.items():
        triples += [(i, "a", t if rng.random() < 0.8 else rng.randrange(3)), (i, "b", t if rng.random() < 0.8 else rng.randrange(3)),
                    (i, "liar", (t + 1) % 3)]  # always wrong, but consistently: its confusion matrix inverts it
    ds = dawid_skene(triples, 3)
    assert ds.reliability["liar"] < 0.05 < 0.8 < ds.reliability["a"]
    assert sum(ds.labels[i] == t for i, t in truth.items()) / len(truth) > 0.95


def test_dawid_skene_one_em_step_by_hand():
    """Items 1 (a: 0, b: 0) and 2 (a: 1, b: 0), K = 2, smoothing .01, one iteration. Start: T1 = [1, 0],
    T2 = [.5, .5]. M-step: π = ([1.5, .5] + .01) / 2.02 = [.747525, .252475];
    θ_a = [[1.01, .51] / 1.52, [.01, .51] / .52] = [[.664474, .335526], [.019231, .980769]];
    θ_b = [[1.51, .01] / 1.52, [.51, .01] / .52] = [[.993421, .006579], [.980769, .019231]].
    reliability_a = .747525 * .664474 + .252475 * .980769 = .744331; reliability_b = .747462.
    E-step, item 2: π0 θ_a[0][1] θ_b[0][0] = .249165 vs π1 θ_a[1][1] θ_b[1][0] = .242858 -> T2 = [.506409, .493591]."""
    ds = dawid_skene([(1, "a", 0), (1, "b", 0), (2, "a", 1), (2, "b", 0)], 2, max_iter=1)
    assert ds.priors == pytest.approx([0.747525, 0.252475], abs=1e-6)
    assert ds.confusion["a"][0] == pytest.approx([0.664474, 0.335526], abs=1e-6)
    assert ds.confusion["b"][1] == pytest.approx([0.980769, 0.019231], abs=1e-6)
    assert ds.reliability == pytest.approx({"a": 0.744331, "b": 0.747462}, abs=1e-6)
    assert ds.soft[2] == pytest.approx([0.506409, 0.493591], abs=1e-6) and ds.labels == {1: 0, 2: 0}
    assert ds.iterations == 1 and isinstance(ds.soft[2][0], float) and isinstance(ds.labels[2], int)
