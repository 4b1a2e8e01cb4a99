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
