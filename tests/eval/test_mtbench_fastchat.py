"""MT-Bench conformance with FastChat's own files (tests/data/mt_bench/, provenance in its README).

* FastChat's ``question.jsonl`` and ``reference_answer/gpt-4.jsonl`` read unchanged: 80 questions, 2 turns each,
  8 categories x 10, the 30 math/reasoning/coding questions with their GPT-4 reference answers.
* The judge prompt palate builds equals FastChat's for the same inputs: the expected text is made here from
  FastChat's template rows by plain ``str.format`` with the keyword arguments ``run_judge_single`` /
  ``run_judge_pair`` pass, for every variant (single, single multi-turn, math, math multi-turn, pairwise ...).
  On a real FastChat run it equals the ``user_prompt`` FastChat wrote, and an HTTP judge sends exactly FastChat's
  two messages (system prompt, user prompt).
* Judgment files in FastChat's format give ``show_result.py``'s numbers: a real FastChat run (its printed
  figures recorded in the README) and small files built here whose averages are worked out by hand (FastChat's
  ``show_result.py`` at 0e6d3e4, run once on the same rows in all three modes, printed the same numbers).
  FastChat's published judgments (the leaderboard's) are only on the Hugging Face hub, not in its repository.
"""

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from palate.cli import app
from palate.data.errors import DataError
from palate.eval.mtbench import grade, pairwise
from palate.eval.mtbench_judge import (
    SHIPPED,
    check_references,
    load_judge_prompts,
    pair_prompt,
    single_prompt,
)
from palate.eval.mtbench_results import (
    read_pair_judgments,
    read_single_judgments,
    summarise_pairwise,
    summarise_single,
)
from palate.eval.prompts import read_answer_turns, read_mtbench, read_reference_answers
from palate.judges.verdicts import parse_grade
from tests.conftest import write_jsonl

DATA = Path(__file__).parents[1] / "data" / "mt_bench"
QUESTIONS, REFERENCES, JUDGE_PROMPTS = DATA / "question.jsonl", DATA / "reference_answer" / "gpt-4.jsonl", \
    DATA / "judge_prompts.jsonl"
RUN = DATA / "fastchat_run"
GRIFFIN, NORMAL = "Meta-Llama-3-8B-Instruct-Griffin", "Meta-Llama-3-8B-Instruct-Normal"


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def by_id(path: Path) -> dict[int, dict]:
    return {r["question_id"]: r for r in jsonl(path)}


@pytest.fixture(scope="module")
def questions():
    return {q.question_id: q for q in read_mtbench(QUESTIONS, references=REFERENCES)}


@pytest.fixture(scope="module")
def prompts():
    return load_judge_prompts(JUDGE_PROMPTS)


# ---------------------------------------------------------------- the question and reference files as shipped

def test_question_and_reference_files_are_read_as_shipped():
    qs = read_mtbench(QUESTIONS, references=REFERENCES)
    assert len(qs) == 80 and all(len(q.turns) == 2 for q in qs)
    cats = Counter(q.category for q in qs)
    assert cats == {c: 10 for c in ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
                                    "humanities")}
    graded = {q.question_id for q in qs if q.reference is not None}
    assert graded == {str(i) for i in range(101, 131)} == \
        {q.question_id for q in qs if q.category in ("math", "reasoning", "coding")}
    refs = by_id(REFERENCES)
    assert len(refs) == 30
    for q in qs:
        if q.reference is not None:
            assert q.reference == tuple(refs[int(q.question_id)]["choices"][0]["turns"])
            assert len(q.reference) == 2 and all(t.strip() for t in q.reference)
    check_references(qs)  # every judged turn of every reference-graded question has its reference


def test_question_file_alone_keeps_its_own_references_and_says_which_are_missing():
    """FastChat's question rows carry their own (unused by FastChat's judge) references, some with empty
    strings: question 103's second turn is "" (line 23, once refused as 'reference[1]: expected non-empty')."""
    qs = {q.question_id: q for q in read_mtbench(QUESTIONS)}
    raw = by_id(QUESTIONS)
    assert qs["103"].reference == tuple(raw[103]["reference"]) and qs["103"].reference[1] == ""
    assert [i for i, r in raw.items() if "" in r.get("reference", [])] == [103, 108, 110, 131, 133, 142, 143, 144]
    with pytest.raises(ValueError) as e:
        check_references(list(qs.values()))
    assert ("4 question(s) lack one: 103 (reasoning, turn 2); 108 (reasoning, turn 2); 110 (reasoning, turn 2); "
            "123 (coding, turns 1, 2)") in str(e.value) and "--references" in str(e.value)


