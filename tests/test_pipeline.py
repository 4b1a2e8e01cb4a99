"""``palate run``: the whole pipeline on the tiny model; the stage cache reruns nothing when nothing changed
and only the downstream stages when one section changes; the panel's majority vote by hand."""

import json

import pytest

from palate.config import ConfigError
from palate.pipeline import PIPELINE_FILE, load_pipeline, run_pipeline, vote

TINY = [
    "model=tiny", "prompts.eval_prompts=6", "prompts.train_prompts=12",
    "sft.data.path=bundled:demonstrations", "sft.data.max_length=64", "sft.train.max_steps=2",
    "sft.train.eval_every=0", "sft.train.save_every=0", "sft.log.progress=false",
    "sample.max_new_tokens=8", "policy.train.max_steps=3", "policy.train.batch_size=4", "policy.train.eval_every=2",
    "policy.train.save_every=0", "policy.data.max_length=64", "policy.data.eval_fraction=0.25",
    "policy.dpo.samples=0", "policy.dpo.watch_prompts=2", "policy.dpo.watch_max_new_tokens=8",
    "policy.log.progress=false", "per_group=true", "eval.max_new_tokens=8", "eval.n_resamples=200",
]


def ran(summary):
    return {s["name"] for s in summary["stages"] if s["ran"]}


def test_vote_is_the_majority_by_a_margin():
    assert vote(["A", "A", "B"], 1) == "a"
    assert vote(["B", "tie", "B", "A"], 1) == "b"
    assert vote(["A", "B", "tie"], 1) == "tie"
    assert vote(["A", "A", "B"], 2) == "tie"  # one vote more is not the two asked for


def test_pipeline_runs_every_stage_then_reruns_only_what_changed(tmp_path):
    args = [f"run_dir={tmp_path / 'p'}", *TINY]
    first = run_pipeline(load_pipeline(None, args))
    every = {"prompts", "sft", "round-1/samples", "round-1/judgments", "round-1/policy", "round-1/policy-concise",
             "round-1/policy-thorough", "round-1/eval"}
    assert ran(first) == every
    root = tmp_path / "p"
    prefs = [json.loads(x) for x in (root / "round-1/judgments/preferences.jsonl").read_text().splitlines()]
    assert len(prefs) == 12 and all(len(p["votes"]) == 6 for p in prefs)  # one pair per prompt, six labelers
    for g in ("concise", "thorough"):
        rows = (root / f"round-1/judgments/preferences.{g}.jsonl").read_text().splitlines()
        assert len(rows) == 12 and all(json.loads(x)["labeler_group"] == g for x in rows)
    results = json.loads((root / PIPELINE_FILE).read_text())["results"]
    assert [r["policy"] for r in results] == ["aligned", "aligned-concise", "aligned-thorough"]
    assert all(set(r["by_labeler_group"]) == {"concise", "thorough"} and r["n"] == 6 for r in results)
    html = (root / "report" / "report.html").read_text()
    assert "Win rate over the SFT policy" in html and "Overoptimisation" in html

    again = run_pipeline(load_pipeline(None, args))
    assert ran(again) == set()

    changed = run_pipeline(load_pipeline(None, [*args, "policy.train.lr=1e-4"]))
    assert ran(changed) == {"round-1/policy", "round-1/policy-concise", "round-1/policy-thorough", "round-1/eval"}

    eval_only = run_pipeline(load_pipeline(None, [*args, "policy.train.lr=1e-4", "eval.max_new_tokens=6"]))
    assert ran(eval_only) == {"round-1/eval"}


def test_bad_pipeline_configs_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="method must be one of"):
        run_pipeline(load_pipeline(None, [f"run_dir={tmp_path}", "method=sft"]))
    with pytest.raises(ConfigError, match="policy.model is set by the pipeline"):
        run_pipeline(load_pipeline(None, [f"run_dir={tmp_path}", "policy.model.name=tiny"]))
    with pytest.raises(ConfigError, match="grpo trains on a reward model"):
        run_pipeline(load_pipeline(None, [f"run_dir={tmp_path}", "method=grpo"]))
