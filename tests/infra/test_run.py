import json

import pytest

from palate.config import load_config
from palate.infra.run import RunDir, RunExistsError
from palate.recipes.sft import SFTConfig


def test_metrics_rewind_drops_redone_steps(tmp_path):
    run = RunDir.open(tmp_path / "r", load_config(SFTConfig))
    for s in range(1, 6):
        run.log(s, {"loss": float(s)})
    run.rewind_metrics(3)
    assert [m["step"] for m in run.read_metrics()] == [1, 2, 3]


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="not a palate run"):
        RunDir.open(tmp_path, load_config(SFTConfig))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_status_lifecycle(tmp_path):
    run = RunDir.open(tmp_path / "r", load_config(SFTConfig))
    assert run.status()["state"] == "running"
    run.mark_finished(summary={"steps": 3})
    st = json.loads((tmp_path / "r" / "status.json").read_text())
    assert st["state"] == "finished" and st["summary"] == {"steps": 3} and "running_at" in st
    with pytest.raises(RunExistsError, match="finished run"):
        RunDir.open(tmp_path / "r", load_config(SFTConfig))


def test_a_copied_unfinished_run_resumes_where_it_now_lives(tmp_path):
    import shutil

    cfg = load_config(SFTConfig, None, [f"run_dir={tmp_path / 'a'}", "model.name=tiny"])
    RunDir.open(tmp_path / "a", cfg)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = load_config(SFTConfig, None, [f"run_dir={tmp_path / 'b'}", "model.name=tiny"])
    RunDir.open(tmp_path / "b", moved)  # only run_dir differs: not a changed config
    assert f"run_dir: {tmp_path / 'b'}" in (tmp_path / "b" / "config.yaml").read_text()
    changed = load_config(SFTConfig, None, [f"run_dir={tmp_path / 'b'}", "model.name=tiny", "train.lr=0.5"])
    with pytest.raises(RunExistsError, match="train.lr"):
        RunDir.open(tmp_path / "b", changed)


def test_an_exception_escaping_a_recipe_marks_its_run_failed_and_a_rerun_resumes(tmp_path):
    from palate.infra.run import recorded

    cfg = load_config(SFTConfig, None, [f"run_dir={tmp_path / 'r'}", "model.name=tiny"])

    @recorded
    def recipe(c, fail):
        run = RunDir.open(c.run_dir, c)
        if fail:
            raise fail
        run.mark_finished(summary={"steps": 1})

    with pytest.raises(RuntimeError, match="disk full") as raised:
        recipe(cfg, RuntimeError("disk full"))
    st = json.loads((tmp_path / "r" / "status.json").read_text())
    assert st["state"] == "failed" and st["error"] == "RuntimeError: disk full" and st["traceback"] == "error.log"
    trace = (tmp_path / "r" / "error.log").read_text()  # the whole traceback, for the one-line report
    assert "Traceback (most recent call last)" in trace and "in recipe" in trace and "RuntimeError: disk full" in trace
    from palate.errors import traceback_file

    assert traceback_file(raised.value) == tmp_path / "r" / "error.log"
    assert st["error_at"].endswith(" in recipe") and "test_run.py:" in st["error_at"] and "failed_at" in st

    recipe(cfg, None)  # the same config resumes the failed run, and finishes it
    st = json.loads((tmp_path / "r" / "status.json").read_text())
    assert st["state"] == "finished" and st["last_error"] == "RuntimeError: disk full"
    assert "error" not in st and "error_at" not in st

    with pytest.raises(RunExistsError):  # a finished run is refused: the refusal does not mark it failed
        recipe(cfg, None)
    assert json.loads((tmp_path / "r" / "status.json").read_text())["state"] == "finished"


def test_ctrl_c_is_recorded_as_a_failure_too(tmp_path):
    from palate.infra.run import recorded

    cfg = load_config(SFTConfig, None, [f"run_dir={tmp_path / 'r'}", "model.name=tiny"])

    @recorded
    def recipe(c):
        RunDir.open(c.run_dir, c)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recipe(cfg)
    st = json.loads((tmp_path / "r" / "status.json").read_text())
    assert (st["state"], st["error"]) == ("failed", "KeyboardInterrupt: interrupted")


def test_a_run_started_before_a_config_key_existed_still_resumes(tmp_path):
    import yaml

    cfg = load_config(SFTConfig, None, [f"run_dir={tmp_path / 'r'}", "model.name=tiny"])
    RunDir.open(tmp_path / "r", cfg)
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    del saved["data"]["long_prompts"]  # as written by a palate without data.long_prompts
    (tmp_path / "r" / "config.yaml").write_text(yaml.safe_dump(saved))
    RunDir.open(tmp_path / "r", cfg)  # the default is what that run did: resumes
    changed = load_config(SFTConfig, None, [f"run_dir={tmp_path / 'r'}", "model.name=tiny",
                                            "data.long_prompts=truncate_left"])
    with pytest.raises(RunExistsError, match="data.long_prompts: 'skip' -> 'truncate_left'"):
        RunDir.open(tmp_path / "r", changed)
