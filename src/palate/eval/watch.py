"""The reward-hacking watch during training: the monitor (:class:`palate.eval.monitor.Monitor`) fed with the
run's signals, with the evidence it leaves in the run dir.

:class:`Watch` is the shared core: alerts go to the log and ``monitor.jsonl``; each new best gold score saves
the policy to ``best_gold/``; with ``monitor.action=stop`` an alert ends the run, and :meth:`Watch.keep_best_gold`
then makes ``final/`` the best-gold policy. Online RL (PPO, GRPO) feeds it every step from its experience;
the preference recipes (DPO, KTO) through :class:`HeldOutWatch`, which answers held-out prompts at each
evaluation and scores the answers with a proxy reward model and a gold signal the policy never optimises.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

from palate.data.records import prompt_text
from palate.eval.monitor import Monitor, MonitorConfig, metric_value, monitor_metrics
from palate.eval.rl import write_eval_samples
from palate.eval.text import repeated_ngram_fraction
from palate.feedback.simulate import panel_score
from palate.models.heads import RewardModel
from palate.models.lora import save_model
from palate.rollout.experience import Experience, score_rollout
from palate.rollout.generate import sample
from palate.rollout.sampling import generation_copy
from palate.rollout.rewards import RewardConfig, Rewarder, load_function

log = logging.getLogger("palate.watch")


class Watch:
    """The reward-hacking monitor of a run (:class:`palate.eval.monitor.Monitor`) fed every step, with an
    optional gold signal (``gold``: a reward model or function the policy never optimises) scored on the
    held-out answers at each evaluation. Alerts go to the log and ``monitor.jsonl``; each new best gold
    score saves the policy to ``best_gold/``; with ``action=stop`` an alert ends the run."""

    def __init__(self, run, policy, tok, cfg: MonitorConfig, gold_cfg: RewardConfig | None, start_step: int):
        self.run, self.policy, self.tok = run, policy, tok
        self.gold = Rewarder(gold_cfg) if gold_cfg is not None and (gold_cfg.model or gold_cfg.function) else None
        self.monitor = Monitor(cfg)
        self.stopped_at: int | None = None
        if start_step:  # a resumed run: replay the logged scalar signals so windows and the best gold carry on
            logged = [m for m in run.read_metrics() if m.get("step", 0) <= start_step]
            self.monitor = monitor_metrics(logged, cfg) if logged else self.monitor

    def gold_score(self, exp: Experience) -> float | None:
        if self.gold is None:
            return None
        return float(score_rollout(self.gold, exp.prompts, exp.rollout).score.mean())

    def update(self, step: int, **signals):
        """Feed the monitor; a new best gold score saves the policy to ``best_gold/``."""
        before = self.monitor.best_gold_step
        alerts = self.monitor.update(step, **signals)
        if self.monitor.best_gold_step == step and before != step:
            # merge=False: merging a LoRA adapter is in place and would end training (the adapter is saved)
            save_model(self.policy, self.tok, self.run.path / "best_gold", merge=False,
                       extra_json={"palate_best_gold.json": {"step": step, "gold": self.monitor.best_gold}})
        for a in alerts:
            log.warning("monitor (step %d, %s): %s", step, a.check, a.message)
            with open(self.run.path / "monitor.jsonl", "a") as f:
                f.write(json.dumps(a.as_dict()) + "\n")
        if self.monitor.should_stop and alerts:
            self.stopped_at = step
        return alerts

    def observe(self, step: int, exp: Experience, metrics: dict) -> None:
        r = exp.rollout
        repetition = sum(repeated_ngram_fraction(t) for t in r.texts) / max(len(r.texts), 1)
        metrics["repetition"] = repetition
        self.update(step, proxy=metrics["reward"], reward=exp.rewards.score.tolist(), length=r.lengths.tolist(),
                    repetition=repetition, kl=metrics.get("kl"), ensemble_std=metrics.get("ensemble_std"),
                    gold=metrics.get("eval_gold"), heldout_proxy=metric_value(metrics, "heldout_proxy"))
        metrics["monitor_alerts"] = len(self.monitor.alerts)

    def summary(self) -> dict:
        """Write ``monitor.json``; the alert count and the best gold score (and its step) for the run summary."""
        m = self.monitor
        self.run.write_json("monitor.json", m.summary())
        return {"monitor_alerts": len(m.alerts), "best_gold": m.best_gold, "best_gold_step": m.best_gold_step}

    def keep_best_gold(self, final: Path) -> None:
        """After a monitor stop: ``final/`` becomes the best-gold policy, the policy at the stop moves to
        ``final_at_stop/`` (nothing changes when no best-gold policy was saved)."""
        best, keep = self.run.path / "best_gold", self.run.path / "final_at_stop"
        if not best.exists():
            return
        shutil.rmtree(keep, ignore_errors=True)
        final.rename(keep)
        shutil.copytree(best, final)
        log.info("final/ is the best policy by the gold score (step %d); the policy at the stop is in %s",
                 self.monitor.best_gold_step, keep)


def distinct_prompts(records: list, n: int) -> list:
    """The first ``n`` records of ``records`` with distinct prompts."""
    seen, out = set(), []
    for rec in records:
        key = json.dumps(rec.prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(rec)
        if len(out) >= n:
            break
    return out


def gold_scorer(spec: str):
    """``panel`` → the simulated panel's mean rubric score; else a ``module:function`` reward."""
    return panel_score if spec == "panel" else load_function(spec)


