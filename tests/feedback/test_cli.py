"""`palate label ...` end to end: init, labelers, project from files, simulate over HTTP, stats, export."""

import json

from typer.testing import CliRunner

from palate.cli import app
from palate.data.readers import read_preferences
from tests.feedback.helpers import candidate_rows, write_jsonl

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["label", *map(str, args)])


def test_label_commands_from_init_to_export(tmp_path):
    db = tmp_path / "f.db"
    r = run("init", "--db", db, "--admin", "boss", "--password", "s3cret")
    assert r.exit_code == 0 and "schema revision 0003" in r.output and "plt_" in r.output
    cands = write_jsonl(tmp_path / "cands.jsonl", candidate_rows(8, per_prompt=3))
    guide = tmp_path / "guide.txt"
    guide.write_text("Prefer correct answers.")
    r = run("create", "ab", "--db", db, "--candidates", cands, "--overlap", "2", "--pairs-per-prompt", "2", "--guidelines", guide)
    assert r.exit_code == 0, r.output
    assert '"items": 16' in r.output
    r = run("add-labeler", "ann", "--db", db, "--group", "g1", "--project", "ab")
    assert r.exit_code == 0 and r.output.strip().startswith("plt_")
    r = run("add-labeler", "gone", "--db", db, "--project", "ab")
    gone = r.output.strip()
    assert run("deactivate", "gone", "--db", db).exit_code == 0
    from palate.feedback.auth import labeler_for_token
    from palate.feedback.db import open_db

    with open_db(str(db))[1]() as s:
        assert labeler_for_token(s, gone) is None  # a deactivated labeler's token is refused
    r = run("simulate", "ab", "--db", db, "--n", "3")  # starts its own server, labels over HTTP
    assert r.exit_code == 0, r.output
    sim = json.loads(r.output.strip().splitlines()[-1])
    assert sim["submitted"] == 32 and not sim["errors"]
    stats = json.loads(run("stats", "ab", "--db", db).output)
    assert stats["judgments"] == 32 and stats["progress"] == 1.0
    out = tmp_path / "prefs.jsonl"
    r = run("export", "ab", "--db", db, "--out", out, "--aggregate", "dawid-skene")
    assert r.exit_code == 0, r.output
    assert len(read_preferences(out, on_error="raise")) + json.loads(r.output.split(": ", 1)[1])["skipped"].get("tied vote", 0) == 16
    r = run("export", "ab", "--db", db, "--out", tmp_path / "hf", "--format", "hf")  # a datasets directory
    assert r.exit_code == 0, r.output
    hf = read_preferences(tmp_path / "hf")
    assert len(hf) == 32 and {p.meta["labeler_group"] for p in hf} == {"concise", "thorough"}
    r = run("export", "ab", "--db", db, "--out", tmp_path / "j.csv", "--format", "csv")
    assert r.exit_code == 0 and len((tmp_path / "j.csv").read_text().splitlines()) == 33


def test_cli_errors_name_file_line_and_field(tmp_path):
    db = tmp_path / "f.db"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "response": "a"}, {"prompt": "p", "responses": "nope"}])
    r = run("create", "x", "--db", db, "--candidates", bad)
    assert r.exit_code == 2 and "bad.jsonl line 2 field 'responses'" in r.output
    r = run("create", "Bad Name!", "--db", db, "--candidates", bad)
    assert r.exit_code == 2 and "project name" in r.output
    assert run("stats", "nope", "--db", db).exit_code == 2


def test_generate_candidates_with_a_palate_model_then_create(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Say hi."}, {"prompt": "Name a colour."}])
    out = tmp_path / "cands.jsonl"
    r = run("generate", "tiny", "--prompts", prompts, "--out", out, "--n", "3", "--max-new-tokens", "6", "--name", "tiny-a")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    empty = int(r.output.split("(")[1].split()[0]) if "empty" in r.output else 0
    assert len(rows) + empty == 6 and {x["model"] for x in rows} == {"tiny-a"}
    assert {x["prompt"] for x in rows} <= {"Say hi.", "Name a colour."} and all(x["response"].strip() for x in rows)
    r = run("create", "gen", "--db", tmp_path / "g.db", "--type", "thumbs", "--candidates", out)
    assert r.exit_code == 0 and f'"items": {len(rows)}' in r.output
