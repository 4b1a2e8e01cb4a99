"""MT-Bench: question parsing with malformed rows, per-turn answers that see the conversation, 1-10 grades and
debiased pairwise verdicts with FastChat's judge prompts aggregated per turn / category (against a rule-following
judge whose numbers are worked out by hand), the radar SVG, the report section, and ``palate eval --suite mtbench``
on tiny. Conformance with FastChat's own files: ``test_mtbench_fastchat.py``."""

import json
import re
import xml.etree.ElementTree as ET

import pytest

from palate.data.errors import DataError
from palate.eval.mtbench import conversation, grade, pairwise
from palate.eval.mtbench_judge import check_references, load_judge_prompts
from palate.eval.mtbench_results import summarise_pairwise, summarise_single
from palate.eval.plots import radar_svg
from palate.eval.prompts import read_mtbench
from palate.judges.verdicts import Score, Verdict
from tests.conftest import write_jsonl

QS = [{"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]},
      {"question_id": 101, "category": "math", "turns": ["What is 2+2?", "And 3+3?"], "reference": ["4", "6"]},
      {"question_id": 102, "category": "math", "turns": ["What is 5*5?", "Halve it."], "reference": ["25", "12.5"]}]


def last_answers(user: str) -> list[str]:
    """The answers a FastChat judge prompt asks about, one per assistant: the turn-1 answer block, or the last
    '### Assistant X:' turn of each conversation."""
    one = re.findall(r"\[The Start of Assistant(?: A| B)?'s Answer\]\n(.*?)\n\[The End of", user, re.DOTALL)
    if one:
        return one
    convs = re.findall(r"<\|The Start of Assistant (\w)'s Conversation with User\|>(.*?)<\|The End", user, re.DOTALL)
    return [conv.rsplit(f"### Assistant {who}:\n", 1)[1].strip() for who, conv in convs]


class RuleJudge:
    """Grades an answer by its count of the word 'good' (1 + 3 per 'good', at most 10; '???' is unreadable);
    prefers the answer with more 'good's, and always says A on equal counts (a pure position bias)."""

    def __init__(self):
        self.seen = []

    def rate_prompts(self, prompts, scale):
        self.seen += prompts
        out = []
        for _, user in prompts:
            (ans,) = last_answers(user)
            out.append(Score(None, None, scale, rationale="no [[grade]]") if "???" in ans else
                       Score(min(1 + 3 * ans.count("good"), 10), 1.0, scale, raw=f"Rating: [[{ans.count('good')}]]"))
        return out

    def compare_prompts(self, prompts):
        self.seen += prompts
        out = []
        for _, user in prompts:
            a, b = last_answers(user)
            pref = "A" if a.count("good") >= b.count("good") else "B"
            out.append(Verdict(pref, 1.0, p_a=1.0 if pref == "A" else 0.0, raw=f"[[{pref}]]"))
        return out


def test_read_mtbench_and_malformed_rows(tmp_path):
    qs = read_mtbench(write_jsonl(tmp_path / "q.jsonl", QS))
    assert [q.question_id for q in qs] == ["81", "101", "102"] and qs[1].reference == ("4", "6")
    assert qs[0].turns == ("Write a poem.", "Make it shorter.")
    for row, where in [({"question_id": 1, "turns": ["a"]}, "line 2 field 'category'"),
                       ({"question_id": 1, "category": "x", "turns": "a"}, "line 2 field 'turns'"),
                       ({"question_id": 1, "category": "x", "turns": ["a", ""]}, r"line 2 field 'turns\[1\]'"),
                       ({"question_id": 1, "category": "x", "turns": ["a"], "reference": ["r", 3]},
                        r"line 2 field 'reference\[1\]': expected text"),
                       ({"category": "x", "turns": ["a"]}, "line 2 field 'question_id'"),
                       ({"question_id": 81, "category": "x", "turns": ["a"]}, "line 2 field 'question_id': duplicate")]:
        with pytest.raises(DataError, match=f"q2.jsonl {where}"):
            read_mtbench(write_jsonl(tmp_path / "q2.jsonl", [QS[0], row]))
    # an empty reference string is read (FastChat ships them), but a reference-graded question needs its text
    qs = read_mtbench(write_jsonl(tmp_path / "q3.jsonl", [QS[0], {**QS[1], "reference": ["4", ""]}]))
    assert qs[1].reference == ("4", "")
    with pytest.raises(ValueError, match=r"1 question\(s\) lack one: 101 \(math, turn 2\)\. Pass FastChat's"):
        check_references(qs)


def test_second_turn_sees_the_first_answer(tmp_path):
    q = read_mtbench(write_jsonl(tmp_path / "q.jsonl", QS))[0]
    assert conversation(q, ["A poem."], 1) == [{"role": "user", "content": "Write a poem."},
                                               {"role": "assistant", "content": "A poem."},
                                               {"role": "user", "content": "Make it shorter."}]


def test_grades_and_pairwise_aggregate_by_turn_and_category(tmp_path):
    qs = read_mtbench(write_jsonl(tmp_path / "q.jsonl", QS))
    prompts, judge = load_judge_prompts(), RuleJudge()
    a = [["good good", "good"], ["good", "bad"], ["good good good", "good good good good"]]  # grades 7,4 / 4,1 / 10,10
    rows = grade(judge, prompts, qs, a, model="p", judge_name="rule")
    assert [r["score"] for r in rows] == [7, 4, 4, 1, 10, 10]
    assert [r["judge"][1] for r in rows] == ["single-v1", "single-v1-multi-turn"] + ["single-math-v1",
                                                                                   "single-math-v1-multi-turn"] * 2
    assert [r["question_id"] for r in rows] == [81, 81, 101, 101, 102, 102] and rows[2]["turn"] == 1
    # the math prompts carry the reference; the multi-turn ones both questions, both answers, both references
    assert "[The Start of Reference Answer]\n4\n[The End of Reference Answer]" in rows[2]["user_prompt"]
    assert "### Reference answer:\n6" in rows[3]["user_prompt"] and "### Assistant A:\ngood\n" in rows[3]["user_prompt"]
    assert judge.seen[0][0] == "You are a helpful assistant." and judge.seen[1][0].startswith("Please act as")
    s = summarise_single(rows)["p"]
    assert s["score"] == pytest.approx(36 / 6) and s["by_turn"] == {"1": pytest.approx(7.0), "2": pytest.approx(5.0)}
    assert s["by_category"] == {"writing": pytest.approx(5.5), "math": pytest.approx(25 / 4)}
    b = [["good", "good"], ["good", "good"], ["", "good"]]
    # the judge compares the last answers ('good' counts A:B). q81 t1 2:1 win; t2 1:1, so A in both orders = model_1
    # then model_2: games disagree -> tie; q101 t1 1:1 tie; t2 0:1 loss; q102 t1 3:0 win, t2 4:1 win
    pairs = pairwise(judge, prompts, qs, a, b, model_1="p", model_2="base", judge_name="rule")
    assert [(r["g1_winner"], r["g2_winner"]) for r in pairs] == [
        ("model_1", "model_1"), ("model_1", "model_2"), ("model_1", "model_2"), ("model_2", "model_2"),
        ("model_1", "model_1"), ("model_1", "model_1")]
    assert [r["judge"][1] for r in pairs[:4]] == ["pair-v2", "pair-v2-multi-turn", "pair-math-v1",
                                                 "pair-math-v1-multi-turn"]
    p = summarise_pairwise(pairs, baseline="base")
    assert p == {"p": {"win": 3, "loss": 1, "tie": 2, "n": 6, "n_error": 0, "win_rate": pytest.approx(3 / 6),
                       "loss_rate": pytest.approx(1 / 6), "win_rate_adjusted": pytest.approx(4 / 6)}}


def test_unreadable_grades_are_minus_one_and_left_out(tmp_path):
    qs = read_mtbench(write_jsonl(tmp_path / "q.jsonl", QS[:1]))
    rows = grade(RuleJudge(), load_judge_prompts(), qs, [["good", "???"]], model="p")
    assert [r["score"] for r in rows] == [4, -1] and rows[1]["judgment"] == "no [[grade]]"
    s = summarise_single(rows)["p"]
    assert s["score"] == 4 and s["n_graded"] == 1 and s["n_malformed"] == 1 and s["by_turn"] == {"1": 4}


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
    single = [json.loads(x) for x in (out / "mtbench" / "model_judgment" / "single.jsonl").read_text().splitlines()]
    assert [(r["question_id"], r["turn"], r["judge"][1]) for r in single] == [
        (81, 1, "single-v1"), (81, 2, "single-v1-multi-turn"), (101, 1, "single-math-v1"),
        (101, 2, "single-math-v1-multi-turn")]
    pair = [json.loads(x) for x in (out / "mtbench" / "model_judgment" / "pair.jsonl").read_text().splitlines()]
    assert len(pair) == 4 and all(r["g1_winner"] != r["g2_winner"] or r["g1_winner"] == "tie" for r in pair)
    html, md = render(out)
    assert "MT-Bench score by category" in html and "MT-Bench score" in md
    bad = CliRunner().invoke(app, ["eval", "tiny", "--suite", "mtbench", "--prompts", str(q), "--out", str(out)])
    assert bad.exit_code == 2 and "AI judge" in bad.output