class HeldOutWatch:
    """At each evaluation: greedy answers to the first ``n_prompts`` held-out prompts, scored by the proxy
    reward model (``reward_model``) and the gold signal (``gold``: ``panel`` or a ``module:function``); rows go
    to ``eval_samples.jsonl`` (and ``eval_gold.jsonl``) and the signals to a :class:`Watch`."""

    def __init__(self, run, model, tok, records: list, monitor_cfg: MonitorConfig, start_step: int, *,
                 n_prompts: int, reward_model: str | None, gold: str | None, max_new_tokens: int,
                 precision: str = "fp32"):
        self.model, self.tok, self.run, self.max_new_tokens = model, tok, run, max_new_tokens
        self.precision = precision  # the run's: a bf16 run answers with a bf16 copy of its fp32 weights
        self.prompts = [rec.prompt for rec in distinct_prompts(records, n_prompts)]
        self.rm = RewardModel.load(reward_model) if reward_model else None
        self.gold = gold_scorer(gold) if gold else None
        self.watch = Watch(run, model, tok, monitor_cfg, None, start_step)

    @property
    def stop(self) -> bool:
        return self.watch.stopped_at is not None

    def measure(self, step: int, margin: float | None = None) -> dict[str, float]:
        """Answer, score, feed the monitor. The proxy is the reward model's mean score when there is one,
        else ``margin`` (the recipe's own held-out implicit reward margin: what its loss pushes up)."""
        was_training = self.model.training
        self.model.eval()
        answering = generation_copy(self.model, self.precision)
        answers = [s[0].text for s in sample(answering, self.tok, self.prompts, n=1, temperature=0.0,
                                             max_new_tokens=self.max_new_tokens, repetition_penalty=1.1,
                                             batch_size=64)]
        del answering
        self.model.train(was_training)
        proxy = self.rm.score(self.prompts, answers).mean.tolist() if self.rm is not None else None
        gold = [float(self.gold(prompt_text(p), a)) for p, a in zip(self.prompts, answers)] if self.gold else None
        lengths = [len(a.split()) for a in answers]
        out = {"eval_response_length": sum(lengths) / len(lengths),
               "repetition": sum(repeated_ngram_fraction(a) for a in answers) / len(answers)}
        if proxy is not None:  # NaN: a prompt the reward model skips (its long_prompts rule)
            finite = [x for x in proxy if not math.isnan(x)]
            out["eval_reward"] = sum(finite) / len(finite) if finite else float("nan")
        if gold is not None:
            out["eval_gold"] = sum(gold) / len(gold)
        rows = [{"step": step, "i": i, "gold": g} for i, g in enumerate(gold or [])]
        write_eval_samples(self.run.path, step, [prompt_text(p) for p in self.prompts], answers,
                           proxy if proxy is not None else gold, None)
        if rows:
            with open(self.run.path / "eval_gold.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        self.watch.update(step, proxy=out.get("eval_reward", margin), gold=out.get("eval_gold"), reward=proxy,
                          heldout_proxy=out.get("eval_reward"),
                          length=lengths if proxy is not None else None, repetition=out["repetition"])
        out["monitor_alerts"] = len(self.watch.monitor.alerts)
        log.info("held-out answers (step %d): %s", step, ", ".join(f"{k} {v:.4g}" for k, v in out.items()))
        return out

    def summary(self) -> dict:
        return self.watch.summary()

    def keep_best_gold(self, final: Path) -> None:
        self.watch.keep_best_gold(final)
