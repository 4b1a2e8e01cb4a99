"""AlpacaEval 2 conformance with tatsu-lab/alpaca_eval's own files (tests/data/alpaca_eval/, provenance in its README).

* The published annotations of six models (alpaca-7b and gpt-3.5-turbo-1106, each plain, _verbose and _concise),
  read as shipped, give the leaderboard's raw win rate, win/loss/draw counts and n to the last digit: the side
  mapping (preference 1 = output_1 = the baseline wins, 2 = output_2 = the model wins, 0 = draw) is right.
* AlpacaEval's LC GLM, refitted here with the instruction difficulty refitted (as the repository's notebook does)
  on the 57 models a snapshot of the repository has: the gamed baselines' annotations that ``length_controlled_v1``
  regularises with are not in that snapshot, so this is AlpacaEval's ``length_controlled_noreg``. Measured over all
  57 models (bench/conformance.py): mean |Δ| 1.28 points, 38 within 1.0, max 18.2 (gpt4_gamed, the adversarial
  model the regularisation exists for). Asserted here per vendored model: within 3.5 points, and the leaderboard's
  verbose > plain > concise orderings.
* With ``ALPACA_EVAL_REPO`` pointing at a checkout that has the gamed baselines' annotations, every model's v1 LC
  within 1.0 point of the leaderboard (skipped otherwise, saying why).
* The solver against hand-computed optima and, where scikit-learn is installed, against liblinear on real rows.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from palate.data.errors import DataError
from palate.eval.alpaca_eval import (GAMED_BASELINES, Repository, alpaca_preference, annotations_from_rows,
                                     instruction_difficulty, length_controlled_winrate, raw_win_rate,
                                     read_annotations, read_leaderboard, reproduce_leaderboard)
from palate.eval.glm import Design, Factor, cross_validated_logistic, fit_logistic, interleaved_folds, sigmoid

DATA = Path(__file__).resolve().parents[1] / "data" / "alpaca_eval"
FAMILIES = (("alpaca-7b_verbose", "alpaca-7b", "alpaca-7b_concise"),
            ("gpt-3.5-turbo-1106_verbose", "gpt-3.5-turbo-1106", "gpt-3.5-turbo-1106_concise"))
MODELS = [m for fam in FAMILIES for m in fam]


def _ann(model: str):
    return read_annotations(DATA / "results" / model / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json.xz",
                            model=model)


@pytest.fixture(scope="module")
def leaderboard():
    return read_leaderboard(DATA / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv")


@pytest.fixture(scope="module")
def difficulty():
    return np.array(json.loads((DATA / "instruction_difficulty.json").read_text()))


@pytest.fixture(scope="module")
def lc_results(difficulty):
    return {m: length_controlled_winrate(_ann(m), difficulty) for m in MODELS}


@pytest.mark.parametrize("model", MODELS)
def test_raw_win_rate_and_counts_equal_the_leaderboard(model, leaderboard):
    ann = _ann(model)
    row = leaderboard[model]
    assert ann.baseline == "gpt4_1106_preview" and ann.model == model
    assert raw_win_rate(ann) == pytest.approx(row["win_rate"], abs=0.01)
    p = ann.p[~np.isnan(ann.p)]
    assert (p.size, int((p > 0.5).sum()), int((p < 0.5).sum()), int((p == 0.5).sum())) == (
        row["n_total"], row["n_wins"], row["n_wins_base"], row["n_draws"])


@pytest.mark.parametrize("model", MODELS)
def test_alpaca_eval_lc_near_the_leaderboard(model, leaderboard, lc_results):
    res = lc_results[model]
    assert res["glm"] == "length_controlled_noreg"  # the gamed baselines are not vendored (README)
    assert abs(res["length_controlled_winrate"] - leaderboard[model]["length_controlled_winrate"]) <= 3.5
    assert res["weights"]["length"] < 0  # Δ = len(baseline) − len(model): a longer model answer helps it
    assert 0 < res["lc_standard_error"] < 1


@pytest.mark.parametrize("family", FAMILIES)
def test_verbose_plain_concise_order_as_the_leaderboard(family, leaderboard, lc_results):
    published = [leaderboard[m]["length_controlled_winrate"] for m in family]
    ours = [lc_results[m]["length_controlled_winrate"] for m in family]
    assert published == sorted(published, reverse=True)
    assert ours == sorted(ours, reverse=True)


def test_baseline_against_itself_is_fifty(difficulty):
    rows = [{"instruction": "q", "output_1": "same", "output_2": "same", "generator_1": "b", "generator_2": "b",
             "preference": 1.5}] * 3
    res = length_controlled_winrate(annotations_from_rows(rows, "self.json"), difficulty)
    assert res["length_controlled_winrate"] == 50.0 and res["win_rate"] == 50.0


def test_preference_side_mapping_and_bad_values():
    assert [alpaca_preference(v, "f", 1) for v in (1, 2, 1.25, 0, 1.5)] == [0.0, 1.0, 0.25, 0.5, 0.5]
    assert math.isnan(alpaca_preference(None, "f", 1)) and math.isnan(alpaca_preference(float("nan"), "f", 1))
    for bad in ("2", True, float("inf"), 2.5, -1, 0.5):
        with pytest.raises(DataError, match=r"f row 7 field 'preference'"):
            alpaca_preference(bad, "f", 7)
    rows = [{"output_1": "a", "output_2": "bb", "preference": 2}, {"output_1": "a", "output_2": 3, "preference": 1}]
    with pytest.raises(DataError, match=r"ann.json row 2 field 'output_2'"):
        annotations_from_rows(rows, "ann.json")
    mixed = [{"output_1": "a", "output_2": "b", "preference": 1, "generator_2": m} for m in ("x", "y")]
    with pytest.raises(DataError, match="generator_2"):
        annotations_from_rows(mixed, "mixed.json")


def test_interleaved_folds_match_group_kfold_on_equal_groups():
    assert interleaved_folds(7, 5).tolist() == [1, 0, 4, 3, 2, 1, 0]


def test_l1_intercept_hand_optimum():
    # C·Σ CE(y, σ(w)) + |w| with y = (1, 1, 1, 0): for w > 0 the optimum has C·4·(σ(w) − 0.75) + 1 = 0.
    d = Design([Factor.dense("b", np.ones(4))])
    y = np.array([1, 1, 1, 0.0])
    w = fit_logistic(d, y, C=2.0, l1=1.0)  # σ(w) = 0.75 − 1/8 = 0.625 → w = log(5/3)
    assert w[0] == pytest.approx(math.log(5 / 3), abs=1e-6)
    assert fit_logistic(d, y, C=0.9, l1=1.0)[0] == 0.0  # |C·4·(σ(0) − 0.75)| = 0.9 < 1: exactly zero
    assert fit_logistic(d, y, C=1.0)[0] == pytest.approx(math.log(3), abs=1e-8)  # unpenalised: logit(0.75)


def test_schur_elimination_equals_dense_solve():
    rng = np.random.default_rng(0)
    n, levels = 3000, 120
    lev = rng.integers(0, levels, n)
    x = np.tanh(rng.normal(size=n))
    y = sigmoid(0.5 * x + rng.normal(0, 1, levels)[lev] - 0.3 + rng.normal(0, 0.5, n))
    big = Design([Factor.dense("x", x), Factor.dense("one", np.ones(n)), Factor("lev", lev, np.ones(n), levels)])
    # the same model with the level factor split in two blocks of 60 (< 64 columns each): dense solves only
    a, b = lev < 60, lev >= 60
    split = Design([Factor.dense("x", x), Factor.dense("one", np.ones(n)),
                    Factor("lo", np.where(a, lev, 0), a.astype(float), 60),
                    Factor("hi", np.where(b, lev - 60, 0), b.astype(float), 60)])
    w1 = fit_logistic(big, y, C=0.5, l1=1.0)
    w2 = fit_logistic(split, y, C=0.5, l1=1.0)
    assert np.allclose(w1, w2, atol=1e-6)


def test_l1_fit_satisfies_optimality_on_real_rows(difficulty):
    ann = _ann("alpaca-7b_verbose")
    keep = ~np.isnan(ann.p)
    x = np.tanh((ann.len_baseline - ann.len_model) / np.std(ann.len_baseline - ann.len_model, ddof=1))[keep]
    d = Design([Factor.dense("len", x), Factor.dense("diff", difficulty[:ann.n][keep]),
                Factor.dense("one", np.ones(x.size))])
    for C in (0.05, 2.78, 100.0):
        w = fit_logistic(d, ann.p[keep], C=C, l1=1.0)
        g = C * d.rmatvec(sigmoid(d.matvec(w)) - ann.p[keep])
        viol = np.where(w != 0, np.abs(g + np.sign(w)), np.maximum(np.abs(g) - 1, 0))
        assert viol.max() < 1e-3  # in units of the L1 weight; the loss gradient is of order C·n


def test_l1_fit_equals_liblinear_on_real_rows(difficulty):
    linear_model = pytest.importorskip("sklearn.linear_model", reason="scikit-learn not installed")
    ann = _ann("gpt-3.5-turbo-1106")
    keep = ~np.isnan(ann.p)
    x = np.tanh((ann.len_baseline - ann.len_model) / np.std(ann.len_baseline - ann.len_model, ddof=1))[keep]
    X = np.column_stack([x, difficulty[:ann.n][keep], np.ones(x.size)])
    y = ann.p[keep]
    ours = fit_logistic(Design([Factor.dense(str(j), X[:, j]) for j in range(3)]), y, C=2.78, l1=1.0)
    # AlpacaEval's trick: every row twice, label 1 with weight y and label 0 with weight 1 − y
    clf = linear_model.LogisticRegression(C=2.78, solver="liblinear", l1_ratio=1.0, fit_intercept=False,
                                          tol=1e-10, max_iter=100000)
    clf.fit(np.vstack([X, X]), np.r_[np.ones(y.size), np.zeros(y.size)], sample_weight=np.r_[y, 1 - y])
    assert np.allclose(ours, clf.coef_[0], atol=1e-4)


def test_cross_validation_picks_from_the_grid(difficulty):
    ann = _ann("alpaca-7b")
    x = np.tanh((ann.len_baseline - ann.len_model) / np.std(ann.len_baseline - ann.len_model, ddof=1))
    d = Design([Factor.dense("len", x), Factor.dense("diff", difficulty[:ann.n]), Factor.dense("one", np.ones(ann.n))])
    w, C, scores = cross_validated_logistic(d, ann.p)
    assert C in np.logspace(-4, 4, 10) and scores.argmax() == list(np.logspace(-4, 4, 10)).index(C)
    assert np.all(scores < 0) and scores[0] < scores.max()  # C = 1e-4 zeroes everything: the worst fit


def _repo() -> Repository:
    path = os.environ.get("ALPACA_EVAL_REPO")
    if not path:
        pytest.skip("ALPACA_EVAL_REPO not set: point it at an alpaca_eval checkout or git dir to check every "
                    "leaderboard model (the vendored subset is checked above)")
    return Repository(path)


def test_full_repository_every_model():
    repo = _repo()
    have_gamed = all(repo.annotations(g) is not None for g in GAMED_BASELINES)
    rep = reproduce_leaderboard(repo)
    for r in rep["results"]:
        assert r["win_rate"] == pytest.approx(r["leaderboard_win_rate"], abs=0.01), r["model"]
    if not have_gamed:
        # noreg: the vendored difficulty is this refit (bench/conformance.py wrote it from such a copy)
        vendored = np.array(json.loads((DATA / "instruction_difficulty.json").read_text()))
        if len(rep["models_in_fit"]) == 57:
            assert np.allclose(rep["difficulty"], vendored, atol=1e-6)
        pytest.skip(f"{', '.join(GAMED_BASELINES)} annotations absent from {repo.path}: length_controlled_v1 "
                    "cannot be computed, so the 1.0-point check is not made (raw win rates were checked)")
    for r in rep["results"]:
        if r["leaderboard_length_controlled_winrate"] is not None:
            assert abs(r["length_controlled_winrate"] - r["leaderboard_length_controlled_winrate"]) <= 1.0, r["model"]


def test_instruction_difficulty_recovers_a_known_difficulty():
    # 20 models x 100 instructions, P(m wins on i) = σ(a_m tanh(Δ/sd) + b_m + c_i) given exactly (soft labels)
    rng = np.random.default_rng(0)
    c = rng.normal(0, 1.5, 100)
    anns = []
    for m in range(20):
        len_b = rng.integers(200, 2000, 100).astype(float)
        len_m = len_b * rng.lognormal(rng.normal(0, 0.5), 0.4, 100)
        x = np.tanh((len_b - len_m) / np.std(len_b - len_m, ddof=1))
        p = sigmoid(rng.uniform(-2, -0.5) * x + rng.normal(-1, 1) + c)
        rows = [{"instruction": f"q{i}", "output_1": "x" * int(len_b[i]), "output_2": "y" * int(len_m[i]),
                 "generator_1": "base", "generator_2": f"m{m}", "preference": 1 + float(p[i])} for i in range(100)]
        anns.append(annotations_from_rows(rows, f"m{m}.json"))
    d = instruction_difficulty(anns, baseline="base")
    assert d.shape == (100,) and d[0] == 0.0
    assert np.corrcoef(d, c - c[0])[0, 1] > 0.98  # c relative to instruction 0 (treatment coding)


def test_v1_regularisation_pulls_toward_the_gamed_baselines():
    # gamed baselines: same quality as the baseline, the judge rewards length (P = σ(−2·tanh(Δ/sd) + d));
    # the model: a weaker length effect and a quality term (P = σ(−0.5·tanh(Δ/sd) + 0.5·d − 1))
    rng = np.random.default_rng(0)
    n = 400
    d = rng.normal(0, 1, n)

    def make(name, ratio, a, b, q):
        len_b = rng.integers(300, 1500, n).astype(float)
        len_m = len_b * ratio * rng.lognormal(0, 0.3, n)
        x = np.tanh((len_b - len_m) / np.std(len_b - len_m, ddof=1))
        p = sigmoid(a * x + b * d + q)
        rows = [{"instruction": f"q{i}", "output_1": "x" * int(len_b[i]), "output_2": "y" * int(len_m[i]),
                 "generator_1": "gpt4_1106_preview", "generator_2": name, "preference": 1 + float(p[i])}
                for i in range(n)]
        return annotations_from_rows(rows, f"{name}.json")

    gamed = [make("gpt4_1106_preview_verbose", 1.6, -2.0, 1.0, 0.0), make("gpt4_1106_preview_concise", 0.5, -2.0, 1.0, 0.0)]
    model = make("m", 1.0, -0.5, 0.5, -1.0)
    noreg = length_controlled_winrate(model, d)
    v1 = length_controlled_winrate(model, d, gamed=gamed)
    strong = length_controlled_winrate(model, d, gamed=gamed, regularize_to_baseline_lambda=1000.0)
    assert (noreg["glm"], v1["glm"]) == ("length_controlled_noreg", "length_controlled_v1")
    assert noreg["weights"]["length"] == pytest.approx(-0.5, abs=0.15)
    assert strong["weights"]["length"] == pytest.approx(-2.0, abs=0.15)  # the gamed rows dominate
    assert strong["weights"]["instruction_difficulty"] == pytest.approx(1.0, abs=0.15)
    assert strong["weights"]["length"] < v1["weights"]["length"] < noreg["weights"]["length"]
