import re
from pathlib import Path

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
    assert out.output.startswith("3 ratings usable of 3 rows: what palate kto reads")
    assert "desirable 1, undesirable 1, at the scale's midpoint 1 (KTO skips those)" in out.output


# ----------------------------------------------------------------------------- one config style for every command

import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _palate_log_handlers_restored():
    """A command that fails after setup_logging leaves a handler on CliRunner's closed stream; drop it."""
    log = logging.getLogger("palate")
    before = list(log.handlers)
    yield
    log.handlers[:] = before

# command: (arguments that make a config, a flag, the key=value it is a shortcut for, the YAML line it gives)
CONFIGURED = {
    "eval": (["tiny", "out=ev"], ["--temperature", "0.7"], "temperature=0.7", "temperature: 0.7"),
    "judge": (["pairs.jsonl", "--out", "o.jsonl"], ["--mode", "weight"], "mode=weight", "mode: weight"),
    "serve": (["tiny"], ["--port", "9001"], "port=9001", "port: 9001"),
    "redteam": (["tiny"], ["--threshold", "0.25"], "threshold=0.25", "threshold: 0.25"),
    "plan": (["--params", "7B"], ["--seq-len", "512"], "seq_len=512", "seq_len: 512"),
    # the smaller commands, the same way
    "rm-eval": (["runs/rm", "--data", "bundled:preferences"], ["--batch-size", "4"], "batch_size=4", "batch_size: 4"),
    "score": (["runs/rm", "--input", "rows.jsonl"], ["--normalize"], "normalize=true", "normalize: true"),
    "chat": (["tiny", "hello there"], ["--temperature", "0.5"], "temperature=0.5", "temperature: 0.5"),
    "report": (["runs/x"], ["--out", "r.html"], "out=r.html", "out: r.html"),
    "winrate": (["a.json", "--length-unit", "words"], ["--lc", "alpaca_eval"], "lc=alpaca_eval", "lc: alpaca_eval"),
    "mtbench-show": (["j.jsonl"], ["--mode", "pairwise-all"], "mode=pairwise-all", "mode: pairwise-all"),
    "data check": (["d.jsonl"], ["--max-length", "128"], "max_length=128", "max_length: 128"),
    "safety train": (["--out", "clf"], ["--l2", "0.01"], "l2=0.01", "l2: 0.01"),
    "rl-eval": (["runs/grpo"], ["--samples", "3"], "samples=3", "samples: 3"),
}


def _printed(command, *args) -> str:
    out = runner.invoke(app, [*command.split(), *map(str, args), "--print-config"])
    assert out.exit_code == 0, out.output
    return out.output


@pytest.mark.parametrize("command", CONFIGURED)
def test_print_config_round_trips_through_a_config_file(command, tmp_path):
    base, flag_, _, _ = CONFIGURED[command]
    printed = _printed(command, *base, *flag_)
    f = tmp_path / "cfg.yaml"
    f.write_text(printed)
    assert _printed(command, f) == printed


@pytest.mark.parametrize("command", CONFIGURED)
def test_key_value_override_shows_up_and_the_flag_is_the_same_key(command):
    base, flag_, override, line = CONFIGURED[command]
    default = _printed(command, *base)
    by_key = _printed(command, *base, override)
    assert line not in default.splitlines() and line in by_key.splitlines()
    assert _printed(command, *base, *flag_) == by_key


@pytest.mark.parametrize("command", CONFIGURED)
def test_unknown_key_is_refused_by_name(command):
    base = CONFIGURED[command][0]
    out = runner.invoke(app, [*command.split(), *base, "no_such_key=3", "--print-config"])
    assert out.exit_code == 2
    assert "unknown config key(s) no_such_key" in out.output and "valid keys here" in out.output


