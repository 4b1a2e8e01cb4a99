"""What PPO and GRPO do around their update, written once so each recipe file can show its own step loop:

    start_online      the run dir, the session, the tokenizer, the training prompts and the held-out ones
    OnlineRun.collect sample, score and reference log-probs for one step (seed of step s: seed·100003 + s)
    OnlineRun.guard   a NaN/inf reward or loss stops the run with the last good state saved as a checkpoint
    OnlineRun.end_step  log the step: diagnostics, a few samples, held-out reward every eval_every steps, the
                      reward-hacking monitor (True when it stopped the run)
    OnlineRun.finish  the RL report (held-out reward before/after with a CI), the final model

Held-out reward is measured before the first step too, with a fixed seed (``eval_seed``) so every
evaluation of a run sees the same sampling noise.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palate.data.errors import SkipLog
from palate.data.records import prompt_text
from palate.eval.rl import format_rl_report, record_eval, rl_report
from palate.eval.watch import Watch
from palate.infra import session
from palate.infra.run import RunDir
from palate.models.heads import resolve_reward_model
from palate.models.load import resolve
from palate.recipes.prompts import prompt_limit, prompt_stream
from palate.rollout.experience import (
    Experience,
    collect,
    eval_seed,
    evaluate,
    warn_negative_kl,
)
from palate.rollout.rewards import NonFiniteError
from palate.rollout.sampling import RolloutConfig

log = logging.getLogger("palate.rl")


def start_online(cfg, per_step: int, overwrite: bool):
    """``(run, env, tok, stream, held)`` of a PPO or GRPO config: prompts that leave no room for an answer
    are skipped or cut (``prompts.long_prompts``), counted in ``data_report.json``. A policy or reward model
    named by a local path that does not exist is one line at once, before the run dir is made."""
    resolve(cfg.model.name)
    for reward in (cfg.reward, cfg.gold):
        if reward.model:
            resolve_reward_model(reward.model)
    run = RunDir.open(cfg.run_dir, cfg, overwrite=overwrite)
    env = session.start(cfg.train, cfg.model, run, cfg.log, cfg)
    tok = session.tokenizer(cfg.model)
    skips = SkipLog()
    stream, held = prompt_stream(cfg.prompts, per_step, cfg.train.seed, tok, room=cfg.rollout.max_new_tokens,
                                 max_length=prompt_limit(cfg.prompts, cfg.reward), skips=skips)
    session.report_data(run, skips, n_held_out_prompts=len(held))
    return run, env, tok, stream, held


@dataclass
class OnlineRun:
    """The bookkeeping of one online-RL run around the recipe's own update (see the module docstring)."""

    loop: session.Loop
    run: RunDir
    policy: Any
    tok: Any
    held: list
    """held-out prompts"""
    rollout: RolloutConfig
    rewarder: Any
    reference: Any
    """None: no KL term"""
    watch: Watch
    seed: int
    sample_every: int
    """write a few samples every N steps (0: never)"""
    eval_every: int
    eval_samples: int = 1
    """answers per held-out prompt"""
    engine: Any = None
    """a rollout engine that samples the training steps instead of the trainer (Ray workers)"""

    def collect(self, step: int, prompts: list) -> Experience:
        return collect(self.policy, self.tok, prompts, self.rollout, self.rewarder, self.reference,
                       seed=self.seed * 100_003 + step, engine=self.engine)

    @contextlib.contextmanager
    def guard(self, step: int):
        try:
            yield
        except NonFiniteError as e:
            self.loop.step = step - 1
            path = self.loop.checkpoint()
            raise NonFiniteError(f"{e}; stopped. The last good state is saved at {path}") from None

    def evaluate_held_out(self, step: int) -> dict[str, float]:
        """Held-out reward (and KL, and the gold score when there is one); every answer is recorded."""
        metrics, exp = evaluate(self.policy, self.tok, self.held, self.rollout, self.rewarder, self.reference,
                                eval_seed(self.seed), self.eval_samples)
        record_eval(self.run.path, step, exp)
        gold = self.watch.gold_score(exp)
        if gold is not None:
            metrics["eval_gold"] = gold
        return metrics

    def before_training(self) -> None:
        if not self.held or self.loop.start_step != 0:
            return
        metrics = self.evaluate_held_out(0)
        if "eval_gold" in metrics:
            self.watch.update(0, gold=metrics["eval_gold"])
        self.run.log(0, metrics)
        log.info("before training: %s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def end_step(self, step: int, exp: Experience, metrics: dict) -> bool:
        """Close the optimizer step and log it; True when the reward-hacking monitor stopped the run."""
        metrics = self.loop.end_step(**metrics)
        if "kl" in metrics:
            warn_negative_kl(step, metrics["kl"])
        if self.sample_every and (step % self.sample_every == 0 or step == 1):
            write_samples(self.run, step, exp)
        if self.held and self.loop.due(self.eval_every):
            metrics.update(self.evaluate_held_out(step))
        self.watch.observe(step, exp, metrics)
        self.loop.log(step, metrics)
        if self.watch.stopped_at is None:
            return False
        self.loop.checkpoint()
        log.error("step %d: the reward-hacking monitor stopped the run (monitor.action=stop); see monitor.jsonl", step)
        return True

    def finish(self, merge: bool, **kw) -> Path:
        """Write the run's RL report (held-out reward before vs after with a CI, reward/KL charts), print it,
        and save the final model with the improvement in the run summary. When the monitor stopped the run,
        ``final/`` is the best policy by the gold score (the policy at the stop is kept in ``final_at_stop/``)."""
        watch, run = self.watch, self.run
        monitored = watch.summary()  # writes monitor.json
        if monitored["best_gold_step"] is not None:
            kw.update(best_gold_step=monitored["best_gold_step"], best_gold=monitored["best_gold"])
        if watch.stopped_at is not None:
            kw["stopped_by_monitor_at_step"] = watch.stopped_at
        summary = rl_report(run.path)
        text = format_rl_report(summary)
        if text:
            log.info("RL report (%s):\n%s", run.path / "report", text)
        imp = summary.get("improvement", {})
        extra = {"heldout_reward_before": imp.get("before"), "heldout_reward_after": imp.get("after"),
                 "heldout_reward_delta_ci": imp.get("delta_ci"), "final_kl": summary.get("final_kl")} if imp else {}
        final = self.loop.finish(self.tok, merge=merge, **extra, **kw)
        if watch.stopped_at is not None:
            watch.keep_best_gold(final)
        return final


def write_samples(run: RunDir, step: int, exp: Experience, limit: int = 4) -> None:
    """Append a few (prompt, response, reward) rows of this step to ``samples.jsonl`` in the run dir."""
    n = exp.rollout.n
    with open(run.path / "samples.jsonl", "a") as f:
        for i in range(0, min(limit * n, len(exp.rollout.texts)), n):  # the first sample of each prompt
            f.write(json.dumps({"step": step, "prompt": prompt_text(exp.prompts[i // n]),
                                "response": exp.rollout.texts[i], "reward": float(exp.rewards.total[i]),
                                "stop": exp.rollout.stop_reason[i]}, ensure_ascii=False) + "\n")
