"""Constitutional AI loop: seeded resume on the tiny model (fast); end to end on the bundled model (slow),
its SFT and preference files then trained on by ``palate sft`` and ``palate dpo`` recipes."""

import json

import pytest
from typer.testing import CliRunner

from palate.cli import app
from palate.config import load_config
from palate.data.readers import read_demonstrations, read_preferences
from palate.recipes.constitutional import ConstitutionalConfig, train
from tests.conftest import write_jsonl


def config(run_dir, prompts, *more):
    return load_config(ConstitutionalConfig, None, [f"run_dir={run_dir}", f"prompts={prompts}", *more])


def test_resume_after_a_crash_redoes_only_the_missing_chunk_identically(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Tell me one fact about the number {i}."} for i in range(4)])
    args = ("model.name=tiny", "max_new_tokens=6", "batch_size=2", "temperature=0.9", "seed=3")
    run = train(config(tmp_path / "c", prompts, *args))
    records = (run / "records.jsonl").read_text().splitlines()
    assert len(records) == 4 and [json.loads(r)["index"] for r in records] == [0, 1, 2, 3]
    rec = json.loads(records[0])
    assert rec["rounds"][0]["principle"] and rec["rounds"][0]["critique"] and rec["original"]
    # crash after the first chunk: rerunning continues with the second and gets the same records
    (run / "records.jsonl").write_text("\n".join(records[:2]) + "\n")
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "running"}))
    (run / "sft.jsonl").unlink()
    train(config(tmp_path / "c", prompts, *args))
    assert (run / "records.jsonl").read_text().splitlines() == records
    assert len(read_demonstrations(str(run / "sft.jsonl"))) == 4


def test_cli_prints_config_and_rejects_bad_constitution(tmp_path):
    r = CliRunner().invoke(app, ["constitutional", "--print-config", "rounds=2"])
    assert r.exit_code == 0 and "rounds: 2" in r.output and "constitution.yaml" in r.output
    bad = tmp_path / "c.yaml"
    bad.write_text("rules: []\n")
    r = CliRunner().invoke(app, ["constitutional", f"constitution={bad}", f"run_dir={tmp_path / 'r'}"])
    assert r.exit_code == 2 and "expected a top-level 'principles:' list" in r.output


@pytest.mark.slow
def test_bundled_model_critiques_and_revises_into_sft_and_dpo_data(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Give me one tip for sleeping better."},
        {"prompt": "How do I boil an egg?"},
        {"prompt": "Write one sentence about autumn."}])
    run = train(config(tmp_path / "cai", prompts, "model.name=bundled", "max_new_tokens=48", "rounds=1",
                       "batch_size=3"))
    records = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for rec in records:
        assert len(rec["original"].split()) >= 3 and len(rec["rounds"][0]["critique"].split()) >= 3
        assert rec["revised"].strip()
    summary = json.loads((run / "status.json").read_text())["summary"]
    assert summary["sft_rows"] == 3 and summary["pairs"] + summary["unchanged"] == 3 and summary["pairs"] >= 1
    demos = read_demonstrations(str(run / "sft.jsonl"))
    pairs = read_preferences(str(run / "pairs.jsonl"))
    assert [d.response for d in demos] == [r["revised"] for r in records]
    assert all(p.chosen != p.rejected for p in pairs)

    from palate.recipes.dpo import DPOConfig
    from palate.recipes.dpo import train as train_dpo
    from palate.recipes.sft import SFTConfig
    from palate.recipes.sft import train as train_sft

    common = ["model.name=tiny", "train.max_steps=2", "train.batch_size=2", "data.eval_fraction=0", "log.progress=false"]
    sft_final = train_sft(load_config(SFTConfig, None, [f"run_dir={tmp_path / 'sft'}", f"data.path={run / 'sft.jsonl'}",
                                                        "train.lr=1e-3", *common]))
    dpo_final = train_dpo(load_config(DPOConfig, None, [f"run_dir={tmp_path / 'dpo'}", f"data.path={run / 'pairs.jsonl'}",
                                                        "dpo.samples=0", "train.warmup_ratio=0", *common]))
    for final, run_dir in ((sft_final, tmp_path / "sft"), (dpo_final, tmp_path / "dpo")):
        assert (final / "config.json").exists()
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "finished" and status["summary"]["steps"] == 2
