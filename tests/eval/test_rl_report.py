"""The RL report's paired before/after comparison, on hand-computed numbers, and the report files it writes."""

import json

import pytest

from palate.eval.rl import (compare_evaluations, format_reevaluation, format_rl_report, paired_improvement,
                            read_eval_samples, rl_report, write_eval_samples)


def test_paired_improvement_hand_computed():
    before = [1.0, 2.0, 3.0, 4.0]
    after = [2.0, 2.0, 2.5, 6.0]  # deltas +1, 0, -0.5, +2 -> mean 0.625; improved 1 + 0.5 + 0 + 1 = 2.5 / 4
    out = paired_improvement(before, after)
    assert out["n"] == 4
    assert out["before"] == pytest.approx(2.5) and out["after"] == pytest.approx(3.125)
    assert out["delta"] == pytest.approx(0.625)
    assert out["improved_fraction"] == pytest.approx(0.625)
    lo, hi = out["delta_ci"]
    assert -0.5 <= lo <= 0.625 <= hi <= 2.0  # a bootstrap mean never leaves the range of the deltas


def test_paired_improvement_rejects_unpaired_lists():
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_improvement([1.0], [1.0, 2.0])


def test_rl_report_from_a_run_dir(tmp_path):
    rows = [{"step": 0, "eval_reward": 0.5, "eval_kl": 0.0},
            {"step": 1, "reward": 0.4, "kl": 0.1, "kl_k3": 0.05},
            {"step": 2, "reward": 0.9, "kl": 0.3, "kl_k3": 0.2, "eval_reward": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_eval_samples(tmp_path, 0, ["p1", "p2"], ["a", "b"], [0.0, 1.0], [0.0, 0.0])
    write_eval_samples(tmp_path, 2, ["p1", "p2"], ["c", "d"], [1.0, 3.0], [0.2, 0.4])
    write_eval_samples(tmp_path, 2, ["p1", "p2"], ["c", "d"], [1.0, 1.0], [0.2, 0.4])  # a resumed run's rewrite wins
    write_eval_samples(tmp_path, 3, ["p1", "p2"], ["e", "f"], [9.0, 9.0], [9.0, 9.0])  # after the last logged step
    assert sorted(read_eval_samples(tmp_path)) == [0, 2, 3]
    summary = rl_report(tmp_path)
    imp = summary["improvement"]
    assert (imp["from_step"], imp["to_step"]) == (0, 2)
    assert imp["before"] == pytest.approx(0.5) and imp["after"] == pytest.approx(1.0)
    assert imp["delta"] == pytest.approx(0.5) and imp["improved_fraction"] == pytest.approx(0.75)
    assert summary["final_kl"] == pytest.approx(0.3)
    assert [p["step"] for p in summary["eval_curve"]] == [0, 2]
    report = tmp_path / "report"
    assert json.loads((report / "rl_report.json").read_text()) == summary
    for name in ("reward_kl.svg", "reward.svg", "kl.svg"):
        svg = (report / name).read_text()
        assert svg.startswith("<svg") and "polyline" in svg
    text = format_rl_report(summary)
    assert "0.5000 at step 0 -> 1.0000 at step 2" in text and "KL to the reference at the end: 0.3000" in text


def test_a_gain_that_only_avoids_a_penalty_shows_in_the_score_alone(tmp_path):
    # reward = score - 0.5 x truncated. Before: both answers of p1 and p2 truncated; after: none truncated and the
    # scores unchanged, so reward rises by 0.5 per prompt while the reward model's own score stays flat
    prompts, answers = ["p1", "p2"], ["a", "b", "c", "d"]
    scores = [0.2, 0.4, -0.1, 0.1]
    write_eval_samples(tmp_path, 0, prompts, answers, [x - 0.5 for x in scores], None, samples=2, scores=scores,
                       truncated=[True] * 4)
    write_eval_samples(tmp_path, 1, prompts, answers, scores, None, samples=2, scores=scores, truncated=[False] * 4)
    rows = [json.loads(x) for x in (tmp_path / "eval_samples.jsonl").read_text().splitlines()]
    assert [r["truncated"] for r in rows] == [True] * 4 + [False] * 4 and rows[1]["score"] == 0.4
    evals = read_eval_samples(tmp_path)
    assert evals[0][1]["scores"] == [-0.1, 0.1] and evals[0][1]["rewards"] == [-0.6, -0.4]
    out = compare_evaluations(evals[0], evals[1])
    assert out["delta"] == pytest.approx(0.5) and out["samples_per_prompt"] == 2
    assert out["before"] == pytest.approx(-0.35) and out["after"] == pytest.approx(0.15)
    assert out["score"]["delta"] == pytest.approx(0.0) and out["score"]["before"] == pytest.approx(0.15)
    summary = {"n": 2, "samples_per_prompt": 2, "max_new_tokens": 8, "temperature": 1.0,
               "truncated_fraction": {"start": 1.0, "trained": 0.0}, "kl": 0.3, **out}
    assert "score alone, without penalties: 0.1500 -> 0.1500, change +0.0000" in format_reevaluation(summary)


def test_evaluations_without_scores_compare_on_reward_only(tmp_path):
    write_eval_samples(tmp_path, 0, ["p"], ["a"], [0.0], None)
    write_eval_samples(tmp_path, 1, ["p"], ["b"], [1.0], None, scores=[1.0])
    evals = read_eval_samples(tmp_path)
    out = compare_evaluations(evals[0], evals[1])
    assert out["delta"] == pytest.approx(1.0) and "score" not in out
    with pytest.raises(ValueError, match="share no held-out prompt"):
        compare_evaluations(evals[0], {})
    with pytest.raises(ValueError, match="1 scores for 2 held-out answers"):  # nothing written, nothing dropped
        write_eval_samples(tmp_path / "x", 0, ["p", "q"], ["a", "b"], [0.0, 1.0], None, scores=[1.0])
