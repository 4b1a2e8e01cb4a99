"""KTO recipe on the tiny model: unpaired ratings (the midpoint skipped with a count), preference pairs as
thumbs up/down, the reference precomputed or live with the same numbers, and `dpo.loss=kto` pointing here."""

import json

import pytest

from palate.config import ConfigError, load_config
from palate.recipes.dpo import DPOConfig
from palate.recipes.kto import KTOConfig, train
from palate.recipes.reference_cache import REFERENCE_CACHE
from tests.conftest import marker_preferences, write_jsonl


def config(run_dir, data, *more):
    return load_config(KTOConfig, None, [
        f"run_dir={run_dir}", f"data.path={data}", "model.name=tiny", "train.lr=2e-3", "train.batch_size=8",
        "train.warmup_ratio=0", "log.progress=false", "data.eval_fraction=0.2", "kto.samples=0", *more,
    ])


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def ratings_jsonl(tmp_path):
    rows = []
    for i, r in enumerate(marker_preferences(200)):
        good = i % 2 == 0
        rows.append({"prompt": r["prompt"], "response": r["chosen"] if good else r["rejected"], "score": 1 if good else 0})
    rows.append({"prompt": "p", "response": "neither", "score": 0.5})  # midpoint: neither, skipped with a count
    return write_jsonl(tmp_path / "ratings.jsonl", rows)


def test_kto_runs_on_ratings(tmp_path):
    train(config(tmp_path / "k", ratings_jsonl(tmp_path), "train.epochs=3", "train.eval_every=20"))
    report = json.loads((tmp_path / "k" / "data_report.json").read_text())
    assert report["skipped"] == 1 and 0 < report["n_desirable"] < report["n_train"]
    last = [m for m in metrics(tmp_path / "k") if "eval_rewards_desirable" in m][-1]
    assert last["eval_rewards_desirable"] > last["eval_rewards_undesirable"]
    assert last["kl_reference_point"] >= 0
    assert (tmp_path / "k" / REFERENCE_CACHE).exists()


def test_kto_accepts_preference_pairs_as_unpaired_thumbs(tmp_path, marker_jsonl):
    train(config(tmp_path / "kp", marker_jsonl, "train.max_steps=3", "data.eval_fraction=0"))
    report = json.loads((tmp_path / "kp" / "data_report.json").read_text())
    assert report["n_train"] == 480 and report["n_desirable"] == 240


def test_precomputed_reference_gives_the_same_losses_as_a_live_one(tmp_path):
    data = ratings_jsonl(tmp_path)
    more = ("train.max_steps=3", "train.eval_every=3")
    train(config(tmp_path / "pre", data, *more))
    train(config(tmp_path / "live", data, *more, "kto.reference=live"))
    pre, live = metrics(tmp_path / "pre"), metrics(tmp_path / "live")
    for key in ("loss", "kl_reference_point", "eval_loss"):
        assert [m[key] for m in pre if key in m] == pytest.approx([m[key] for m in live if key in m], abs=1e-5)
    assert not (tmp_path / "live" / REFERENCE_CACHE).exists()


def test_dpo_loss_kto_points_to_the_kto_recipe():
    with pytest.raises(ConfigError, match="palate kto"):
        load_config(DPOConfig, None, ["dpo.loss=kto"])
    with pytest.raises(ConfigError, match="kto.records must be"):
        from palate.recipes.kto import check

        check(load_config(KTOConfig, None, ["kto.records=thumbs"]).kto)
