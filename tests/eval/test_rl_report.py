"""The RL report's paired before/after comparison, on hand-computed numbers, and the report files it writes."""

import json

import pytest

from palate.eval.rl import format_rl_report, paired_improvement, read_eval_samples, rl_report, write_eval_samples


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