def test_bad_reference_and_answer_rows_name_file_line_and_field(tmp_path):
    good = jsonl(REFERENCES)[0]
    cases = [({"choices": good["choices"]}, "line 2 field 'question_id': missing"),
             ({**good}, r"line 2 field 'question_id': duplicate question_id 101 \(first at line 1\)"),
             ({"question_id": 7, "choices": []}, "line 2 field 'choices'"),
             ({"question_id": 7, "choices": [{"index": 0}]}, "line 2 field 'choices\\[0\\].turns'"),
             ({"question_id": 7, "choices": [{"turns": ["x", ""]}]}, "line 2 field 'choices\\[0\\].turns\\[1\\]'")]
    for row, where in cases:
        with pytest.raises(DataError, match=f"r.jsonl {where}"):
            read_reference_answers(write_jsonl(tmp_path / "r.jsonl", [good, row]))
    # a model may answer with nothing; a reference may not
    assert read_answer_turns(write_jsonl(tmp_path / "a.jsonl", [cases[-1][0]]), allow_empty=True) == {"7": ("x", "")}


# ---------------------------------------------------------------- judge prompts

def test_shipped_judge_prompts_are_fastchats_file():
    assert SHIPPED.read_bytes() == JUDGE_PROMPTS.read_bytes()
    p = load_judge_prompts()
    assert list(p.prompts) == ["pair-v2", "pair-v2-multi-turn", "pair-math-v1", "pair-math-v1-multi-turn",
                               "single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"]


def fastchat_fields(row: dict, q: dict, ref: dict | None, multi_turn: bool, answers: dict[str, list[str]]) -> dict:
    """The keyword arguments FastChat's run_judge_single / run_judge_pair pass to ``prompt_template.format``."""
    kwargs = {}
    if ref is not None:
        kwargs["ref_answer_1"] = ref["choices"][0]["turns"][0]
        if multi_turn:
            kwargs["ref_answer_2"] = ref["choices"][0]["turns"][1]
    if row["type"] == "single":
        a = answers["a"]
        if multi_turn:
            return dict(question_1=q["turns"][0], question_2=q["turns"][1], answer_1=a[0], answer_2=a[1], **kwargs)
        return dict(question=q["turns"][0], answer=a[0], **kwargs)
    a, b = answers["a"], answers["b"]
    if multi_turn:
        return dict(question_1=q["turns"][0], question_2=q["turns"][1], answer_a_1=a[0], answer_b_1=b[0],
                    answer_a_2=a[1], answer_b_2=b[1], **kwargs)
    return dict(question=q["turns"][0], answer_a=a[0], answer_b=b[0], **kwargs)


ANSWERS = {"a": ["First answer with {braces} and {question} in it, naïve café.", "Second: `def f(): return {}`"],
           "b": ["B says 42.", "B's second answer\n\nwith a blank line."]}


@pytest.mark.parametrize("name,qid,turn", [
    ("single-v1", 81, 1), ("single-v1-multi-turn", 81, 2),
    ("single-math-v1", 101, 1), ("single-math-v1-multi-turn", 101, 2),  # reasoning
    ("single-math-v1", 111, 1), ("single-math-v1-multi-turn", 111, 2),  # math
    ("single-math-v1-multi-turn", 125, 2),                                # coding
    ("single-v1-multi-turn", 131, 2),      # extraction: its own reference row has an empty turn 2, never shown
    ("pair-v2", 81, 1), ("pair-v2-multi-turn", 81, 2),
    ("pair-math-v1", 111, 1), ("pair-math-v1-multi-turn", 111, 2), ("pair-math-v1-multi-turn", 123, 2)])
def test_judge_prompt_equals_fastchats_str_format(questions, prompts, name, qid, turn):
    row = {r["name"]: r for r in jsonl(JUDGE_PROMPTS)}[name]
    q, ref = by_id(QUESTIONS)[qid], by_id(REFERENCES).get(qid)
    expected = row["prompt_template"].format(**fastchat_fields(row, q, ref if "math" in name else None, turn == 2,
                                                               ANSWERS))
    if row["type"] == "single":
        got = single_prompt(prompts, questions[str(qid)], ANSWERS["a"], turn)
    else:
        got = pair_prompt(prompts, questions[str(qid)], ANSWERS["a"], ANSWERS["b"], turn)
    assert got == (name, row["system_prompt"], expected)
    assert "{braces}" in expected and "{question}" in expected  # answers go in verbatim, never re-formatted


