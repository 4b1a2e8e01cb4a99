"""DPO-family recipe on the tiny model: learning a synthetic preference, the reference handled three
ways with the same numbers, the cache invalidated when inputs change, each loss's own defaults, resume.
(KTO: tests/recipes/test_kto.py.)"""

import json
import shutil

import pytest
import torch

from palate.config import ConfigError, load_config
from palate.recipes.dpo import REFERENCE_CACHE, DPOConfig, DPOSpec, train
from tests.conftest import marker_preferences, write_jsonl


def config(run_dir, data, *more):
    return load_config(DPOConfig, None, [
        f"run_dir={run_dir}", f"data.path={data}", "model.name=tiny", "train.lr=2e-3", "train.batch_size=8",
        "train.warmup_ratio=0", "log.progress=false", "data.eval_fraction=0.2", "dpo.samples=0", *more,
    ])


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_dpo_learns_marker_preference_above_90_percent_held_out(tmp_path, marker_jsonl):
    train(config(tmp_path / "d", marker_jsonl, "train.epochs=3", "train.eval_every=10", "dpo.samples=2",
                 "dpo.sample_max_new_tokens=8"))
    rows = metrics(tmp_path / "d")
    evals = [m for m in rows if "eval_reward_accuracy" in m]
    assert evals[-1]["eval_reward_accuracy"] > 0.9, [m["eval_reward_accuracy"] for m in evals]
    assert evals[-1]["eval_reward_margin"] > evals[0]["eval_reward_margin"]
    for key in ("rewards_chosen", "rewards_rejected", "reward_accuracy", "reward_margin", "logp_chosen",
                "logratio_per_token", "len_chosen", "len_rejected"):
        assert key in rows[-1]
    assert (tmp_path / "d" / REFERENCE_CACHE).exists()
    samples = json.loads((tmp_path / "d" / "samples.json").read_text())
    assert len(samples) == 2 and {"prompt", "before", "after", "chosen", "rejected"} <= set(samples[0])


def step_losses(run_dir):
    return [m["loss"] for m in metrics(run_dir)]


def test_precomputed_reference_gives_the_same_losses_as_a_live_one(tmp_path, marker_jsonl):
    more = ("train.max_steps=4", "data.eval_fraction=0")
    train(config(tmp_path / "pre", marker_jsonl, *more))
    train(config(tmp_path / "live", marker_jsonl, *more, "dpo.reference=live"))
    assert step_losses(tmp_path / "pre") == pytest.approx(step_losses(tmp_path / "live"), abs=1e-5)
    assert not (tmp_path / "live" / REFERENCE_CACHE).exists()
    # 4 steps of 8 pairs reach 32 of the train records: only those get a reference pass
    train_ref = torch.load(tmp_path / "pre" / REFERENCE_CACHE, weights_only=True)["values"]["train"]
    done = torch.isfinite(train_ref).all(dim=1)
    assert int(done.sum()) == 32 and len(train_ref) > 32 and torch.isnan(train_ref[~done]).all()


def test_records_seen_counts_the_steps_a_run_reaches(tmp_path):
    from palate.data.batching import Batch
    from palate.infra.session import BatchStream

    def batch(indices):
        return Batch(torch.zeros(len(indices), 1, dtype=torch.long), None, None, None, indices, len(indices))

    def epochs(e):  # 3 batches of 2 over 6 records, reshuffled each epoch
        order = [0, 1, 2, 3, 4, 5] if e % 2 == 0 else [5, 3, 1, 0, 4, 2]
        return [batch(order[i:i + 2]) for i in range(0, 6, 2)]

    stream = BatchStream(epochs, grad_accum=1)
    assert stream.records_seen(1) == {0, 1}
    assert stream.records_seen(2) == {0, 1, 2, 3}
    assert stream.records_seen(3) == stream.records_seen(50) == set(range(6))
    assert BatchStream(epochs, grad_accum=2).records_seen(1) == {0, 1, 2, 3}
    paired = BatchStream(lambda e: [(b, batch([9, 9])) for b in epochs(e)], grad_accum=1)  # KTO: (own, mismatched)
    assert paired.records_seen(1) == {0, 1}


def test_lora_reference_is_the_disabled_adapter(tmp_path, marker_jsonl):
    more = ("train.max_steps=4", "data.eval_fraction=0", "lora.enabled=true", "lora.r=4", "lora.dropout=0")
    train(config(tmp_path / "pre", marker_jsonl, *more))
    train(config(tmp_path / "live", marker_jsonl, *more, "dpo.reference=live"))
    pre, live = step_losses(tmp_path / "pre"), step_losses(tmp_path / "live")
    assert pre == pytest.approx(live, abs=1e-5)
    assert pre[0] == pytest.approx(0.6931472, abs=1e-5)  # policy == reference at step 1: −log σ(0)


