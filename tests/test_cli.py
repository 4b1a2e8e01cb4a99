from typer.testing import CliRunner

from palate.cli import app
from tests.conftest import write_jsonl

runner = CliRunner()


def test_print_config_applies_overrides():
    out = runner.invoke(app, ["sft", "examples/sft_demo.yaml", "train.lr=1e-4", "--print-config"])
    assert out.exit_code == 0, out.output
    assert "lr: 0.0001" in out.output and "run_dir: runs/demo-sft" in out.output


def test_bad_override_is_a_clear_error():
    out = runner.invoke(app, ["sft", "train.lr=fast", "--print-config"])
    assert out.exit_code == 2 and "train.lr: expected a number" in out.output


def test_data_check_reports_bad_json_with_line(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, '{"prompt": "x", "response": '])
    out = runner.invoke(app, ["data", "check", str(f), "--model", "tiny"])
    assert out.exit_code == 2
    assert f"{f} line 2: invalid JSON" in out.output


def test_data_check_counts_skips(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": ""}])
    out = runner.invoke(app, ["data", "check", str(f), "--model", "tiny"])
    assert out.exit_code == 0, out.output
    assert "1 demonstrations usable of 2 rows" in out.output
    assert "skipped 1 of 2 rows: 1 empty completion" in out.output
    assert "line 2 field 'response'" in out.output


def _gz(path, rows):
    import gzip
    import json

    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_data_check_recognises_a_compressed_hh_preference_file_and_reports_what_rm_reads(tmp_path):
    import json

    long_turn = "Tell me everything about rivers. " * 40  # ~280 tokens: over max_length 128 on its own
    rows = [{"chosen": "\n\nHuman: Best fruit?\n\nAssistant: Mango.", "rejected": "\n\nHuman: Best fruit?\n\nAssistant: Rocks."},
            {"chosen": f"\n\nHuman: {long_turn}\n\nAssistant: Sure.\n\nHuman: And lakes?\n\nAssistant: Lakes are calm.",
             "rejected": f"\n\nHuman: {long_turn}\n\nAssistant: Sure.\n\nHuman: And lakes?\n\nAssistant: No."},
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant:"}]
    f = _gz(tmp_path / "train.jsonl.gz", rows)
    out = runner.invoke(app, ["data", "check", str(f), "--model", "tiny", "--max-length", "128"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"1 preference pairs usable of 3 rows: what palate rm / palate dpo reads from {f} "
                                 "at max_length 128 (long_prompts=skip); 2 preference pairs read")
    assert "1 prompts >= max_length 128 (skipped)" in out.output
    assert "skipped 2 of 3 rows: 1 empty completion, 1 prompt longer than max_length" in out.output
    assert f"{f} line 2 field 'prompt': prompt longer than max_length" in out.output

    cut = runner.invoke(app, ["data", "check", str(f), "--model", "tiny", "--max-length", "128",
                              "--long-prompts", "truncate_left", "--json"])
    report = json.loads(cut.output)
    assert (report["kind"], report["usable"], report["too_long_prompts"]) == ("preferences", 2, 1)
    assert report["data"]["truncated_by_reason"] == {"prompt cut from the left": 1}
    assert report["sequence_tokens"]["max"] <= 128


def test_data_check_recognises_rankings_and_ratings(tmp_path):
    from tests.conftest import write_jsonl

    ranks = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "p", "responses": ["a", "b", "c"], "order": [2, 0, 1]},
                                              {"prompt": "q", "responses": ["a", "b"], "scores": [1, 1]}])
    out = runner.invoke(app, ["data", "check", str(ranks), "--model", "tiny"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("1 rankings usable of 2 rows: what palate rm (reward.records=rankings) reads")
    assert "as pairs for Bradley–Terry: 3" in out.output and "1 tied scores give no full order" in out.output
    ratings = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "response": "a", "label": True},
                                                 {"prompt": "p", "response": "b", "label": False},
                                                 {"prompt": "p", "response": "c", "score": 3, "scale": [1, 5]}])
    out = runner.invoke(app, ["data", "check", str(ratings), "--model", "tiny"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("3 ratings usable of 3 rows: what palate dpo --loss kto reads")
    assert "desirable 1, undesirable 1, at the scale's midpoint 1 (KTO skips those)" in out.output
