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
    assert sft[2:7] == ["1,234", "617", "1,300", "2.00×", "0.95×"]
    assert "`python bench/sft.py`" in rows[1] and " when written" in rows[1]  # the load average
    start = rows[0]
    assert "start-up \\| median (s, lower is better); 5 fresh processes" in start and "| 0.84 | – | – | – | – |" in start
    assert "old.json: no 'bench' headline" in md and "broken.json: not valid JSON" in md
    assert sum(ln.startswith("|---") for ln in md.splitlines()) == 1 and md.splitlines()[0] == "# Benchmarks"


def test_table_with_no_results_fails(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    assert table.main(["--results", str(tmp_path / "r"), "--out", str(tmp_path / "b.md")]) == 1
    assert not (tmp_path / "b.md").exists() and "no benchmark results" in capsys.readouterr().err