def test_reference_cache_is_reused_and_invalidated_when_data_changes(tmp_path, marker_jsonl, caplog):
    from palate.recipes import reference_cache

    run = tmp_path / "c"
    calls = []
    orig = reference_cache.reference_logprobs

    def counting(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    reference_cache.reference_logprobs = counting
    try:
        train(config(run, marker_jsonl, "train.max_steps=2", "data.eval_fraction=0"))
        assert len(calls) == 2  # train and eval tables, once
        (run / "final").rename(tmp_path / "old_final")  # a rerun of the same command resumes, so fake a crash
        status = json.loads((run / "status.json").read_text())
        (run / "status.json").write_text(json.dumps({**status, "state": "running"}))
        train(config(run, marker_jsonl, "train.max_steps=2", "data.eval_fraction=0"))
        assert len(calls) == 2  # cached
        other = write_jsonl(tmp_path / "other.jsonl", marker_preferences(240, seed=5))
        train(config(tmp_path / "c2", other, "train.max_steps=2", "data.eval_fraction=0"))
        shutil.copy(tmp_path / "c2" / REFERENCE_CACHE, run / REFERENCE_CACHE)  # a stale cache from other data
        shutil.rmtree(run / "final", ignore_errors=True)
        (run / "status.json").write_text(json.dumps({**status, "state": "running"}))
        n = len(calls)
        train(config(run, marker_jsonl, "train.max_steps=2", "data.eval_fraction=0"))
        assert len(calls) == n + 2  # key mismatch: recomputed
    finally:
        reference_cache.reference_logprobs = orig


@pytest.mark.parametrize("loss", ["ipo", "cdpo", "robust", "rpo", "simpo", "orpo"])
def test_every_pairwise_loss_trains(tmp_path, marker_jsonl, loss):
    train(config(tmp_path / loss, marker_jsonl, "train.max_steps=12", "data.eval_fraction=0", f"dpo.loss={loss}"))
    rows = metrics(tmp_path / loss)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in rows)
    assert sum(m["loss"] for m in rows[-3:]) < sum(m["loss"] for m in rows[:3])
    assert (tmp_path / loss / REFERENCE_CACHE).exists() == (loss not in ("simpo", "orpo"))


def test_each_loss_gets_its_own_defaults_when_chosen():
    """dpo.beta left unset takes the chosen loss's default (SimPO's β is on per-token averages: 2.0, not
    DPO's 0.1); a loss's own field is filled in only for that loss, and the resolved values are what
    config.yaml records."""
    resolved = {loss: DPOSpec(loss=loss) for loss in ("dpo", "ipo", "cdpo", "robust", "rpo", "simpo", "orpo")}
    assert {loss: s.beta for loss, s in resolved.items()} == {
        "dpo": 0.1, "ipo": 0.1, "cdpo": 0.1, "robust": 0.1, "rpo": 0.1, "simpo": 2.0, "orpo": 0.1}
    assert (resolved["simpo"].gamma, resolved["simpo"].label_smoothing, resolved["simpo"].alpha) == (0.5, None, None)
    assert resolved["cdpo"].label_smoothing == resolved["robust"].label_smoothing == 0.1
    assert resolved["rpo"].alpha == 1.0 and resolved["dpo"].gamma is None
    cfg = load_config(DPOConfig, None, ["dpo.loss=simpo"])
    assert (cfg.dpo.beta, cfg.dpo.gamma) == (2.0, 0.5)
    assert load_config(DPOConfig, None, ["dpo.loss=simpo", "dpo.beta=2.5", "dpo.gamma=1.4"]).dpo.beta == 2.5
    assert load_config(DPOConfig, None, ["dpo.beta=0.05"]).dpo.beta == 0.05


