"""bench/record.py and bench/table.py on synthetic results (no benchmark is run)."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import record  # noqa: E402
import table  # noqa: E402


def test_write_result_keeps_the_figures_and_adds_a_headline(tmp_path):
    path = record.write_result("sft", {"summary": {"palate": {"tokens_per_s": 300.0}}}, metric="SFT throughput",
                               unit="real tokens/s", palate=300.0, trl=200.0, plain=320.0,
                               path=tmp_path / "sft.json", argv=["bench/sft.py", "--steps", "5"])
    data = json.loads(path.read_text())
    assert data["summary"] == {"palate": {"tokens_per_s": 300.0}}
    head = data["bench"]
    assert head["ratios"] == pytest.approx({"palate_vs_trl": 1.5, "palate_vs_plain": 300 / 320})
    assert head["command"] == "python bench/sft.py --steps 5" and head["machine"]["cores"] >= 1
    assert head["date"][:2] == "20" and head["higher_is_better"] is True
    own = record.write_result("dpo", {}, metric="m", unit="u", palate=2.0, trl=1.0, ratios={"palate_vs_trl": 1.7},
                              path=tmp_path / "dpo.json", argv=["bench/dpo.py"])
    assert json.loads(own.read_text())["bench"]["ratios"] == {"palate_vs_trl": 1.7, "palate_vs_plain": None}


def test_table_has_one_row_per_result_and_lists_skips(tmp_path):
    res = tmp_path / "results"
    record.write_result("sft", {}, metric="SFT throughput", unit="real tokens/s", palate=1234.5, trl=617.25,
                        plain=1300.0, path=res / "sft.json", argv=["bench/sft.py"])
    record.write_result("feedback_startup", {}, metric="start-up | median", unit="s", palate=0.84,
                        higher_is_better=False, note="5 fresh processes", path=res / "feedback_startup.json",
                        argv=["bench/feedback_startup.py"])
    (res / "old.json").write_text(json.dumps({"tokens_per_s": 1.0}))
    (res / "broken.json").write_text("{")
    out = tmp_path / "docs" / "benchmarks.md"
    assert table.main(["--results", str(res), "--out", str(out)]) == 0
    md = out.read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| benchmark")]
    assert [r.split(" | ")[0] for r in rows] == ["| feedback_startup", "| sft"]
    sft = rows[1].split(" | ")
    assert sft[2:9] == ["1,234", "617", "–", "1,300", "2.00×", "0.95×", "–"]  # one TRL figure: the defaults
    assert "`python bench/sft.py`" in rows[1] and " when written" in rows[1]  # the load average
    start = rows[0]
    assert "start-up \\| median (s, lower is better); 5 fresh processes" in start and "| 0.84 | – | – | – | – | – | – |" in start
    assert "old.json: no 'bench' headline" in md and "broken.json: not valid JSON" in md
    assert sum(ln.startswith("|---") for ln in md.splitlines()) == 1 and md.splitlines()[0] == "# Benchmarks"


def test_table_with_no_results_fails(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    assert table.main(["--results", str(tmp_path / "r"), "--out", str(tmp_path / "b.md")]) == 1
    assert not (tmp_path / "b.md").exists() and "no benchmark results" in capsys.readouterr().err


def test_table_shows_trl_defaults_and_best_mfu_and_load(tmp_path):
    res = tmp_path / "results"
    run = {"tokens_per_s": {"palate": 300.0, "plain": 250.0, "trl": 120.0, "trl_best": 150.0},
           "mfu_real_tokens": {"palate": 0.52}, "gemm_peak": {"peak_gflops": 358.0},
           "load_during_run": {"load_1m_mean": 2.4, "load_1m_max": 3.1}}
    record.write_result("reward", {}, metric="RM throughput", unit="real tokens/s", palate=300.0, trl=150.0,
                        plain=250.0, path=res / "reward.json", argv=["bench/reward.py"], run=run)
    out = tmp_path / "b.md"
    assert table.main(["--results", str(res), "--out", str(out)]) == 0
    row = next(ln for ln in out.read_text().splitlines() if ln.startswith("| reward"))
    cells = row.split(" | ")
    assert cells[2:9] == ["300", "120", "150", "250", "2.00×", "1.20×", "52% of 358 fp32 GFLOP/s"]
    assert "load 2.4 (max 3.1) during the run" in row
    head = json.loads((res / "reward.json").read_text())["bench"]
    assert head["run"] == run and "commit" in head


def test_gemm_peak_flops_and_load_watch_report_plausible_figures():
    peak = record.gemm_peak(1, m=64, seconds=0.01)
    assert set(peak["gflops"]) == set(record.GEMM_SHAPES) and peak["peak_gflops"] == max(peak["gflops"].values()) > 0
    cfg = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "vocab_size": 100,
           "num_attention_heads": 2, "num_key_value_heads": 1}
    per_layer = 8 * 8 * 2 + 2 * 8 * 1 * 4 + 3 * 8 * 16
    assert record.flops_per_token(False, cfg)["flops_per_token"] == 6 * 2 * per_layer
    assert record.flops_per_token(True, cfg)["flops_per_token"] == 6 * (2 * per_layer + 800)
    with record.LoadWatch(every=0.01) as lw:
        pass
    assert lw.summary()["samples"] >= 1
