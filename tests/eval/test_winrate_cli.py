"""``palate winrate``: judgments made elsewhere → eval/winrates.json + report, as palate's own judging writes them.

AlpacaEval's annotations as shipped (tests/data/alpaca_eval/), palate's own eval/judgments.jsonl rows and palate
Preference rows (``chosen_model``/``rejected_model``); the length unit is explicit and recorded; bad rows fail
with file, row and field, exit code 2, and nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from palate.cli import app
from palate.eval.winrate import read_winrates

DATA = Path(__file__).resolve().parents[1] / "data" / "alpaca_eval"
runner = CliRunner()


def _alpaca(model: str) -> Path:
    return DATA / "results" / model / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json.xz"


def test_alpaca_eval_annotations_give_the_leaderboard_raw_win_rate(tmp_path):
    from palate.eval.alpaca_eval import read_leaderboard

    lb = read_leaderboard(DATA / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv")
    out = tmp_path / "out"
    r = runner.invoke(app, ["winrate", str(_alpaca("alpaca-7b")), str(_alpaca("alpaca-7b_verbose")), "--out", str(out),
                            "--length-unit", "characters", "--n-resamples", "20"])
    assert r.exit_code == 0, r.output
    data = read_winrates(out / "eval" / "winrates.json")
    assert data["baseline"] == "gpt4_1106_preview" and data["length_unit"] == "characters"
    res = {x["policy"]: x for x in data["results"]}
    assert set(res) == {"alpaca-7b", "alpaca-7b_verbose"}  # names from the results/<model>/ folders
    for m, x in res.items():
        assert 100 * x["win_rate"] == pytest.approx(lb[m]["win_rate"], abs=0.01)
        assert x["n"] == lb[m]["n_total"] and x["length_unit"] == "characters"
        assert x["lc_method"] == "joint" and 0 < x["lc_win_rate"] < 1
    assert res["alpaca-7b_verbose"]["mean_length_policy"] > res["alpaca-7b"]["mean_length_policy"]
    assert (out / "report" / "report.html").is_file()
    assert "Win rates" in (out / "report" / "report.html").read_text()
    assert "alpaca-7b_verbose" in r.output


def test_alpaca_eval_lc_beside_palates(tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["winrate", str(_alpaca("gpt-3.5-turbo-1106")), "--out", str(out), "--length-unit", "words",
                            "--lc", "alpaca_eval", "--n-resamples", "10"])
    assert r.exit_code == 0, r.output
    res = read_winrates(out / "eval" / "winrates.json")["results"][0]
    assert res["length_unit"] == "words" and res["alpaca_eval_lc"]["length_unit"] == "characters"
    assert res["alpaca_eval_lc"]["glm"] == "length_controlled_noreg"
    assert 0 < res["alpaca_eval_lc"]["lc_win_rate"] < 1


def _judged_rows(path: Path) -> Path:
    rows = [{"policy": "dpo", "prompt": f"q{i}", "response_a": "a " * (5 + i), "response_b": "b " * 6,
             "judgment": ["win", "loss", "tie", 0.8, None][i % 5], "group": None} for i in range(20)]
    rows += [{"policy": "ppo", "prompt": f"q{i}", "response_a": "c " * (9 + i), "response_b": "b " * 6,
              "judgment": "win" if i % 3 else "loss", "group": None} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_palate_judged_rows_joint_fit_and_malformed_counted(tmp_path):
    src = _judged_rows(tmp_path / "judgments.jsonl")
    r = runner.invoke(app, ["winrate", str(src), "--out", str(tmp_path / "o"), "--length-unit", "words",
                            "--baseline", "sft", "--judge", "panel", "--n-resamples", "20"])
    assert r.exit_code == 0, r.output
    data = read_winrates(tmp_path / "o" / "eval" / "winrates.json")
    assert data["judge"] == "panel" and data["baseline"] == "sft"
    assert data["left_out"] == {"malformed verdict (judgment null)": 4}
    res = {x["policy"]: x for x in data["results"]}
    assert res["dpo"]["n"] == 16 and res["ppo"]["n"] == 20
    assert res["dpo"]["lc_policies"] == ["dpo", "ppo"] and res["dpo"]["mean_length_baseline"] == 6
    # dpo: 4 cycles of win, loss, tie, 0.8 → (1 + 0 + 0.5 + 0.8) / 4
    assert res["dpo"]["win_rate"] == pytest.approx(2.3 / 4)


def test_preference_rows_need_the_baseline_and_model_names(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "long answer " * (i + 1), "rejected": "short",
             "meta": {"chosen_model": "dpo" if i % 4 else "sft", "rejected_model": "sft" if i % 4 else "dpo"}}
            for i in range(12)]
    rows[5]["tie"] = True
    src = tmp_path / "prefs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = runner.invoke(app, ["winrate", str(src), "--out", str(tmp_path / "o"), "--length-unit", "characters",
                            "--n-resamples", "10"])
    assert r.exit_code == 2 and "need --baseline" in r.output
    r = runner.invoke(app, ["winrate", str(src), "--out", str(tmp_path / "o"), "--length-unit", "characters",
                            "--baseline", "sft", "--n-resamples", "10"])
    assert r.exit_code == 0, r.output
    res = read_winrates(tmp_path / "o" / "eval" / "winrates.json")["results"][0]
    # rows 0, 4, 8: sft chosen (dpo loses); row 5 a tie; the other 8 dpo wins → (8 + 0.5) / 12
    assert res["policy"] == "dpo" and res["win_rate"] == pytest.approx(8.5 / 12) and res["ties"] == 1
    del rows[3]["meta"]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = runner.invoke(app, ["winrate", str(src), "--out", str(tmp_path / "o2"), "--length-unit", "characters",
                            "--baseline", "sft"])
    assert r.exit_code == 2 and "line 4 field 'chosen_model'" in r.output
    assert not (tmp_path / "o2").exists()


def test_bad_rows_fail_naming_file_row_and_field(tmp_path):
    import lzma

    rows = json.loads(lzma.decompress(_alpaca("alpaca-7b_concise").read_bytes()))[:30]
    rows[12]["preference"] = "2"
    bad = tmp_path / "results" / "m" / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps(rows))
    r = runner.invoke(app, ["winrate", str(bad), "--out", str(tmp_path / "o"), "--length-unit", "characters"])
    assert r.exit_code == 2 and "row 13 field 'preference'" in r.output
    rows[12]["preference"] = float("inf")
    bad.write_text(json.dumps(rows))  # Python writes Infinity, which json.loads reads back
    r = runner.invoke(app, ["winrate", str(bad), "--out", str(tmp_path / "o"), "--length-unit", "characters"])
    assert r.exit_code == 2 and "row 13 field 'preference'" in r.output
    judged = _judged_rows(tmp_path / "j.jsonl")
    lines = judged.read_text().splitlines()
    lines[2] = lines[2].replace('"tie"', '"maybe"')
    judged.write_text("\n".join(lines) + "\n")
    r = runner.invoke(app, ["winrate", str(judged), "--out", str(tmp_path / "o"), "--length-unit", "words"])
    assert r.exit_code == 2 and "line 3 field 'judgment'" in r.output
    assert not (tmp_path / "o").exists()


def test_length_unit_is_explicit(tmp_path):
    src = tmp_path / "a.json.xz"
    shutil.copy(_alpaca("alpaca-7b"), src)
    r = runner.invoke(app, ["winrate", str(src), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "--length-unit" in r.output
    r = runner.invoke(app, ["winrate", str(src), "--out", str(tmp_path / "o"), "--length-unit", "bytes"])
    assert r.exit_code == 2 and "characters, words, tokens" in r.output
    r = runner.invoke(app, ["winrate", str(src), "--out", str(tmp_path / "o"), "--length-unit", "tokens"])
    assert r.exit_code == 2 and "--tokenizer" in r.output
