"""The local judge (tiny model): verdict probabilities equal an independent unpadded forward's softmax over
the A/B logits; grades decompose two-token grades exactly; ``palate judge`` end to end (output read by the
preference reader, summary, malformed rows, clear input errors)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from palate.cli import app
from palate.data.readers import read_preferences
from palate.judges.label import label_file
from palate.judges.local import LocalJudge
from palate.judges.templates import load_template, render
from tests.conftest import write_jsonl
from tests.serve.server import tiny_lm


@pytest.fixture(scope="module")
def judge():
    model, tok = tiny_lm()
    return LocalJudge(model, tok, name="tiny", batch_size=3)


def next_token_probs(judge, user_text):
    """Reference: the prompt alone (no padding, no batch) through the model, full softmax."""
    ids = torch.tensor([judge._encode(user_text)])
    with torch.inference_mode():
        return judge.model(input_ids=ids).logits[0, -1].float().softmax(-1)


def test_verdict_is_the_restricted_next_token_distribution(judge):
    items = [("What is 2+2?", "4", "5"), ("Name a fruit.", "An apple, a common fruit.", "Car."),
             ("Hi", "Hello! How can I help you today?", "hi")]
    verdicts = judge.compare_many(items + [(q, b, a) for q, a, b in items])
    assert judge.forwards >= 2  # 6 prompts in batches of 3, left-padded
    ia, ib = judge.verdict_ids
    for (q, a, b), v in zip(items, verdicts):
        p = next_token_probs(judge, render(judge.template, question=q, answer_a=a, answer_b=b))
        assert v.p_a == pytest.approx(float(p[ia] / (p[ia] + p[ib])), abs=1e-4)
        assert v.confidence == pytest.approx(max(v.p_a, 1 - v.p_a))
        assert v.preference == ("A" if v.p_a > 0.5 else "B")


def test_too_long_and_low_mass_prompts_are_malformed(judge):
    model, tok = tiny_lm()
    strict = LocalJudge(model, tok, min_mass=0.01, max_length=400)
    short, long = strict.compare_many([("q", "a", "b"), ("q", "word " * 500, "b")])
    assert short.malformed and "min_mass" in short.rationale  # a random model puts ~4e-5 on A and B
    assert long.malformed and "> max_length 400" in long.rationale


def test_grade_handles_the_two_token_ten(judge):
    s = judge.rate("What is 2+2?", "4", scale=(1, 10))
    text = render(load_template("single"), question="What is 2+2?", answer="4",
                  rubric="Consider the helpfulness, relevance, accuracy, depth and level of detail of the response.",
                  low="1", high="10")
    p = next_token_probs(judge, text)
    tok = judge.tok
    digit = {g: tok(str(g), add_special_tokens=False)["input_ids"][0] for g in range(1, 10)}
    ids = torch.tensor([judge._encode(text) + [digit[1]]])
    with torch.inference_mode():
        p0_after_1 = float(judge.model(input_ids=ids).logits[0, -1].softmax(-1)[tok("0", add_special_tokens=False)["input_ids"][0]])
    probs = {g: float(p[digit[g]]) for g in range(1, 10)}
    probs[10] = probs[1] * p0_after_1
    probs[1] -= probs[10]
    expected = sum(g * q for g, q in probs.items()) / sum(probs.values())
    assert s.score == pytest.approx(expected, abs=1e-3) and 1 <= s.score <= 10


def test_label_file_writes_preferences_summary_and_malformed(tmp_path, judge):
    rows = [{"prompt": f"Question {i}?", "response_a": f"Answer {i}, explained well.", "response_b": "No.",
             "model_a": "tiny" if i % 2 else "other", "model_b": "other", "id": f"q{i}"} for i in range(4)]
    src = write_jsonl(tmp_path / "cands.jsonl", rows)
    s = label_file(judge, str(src), tmp_path / "out.jsonl", mode="weight")
    assert s["pairs"] == 4 and s["judgments"] == 8 and s["malformed"] == 0 and s["written"] == 4
    assert s["position_bias"]["n"] <= 8 and s["self_preference"]["n"] <= 2  # model_a == "tiny" in rows 1 and 3
    prefs = read_preferences(str(tmp_path / "out.jsonl"))
    assert len(prefs) == 4 and all(0.0 <= p.weight <= 1.0 for p in prefs)
    assert {p.meta["source_id"] for p in prefs} == {"q0", "q1", "q2", "q3"}
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["inconsistency"]["n"] == 4 and summary["mode"] == "weight"
    assert (tmp_path / "out.malformed.jsonl").read_text() == ""


def test_cli_judge_with_human_labels_and_malformed_counts(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Say hi.", "chosen": "Hello there!", "rejected": "Go away."},
        {"prompt": "2+2?", "chosen": "4", "rejected": "22"},
        {"prompt": "Colour of grass?", "chosen": "Green.", "rejected": "It is purple, mostly."}])
    out = tmp_path / "labeled.jsonl"
    r = CliRunner().invoke(app, ["judge", str(src), "--out", str(out), "--judge", "tiny", "--mode", "weight"])
    assert r.exit_code == 0, r.output
    assert "3 pairs judged in both orders" in r.output and "agreement with human labels" in r.output
    assert "position bias: first slot preferred in" in r.output
    assert len(read_preferences(str(out))) == 3
    r = CliRunner().invoke(app, ["judge", str(src), "--out", str(tmp_path / "m.jsonl"), "--judge", "tiny",
                                 "--min-mass", "0.5"])
    assert r.exit_code == 0 and "malformed: 3 pairs (6 single verdicts)" in r.output, r.output
    assert len((tmp_path / "m.malformed.jsonl").read_text().splitlines()) == 3


def test_cli_judge_names_the_bad_row(tmp_path):
    src = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "response_a": "a", "response_b": "b"},
                                               {"prompt": "q", "response_a": "a"}])
    r = CliRunner().invoke(app, ["judge", str(src), "--out", str(tmp_path / "o.jsonl"), "--judge", "tiny"])
    assert r.exit_code == 2 and "bad.jsonl line 2 field 'response_b'" in r.output
    r = CliRunner().invoke(app, ["judge", str(src), "--out", str(tmp_path / "o.jsonl"), "--mode", "vote"])
    assert r.exit_code == 2 and "--mode must be tie or weight" in r.output


def test_reference_guided_template_takes_the_reference_column(tmp_path):
    src = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "2+2?", "response_a": "4", "response_b": "5", "reference": "4"}])
    r = CliRunner().invoke(app, ["judge", str(src), "--out", str(tmp_path / "o.jsonl"), "--judge", "tiny",
                                 "--template", "reference"])
    assert r.exit_code == 0 and "1 pairs judged" in r.output, r.output
    src2 = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "2+2?", "response_a": "4", "response_b": "5"}])
    r = CliRunner().invoke(app, ["judge", str(src2), "--out", str(tmp_path / "o2.jsonl"), "--judge", "tiny",
                                 "--template", "reference"])
    assert r.exit_code == 2 and "['reference']" in r.output
