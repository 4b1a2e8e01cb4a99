"""Data as shipped and long prompts, end to end: ``palate rm`` and ``palate dpo`` read HH-format ``*.jsonl.gz``
files directly (tests/data/hh-format) with the tiny model at data.max_length=256, skip or cut over-long
prompts (counts checked against this file's own parsing and token counts), evaluate on test.jsonl.gz, and
a failure after the last training step is recorded and resumed without training again."""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from palate.config import load_config
from palate.data.errors import SkipLog
from palate.models.heads import RewardModel
from palate.recipes import reward as reward_recipe
from palate.recipes.dpo import DPOConfig
from palate.recipes.dpo import train as train_dpo
from palate.recipes.prompts import PromptsConfig, prompt_stream
from palate.recipes.reward import RewardConfig
from tests.conftest import write_jsonl

HH = Path(__file__).parents[1] / "data" / "hh-format"
TRAIN, TEST = HH / "train.jsonl.gz", HH / "test.jsonl.gz"
MAX = 256
END = "<|im_end|>"


# ----------------------------------------------------------------------------- our own reading of the files


def hh_rows(path: Path) -> list[dict]:
    """Each line of an HH file split by hand (not with palate's reader): ``None`` for a row the reader must
    skip (an empty answer, or chosen/rejected transcripts that differ before the last answer)."""
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            heads, answers = [], []
            for text in (row["chosen"], row["rejected"]):
                cut = text.rindex("\n\nAssistant:")
                heads.append(text[:cut])
                answers.append(text[cut + len("\n\nAssistant:"):].strip())
            if heads[0] != heads[1] or not all(answers):
                out.append(None)
                continue
            parts = re.split(r"\n\n(Human|Assistant): ", heads[0])
            messages = [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
                        for who, body in zip(parts[1::2], parts[2::2])]
            out.append({"messages": messages, "chosen": answers[0], "rejected": answers[1]})
    return out


def prompt_tokens(tok, messages) -> int:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def answer_tokens(tok, answer: str) -> int:
    return len(tok(answer + END, add_special_tokens=False)["input_ids"])  # SmolLM2: the answer, then <|im_end|>