def test_prompts_equal_the_user_prompts_of_a_real_fastchat_run(questions, prompts):
    answers = read_answer_turns(RUN / "model_answer" / f"{GRIFFIN}.jsonl", allow_empty=True)
    rows = [r for r in jsonl(RUN / "gpt-4_single.jsonl") if "user_prompt" in r]
    assert len(rows) == 8 and {r["judge"][1] for r in rows} == {"single-v1", "single-v1-multi-turn", "single-math-v1",
                                                                "single-math-v1-multi-turn"}
    for r in rows:
        qid = str(r["question_id"])
        name, _, user = single_prompt(prompts, questions[qid], list(answers[qid]), r["turn"])
        assert name == r["judge"][1] and user == r["user_prompt"], (qid, r["turn"])


def test_palate_reads_every_grade_of_a_real_fastchat_run_as_fastchat_did():
    """FastChat's regex took each score from the judge's text; palate's parse_grade reads the same 326 grades
    (8.5 included) and finds none in the 4 failed calls ('$ERROR$', score -1)."""
    rows = jsonl(RUN / "gpt-4_single.jsonl")
    parsed = [parse_grade(r["judgment"]).score for r in rows]
    assert sum(r["score"] == -1 for r in rows) == 4 and 8.5 in parsed
    assert parsed == [None if r["score"] == -1 else r["score"] for r in rows]


class Endpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that records each request and grades 7 / prefers B."""
    bodies: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Endpoint.bodies.append(body)
        pair = "two AI assistants" in body["messages"][0]["content"]
        text = "B is more correct. [[B]]" if pair else "Decent. Rating: [[7]]"
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def test_http_judge_sends_fastchats_messages(questions, prompts):
    from palate.judges.http import HTTPJudge

    Endpoint.bodies = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        judge = HTTPJudge(f"http://127.0.0.1:{srv.server_port}/v1", model="gpt-4", concurrency=1, max_tokens=2048)
        qs = [questions["81"], questions["111"]]
        single = grade(judge, prompts, qs, [ANSWERS["a"]] * 2, model="m", judge_name="gpt-4")
        pairs = pairwise(judge, prompts, qs, [ANSWERS["a"]] * 2, [ANSWERS["b"]] * 2, model_1="m", model_2="base",
                         judge_name="gpt-4")
    finally:
        srv.shutdown()
    rows = {r["name"]: r for r in jsonl(JUDGE_PROMPTS)}
    expected = []
    for name, qid, turn in [("single-v1", 81, 1), ("single-v1-multi-turn", 81, 2), ("single-math-v1", 111, 1),
                            ("single-math-v1-multi-turn", 111, 2)]:
        row, q, ref = rows[name], by_id(QUESTIONS)[qid], by_id(REFERENCES).get(qid)
        expected.append([{"role": "system", "content": row["system_prompt"]},
                         {"role": "user", "content": row["prompt_template"].format(
                             **fastchat_fields(row, q, ref if "math" in name else None, turn == 2, ANSWERS))}])
    assert [b["messages"] for b in Endpoint.bodies[:4]] == expected
    assert all(b["temperature"] == 0 and b["max_tokens"] == 2048 and b["model"] == "gpt-4" for b in Endpoint.bodies)
    assert [r["score"] for r in single] == [7, 7, 7, 7] and single[0]["judgment"] == "Decent. Rating: [[7]]"
    # game 1 (A = m) says B -> model_2; game 2 (A = base) says B -> model_1: the games disagree, a tie
    assert [(r["g1_winner"], r["g2_winner"]) for r in pairs] == [("model_2", "model_1")] * 4
    g1_game2 = Endpoint.bodies[4 + 4 + 0]["messages"][1]["content"]  # first game 2 prompt: base's answer is A
    assert g1_game2 == rows["pair-v2"]["prompt_template"].format(
        **fastchat_fields(rows["pair-v2"], by_id(QUESTIONS)[81], None, False, {"a": ANSWERS["b"], "b": ANSWERS["a"]}))


def test_local_judge_sees_the_system_prompt_in_its_chat_template(questions, prompts):
    from palate.judges.local import LocalJudge
    from tests.serve.server import tiny_lm

    model, tok = tiny_lm()
    judge = LocalJudge(model, tok, batch_size=2)
    built = [pair_prompt(prompts, questions["81"], ANSWERS["a"], ANSWERS["b"], 1),
             pair_prompt(prompts, questions["111"], ANSWERS["b"], ANSWERS["a"], 2)]
    verdicts = judge.compare_prompts([(s, u) for _, s, u in built])
    ia, ib = judge.verdict_ids
    for (_, system, user), v in zip(built, verdicts):
        text = tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                       tokenize=False, add_generation_prompt=True) + "[["
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            p = model(input_ids=ids).logits[0, -1].float().softmax(-1)
        assert v.p_a == pytest.approx(float(p[ia] / (p[ia] + p[ib])), abs=1e-4)


def test_judge_prompt_files_are_checked(tmp_path):
    rows = jsonl(JUDGE_PROMPTS)
    single = next(i for i, r in enumerate(rows) if r["name"] == "single-v1")
    for change, where in [({"prompt_template": "{question} {answer} {ref_answer_1}"},
                           r"field 'prompt_template': single-v1: placeholder\(s\) \['ref_answer_1'\]"),
                          ({"prompt_template": "{question} {0}"}, "field 'prompt_template': positional"),
                          ({"prompt_template": "{question"}, "field 'prompt_template': not a str.format template"),
                          ({"output_format": "[[rating_a,rating_b]]"}, "field 'output_format': single-v1 must ask"),
                          ({"type": "pairwise"}, "field 'type': single-v1 is a single prompt"),
                          ({"system_prompt": None}, "field 'system_prompt': expected text")]:
        edited = [dict(r, **change) if i == single else r for i, r in enumerate(rows)]
        with pytest.raises(DataError, match=f"p.jsonl line 5 {where}"):  # single-v1 is line 5
            load_judge_prompts(write_jsonl(tmp_path / "p.jsonl", edited))
    only_pairs = load_judge_prompts(write_jsonl(tmp_path / "pairs.jsonl", [r for r in rows if r["type"] == "pairwise"]))
    q = read_mtbench(QUESTIONS, limit=1)[0]
    with pytest.raises(DataError, match="pairs.jsonl field 'name': no judge prompt named 'single-v1'"):
        single_prompt(only_pairs, q, ["a", "b"], 1)


# ---------------------------------------------------------------- judgment files and show_result.py's numbers

def test_a_real_fastchat_run_gives_show_results_numbers():
    rows = read_single_judgments(RUN / "gpt-4_single.jsonl")
    cats = {q.question_id: q.category for q in read_mtbench(QUESTIONS)}
    s = summarise_single(rows, cats)
    # show_result.py printed 8.383721 / 7.2625 / 7.843373 and 3.137500 / 2.2625 / 2.700000 (README). By hand:
    # Normal has 86 turn-1 rows with a score (80 + 10 judged twice - 4 failed calls) summing to 721, 80 turn-2 rows
    # summing to 581; Griffin 80 + 80 rows summing to 251 and 181.
    assert s[NORMAL]["by_turn"] == {"1": pytest.approx(721 / 86), "2": pytest.approx(581 / 80)}
    assert s[NORMAL]["score"] == pytest.approx(1302 / 166) == pytest.approx(7.843373, abs=5e-7)
    assert round(s[NORMAL]["by_turn"]["1"], 6) == 8.383721
    assert (s[NORMAL]["n_graded"], s[NORMAL]["n_malformed"], s[NORMAL]["n_repeated"]) == (166, 4, 10)
    assert s[GRIFFIN]["by_turn"] == {"1": 3.1375, "2": 2.2625} and s[GRIFFIN]["score"] == 2.7
    assert (s[GRIFFIN]["n_graded"], s[GRIFFIN]["n_malformed"], s[GRIFFIN]["n_repeated"]) == (160, 0, 0)
    assert list(s[GRIFFIN]["by_category"]) == ["writing", "roleplay", "reasoning", "math", "coding", "extraction",
                                               "stem", "humanities"]
    by_cat = Counter()
    for r in rows:
        if r["model"] == GRIFFIN:
            by_cat[cats[r["question_id"]]] += r["score"]
    assert s[GRIFFIN]["by_category"] == {c: pytest.approx(v / 20) for c, v in by_cat.items()}


def single_row(qid, model, score, turn, judge="single-v1"):
    return {"question_id": qid, "model": model, "judge": ["gpt-4", judge], "user_prompt": "...",
            "judgment": f"Rating: [[{score}]]", "score": score, "turn": turn, "tstamp": 1.0}


def test_single_judgments_built_by_hand(tmp_path):
    path = write_jsonl(tmp_path / "gpt-4_single.jsonl", [
        single_row(81, "m1", 8, 1), single_row(81, "m1", 6, 2, "single-v1-multi-turn"),
        single_row(101, "m1", 9.5, 1, "single-math-v1"), single_row(101, "m1", -1, 2, "single-math-v1-multi-turn"),
        single_row(81, "m2", 3, 1), single_row(81, "m2", 4, 2, "single-v1-multi-turn"),
        single_row(101, "m2", 2, 1, "single-math-v1"), single_row(101, "m2", 5, 2, "single-math-v1-multi-turn"),
        single_row(101, "m2", 7, 2, "single-math-v1-multi-turn")])  # judged again: counts, as in show_result.py
    s = summarise_single(read_single_judgments(path), {"81": "writing", "101": "reasoning"})
    # m1: turn 1 (8 + 9.5) / 2, turn 2 6 (the -1 left out), average (8 + 6 + 9.5) / 3, not (8.75 + 6) / 2
    assert s["m1"] == {"score": pytest.approx(23.5 / 3), "by_turn": {"1": 8.75, "2": 6.0}, "n_graded": 3,
                       "n_malformed": 1, "n_repeated": 0, "by_category": {"writing": 7.0, "reasoning": 9.5}}
    # m2: turn 1 (3 + 2) / 2, turn 2 (4 + 5 + 7) / 3, average 21 / 5
    assert s["m2"] == {"score": pytest.approx(21 / 5), "by_turn": {"1": 2.5, "2": pytest.approx(16 / 3)},
                       "n_graded": 5, "n_malformed": 0, "n_repeated": 1,
                       "by_category": {"writing": 3.5, "reasoning": pytest.approx(14 / 3)}}
    r = CliRunner().invoke(app, ["mtbench-show", str(path), "--questions", str(QUESTIONS)])
    assert r.exit_code == 0, r.output
    assert "########## Average ##########\n  m1" in r.output and "7.833333" in r.output and "4.200000" in r.output
    assert "1 repeated judgments counted" in r.output and "writing 7.00, reasoning 9.50" in r.output


def pair_row(qid, m1, m2, g1, g2, turn=1):
    return {"question_id": qid, "model_1": m1, "model_2": m2, "g1_winner": g1, "g2_winner": g2,
            "judge": ["gpt-4", "pair-v2"], "g1_user_prompt": "...", "g1_judgment": "...", "g2_user_prompt": "...",
            "g2_judgment": "...", "turn": turn, "tstamp": 1.0}


BASE = "gpt-3.5-turbo"
PAIRS = [pair_row(81, "a", BASE, "model_1", "model_1"),        # a wins
         pair_row(81, "a", BASE, "model_1", "model_2", 2),     # the games disagree: tie
         pair_row(101, "a", BASE, "tie", "model_1"),           # game 1 a tie: tie
         pair_row(101, "a", BASE, "model_2", "model_2", 2),    # a loses
         pair_row(81, "b", BASE, "error", "model_1"),          # an error in either game: left out
         pair_row(81, "b", BASE, "model_1", "model_1", 2),     # b wins
         pair_row(101, "a", "b", "model_2", "model_2"),        # b beats a (no baseline in it)
         pair_row(101, BASE, "b", "model_1", "model_1", 2)]    # the baseline as model_1 beats b


def test_pairwise_judgments_built_by_hand(tmp_path):
    rows = read_pair_judgments(write_jsonl(tmp_path / "gpt-4_pair.jsonl", PAIRS))
    # pairwise-baseline: a 1 win, 1 loss, 2 ties of 4; b 1 win, 1 loss of 2 (its error row left out)
    assert summarise_pairwise(rows, BASE) == {
        "a": {"win": 1, "loss": 1, "tie": 2, "n": 4, "n_error": 0, "win_rate": 0.25, "loss_rate": 0.25,
              "win_rate_adjusted": 0.5},
        "b": {"win": 1, "loss": 1, "tie": 0, "n": 2, "n_error": 1, "win_rate": 0.5, "loss_rate": 0.5,
              "win_rate_adjusted": 0.5}}
    # pairwise-all: every game, the baseline a model like the others; a adds a loss to b, b a win
    every = summarise_pairwise(rows)
    assert {m: (s["win"], s["loss"], s["tie"]) for m, s in every.items()} == {"b": (2, 1, 0), BASE: (2, 2, 2),
                                                                            "a": (1, 2, 2)}
    assert list(every) == ["b", BASE, "a"]  # by win_rate_adjusted: 2/3, 1/2, 2/5
    assert every["a"]["win_rate_adjusted"] == pytest.approx(2 / 5) and every[BASE]["win_rate"] == pytest.approx(1 / 3)
    # --model-list filters on model_1 only, as show_result.py does
    only_a = summarise_pairwise(rows, None, ["a"])
    assert {m: (s["win"], s["loss"], s["tie"]) for m, s in only_a.items()} == {"a": (1, 2, 2), BASE: (1, 1, 2),
                                                                             "b": (1, 0, 0)}
    r = CliRunner().invoke(app, ["mtbench-show", str(tmp_path / "gpt-4_pair.jsonl"), "--mode", "pairwise-baseline"])
    assert r.exit_code == 0, r.output
    assert "a" in r.output and "0.250000  0.250000          0.500000" in r.output


def test_bad_judgment_rows_name_file_line_and_field(tmp_path):
    ok = single_row(81, "m", 5, 1)
    for row, where in [({k: v for k, v in ok.items() if k != "score"}, "line 2 field 'score': missing"),
                       ({**ok, "score": "7"}, "line 2 field 'score': expected a number"),
                       ({**ok, "turn": 3}, "line 2 field 'turn': expected 1 or 2"),
                       (PAIRS[0], "line 2 field 'model': a pairwise judgment row")]:
        with pytest.raises(DataError, match=f"s.jsonl {where}"):
            read_single_judgments(write_jsonl(tmp_path / "s.jsonl", [ok, row]))
    with pytest.raises(DataError, match="p.jsonl line 1 field 'g2_winner': expected one of model_1, model_2, tie"):
        read_pair_judgments(write_jsonl(tmp_path / "p.jsonl", [{**PAIRS[0], "g2_winner": "A"}]))
    with pytest.raises(DataError, match="s.jsonl line 1 field 'model_1': a single-grading judgment row"):
        read_pair_judgments(write_jsonl(tmp_path / "s.jsonl", [ok]))
    r = CliRunner().invoke(app, ["mtbench-show", str(write_jsonl(tmp_path / "gpt-4_pair.jsonl", PAIRS))])
    assert r.exit_code == 2 and "gpt-4_pair.jsonl line 1 field 'model': a pairwise judgment row" in r.output
    assert "--mode pairwise-baseline" in r.output


def test_palates_judgment_files_read_back_as_fastchats(tmp_path, questions, prompts):
    """What palate writes (model_judgment/single.jsonl, pair.jsonl) is read by the FastChat-format readers with the
    same numbers: the two directions share one format."""

    class Fixed:
        def rate_prompts(self, ps, scale):
            return [parse_grade(f"Rating: [[{3 + i % 4}]]") for i, _ in enumerate(ps)]

        def compare_prompts(self, ps):
            from palate.judges.verdicts import parse_pairwise
            return [parse_pairwise("[[A]]" if i % 3 else "[[C]]") for i, _ in enumerate(ps)]

    qs = [questions["81"], questions["101"], questions["125"]]
    single = grade(Fixed(), prompts, qs, [ANSWERS["a"]] * 3, model="m", judge_name="gpt-4")
    pairs = pairwise(Fixed(), prompts, qs, [ANSWERS["a"]] * 3, [ANSWERS["b"]] * 3, model_1="m", model_2=BASE)
    back_s = read_single_judgments(write_jsonl(tmp_path / "s.jsonl", single))
    back_p = read_pair_judgments(write_jsonl(tmp_path / "p.jsonl", pairs))
    assert [r["score"] for r in back_s] == [3, 4, 5, 6, 3, 4]
    assert summarise_single(back_s)["m"]["score"] == pytest.approx(25 / 6)
    # game 1 verdicts (requests 0-5): C A A C A A; game 2 (6-11) the same, and A in game 2 is the baseline:
    # every game pair is a tie or a disagreement, so every one counts as a tie
    assert [(r["g1_winner"], r["g2_winner"]) for r in back_p] == [("tie", "tie"), ("model_1", "model_2"),
                                                                 ("model_1", "model_2"), ("tie", "tie"),
                                                                 ("model_1", "model_2"), ("model_1", "model_2")]
    assert summarise_pairwise(back_p, BASE)["m"] == {"win": 0, "loss": 0, "tie": 6, "n": 6, "n_error": 0,
                                                    "win_rate": 0.0, "loss_rate": 0.0, "win_rate_adjusted": 0.5}
