"""Exports are exactly what palate's readers take, and an exported file trains a reward model as is."""

import json

import pytest
from sqlalchemy import select

from palate.data.readers import read_preferences, read_rankings, read_ratings
from palate.feedback.app import create_app
from palate.feedback.db import Project
from palate.feedback.export import export_rows, judgments_csv, to_jsonl
from palate.feedback.server import BackgroundServer
from palate.feedback.simulate import default_panel, run_panel
from tests.feedback.helpers import Setup, candidate_rows, write_jsonl


def labelled(tmp_path, task_type, rows, overlap=3, **kw):
    """A project labelled by 3 simulated labelers (2 groups) through the HTTP API."""
    st = Setup(str(tmp_path / f"{task_type}.db"))
    st.project("p", task_type, tmp_path, rows, overlap=overlap, **kw)
    panel = default_panel(3)
    for lab in panel:
        st.labeler(lab.name, group=lab.group, projects=["p"])
    with BackgroundServer(create_app(st.db)) as srv:
        result = run_panel(srv.url, "p", [(lab, st.tokens[lab.name]) for lab in panel], seed=1)
    assert not result.errors
    return st, result


def rows_of(st, aggregate="none"):
    with st.sessions() as s:
        return export_rows(s, s.scalar(select(Project)), aggregate)


def test_pairwise_export_reads_as_preferences_with_labelers_groups_and_weights(tmp_path):
    st, result = labelled(tmp_path, "pairwise", candidate_rows(10))
    rows, report = rows_of(st)
    assert result.submitted == 30 and report["rows"] == 30 and report["judgments"] == 30
    prefs = read_preferences(write_jsonl(tmp_path / "prefs.jsonl", rows))
    assert len(prefs) == 30
    assert {p.meta["labeler_group"] for p in prefs} == {"concise", "thorough"}
    assert all(p.meta["labeler_id"].startswith("sim-") and p.meta["judged_at"].endswith("Z") for p in prefs)
    assert all(p.weight == 1.0 and 0 < p.meta["item_agreement"] <= 1 for p in prefs)
    for aggregate in ("majority", "dawid-skene"):
        agg, rep = rows_of(st, aggregate)
        prefs = read_preferences(write_jsonl(tmp_path / f"{aggregate}.jsonl", agg))
        assert len(prefs) + sum(rep["skipped"].values()) == 10
        assert all(0.33 <= p.weight <= 1.0 and len(p.meta["labelers"]) == 3 for p in prefs)
        assert all(abs(sum(p.meta["soft_label"]) - 1) < 1e-6 for p in prefs)
    with st.sessions() as s:
        csv_text = judgments_csv(s, s.scalar(select(Project)))
    assert len(csv_text.strip().splitlines()) == 31 and csv_text.startswith("judgment_id,project,item_id,labeler,group")


def test_ranking_and_rating_and_thumbs_exports_read_back(tmp_path):
    st, _ = labelled(tmp_path, "ranking", candidate_rows(4, per_prompt=3), overlap=2)
    ranks = read_rankings(write_jsonl(tmp_path / "r.jsonl", rows_of(st)[0]))
    assert len(ranks) == 8 and all(sorted(r.order) == [0, 1, 2] for r in ranks)
    borda = read_rankings(write_jsonl(tmp_path / "rb.jsonl", rows_of(st, "majority")[0]))
    assert len(borda) == 4
    st, _ = labelled(tmp_path / "..", "rating", candidate_rows(3, per_prompt=1), overlap=2, criteria=["helpfulness", "honesty"], scale=(1, 5))
    ratings = read_ratings(write_jsonl(tmp_path / "l.jsonl", rows_of(st)[0]))
    assert len(ratings) == 3 * 2 * 2 and all(r.scale == (1.0, 5.0) and 1 <= r.score <= 5 for r in ratings)
    assert {r.meta["criterion"] for r in ratings} == {"helpfulness", "honesty"}
    assert len(read_ratings(write_jsonl(tmp_path / "lm.jsonl", rows_of(st, "majority")[0]))) == 6
    (tmp_path / "t").mkdir()
    st, _ = labelled(tmp_path / "t", "thumbs", candidate_rows(3, per_prompt=2), overlap=1)
    thumbs = read_ratings(write_jsonl(tmp_path / "t.jsonl", rows_of(st)[0]))
    assert len(thumbs) == 6 and {r.score for r in thumbs} <= {0.0, 1.0}


def test_both_bad_and_tie_export_as_ties(tmp_path):
    from palate.feedback.assignment import next_assignment, submit
    from palate.feedback.db import Labeler

    st = Setup(str(tmp_path / "t.db"))
    st.project("p", "pairwise", tmp_path, candidate_rows(2))
    st.labeler("ann", projects=["p"])
    with st.sessions() as s:
        p, ann = s.scalar(select(Project)), s.scalar(select(Labeler))
        for i, choice in enumerate(("both_bad", "tie")):
            a = next_assignment(s, p, ann)
            submit(s, p, ann, a.id, f"k{i}", {"choice": choice})
        rows, _ = export_rows(s, p)
    assert [r["tie"] for r in rows] == [True, True] and [r["meta"]["both_bad"] for r in rows] == [True, False]
    assert all(p.tie for p in read_preferences(write_jsonl(tmp_path / "ties.jsonl", rows)))


def test_exported_file_trains_a_reward_model_with_no_conversion(tmp_path):
    """The app's own HTTP export endpoint -> `palate rm` (tiny model, a few steps)."""
    import httpx

    from palate.config import load_config
    from palate.recipes.reward import RewardConfig, train

    st, _ = labelled(tmp_path, "pairwise", candidate_rows(16, per_prompt=3), pairs_per_prompt=2)
    st.labeler("boss", role="admin")
    with BackgroundServer(create_app(st.db)) as srv:
        r = httpx.get(f"{srv.url}/api/projects/p/export", params={"aggregate": "none"},
                      headers={"authorization": f"Bearer {st.tokens['boss']}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    data = tmp_path / "exported.jsonl"
    data.write_bytes(r.content)
    assert len(r.text.splitlines()) == 96
    cfg = load_config(RewardConfig, None, [f"run_dir={tmp_path / 'rm'}", f"data.path={data}", "model.name=tiny",
                                           "train.lr=3e-3", "train.batch_size=8", "train.max_steps=3", "log.progress=false",
                                           "data.eval_fraction=0.25"])
    final = train(cfg)
    assert (final / "palate_reward.json").exists()
    report = json.loads((tmp_path / "rm" / "data_report.json").read_text())
    ties = sum(1 for line in r.text.splitlines() if json.loads(line)["tie"])
    assert report["n_train"] + report["n_eval"] + ties == 96 and report["skipped_by_reason"].get("tie dropped", 0) == ties
    evald = json.loads((tmp_path / "rm" / "eval" / "rm_eval.json").read_text())
    assert evald["n_pairs"] > 0 and "concise" in json.dumps(evald.get("accuracy_by_group", {}))
