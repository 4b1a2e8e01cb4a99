"""Reward-model recipe on the tiny model: learning a synthetic preference, HF compatibility, ensembles,
ties, rankings, resume and clear errors for malformed comparison files."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from palate.config import load_config
from palate.data.errors import DataError
from palate.models.heads import RewardModel, scores_from_heads
from palate.recipes.reward import RewardConfig, train
from tests.conftest import marker_preferences, write_jsonl


def config(run_dir, data, *more):
    return load_config(RewardConfig, None, [
        f"run_dir={run_dir}", f"data.path={data}", "model.name=tiny", "train.lr=3e-3", "train.batch_size=8",
        "log.progress=false", "data.eval_fraction=0.25", *more,
    ])


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_learns_marker_preference_to_95_percent_held_out(tmp_path, marker_jsonl):
    final = train(config(tmp_path / "r", marker_jsonl, "train.epochs=3", "train.eval_every=10"))
    report = json.loads((tmp_path / "r" / "eval" / "rm_eval.json").read_text())
    assert report["n_pairs"] == 60
    assert report["accuracy"]["accuracy"] > 0.95, report["accuracy"]
    assert report["accuracy"]["ci_low"] <= report["accuracy"]["accuracy"] <= report["accuracy"]["ci_high"]
    # calibration, length bias, per-group and plots are all there
    assert 0 <= report["calibration"]["ece"] <= 1
    assert set(report["accuracy_by_group"]) >= {"key", "A", "B"}
    for name in ("reliability.svg", "reward_distribution.svg", "reward_vs_length.svg"):
        assert (tmp_path / "r" / "eval" / name).read_text().startswith("<svg")
    # held-out accuracy was logged during training, and improved
    accs = [m["eval_accuracy"] for m in metrics(tmp_path / "r") if "eval_accuracy" in m]
    assert accs and accs[-1] >= accs[0]
    meta = json.loads((final / "palate_reward.json").read_text())
    assert meta["std"] > 0 and meta["n"] > 0 and meta["heads"] == 1


def test_saved_model_loads_in_transformers_with_identical_rewards(tmp_path, marker_jsonl):
    final = train(config(tmp_path / "r", marker_jsonl, "train.max_steps=5", "data.eval_fraction=0"))
    rm = RewardModel.load(tmp_path / "r")
    prompts = ["Say something about the lamp."] * 3
    responses = ["river sunshine lamp", "river stone lamp paper paper", "sunshine"]
    ours = rm.score(prompts, responses).mean

    tok = AutoTokenizer.from_pretrained(final)
    hf = AutoModelForSequenceClassification.from_pretrained(final).eval()
    assert tok.pad_token_id != tok.eos_token_id  # else HF would read the reward one token early
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                     tokenize=False).rstrip("\n") for p, r in zip(prompts, responses)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        theirs = hf(**enc).logits.squeeze(-1)
    assert torch.allclose(ours, theirs, atol=1e-5)
    normalised = rm.score(prompts, responses, normalize=True).mean
    meta = json.loads((final / "palate_reward.json").read_text())
    assert torch.allclose(normalised, (ours - meta["mean"]) / meta["std"], atol=1e-5)


def test_ensemble_heads_disagree_and_identical_heads_have_zero_std(tmp_path, marker_jsonl):
    train(config(tmp_path / "e", marker_jsonl, "train.max_steps=10", "reward.heads=3", "data.eval_fraction=0"))
    rm = RewardModel.load(tmp_path / "e")
    assert rm.n_heads == 3
    s = rm.score(["Say something about the lamp."] * 2, ["river lamp", "sunshine stone"])
    assert s.heads.shape == (2, 3) and (s.std > 0).all()
    assert torch.allclose(s.mean, s.heads.mean(-1))
    # RL's pessimistic ensemble reward is mean − k·std of the normalised heads; "mean" ignores the std
    from palate.rollout.rewards import Rewarder, RewardConfig as RLReward

    prompts, responses = ["Say something about the lamp."] * 2, ["river lamp", "sunshine stone"]
    ref = rm.score(prompts, responses, normalize=True)
    args = (prompts, responses, torch.tensor([2, 2]), torch.tensor([True, True]))
    pess = Rewarder(RLReward(model=str(tmp_path / "e"), ensemble="pessimistic", pessimism=2.0))(*args)
    assert torch.allclose(pess.total, ref.mean - 2.0 * ref.std, atol=1e-5) and torch.allclose(pess.std, ref.std)
    mean = Rewarder(RLReward(model=str(tmp_path / "e")))(*args)
    assert torch.allclose(mean.total, ref.mean, atol=1e-5) and (pess.total < mean.total).all()
    with torch.no_grad():  # make every head a copy of the first: the ensemble can no longer disagree
        w = rm.model.score.weight
        w.copy_(w[:1].expand_as(w))
    same = rm.score(["Say something about the lamp."] * 2, ["river lamp", "sunshine stone"])
    assert torch.equal(same.std, torch.zeros(2))
    assert torch.equal(scores_from_heads(torch.ones(4, 1)).std, torch.zeros(4))


def test_bootstrap_gives_each_head_its_own_resample():
    from palate.recipes.reward import bootstrap_counts

    counts = bootstrap_counts(500, 4, seed=0, enabled=True)
    assert counts.shape == (500, 4)
    assert abs(float(counts.mean()) - 1.0) < 0.1  # Poisson(1)
    assert not torch.equal(counts[:, 0], counts[:, 1])
    assert torch.equal(counts, bootstrap_counts(500, 4, seed=0, enabled=True))
    assert bootstrap_counts(500, 1, seed=0, enabled=True) is None


def test_ties_are_dropped_with_a_count_or_trained_softly(tmp_path):
    rows = marker_preferences(40)
    for r in rows[:6]:
        r["tie"] = True
    data = write_jsonl(tmp_path / "ties.jsonl", rows)
    train(config(tmp_path / "drop", data, "train.max_steps=2", "data.eval_fraction=0"))
    report = json.loads((tmp_path / "drop" / "data_report.json").read_text())
    assert report["n_train"] == 34 and report["skipped_by_reason"] == {"tie dropped": 6}
    train(config(tmp_path / "soft", data, "train.max_steps=2", "data.eval_fraction=0", "reward.ties=soft"))
    report = json.loads((tmp_path / "soft" / "data_report.json").read_text())
    assert report["n_train"] == 40 and report["n_train_ties"] == 6 and report["skipped"] == 0


def ranking_rows(n):
    rows = []
    for r in marker_preferences(n):
        rows.append({"prompt": r["prompt"], "responses": [r["rejected"], r["chosen"] + " sunshine", r["chosen"]],
                     "order": [1, 2, 0]})
    return rows


@pytest.mark.parametrize("loss", ["plackett_luce", "bradley_terry"])
def test_rankings_train_listwise_or_as_pairs(tmp_path, loss):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(80))
    train(config(tmp_path / loss, data, "train.epochs=2", "reward.records=rankings", f"reward.loss={loss}"))
    report = json.loads((tmp_path / loss / "eval" / "rm_eval.json").read_text())
    assert report["n_pairs"] == 20 * 3  # each held-out 3-way ranking is evaluated as its 3 pairs
    assert report["accuracy"]["accuracy"] > 0.8
    n_train = json.loads((tmp_path / loss / "data_report.json").read_text())["n_train"]
    assert n_train == (60 if loss == "plackett_luce" else 180)


def test_resume_continues_identically(tmp_path, marker_jsonl):
    more = ("train.max_steps=6", "train.save_every=3", "data.eval_fraction=0", "reward.heads=2")
    train(config(tmp_path / "straight", marker_jsonl, *more))
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-00000006", ignore_errors=True)
    (resumed / "config.yaml").write_text((resumed / "config.yaml").read_text().replace(
        str(tmp_path / "straight"), str(resumed)))
    status = json.loads((resumed / "status.json").read_text())
    (resumed / "status.json").write_text(json.dumps({**status, "state": "running"}))
    (resumed / "metrics.jsonl").write_text("".join(
        line + "\n" for line in (resumed / "metrics.jsonl").read_text().splitlines()[:4]))  # a crash after step 4
    train(config(resumed, marker_jsonl, *more))
    keys = ("step", "loss", "accuracy", "grad_norm", "lr")
    assert [{k: m[k] for k in keys} for m in metrics(resumed)] == [{k: m[k] for k in keys} for m in metrics(tmp_path / "straight")]


def test_lora_reward_model_trains_head_and_adapter(tmp_path, marker_jsonl):
    final = train(config(tmp_path / "l", marker_jsonl, "train.max_steps=4", "lora.enabled=true", "lora.r=4",
                         "data.eval_fraction=0"))
    hf = AutoModelForSequenceClassification.from_pretrained(final)
    assert hf.score.weight.shape[0] == 1
    assert metrics(tmp_path / "l")[-1]["loss"] > 0


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": "p", "chosen": "a"}, "rejected", "missing field"),
    ({"prompt": "p", "chosen": "a", "rejected": 3}, "rejected", "expected text"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "tie": "yes"}, "tie", "expected true or false"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "weight": -1}, "weight", "must be >= 0"),
])
def test_malformed_comparison_files_name_line_and_field(tmp_path, row, field, message):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    data = write_jsonl(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(DataError) as e:
        train(config(tmp_path / "x", data, "train.max_steps=1"))
    assert f"bad.jsonl line 3 field '{field}'" in str(e.value) and message in str(e.value)


def test_malformed_rankings_name_line_and_field(tmp_path):
    data = write_jsonl(tmp_path / "bad_rank.jsonl", [{"prompt": "p", "responses": ["a", "b"], "order": [0, 0]}])
    with pytest.raises(DataError, match=r"bad_rank.jsonl line 1 field 'order'"):
        train(config(tmp_path / "x", data, "train.max_steps=1", "reward.records=rankings"))


def test_cli_rm_then_rm_eval_and_score(tmp_path, marker_jsonl):
    run = tmp_path / "cli"
    cmd = [sys.executable, "-m", "palate"]
    done = subprocess.run(cmd + ["rm", f"run_dir={run}", f"data.path={marker_jsonl}", "model.name=tiny", "train.lr=3e-3",
                                 "train.batch_size=8", "train.max_steps=20", "log.progress=false"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pairwise accuracy" in done.stderr  # the held-out report is shown in the terminal
    ev = subprocess.run(cmd + ["rm-eval", str(run), "--data", str(marker_jsonl), "--out", str(tmp_path / "ev")],
                        capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr
    assert "pairwise accuracy" in ev.stdout and "ECE" in ev.stdout
    assert json.loads((tmp_path / "ev" / "rm_eval.json").read_text())["n_pairs"] == 240
    rows = write_jsonl(tmp_path / "to_score.jsonl", [{"prompt": "Say something about the lamp.", "response": r, "id": i}
                                                       for i, r in enumerate(["sunshine lamp", "stone lamp"])])
    sc = subprocess.run(cmd + ["score", str(run), "--input", str(rows), "--output", str(tmp_path / "s.jsonl")],
                        capture_output=True, text=True)
    assert sc.returncode == 0, sc.stderr
    scored = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == [0, 1] and all(isinstance(r["reward"], float) for r in scored)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    fail = subprocess.run(cmd + ["score", str(run), "--input", str(bad)], capture_output=True, text=True)
    assert fail.returncode == 2 and "bad.jsonl line 1" in fail.stderr
