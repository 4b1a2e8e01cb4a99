"""Task success rate: each checker on fixed answers, ROUGE-L / BLEU against hand-computed values, malformed
task rows named by file, line and field, and ``palate eval --suite tasks`` on the tiny model."""

import json

import pytest

from palate.data.errors import DataError
from palate.eval.tasks import check, read_tasks, rouge_l, score_tasks
from tests.conftest import write_jsonl

CHECKER = "def check(answer):\n    return answer.strip().lower().startswith('paris')\n"
ROWS = [{"id": "e", "prompt": "Say yes.", "exact": "yes", "category": "words"},
        {"id": "r", "prompt": "A colour?", "regex": r"\b(red|blue)\b", "category": "words"},
        {"id": "n", "prompt": "What is 1/3?", "numeric": 0.333, "tolerance": 0.001, "category": "math"},
        {"id": "p", "prompt": "Capital of France?", "python": CHECKER},
        {"id": "ref", "prompt": "Describe.", "reference": "the cat sat on the mat"}]


def test_checkers_on_fixed_answers(tmp_path):
    t = {x.id: x for x in read_tasks(write_jsonl(tmp_path / "t.jsonl", ROWS))}
    assert check(t["e"], "  yes\n")[0] and not check(t["e"], "Yes")[0]
    assert check(t["r"], "I like blue.")[0] and not check(t["r"], "bluegreen")[0]
    assert check(t["n"], "It is 1,000 / 3000 = 0.3333")[0] and not check(t["n"], "about 0.34")[0]
    assert check(t["n"], "no idea") == (False, "no number")
    assert check(t["p"], "Paris, of course.")[0]
    ok, detail = check(t["p"], "Lyon")
    assert not ok and "check returned False" in detail


def test_hostile_python_checker_fails_only_its_task(tmp_path):
    rows = [{"id": "loop", "prompt": "x", "python": "def check(answer):\n    while True:\n        pass\n"},
            {"id": "fine", "prompt": "y", "exact": "y"}]
    summary, res = score_tasks(read_tasks(write_jsonl(tmp_path / "t.jsonl", rows)), ["x", "y"])
    assert [r["passed"] for r in res] == [False, True] and res[0]["detail"].startswith("cpu_limit")
    assert summary["success"]["accuracy"] == 0.5


def test_rouge_l_and_bleu_hand_computed(tmp_path):
    # LCS("the cat on the mat", "the cat sat on the mat") = 5 words: P = 5/5, R = 5/6, F = 2PR/(P+R) = 10/11
    assert rouge_l(["the cat on the mat"], ["the cat sat on the mat"]) == [pytest.approx(10 / 11)]
    assert rouge_l(["dogs run"], ["the cat sat"]) == [0.0]
    summary, res = score_tasks(read_tasks(write_jsonl(tmp_path / "t.jsonl", ROWS)),
                               ["yes", "red", "0.3", "paris", "the cat sat on the mat"])
    assert res[4]["rouge_l"] == pytest.approx(1.0) and summary["bleu"] == pytest.approx(100.0)
    assert summary["success"]["accuracy"] == pytest.approx(3 / 4) and summary["n_checked"] == 4
    assert summary["by_category"] == {"math": {"n": 1, "success_rate": 0.0}, "words": {"n": 2, "success_rate": 1.0}}
    assert summary["by_checker"]["python"] == {"n": 1, "success_rate": 1.0}


@pytest.mark.parametrize("row, where", [
    ({"id": 1, "exact": "a"}, "line 2 field 'prompt'"),
    ({"prompt": "p", "exact": "a", "regex": "b"}, "line 2 field 'regex': one checker per task"),
    ({"prompt": "p", "regex": "(unclosed"}, "line 2 field 'regex': not a valid regular expression"),
    ({"prompt": "p", "numeric": "four"}, "line 2 field 'numeric'"),
    ({"prompt": "p", "numeric": 4, "tolerance": -1}, "line 2 field 'tolerance'"),
    ({"prompt": "p", "python": "def check(a):\n  return (\n"}, "line 2 field 'python': checker does not parse"),
    ({"prompt": "p", "python": "def other(a):\n  return True\n"}, "line 2 field 'python': checker must define"),
    ({"prompt": "p"}, "line 2: no checker"),
    ({"id": "a", "prompt": "p", "exact": "x"}, "line 2 field 'id': duplicate id 'a' \\(first at line 1\\)"),
])
def test_malformed_rows_name_file_line_field(tmp_path, row, where):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "ok", "exact": "x"}, row])
    with pytest.raises(DataError, match=f"bad.jsonl {where}"):
        read_tasks(path)


@pytest.mark.slow
def test_cli_tasks_on_tiny(tmp_path):
    from typer.testing import CliRunner

    from palate.cli import app

    tasks = write_jsonl(tmp_path / "tasks.jsonl", [
        {"id": "any", "prompt": "Say anything.", "regex": "(?s).*"},  # matches every answer
        {"id": "never", "prompt": "Say it.", "exact": "this exact sentence will not be produced"},
        {"id": "ref", "prompt": "Describe a cat.", "reference": "a small furry cat"}])
    args = ["eval", "tiny", "--suite", "tasks", "--tasks", str(tasks), "--max-new-tokens", "4",
            "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "o" / "tasks" / "tasks.json").read_text())
    assert s["success"]["accuracy"] == 0.5 and s["n_references"] == 1 and s["generated"] == 3
    assert "success 50.0%" in r.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and json.loads((tmp_path / "o" / "tasks" / "tasks.json").read_text())["reused"] == 3
    bad = CliRunner().invoke(app, ["eval", "tiny", "--suite", "tasks", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "--tasks" in bad.output
