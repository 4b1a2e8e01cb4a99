"""What PPO and GRPO do around their update, written once so each recipe file can show its own step loop:

    start_online      the run dir, the session, the tokenizer, the training prompts and the held-out ones
    OnlineRun.collect sample, score and reference log-probs for one step (seed of step s: seed·100003 + s)
    OnlineRun.guard   a NaN/inf reward or loss stops the run with the last good state saved as a checkpoint
    OnlineRun.end_step  log the step: diagnostics, a few samples, held-out reward every eval_every steps, the
                      reward-hacking monitor (True when it stopped the run)
    OnlineRun.finish  the RL report (held-out reward before/after with a CI), the final model

Held-out reward is measured before the first step too, with a fixed seed (``eval_seed``) so every
evaluation of a run sees the same sampling noise.

On several processes (``torchrun`` / ``accelerate launch``, ``train.sharding=ddp|fsdp``) every process gets the
step's whole prompt list and:

1. samples, scores and takes reference log-probs for its consecutive share of the prompts (whole groups of
   ``rollout.n`` answers), with no collective: under FSDP the policy is unsharded for the span
   (:meth:`palate.infra.session.Loop.unsharded`); the frozen reference and the reward model are plain
   copies on every process;
2. gathers every share (:func:`palate.rollout.experience.join_experience`): each process then holds the step's
   whole experience, as one process would have collected it, so advantages (group baselines, PPO's
   whitening), the KL controller and the logged reward/KL/length figures are global with no reduction;
3. updates on its consecutive share of each minibatch (the minibatches are the 1-process ones), its losses
   normalised by the minibatch's global token (or row) counts and gradients synchronised by DDP / FSDP, so
   the update is the 1-process update of the same experience;
4. held-out evaluation, samples.jsonl and the reward-hacking monitor run on the main process (the others wait
   for its numbers); only it writes the run directory.

Sampling seeds come per block of ``rollout.seed_block`` prompts (0: one block per process's share): equal
blocks give equal samples on any number of processes (:func:`palate.rollout.sampling.sample_blocks`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palate.config import ConfigError
from palate.data.errors import SkipLog
from palate.data.records import prompt_text
from palate.eval.monitor import metric_value
from palate.eval.rl import format_rl_report, record_eval, rl_report
from palate.eval.watch import Watch
from palate.infra import distributed, session
from palate.infra.run import RunDir
from palate.models.heads import resolve_reward_model
from palate.models.load import resolve
from palate.recipes.prompts import prompt_limit, prompt_stream
from palate.rollout.experience import (
    Experience,
    collect,
    eval_seed,
    evaluate,
    join_experience,
    join_rows,
    share,
    warn_negative_kl,
)
from palate.rollout.rewards import NonFiniteError
from palate.rollout.sampling import RolloutConfig, cast_sampler

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


def check_processes(cfg, section: str, per_step: int, minibatches: int) -> None:
    """What online RL needs on several processes, refused by name before anything loads (one process: nothing)."""
    world = distributed.world_size()
    if world == 1:
        return
    if cfg.rollout.backend != "hf":
        raise ConfigError(f"rollout.backend={cfg.rollout.backend} runs on one process only: use rollout.backend=hf "
                          f"with several processes")
    if cfg.ray.enabled:
        raise ConfigError("ray.enabled runs on one process only: drop it (or ray.enabled=false) with several processes")
    if per_step % world:
        raise ConfigError(f"{section}.prompts_per_step={per_step} must be a multiple of the {world} processes (each "
                          "samples an equal share of whole prompt groups)")
    if per_step // minibatches < world:
        raise ConfigError(f"{section}.prompts_per_step / {section}.minibatches = {per_step // minibatches} prompts per "
                          f"minibatch, fewer than the {world} processes that share each minibatch")
    block = cfg.rollout.seed_block
    if block and (per_step // world) % block:
        raise ConfigError(f"rollout.seed_block={block} must divide each process's {per_step // world} prompts")
    if (cfg.gold.model or cfg.gold.function) and distributed.sharding(cfg.train.sharding) == "fsdp":
        raise ConfigError("gold (the monitor's gold score, which saves best_gold/ from the main process) is not "
                          "supported with train.sharding=fsdp: use train.sharding=ddp or one process")


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
    """a rollout engine that samples the training steps instead of the trainer (Ray workers; else, when the run
    trains in bf16 on whole fp32 weights, a bf16 copy of the policy: :func:`palate.rollout.sampling.cast_sampler`)"""

    def __post_init__(self):
        if self.engine is None:
            self.engine = cast_sampler(self.policy, self.tok, self.rollout, self.loop.env.precision,
                                       self.loop.sharding)
            if self.engine is not None:
                log.info("sampling: a bf16 copy of the policy, refreshed every step (the trainer recomputes the "
                         "sampled tokens' log-probs in its precision; truncated importance weights, cap %g, "
                         "correct the copy's rounding)", self.rollout.correction_cap)

    def precision(self):
        """The trainer's precision around experience collection (the reference and the recomputed log-probs
        in the precision of the update, so that the PPO ratio starts at 1); FSDP keeps its own."""
        env = self.loop.env
        return session.autocast(env.precision, env.device) if self.loop.sharding != "fsdp" else contextlib.nullcontext()

    def collect(self, step: int, prompts: list, also=None):
        """The step's experience: this process samples, scores and takes reference log-probs for its share of
        ``prompts`` (all of them on one process), then every share is gathered. ``also(exp)``: per-token
        tensors [b, T] of this share's rows computed while the policy is whole (PPO's values), gathered alike;
        then ``(exp, those)`` is returned."""
        loop = self.loop
        lo, hi = share(len(prompts), loop.rank, loop.world)
        exp = extra = error = None
        with loop.unsharded(), self.precision():  # FSDP: the policy whole, so processes decode independently
            try:
                exp = collect(self.policy, self.tok, prompts[lo:hi], self.rollout, self.rewarder, self.reference,
                              seed=self.seed * 100_003 + step, engine=self.engine, first=lo,
                              block=self.rollout.seed_block or hi - lo)
                extra = also(exp) if also is not None else None
            except NonFiniteError as e:  # a NaN reward on one process: every process stops (guard), together
                if loop.world == 1:
                    raise
                error = str(e)
        if loop.world > 1:
            parts = distributed.gather((exp, extra, error))
            errors = [err for _, _, err in parts if err]
            if errors:
                raise NonFiniteError(errors[0])
            pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
            exp = join_experience([e for e, _, _ in parts], pad)
            extra = join_rows([x for _, x, _ in parts]) if also is not None else None
        return exp if also is None else (exp, extra)

    @contextlib.contextmanager
    def guard(self, step: int):
        try:
            yield
        except NonFiniteError as e:
            self.loop.step = step - 1
            path = self.loop.checkpoint()
            raise NonFiniteError(f"{e}; stopped. The last good state is saved at {path}") from None

    def evaluate_held_out(self, step: int) -> dict[str, float]:
        """Held-out reward (and KL, and the gold score when there is one); every answer is recorded. On several
        processes the main one evaluates alone (the numbers of a 1-process run) and sends them to the others."""
        metrics = None
        with self.loop.unsharded(), self.precision():
            if self.run.writes:  # sampled as the steps are: by the bf16 sampler copy or the Ray workers
                metrics, exp = evaluate(self.policy, self.tok, self.held, self.rollout, self.rewarder, self.reference,
                                        eval_seed(self.seed), self.eval_samples, engine=self.engine)
                record_eval(self.run.path, step, exp)
                gold = self.watch.gold_score(exp)
                if gold is not None:
                    metrics["eval_gold"] = gold
        return distributed.broadcast(metrics) if self.loop.world > 1 else metrics

    def before_training(self) -> None:
        if not self.held or self.loop.start_step != 0:
            return
        metrics = self.evaluate_held_out(0)
        if "eval_gold" in metrics and self.run.writes:
            self.watch.update(0, gold=metrics["eval_gold"], heldout_proxy=metric_value(metrics, "heldout_proxy"))
        self.run.log(0, metrics)
        log.info("before training: %s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def end_step(self, step: int, exp: Experience, metrics: dict) -> bool:
        """Close the optimizer step and log it; True when the reward-hacking monitor stopped the run."""
        metrics = self.loop.end_step(**metrics)
        if "kl" in metrics and self.run.writes:
            warn_negative_kl(step, metrics["kl"])
        if self.sample_every and (step % self.sample_every == 0 or step == 1) and self.run.writes:
            write_samples(self.run, step, exp)
        if self.held and self.loop.due(self.eval_every):
            metrics.update(self.evaluate_held_out(step))
        if self.run.writes:  # the main process monitors (and writes monitor.jsonl); the others follow its decision
            self.watch.observe(step, exp, metrics)
        if self.loop.world > 1:
            metrics, self.watch.stopped_at = distributed.broadcast((metrics, self.watch.stopped_at))
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
        extra = {}
        if run.writes:  # the main process holds the evaluations and the monitor's record
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
        if watch.stopped_at is not None and run.writes:
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
