import json
import math

import numpy as np
import pytest

from palate.eval.winrate import (compare, compare_rows, length_controlled_win_rate, logistic_regression, preference_values,
                                 read_winrates, win_rate, write_winrates)


def test_win_rate_counts_ties_half():
    r = win_rate(["win", "tie", "loss", "win"], n_resamples=200)
    assert r["win_rate"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)  # 0.625
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (2, 1, 1, 4)
    assert 0.0 <= r["ci"][0] <= 0.625 <= r["ci"][1] <= 1.0


def test_preference_values_and_errors():
    assert preference_values(["A", "b", "Tie", 0.8]).tolist() == [1.0, 0.0, 0.5, 0.8]
    with pytest.raises(ValueError, match="judgment 1"):
        preference_values(["win", "maybe"])
    with pytest.raises(ValueError, match="outside"):
        preference_values([1.5])


def test_logistic_regression_hand_values():
    # intercept only, mean label 0.75 -> θ₀ = logit(0.75) = log 3
    x = np.ones((4, 1))
    assert logistic_regression(x, np.array([1, 1, 1, 0.0]), l2=0)[0] == pytest.approx(math.log(3), abs=1e-8)
    # x = ±1 balanced with frequencies 0.25 / 0.75 -> θ₀ = 0, θ₁ = log 3 (the MLE matches each cell)
    f = np.array([-1, -1, -1, -1, 1, 1, 1, 1.0])
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0.0])
    theta = logistic_regression(np.column_stack([np.ones(8), f]), y, l2=0)
    assert theta[0] == pytest.approx(0.0, abs=1e-8) and theta[1] == pytest.approx(math.log(3), abs=1e-8)
    # soft labels: the same cells given as probabilities
    theta_soft = logistic_regression(np.array([[1, -1], [1, 1.0]]), np.array([0.25, 0.75]), l2=0)
    assert theta_soft == pytest.approx([0.0, math.log(3)], abs=1e-8)


def _length_only_judge(n=1500, seed=0):
    """A judge that looks only at length: P(A wins) = σ(3·tanh(d/s)); A is usually longer."""
    rng = np.random.default_rng(seed)
    len_b = rng.integers(20, 80, n).astype(float)
    len_a = len_b + rng.normal(40, 40, n)
    d = len_a - len_b
    p = 1 / (1 + np.exp(-3 * np.tanh(d / d.std())))
    return (rng.random(n) < p).astype(float), len_a, len_b


def test_length_only_judge_raw_high_lc_half():
    y, len_a, len_b = _length_only_judge(n=4000)
    raw = win_rate(y, n_resamples=200)["win_rate"]
    lc = length_controlled_win_rate(y, len_a, len_b, n_resamples=100)
    assert raw > 0.75
    assert lc["lc_win_rate"] == pytest.approx(0.5, abs=0.06)
    assert lc["lc_ci"][1] < raw - 0.15 and lc["lc_ci"][1] - lc["lc_ci"][0] < 0.15
    assert lc["length_coef"] > 1.5


def test_better_policy_at_equal_length_keeps_lc_near_raw():
    rng = np.random.default_rng(1)
    n = 1500
    len_b = rng.integers(20, 80, n).astype(float)
    len_a = len_b + rng.normal(0, 10, n)  # same lengths on average, independent of who wins
    y = (rng.random(n) < 0.7).astype(float)
    raw = win_rate(y, n_resamples=200)["win_rate"]
    lc = length_controlled_win_rate(y, len_a, len_b, n_resamples=100)
    assert raw == pytest.approx(0.7, abs=0.04)
    assert lc["lc_win_rate"] == pytest.approx(raw, abs=0.03)
    assert lc["lc_ci"][0] > 0.6


def test_plain_transform_and_equal_lengths():
    y = [1, 1, 1, 0]
    lc = length_controlled_win_rate(y, [10, 10, 10, 10], [10, 10, 10, 10], transform="plain", n_resamples=50)
    assert lc["lc_win_rate"] == pytest.approx(0.75, abs=1e-6)  # no length signal: LC = raw
    with pytest.raises(ValueError, match="tanh or plain"):
        length_controlled_win_rate(y, [1, 2, 3, 4], [1, 1, 1, 1], transform="log")


def test_compare_writes_and_reads_schema(tmp_path):
    y, len_a, len_b = _length_only_judge(n=200)
    groups = ["x" if i % 2 else "y" for i in range(200)]
    res = compare(y, len_a, len_b, groups, policy="dpo", n_resamples=50)
    assert set(res["by_group"]) == {"x", "y"}
    assert res["by_group"]["x"]["n"] == 100
    assert res["mean_length_policy"] > res["mean_length_baseline"]
    path = write_winrates(tmp_path / "eval", [res], baseline="sft", judge="length")
    assert path.name == "winrates.json"
    data = read_winrates(path)
    assert data["results"][0]["policy"] == "dpo" and data["baseline"] == "sft"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": [{"policy": "p", "n": 1}]}))
    with pytest.raises(ValueError, match="results\\[0\\] has no 'win_rate'"):
        read_winrates(bad)


def test_compare_rows_counts_words_and_groups():
    rows = [{"judgment": "win", "response_a": "a b c d", "response_b": "a", "group": "g1"},
            {"judgment": "loss", "response_a": "a b", "response_b": "a b c"},
            {"judgment": 0.5, "response_a": "x", "response_b": "y", "group": "g1"}]
    res = compare_rows(rows, policy="p", n_resamples=50)
    assert res["win_rate"] == pytest.approx(0.5) and res["ties"] == 1
    assert res["mean_length_policy"] == pytest.approx(7 / 3) and res["mean_length_baseline"] == pytest.approx(5 / 3)
    assert res["by_group"]["g1"]["n"] == 2 and res["by_group"]["none"]["n"] == 1
    with pytest.raises(ValueError, match="row 0: missing field\\(s\\) response_b"):
        compare_rows([{"judgment": "win", "response_a": "x"}])


def test_deterministic_length_judge_is_not_a_win_at_equal_length():
    # the judge always picks the longer answer (separable data: the small L2 keeps the fit finite)
    rng = np.random.default_rng(0)
    len_b = rng.integers(20, 80, 500).astype(float)
    len_a = len_b + rng.normal(40, 40, 500)
    y = (len_a > len_b).astype(float)
    lc = length_controlled_win_rate(y, len_a, len_b, n_resamples=200)
    assert win_rate(y, n_resamples=100)["win_rate"] > 0.8
    assert lc["lc_ci"][0] < 0.5 < lc["lc_ci"][1] and np.isfinite(lc["length_coef"])