def test_a_flag_wins_over_its_key_and_a_key_over_the_file(tmp_path):
    f = tmp_path / "ev.yaml"
    f.write_text("policies: [tiny]\nout: ev\ntemperature: 0.3\nlimit: 4\n")
    printed = _printed("eval", f, "temperature=0.5", "--limit", "2").splitlines()
    assert "temperature: 0.5" in printed and "limit: 2" in printed and "out: ev" in printed
    printed = _printed("eval", f, "limit=9", "--limit", "2").splitlines()
    assert "limit: 2" in printed


def test_positionals_repeated_flags_and_bool_flags_are_their_keys():
    assert _printed("eval", "a", "b", "out=o") == _printed("eval", "policies=[a, b]", "out=o")
    assert _printed("eval", "a", "out=o", "--k", "1", "--k", "5") == _printed("eval", "a", "out=o", "k=[1, 5]")
    assert _printed("plan", "m", "--lora") == _printed("plan", "model=m", "lora=true")
    assert _printed("plan", "m", "--json") == _printed("plan", "m", "json=true")
    assert _printed("serve", "tiny", "--host", "0.0.0.0") == _printed("serve", "model=tiny", "host=0.0.0.0")
    assert _printed("judge", "p.jsonl", "--judge", "http://h:1/v1") == _printed("judge", "input=p.jsonl",
                                                                                  "judge=http://h:1/v1")
    assert "judge: reward:runs/rm" in _printed("redteam", "tiny", "--judge", "reward:runs/rm").splitlines()


def test_a_single_valued_positional_takes_one_value_and_two_files_are_refused(tmp_path):
    out = runner.invoke(app, ["redteam", "a", "b", "--print-config"])
    assert out.exit_code == 2 and "one model expected, got 2: a, b" in out.output
    f = tmp_path / "a.yaml"
    f.write_text("{}\n")
    out = runner.invoke(app, ["plan", str(f), str(f), "--print-config"])
    assert out.exit_code == 2 and "two config files given" in out.output


def test_plan_runs_from_a_config_file_as_from_flags(tmp_path):
    f = tmp_path / "plan.yaml"
    f.write_text(_printed("plan", "--params", "7B", "--devices", "8", "--method", "grpo", "--gpu-memory", "80"))
    from_file = runner.invoke(app, ["plan", str(f)])
    from_flags = runner.invoke(app, ["plan", "--params", "7B", "--devices", "8", "--method", "grpo",
                                     "--gpu-memory", "80"])
    assert from_file.exit_code == 0 and from_file.output == from_flags.output and "fit in 80 GiB" in from_file.output


def test_serve_config_holds_no_api_key(monkeypatch):
    monkeypatch.setenv("PALATE_API_KEY", "s3cret")
    printed = _printed("serve", "tiny", "--api-key", "other-secret")
    assert "s3cret" not in printed and "other-secret" not in printed and "api_key_env: PALATE_API_KEY" in printed


def test_run_needs_what_printing_does_not():
    out = runner.invoke(app, ["eval", "out=o"])
    assert out.exit_code == 2 and "at least one policy" in out.output
    out = runner.invoke(app, ["eval", "tiny"])
    assert out.exit_code == 2 and "--out" in out.output
    out = runner.invoke(app, ["eval", "tiny", "--suite", "nope", "--print-config"])
    assert out.exit_code == 2 and "suite (--suite) must be" in out.output


# ----------------------------------------------------------------------------- one error path


