"""Best-of-n on the tiny model: batched sampling, selection by a reward model, rounds, resume."""

import json
import os

import pytest

from palate.config import load_config
from palate.data.readers import read_demonstrations, read_preferences
from palate.models.load import load_model, load_tokenizer
from palate.recipes.best_of_n import BestOfNConfig, train
from palate.rollout.generate import reply, sample
from tests.conftest import marker_preferences, write_jsonl


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    from palate.recipes.reward import RewardConfig
    from palate.recipes.reward import train as train_rm

    root = tmp_path_factory.mktemp("bon")
    data = write_jsonl(root / "marker.jsonl", marker_preferences(120))
    train_rm(load_config(RewardConfig, None, [f"run_dir={root / 'rm'}", f"data.path={data}", "model.name=tiny",
                                              "train.max_steps=5", "train.lr=3e-3", "data.eval_fraction=0",
                                              "log.progress=false"]))
    return root


def config(root, run, *more):
    return load_config(BestOfNConfig, None, [
        f"run_dir={run}", "model.name=tiny", f"reward_model={root / 'rm'}", f"prompts={root / 'marker.jsonl'}",
        "max_prompts=4", "sampling.n=3", "sampling.max_new_tokens=8", "sampling.batch_size=5",
        "train.max_steps=2", "train.lr=1e-3", "log.progress=false", *more])


def test_sampling_is_batched_seeded_and_left_padding_changes_nothing(tok):
    model = load_model("tiny", tokenizer=tok).eval()
    prompts = ["Hi", "Tell me about rivers and the sea, please."]
    a = sample(model, tok, prompts, n=3, max_new_tokens=6, seed=1)
    assert [len(g) for g in a] == [3, 3]
    assert a == sample(model, tok, prompts, n=3, max_new_tokens=6, seed=1)
    assert a != sample(model, tok, prompts, n=3, max_new_tokens=6, seed=2)
    greedy = sample(model, tok, prompts, n=1, max_new_tokens=6, temperature=0, repetition_penalty=1.0)
    alone = [reply(model, tok, p, max_new_tokens=6) for p in prompts]
    assert [g[0].text for g in greedy] == alone  # the short prompt, left-padded, generates as if alone


def test_best_output_keeps_the_highest_reward_per_prompt(reward_run, tmp_path):
    out = train(config(reward_run, tmp_path / "b"))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    samples = [json.loads(x) for x in (tmp_path / "b" / "round-1" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and len(samples) == 12
    for row in rows:
        mine = [s["reward"] for s in samples if s["prompt"] == row["prompt"]]
        assert row["reward"] == max(mine)
    assert len(read_demonstrations(out)) == 4  # palate sft reads it
    summary = json.loads((tmp_path / "b" / "round-1" / "summary.json").read_text())
    assert summary["best_of_n_gain"] >= 0


def test_pairs_output_and_min_gap_drops_are_counted(reward_run, tmp_path):
    out = train(config(reward_run, tmp_path / "p", "output=pairs"))
    pairs = read_preferences(out)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(r["reward_chosen"] >= r["reward_rejected"] for r in rows) and len(pairs) == len(rows)
    out2 = train(config(reward_run, tmp_path / "p2", "output=pairs", "min_gap=1e9"))
    summary = json.loads((tmp_path / "p2" / "round-1" / "summary.json").read_text())
    assert summary["pairs_dropped_below_min_gap"] == 4 and out2.read_text() == ""


@pytest.mark.parametrize("output", ["best", "pairs"])
def test_rounds_fine_tune_between_rounds_and_rerun_skips_finished_rounds(reward_run, tmp_path, output):
    run = tmp_path / output
    train(config(reward_run, run, "rounds=2", f"output={output}"))
    s1 = json.loads((run / "round-1" / "summary.json").read_text())
    s2 = json.loads((run / "round-2" / "summary.json").read_text())
    trained = run / "round-1" / ("sft" if output == "best" else "dpo")
    assert s1["next_policy"] == str(trained) and (trained / "final" / "config.json").exists()
    assert s2["policy"] == str(trained)  # round 2 sampled from the fine-tuned policy
    # a crash before round 2 finished: rerunning redoes round 2 only
    (run / "round-2" / "summary.json").unlink()
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "running"}))
    before = os.stat(run / "round-1" / "samples.jsonl").st_mtime_ns
    train(config(reward_run, run, "rounds=2", f"output={output}"))
    assert os.stat(run / "round-1" / "samples.jsonl").st_mtime_ns == before
    assert (run / "round-2" / "summary.json").exists()
