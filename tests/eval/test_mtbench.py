"""MT-Bench: question parsing with malformed rows, per-turn answers that see the conversation, 1–10 grades and
debiased pairwise verdicts aggregated per turn / category (against a rule-following judge whose numbers are
worked out by hand), the radar SVG, the report section, and ``palate eval --suite mtbench`` on tiny."""

import json
import xml.etree.ElementTree as ET

import pytest

from palate.data.errors import DataError
from palate.eval.mtbench import conversation, grade, pairwise, summarise_scores
from palate.eval.plots import radar_svg
from palate.eval.prompts import read_mtbench
from palate.judges.verdicts import Score, Verdict
from tests.conftest import write_jsonl

QS = [{"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]},
      {"question_id": 101, "category": "math", "turns": ["What is 2+2?", "And 3+3?"], "reference": ["4", "6"]},
      {"question_id": 102, "category": "math", "turns": ["What is 5*5?", "Halve it."]}]


class RuleJudge:
    """Grades an answer by its count of the word 'good' (1 + 3 per 'good', at most 10); prefers the answer
    with more 'good's, and always says A on equal counts (a pure position bias)."""

    def rate(self, prompt, response, rubric, scale):
        return Score(min(1 + 3 * response.count("good"), 10), 1.0, scale)

    def compare_many(self, items):
        out = []
        for _, a, b in items:
            pref = "A" if a.count("good") >= b.count("good") else "B"
            out.append(Verdict(pref, 1.0, p_a=1.0 if pref == "A" else 0.0))
        return out


def test_read_mtbench_and_malformed_rows(tmp_path):
    qs = read_mtbench(write_jsonl(tmp_path / "q.jsonl", QS))
    assert [q.question_id for q in qs] == ["81", "101", "102"] and qs[1].reference == ("4", "6")
    assert qs[0].turns == ("Write a poem.", "Make it shorter.")
    for row, where in [({"question_id": 1, "turns": ["a"]}, "line 2 field 'category'"),
                       ({"question_id": 1, "category": "x", "turns": "a"}, "line 2 field 'turns'"),
                       ({"question_id": 1, "category": "x", "turns": ["a", ""]}, r"line 2 field 'turns\[1\]'"),
                       ({"category": "x", "turns": ["a"]}, "line 2 field 'question_id'"),
                       ({"question_id": 81, "category": "x", "turns": ["a"]}, "line 2 field 'question_id': duplicate")]:
        with pytest.raises(DataError, match=f"q2.jsonl {where}"):
            read_mtbench(write_jsonl(tmp_path / "q2.jsonl", [QS[0], row]))


def test_second_turn_sees_the_first_answer(tmp_path):
    q = read_mtbench(write_jsonl(tmp_path / "q.jsonl", QS))[0]
    assert conversation(q, ["A poem."], 1) == [{"role": "user", "content": "Write a poem."},
                                               {"role": "assistant", "content": "A poem."},
                                               {"role": "user", "content": "Make it shorter."}]


def test_grades_and_pairwise_aggregate_by_turn_and_category(tmp_path):
    qs = read_mtbench(write_jsonl(tmp_path / "q.jsonl", QS))
    a = [["good good", "good"], ["good", "bad"], ["good good good", "good good good good"]]  # grades 7,4 / 4,1 / 10,10
    rows = grade(RuleJudge(), qs, a)
    assert [r["score"] for r in rows] == [7, 4, 4, 1, 10, 10]
    s = summarise_scores(rows)
    assert s["score"] == pytest.approx(36 / 6) and s["by_turn"] == {"1": pytest.approx(7.0), "2": pytest.approx(5.0)}
    assert s["by_category"] == {"writing": pytest.approx(5.5), "math": pytest.approx(25 / 4)}
    b = [["good", "good"], ["good", "good"], ["", "good"]]
    # turn 1: A's transcript is its first answer; turn 2: both turns. Counts A vs B:
    # q81 t1 2:1 win, t2 3:2 win; q101 t1 1:1 (A both orders -> tie), t2 1:2 loss; q102 t1 3:0 win, t2 7:1 win
    js = [r["judgment"] for r in pairwise(RuleJudge(), qs, a, b)]
    assert js == ["win", "win", "tie", "loss", "win", "win"]


def test_radar_svg_is_valid_and_has_one_polygon_per_series():
    svg = radar_svg({"p": {"writing": 5, "math": 10, "coding": 2}, "q": {"writing": 8}}, 0, 10, "MT")
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    series = [p for p in root.iter(f"{ns}polygon") if p.get("class") == "series"]
    assert len(series) == 2 and [t.text for t in root.iter(f"{ns}text") if t.get("class") == "axis-label"] == \
        ["writing", "math", "coding"]
    # axes at -90, 30 and 150 degrees; radius r = min(560, 324) / 2 - 46 = 116 around the centre (cx, cy):
    # p's writing 5 is r/2 straight up, its math 10 the full radius at 30 degrees (right and below)
    pts = [tuple(map(float, xy.split(","))) for xy in series[0].get("points").split()]
    cx, cy = 560 / 2 - 60, 36 + (360 - 36) / 2
    assert pts[0] == pytest.approx((cx, cy - 58), abs=0.1)
    assert pts[1] == pytest.approx((cx + 116 * 3 ** 0.5 / 2, cy + 58), abs=0.1)
    assert "no data" in radar_svg({}, 0, 10)


@pytest.mark.slow
def test_cli_mtbench_on_tiny_and_report(tmp_path):
    from typer.testing import CliRunner

    from palate.cli import app
    from palate.eval.report import render

    q = write_jsonl(tmp_path / "question.jsonl", QS[:2])
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["eval", "tiny", "--suite", "mtbench", "--prompts", str(q), "--judge", "local:tiny",
                                 "--baseline", "tiny", "--max-new-tokens", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "mtbench" / "mtbench.json").read_text())
    m = s["models"]["tiny"]
    assert m["n_graded"] + m["n_malformed"] == 4 and 1 <= m["score"] <= 10
    assert set(m["by_category"]) == {"writing", "math"}
    assert s["generated"] == 4  # two turns of two questions; the baseline (same model and settings) reuses them
    p = s["pairwise"]["tiny"]
    assert p["wins"] == p["losses"] == 0 and p["ties"] == p["n"] == 4  # identical answers: every verdict is a tie
    assert ET.fromstring((out / "mtbench" / "radar.svg").read_text()) is not None
    html, md = render(out)
    assert "MT-Bench score by category" in html and "MT-Bench score" in md
    bad = CliRunner().invoke(app, ["eval", "tiny", "--suite", "mtbench", "--prompts", str(q), "--out", str(out)])
    assert bad.exit_code == 2 and "AI judge" in bad.output
