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


def test_judgments_can_come_from_people_in_the_labeling_app(tmp_path):
    """judge.kind=feedback: the pipeline puts its pairs in a project and waits; labelers (here the simulated
    panel, through the app's real HTTP API) label them; the pipeline exports the majority and trains on it."""
    import threading
    import time

    from sqlalchemy import select

    from palate.feedback.app import create_app
    from palate.feedback.db import Project, open_db
    from palate.feedback.server import BackgroundServer
    from palate.feedback.simulate import default_panel, enroll, run_panel

    db = str(tmp_path / "labels.db")
    open_db(db)  # create the schema before both sides use it
    labeled = {}

    def people():
        _, make = open_db(db)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with make() as s:
                if s.scalar(select(Project).where(Project.slug == "pipeline-r1")) is not None:
                    pairs = enroll(s, "pipeline-r1", default_panel(3))
                    s.commit()
                    break
            time.sleep(0.3)
        else:
            return
        with BackgroundServer(create_app(db)) as srv:
            labeled["run"] = run_panel(srv.url, "pipeline-r1", pairs)

    helper = threading.Thread(target=people, daemon=True)
    helper.start()
    args = [f"run_dir={tmp_path / 'p'}", *[a for a in TINY if not a.startswith("per_group")], "judge.kind=feedback",
            f"judge.db={db}", "judge.overlap=3", "judge.poll_seconds=0.5", "judge.wait_seconds=240"]
    summary = run_pipeline(load_pipeline(None, args))
    helper.join(timeout=60)
    assert labeled["run"].errors == [] and labeled["run"].submitted == 12 * 3
    prefs = [json.loads(x) for x in (tmp_path / "p/round-1/judgments/preferences.jsonl").read_text().splitlines()]
    assert 1 <= len(prefs) <= 12 and all({"prompt", "chosen", "rejected"} <= set(p) for p in prefs)
    assert "round-1/policy" in ran(summary)


def test_best_vs_worst_keeps_the_extreme_pair_by_its_own_verdict():
    from palate.pipeline import best_vs_worst, preference_row

    # responses x, y, z of one prompt: x beats y and z, y beats z -> wins x 2, y 1, z 0: keep (x, z)
    rows = [preference_row("p", "x", "y", "a"), preference_row("p", "x", "z", "a"), preference_row("p", "y", "z", "a"),
            # a cycle on q (each wins once): nothing to keep
            preference_row("q", "u", "v", "a"), preference_row("q", "v", "w", "a"), preference_row("q", "u", "w", "b")]
    kept = best_vs_worst(rows)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in kept] == [("p", "x", "z")]