def test_a_field_of_another_loss_and_kto_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"dpo.gamma applies to dpo.loss=simpo only, not dpo"):
        load_config(DPOConfig, None, ["dpo.gamma=1.0"])
    with pytest.raises(ConfigError, match=r"dpo.label_smoothing applies to dpo.loss=cdpo \| robust only, not simpo"):
        load_config(DPOConfig, None, ["dpo.loss=simpo", "dpo.label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="dpo.alpha"):
        DPOSpec(loss="orpo", alpha=1.0)
    with pytest.raises(ConfigError, match="palate kto"):
        load_config(DPOConfig, None, ["dpo.loss=kto"])
    with pytest.raises(ConfigError, match="dpo.loss must be one of"):
        DPOSpec(loss="dpoo")


def test_resume_continues_identically(tmp_path, marker_jsonl):
    more = ("train.max_steps=6", "train.save_every=3", "data.eval_fraction=0")
    train(config(tmp_path / "straight", marker_jsonl, *more))
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed)
    (resumed / "config.yaml").write_text((resumed / "config.yaml").read_text().replace(str(tmp_path / "straight"), str(resumed)))
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-00000006")  # written after the last step: a crash after step 4 precedes it
    status = json.loads((resumed / "status.json").read_text())
    (resumed / "status.json").write_text(json.dumps({**status, "state": "running"}))
    (resumed / "metrics.jsonl").write_text("".join(l + "\n" for l in (resumed / "metrics.jsonl").read_text().splitlines()[:4]))
    train(config(resumed, marker_jsonl, *more))
    keys = ("step", "loss", "reward_accuracy", "grad_norm", "lr")
    assert [{k: m[k] for k in keys} for m in metrics(resumed)] == [{k: m[k] for k in keys} for m in metrics(tmp_path / "straight")]


def test_before_after_samples_scored_by_an_independent_reward_model(tmp_path, marker_jsonl):
    from palate.recipes.reward import RewardConfig
    from palate.recipes.reward import train as train_rm

    train_rm(load_config(RewardConfig, None, [f"run_dir={tmp_path / 'rm'}", f"data.path={marker_jsonl}",
                                              "model.name=tiny", "train.max_steps=3", "data.eval_fraction=0",
                                              "log.progress=false"]))
    train(config(tmp_path / "d", marker_jsonl, "train.max_steps=2", "dpo.samples=2", "dpo.sample_max_new_tokens=6",
                 f"dpo.reward_model={tmp_path / 'rm'}"))
    samples = json.loads((tmp_path / "d" / "samples.json").read_text())
    assert all(isinstance(s["reward_before"], float) and isinstance(s["reward_after"], float) for s in samples)
    summary = json.loads((tmp_path / "d" / "status.json").read_text())["summary"]
    assert summary["sample_reward_before"] == pytest.approx(sum(s["reward_before"] for s in samples) / 2)


def more_sunshine(prompt, response):
    return float(response.split().count("sunshine"))


def less_sunshine(prompt, response):
    return -more_sunshine(prompt, response)


def test_held_out_watch_logs_gold_and_stops_when_the_margin_rises_while_gold_falls(tmp_path, marker_jsonl):
    """DPO learns to say the marker; a gold signal that penalises it must stop the run (proxy: the held-out
    implicit margin, rising) and final/ must be the best-gold policy; a gold signal that agrees never alerts."""
    common = ("train.epochs=3", "train.eval_every=3", "dpo.watch_prompts=6", "dpo.watch_max_new_tokens=8",
              "monitor.window=3", "monitor.gold_tolerance=0.1", "monitor.length_corr=1.0", "monitor.repetition=1.0")
    stop = tmp_path / "stop"
    train(config(stop, marker_jsonl, *common, "monitor.action=stop", f"dpo.gold={__name__}:less_sunshine"))
    rows = metrics(stop)
    golds = [(m["step"], m["eval_gold"]) for m in rows if "eval_gold" in m]
    assert golds[0][0] == 0 and len(golds) >= 3
    alerts = [json.loads(x) for x in (stop / "monitor.jsonl").read_text().splitlines()]
    assert alerts[0]["check"] == "proxy_gold" and alerts[0]["severity"] == "stop"
    assert rows[-1]["step"] == alerts[0]["step"]  # nothing ran after the stop
    summary = json.loads((stop / "status.json").read_text())["summary"]
    best = max(golds, key=lambda sg: sg[1])[0]
    assert summary["best_gold_step"] == best
    assert json.loads((stop / "final" / "palate_best_gold.json").read_text())["step"] == best
    assert (stop / "final_at_stop").is_dir()
    samples = [json.loads(x) for x in (stop / "eval_samples.jsonl").read_text().splitlines()]
    assert {r["step"] for r in samples} == {s for s, _ in golds} and all("response" in r for r in samples)

    agree = tmp_path / "agree"
    # (30 steps: later the tiny model's greedy answers collapse to one word, which a count of the marker
    # rightly sees as a fall)
    train(config(agree, marker_jsonl, *common, "train.max_steps=30", "monitor.action=stop",
                 f"dpo.gold={__name__}:more_sunshine"))
    assert not (agree / "monitor.jsonl").exists()
    assert max(m["step"] for m in metrics(agree)) == json.loads((agree / "status.json").read_text())["summary"]["steps"]


def test_live_reference_with_lora_under_fsdp_is_refused_before_training(monkeypatch):
    """The disabled adapter would run the sharded policy outside the training forward: refused up front (the
    2-process FSDP2 run is in tests/infra/test_fsdp.py; here the launcher's answer is set by hand)."""
    from palate.config import ConfigError, LoraConfig
    from palate.infra import distributed, session
    from palate.models.load import load_model, load_tokenizer
    from palate.models.lora import apply_lora
    from palate.recipes import reference_cache

    tok = load_tokenizer("tiny")
    model = apply_lora(load_model("tiny", tokenizer=tok), LoraConfig(enabled=True, r=4))
    env = session.Env(device=torch.device("cpu"), precision="fp32", gradient_checkpointing=False)
    assert reference_cache.live_reference(model, env, "dpo", "fsdp") is not None  # one process: no sharding
    monkeypatch.setattr(distributed, "sharding", lambda requested: "fsdp")
    with pytest.raises(ConfigError, match="dpo.reference=live with LoRA under train.sharding=fsdp"):
        reference_cache.live_reference(model, env, "dpo", "fsdp")
