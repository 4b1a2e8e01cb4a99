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


# ---------------------------------------------------------------- joint length control, warnings, bad input

from palate.eval.winrate import compare_policies, is_extreme_change, joint_length_control  # noqa: E402


def _length_bonus_judge(seed: int, n: int = 400):
    """Three policies of known quality q; the judge adds a length bonus: logit = q + u_i + 1.5·tanh((L − B)/150)
    with a prompt difficulty u_i. The best policy is the most concise, the worst the most verbose."""
    rng = np.random.default_rng(seed)
    u, base = rng.normal(0, 1, n), rng.uniform(100, 300, n)
    spec = {"concise_good": (0.6, 0.6), "mid": (0.0, 1.0), "verbose_bad": (-0.4, 1.9)}  # (quality, length ratio)
    judgments, lengths, truth = {}, {}, {}
    for name, (q, ratio) in spec.items():
        length = base * ratio * rng.lognormal(0, 0.25, n)
        p = 1 / (1 + np.exp(-(q + u + 1.5 * np.tanh((length - base) / 150))))
        judgments[name] = (rng.random(n) < p).astype(float).tolist()
        lengths[name] = length.tolist()
        truth[name] = float(np.mean(1 / (1 + np.exp(-(q + u)))))  # the win rate at equal length
    return judgments, lengths, base.tolist(), truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joint_lc_ranks_by_true_quality_where_raw_does_not(seed):
    judgments, lengths, base, truth = _length_bonus_judge(seed)
    res = {r["policy"]: r for r in compare_policies(judgments, lengths, base, n_resamples=50, seed=seed)}
    order = ["concise_good", "mid", "verbose_bad"]  # by true quality
    assert [truth[k] for k in order] == sorted(truth.values(), reverse=True)
    raw = [res[k]["win_rate"] for k in order]
    assert raw[2] == max(raw) and raw[0] < raw[2]  # the judge's length bonus: the worst policy wins raw
    lc = [res[k]["lc_win_rate"] for k in order]
    assert lc[0] > lc[1] > lc[2]
    for k in order:
        assert res[k]["lc_method"] == "joint" and res[k]["lc_policies"] == list(judgments)
        assert abs(res[k]["lc_win_rate"] - truth[k]) < 0.1
        assert res[k]["lc_ci"][0] <= res[k]["lc_win_rate"] <= res[k]["lc_ci"][1]
    assert res["verbose_bad"]["length_coef"] > 0.5  # the judge's bonus is found


def test_joint_fit_with_one_policy_is_the_single_fit():
    y, len_a, len_b = _length_only_judge(n=300)
    single = length_controlled_win_rate(y, len_a, len_b, n_resamples=20)
    joint = compare_policies({"A": y.tolist()}, {"A": len_a.tolist()}, len_b.tolist(), n_resamples=20)[0]
    assert joint["lc_win_rate"] == pytest.approx(single["lc_win_rate"], abs=1e-9)


def test_joint_length_control_equal_lengths_and_prompt_index():
    # no length difference anywhere: nothing to control, each policy's LC is its mean at u (here: its raw rate
    # up to the prompt effects' shrinkage)
    p = np.array([1, 1, 0, 1, 0, 0, 1, 0.0])
    pol = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    prompt = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    fit = joint_length_control(p, pol, prompt, np.full(8, 10.0), np.full(8, 10.0))
    assert fit["prompt_effects"] and fit["lc"][0] > fit["lc"][1]
    assert fit["lc"][0] == pytest.approx(0.75, abs=0.06) and fit["lc"][1] == pytest.approx(0.25, abs=0.06)
    # policies judged on different subsets of the prompts
    res = compare_policies({"a": ["win", "win", "loss"], "b": ["loss", "tie"]}, {"a": [5, 6, 7], "b": [3, 9]},
                           [5, 5, 5, 5], prompt_index={"a": [0, 1, 2], "b": [1, 3]}, n_resamples=10)
    assert [r["n"] for r in res] == [3, 2] and res[1]["ties"] == 1
    with pytest.raises(ValueError, match="prompt index outside"):
        compare_policies({"a": ["win"]}, {"a": [1]}, [1], prompt_index={"a": [3]}, n_resamples=5)