def test_every_command_reports_palate_errors_as_one_line_and_keeps_tracebacks_for_bugs():
    from palate.clikit import App
    from palate.config import ConfigError
    from palate.data.errors import DataError
    from palate.errors import PalateError
    from palate.infra.run import RunExistsError
    from palate.judges.http import JudgeHTTPError, JudgeUnreachable

    assert all(issubclass(e, PalateError) for e in (ConfigError, DataError, RunExistsError, JudgeUnreachable,
                                                       JudgeHTTPError))
    mini = App()
    raised = {"palate": RunExistsError("runs/x exists; pass --overwrite"), "os": FileNotFoundError("no file f.jsonl"),
              "value": ValueError("bad value"), "bug": ZeroDivisionError("a bug")}

    @mini.command()
    def boom(kind: str) -> None:
        raise raised[kind]

    @mini.command()
    def fine() -> None:
        pass

    for kind, message in (("palate", "runs/x exists"), ("os", "no file f.jsonl"), ("value", "bad value")):
        out = runner.invoke(mini, ["boom", kind])
        assert out.exit_code == 2 and out.output == f"error: {raised[kind]}\n" and message in out.output
    # a bug: one line naming the file with the traceback, exit code 1
    bug = runner.invoke(mini, ["boom", "bug"], env={"PALATE_TRACEBACK": ""})
    assert bug.exit_code == 1 and len(bug.output.splitlines()) == 1, bug.output
    assert bug.output.startswith("error: ZeroDivisionError: a bug (unexpected; the traceback is in ")
    assert "palate --debug" in bug.output
    kept = Path(re.search(r"the traceback is in (\S+);", bug.output).group(1))
    assert "Traceback (most recent call last)" in kept.read_text() and "ZeroDivisionError: a bug" in kept.read_text()
    kept.unlink()
    traced = runner.invoke(mini, ["boom", "value"], env={"PALATE_TRACEBACK": "1"})
    assert traced.exit_code == 1 and isinstance(traced.exception, ValueError)


def test_debug_switch_lets_exceptions_through(monkeypatch):
    """``palate --debug CMD`` sets PALATE_TRACEBACK for the command (and the processes it starts)."""
    import os

    monkeypatch.setenv("PALATE_TRACEBACK", "")
    quiet = runner.invoke(app, ["plan", "--params", "not-a-size"])
    assert quiet.exit_code == 2 and quiet.output.startswith("error: ") and os.environ["PALATE_TRACEBACK"] == ""
    loud = runner.invoke(app, ["--debug", "plan", "--params", "not-a-size"])
    assert loud.exit_code == 1 and isinstance(loud.exception, ValueError) and os.environ["PALATE_TRACEBACK"] == "1"


def test_cli_has_no_command_specific_except_clauses():
    import inspect
    import re

    import palate.cli
    import palate.feedback.cli

    for module in (palate.cli, palate.feedback.cli):
        assert not re.search(r"^\s*(try:|except\b)", inspect.getsource(module), re.M), module.__name__


def test_two_positionals_fill_two_keys_and_a_third_is_refused():
    printed = _printed("chat", "tiny", "hi there").splitlines()
    assert "model: tiny" in printed and "message: hi there" in printed
    out = runner.invoke(app, ["chat", "tiny", "hi", "again", "--print-config"])
    assert out.exit_code == 2 and "at most 2 arguments (model, message) expected, got 3" in out.output
    assert _printed("mtbench-show", "j.jsonl", "--model-list", "a", "--model-list", "b") == _printed(
        "mtbench-show", "j.jsonl", "model_list=[a, b]")


def test_label_commands_import_no_torch_and_generate_still_answers_as_palate_label_generate():
    import subprocess
    import sys

    code = ("import sys, palate.feedback.cli; "
            "assert not [m for m in ('torch', 'transformers', 'palate.models', 'palate.rollout') if m in sys.modules]")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
    out = runner.invoke(app, ["label", "generate", "--help"])
    assert out.exit_code == 0 and "--append" in out.output


def test_the_error_wrapper_lets_exits_and_usage_errors_through():
    import typer

    from palate.clikit import App

    mini = App(errors=lambda: pytest.fail("errors() is asked only for an error, never for an exit"))

    @mini.command()
    def stop(code: int) -> None:
        raise typer.Exit(code)

    @mini.command()
    def usage() -> None:
        raise typer.BadParameter("not like that")

    assert runner.invoke(mini, ["stop", "3"]).exit_code == 3
    out = runner.invoke(mini, ["usage"])
    assert out.exit_code == 2 and "not like that" in out.output and "error:" not in out.output