def expected(tok, path: Path) -> dict[str, int]:
    rows = hh_rows(path)
    usable = [r for r in rows if r is not None]
    long = [r for r in usable if prompt_tokens(tok, r["messages"]) >= MAX]
    # truncate_left: a prompt is cut when it leaves its longer answer less room than min(answer, MAX // 2)
    cut = [r for r in usable if prompt_tokens(tok, r["messages"]) > MAX - min(
        max(answer_tokens(tok, r["chosen"]), answer_tokens(tok, r["rejected"])), MAX // 2)]
    return {"rows": len(rows), "unreadable": len(rows) - len(usable), "usable": len(usable), "long": len(long),
            "cut": len(cut)}


@pytest.fixture(scope="module")
def counts(tok):
    return {"train": expected(tok, TRAIN), "test": expected(tok, TEST)}


def test_the_fixture_is_what_the_readme_says(counts):
    assert counts["train"] == {"rows": 100, "unreadable": 2, "usable": 98, "long": 15, "cut": 49}
    assert counts["test"] == {"rows": 50, "unreadable": 0, "usable": 50, "long": 14, "cut": 27}


# ----------------------------------------------------------------------------- palate rm


def rm_config(run, *more):
    return load_config(RewardConfig, None, [
        f"run_dir={run}", f"data.path={TRAIN}", f"data.eval_path={TEST}", f"data.max_length={MAX}", "model.name=tiny",
        "train.lr=3e-3", "train.batch_size=8", "train.max_steps=4", "log.progress=false", *more])


def test_rm_skips_long_prompts_counted_and_finishes_train_normalise_evaluate(tmp_path, counts):
    run = tmp_path / "rm"
    final = reward_recipe.train(rm_config(run))
    report = json.loads((run / "data_report.json").read_text())
    train_c, test_c = counts["train"], counts["test"]
    assert report["n_train"] == train_c["usable"] - train_c["long"] == 83
    assert report["n_eval"] == test_c["usable"] == 50  # read; the evaluation skips its own long prompts
    assert report["skipped_by_reason"] == {"prompt longer than max_length": train_c["long"], "empty completion": 1,
                                           "chosen and rejected transcripts have different prompts": 1}
    meta = json.loads((final / "palate_reward.json").read_text())
    assert (meta["max_length"], meta["long_prompts"], meta["n_skipped"]) == (MAX, "skip", 0)
    assert meta["n"] == 2 * 83 and meta["std"] > 0  # every response of the pairs trained on, none skipped
    ev = json.loads((run / "eval" / "rm_eval.json").read_text())
    assert ev["n_pairs"] == test_c["usable"] - test_c["long"] == 36
    assert ev["data"]["skipped_by_reason"] == {"prompt longer than max_length": test_c["long"]}
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["summary"]["eval_accuracy"] == ev["accuracy"]["accuracy"]


def test_rm_truncate_left_keeps_every_pair_and_the_end_of_each_prompt(tmp_path, tok, counts):
    run = tmp_path / "rm"
    final = reward_recipe.train(rm_config(run, "data.long_prompts=truncate_left", "train.max_steps=2"))
    report = json.loads((run / "data_report.json").read_text())
    assert report["n_train"] == counts["train"]["usable"] == 98
    assert report["truncated_by_reason"]["prompt cut from the left"] == counts["train"]["cut"] == 49
    ev = json.loads((run / "eval" / "rm_eval.json").read_text())
    assert ev["n_pairs"] == 50 and ev["data"]["skipped"] == 0
    assert ev["data"]["truncated_by_reason"]["prompt cut from the left"] == counts["test"]["cut"] == 27
    assert json.loads((final / "palate_reward.json").read_text())["long_prompts"] == "truncate_left"

    # Scoring cuts the same way: the longest test prompt keeps its last turns, ending with the question asked.
    rows = [r for r in hh_rows(TEST) if r is not None]
    longest = max(rows, key=lambda r: prompt_tokens(tok, r["messages"]))
    rm = RewardModel.load(run)
    skips = SkipLog()
    (ex,) = rm.encode([longest["messages"]], [longest["chosen"]], skips)
    assert prompt_tokens(tok, longest["messages"]) == 625 and len(ex) <= MAX
    assert [s.reason.split(" (")[0] for s in skips.truncations] == ["prompt cut from the left"]
    kept = tok.decode(ex.input_ids[: ex.completion_start])
    question = longest["messages"][-1]["content"]
    assert kept.endswith(f"<|im_start|>user\n{question}{END}\n<|im_start|>assistant\n")
    original = tok.apply_chat_template(longest["messages"], tokenize=False, add_generation_prompt=True)
    after_system = kept.split(f"{END}\n", 1)[1].removeprefix("<|im_start|>user\n")
    assert original.endswith(after_system) and len(after_system) < len(original) // 2  # a true suffix, cut short
    assert tok.decode(ex.input_ids[ex.completion_start:]) == longest["chosen"] + END
    assert not rm.score([longest["messages"]], [longest["chosen"]]).mean.isnan().any()


def test_cli_rm_then_rm_eval_and_score_read_gz_and_never_crash_on_long_prompts(tmp_path, tok, counts):
    cmd = [sys.executable, "-m", "palate"]
    run = tmp_path / "cli"
    done = subprocess.run(cmd + ["rm", f"run_dir={run}", f"data.path={TRAIN}", f"data.eval_path={TEST}",
                                 f"data.max_length={MAX}", "model.name=tiny", "train.batch_size=8", "train.max_steps=2",
                                 "log.progress=false"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pairwise accuracy" in done.stderr and f"final model: {run / 'final'}" in done.stdout
    # both files are read (150 rows); the train file's long prompts are skipped at tokenisation
    assert f"skipped 17 of 150 rows: {counts['train']['long']} prompt longer than max_length" in done.stderr
    assert "data: 83 train, 50 eval, 0 train ties" in done.stderr

    ev = subprocess.run(cmd + ["rm-eval", str(run), "--data", str(TEST)], capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr
    assert f"skipped                {counts['test']['long']} prompt longer than max_length (of 50 pairs)" in ev.stdout
    assert json.loads((run / "eval-test" / "rm_eval.json").read_text())["n_pairs"] == 36

    rows = [r for r in hh_rows(TEST) if r is not None]
    long_row = next(r for r in rows if prompt_tokens(tok, r["messages"]) >= MAX)
    to_score = tmp_path / "to_score.jsonl.gz"
    with gzip.open(to_score, "wt") as f:
        f.write(json.dumps({"prompt": "Best fruit?", "response": "Mango.", "id": 1}) + "\n")
        f.write(json.dumps({"prompt": long_row["messages"], "response": long_row["chosen"], "id": 2}) + "\n")
    sc = subprocess.run(cmd + ["score", str(run), "--input", str(to_score)], capture_output=True, text=True)
    assert sc.returncode == 0, sc.stderr
    assert "scored 1 of 2 rows" in sc.stdout and "skipped 1 of 2 rows: 1 prompt longer than max_length" in sc.stdout
    scored = [json.loads(x) for x in (tmp_path / "to_score.scored.jsonl").read_text().splitlines()]
    assert isinstance(scored[0]["reward"], float) and "skipped" not in scored[0]
    assert scored[1]["reward"] is None and scored[1]["skipped"].startswith("prompt longer than max_length (")


def test_a_failure_after_the_last_step_is_recorded_and_the_rerun_finishes_without_training(tmp_path, monkeypatch):
    run = tmp_path / "rm"
    cfg = rm_config(run, "train.max_steps=3", "train.save_every=2")
    real = reward_recipe.normalisation_stats

    def broken(*args, **kwargs):
        raise RuntimeError("injected: the disk filled up while scoring")

    monkeypatch.setattr(reward_recipe, "normalisation_stats", broken)
    with pytest.raises(RuntimeError, match="injected"):
        reward_recipe.train(cfg)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed"
    assert status["error"] == "RuntimeError: injected: the disk filled up while scoring"
    assert not (run / "final").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]

    calls = []
    loss = reward_recipe.comparison_loss
    monkeypatch.setattr(reward_recipe, "normalisation_stats", real)
    monkeypatch.setattr(reward_recipe, "comparison_loss", lambda *a, **k: calls.append(1) or loss(*a, **k))
    final = reward_recipe.train(cfg)
    assert calls == []  # no training step ran again
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["summary"]["resumed_from_step"] == 3
    assert status["last_error"].startswith("RuntimeError: injected") and "error" not in status
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == logged == [1, 2, 3]
    assert (final / "palate_reward.json").exists() and (run / "eval" / "rm_eval.json").exists()


# ----------------------------------------------------------------------------- palate dpo


def dpo_config(run, *more):
    return load_config(DPOConfig, None, [
        f"run_dir={run}", f"data.path={TRAIN}", f"data.eval_path={TEST}", f"data.max_length={MAX}", "model.name=tiny",
        "train.lr=1e-3", "train.batch_size=4", "train.max_steps=3", "log.progress=false", "dpo.samples=2",
        "dpo.sample_max_new_tokens=4", *more])


def test_dpo_skips_long_prompts_counted_and_finishes(tmp_path, tok, counts):
    run = tmp_path / "dpo"
    train_dpo(dpo_config(run))
    report = json.loads((run / "data_report.json").read_text())
    train_c, test_c = counts["train"], counts["test"]
    assert (report["n_train"], report["n_eval"]) == (83, 36)
    assert report["skipped_by_reason"] == {"prompt longer than max_length": train_c["long"] + test_c["long"],
                                           "empty completion": 1,
                                           "chosen and rejected transcripts have different prompts": 1}
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and "final_eval_loss" in status["summary"]
    samples = json.loads((run / "samples.json").read_text())  # held-out prompts the rule kept, answered
    kept = [r for r in hh_rows(TEST) if r is not None and prompt_tokens(tok, r["messages"]) < MAX]
    assert [s["chosen"] for s in samples] == [r["chosen"] for r in kept[:2]]


def test_dpo_truncate_left_trains_on_every_pair_and_answers_cut_prompts(tmp_path, tok, counts):
    run = tmp_path / "dpo"
    train_dpo(dpo_config(run, "data.long_prompts=truncate_left", "train.max_steps=2", "dpo.samples=12"))
    report = json.loads((run / "data_report.json").read_text())
    assert (report["n_train"], report["n_eval"]) == (98, 50)
    assert report["truncated_by_reason"]["prompt cut from the left"] == counts["train"]["cut"] + counts["test"]["cut"]
    samples = json.loads((run / "samples.json").read_text())
    rows = [r for r in hh_rows(TEST) if r is not None][:12]
    assert len(samples) == 12 and sum(prompt_tokens(tok, r["messages"]) >= MAX for r in rows) == 2
    for s, r in zip(samples, rows):  # each prompt answered is the original's end
        assert s["prompt"].endswith(f"user: {r['messages'][-1]['content']}")
        if prompt_tokens(tok, r["messages"]) >= MAX:  # an over-long one was answered cut short
            assert len(s["prompt"]) < len("\n".join(f"{m['role']}: {m['content']}" for m in r["messages"]))


# ----------------------------------------------------------------------------- RL prompts


def test_rl_prompts_leave_room_for_the_answer_skipped_or_cut(tmp_path, tok):
    words = "a story about a small boat and the sea "
    prompts = [{"prompt": f"Question {i}: " + words * k} for i, k in enumerate([0, 1, 2, 6, 12, 20, 1, 0, 3, 30])]
    path = write_jsonl(tmp_path / "p.jsonl", prompts)
    n = [prompt_tokens(tok, [{"role": "user", "content": p["prompt"]}]) for p in prompts]
    room, limit = 16, 96
    over = [i for i in range(10) if n[i] + room > limit]
    assert len(over) == 4

    skips = SkipLog()
    stream, held = prompt_stream(PromptsConfig(path=str(path), eval_fraction=0.2), 1, 0, tok, max_length=limit,
                                 room=room, skips=skips)
    kept = [p for b in stream.epoch(0) for p in b] + held
    assert sorted(kept) == sorted(prompts[i]["prompt"] for i in range(10) if i not in over)
    assert sorted(s.row for s in skips.skips) == [i + 1 for i in over]  # line numbers of the file

    skips = SkipLog()
    stream, held = prompt_stream(PromptsConfig(path=str(path), eval_fraction=0.2, long_prompts="truncate_left"), 1, 0,
                                 tok, max_length=limit, room=room, skips=skips)
    kept = [p for b in stream.epoch(0) for p in b] + held
    assert len(kept) == 10 and len(skips.truncations) == 4
    assert all(prompt_tokens(tok, [{"role": "user", "content": p}]) + room <= limit for p in kept)
    cut = [p for p in kept if p not in {q["prompt"] for q in prompts}]
    assert len(cut) == 4 and all(any(q["prompt"].endswith(p) for q in prompts) for p in cut)


# ----------------------------------------------------------------------------- the real files, when present


def _real_helpful_base() -> Path | None:
    root = os.environ.get("PALATE_HH_RLHF")
    path = Path(root) / "helpful-base" / "test.jsonl.gz" if root else None
    if path is None or not path.exists() or path.read_bytes()[:2] != b"\x1f\x8b":  # absent, or an LFS pointer
        return None
    return path


@pytest.mark.skipif(_real_helpful_base() is None, reason="set PALATE_HH_RLHF to an hh-rlhf checkout with its LFS files")
def test_real_helpful_base_test_file_reads_as_shipped():
    from palate.data.readers import read_preferences

    path = _real_helpful_base()
    skips = SkipLog()
    prefs = read_preferences(path, skips=skips)
    assert skips.seen == 2354 and len(prefs) + len(skips.skips) == skips.seen
    assert all(p.prompt[-1]["role"] == "user" for p in prefs)