def test_extreme_change_rule_hand_values():
    # W = 0.5: warn below min(0.375, 0.40) = 0.375 and above max(0.625, 0.60) = 0.625
    assert is_extreme_change(0.5, 0.374) and not is_extreme_change(0.5, 0.376)
    assert is_extreme_change(0.5, 0.626) and not is_extreme_change(0.5, 0.624)
    # W = 0.2: below min(0.15, 0.10) = 0.10, above max(0.40, 0.30) = 0.40
    assert is_extreme_change(0.2, 0.09) and not is_extreme_change(0.2, 0.11)
    assert is_extreme_change(0.2, 0.41) and not is_extreme_change(0.2, 0.39)


def test_extreme_lc_is_warned_and_recorded(caplog):
    # a deterministic length judge: raw 0.8+, LC near ½ — far from raw
    rng = np.random.default_rng(0)
    len_b = rng.integers(20, 80, 300).astype(float)
    len_a = len_b + rng.normal(40, 40, 300)
    y = (len_a > len_b).astype(float)
    with caplog.at_level("WARNING", logger="palate.eval"):
        res = compare(y, len_a, len_b, policy="talker", n_resamples=20)
    assert "lc_warning" in res and "talker" in res["lc_warning"]
    assert any("far from the raw" in r.message for r in caplog.records)
    calm = compare([1, 0, 1, 0, 1, 1], [5, 6, 5, 6, 5, 6], [5, 5, 6, 6, 5, 5], n_resamples=20)
    assert "lc_warning" not in calm


def test_bad_judgments_name_row_and_field():
    with pytest.raises(ValueError, match=r"judgment 1 \(field 'judgment'\): None"):
        preference_values([0.2, None])
    for bad in (float("nan"), float("inf"), "maybe", True, [1]):
        with pytest.raises(ValueError, match=r"judgment 2 \(field 'judgment'\)"):
            preference_values([0.1, 0.9, bad])
    with pytest.raises(ValueError, match=r"judgment 17 \(field 'verdict'\)"):
        preference_values(["win", None], field="verdict", rows=[16, 17])
    with pytest.raises(ValueError, match=r"row 1 \(field 'len_b'\): length nan"):
        length_controlled_win_rate([1, 0], [3, 4], [3, float("nan")], n_resamples=5)
    with pytest.raises(ValueError, match=r"row 0 \(field 'len_a'\): length 'long'"):
        length_controlled_win_rate([1, 0], ["long", 4], [3, 3], n_resamples=5)
    with pytest.raises(ValueError, match=r"judgment 4 \(field 'judgment of p'\)"):
        compare_policies({"p": [1, "x"]}, {"p": [1, 2]}, [1, 2, 3, 4, 5], prompt_index={"p": [2, 4]}, n_resamples=5)


def test_write_winrates_refuses_nan_and_writes_numpy_numbers(tmp_path):
    ok = {"policy": "p", "n": 2, "win_rate": np.float64(0.5), "ci": [0.1, 0.9], "counts": np.array([1, 1])}
    path = write_winrates(tmp_path / "eval", [ok], baseline="b", length_unit="words")
    data = json.loads(path.read_text())
    assert data["results"][0]["win_rate"] == 0.5 and data["length_unit"] == "words"
    bad = {"policy": "q", "n": 2, "win_rate": 0.5, "ci": [0.1, 0.9], "lc_ci": [float("nan"), 0.7]}
    target = tmp_path / "other"
    with pytest.raises(ValueError, match=r"winrates.results\[1\].lc_ci\[0\] is not a finite number"):
        write_winrates(target, [ok, bad], baseline="b")
    assert not (target / "winrates.json").exists()
    with pytest.raises(ValueError, match=r"results\[0\].win_rate"):
        write_winrates(target, [{**ok, "win_rate": np.float64("inf")}], baseline="b")
