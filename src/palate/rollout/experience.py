"""One batch of experience for online RL, shared by PPO and GRPO/RLOO/REINFORCE++:

    sample n responses per prompt (KV cache, prefix shared) -> score them (reward model or function,
    penalties) -> reference log-probs of the sampled tokens (the disabled LoRA adapter, or a frozen copy)

and the diagnostics every step reports: reward, KL to the reference, lengths, truncation, throughput.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from palate.losses.policy import SamplerCorrection, kl_penalty, masked_mean, sampler_correction
from palate.models.logprobs import response_hidden, response_logprobs
from palate.models.reference import Reference, rollout_logprobs
from palate.rollout.generate import Rollout, rollout
from palate.rollout.rewards import NonFiniteError, RewardConfig, Rewarder, Rewards

log = logging.getLogger("palate.rl")


@dataclass(frozen=True)
class RolloutConfig:
    n: int = 4  # responses per prompt
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)  # stop strings (EOS always stops)
    # hf: palate's sampler on the trainer's own model. vllm: a colocated vLLM engine, weights synced every step,
    # each token's loss weighted by the truncated ratio π_trainer/π_sampler (UNTESTED: needs a GPU and
    # pip install 'palate[vllm]'; see palate/rollout/vllm.py)
    backend: str = "hf"
    vllm_gpu_memory_utilization: float = 0.3
    correction_cap: float = 2.0  # vllm: cap C of the truncated importance weights
    correction_level: str = "token"  # vllm: token | sequence importance ratios

    def __post_init__(self):
        from palate.config import ConfigError

        if self.backend not in ("hf", "vllm"):
            raise ConfigError(f"rollout.backend must be hf or vllm, got {self.backend!r}")
        if self.correction_level not in ("token", "sequence"):
            raise ConfigError(f"rollout.correction_level must be token or sequence, got {self.correction_level!r}")
        if self.correction_cap <= 0:
            raise ConfigError(f"rollout.correction_cap must be > 0, got {self.correction_cap}")
        if self.backend == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ConfigError("rollout.backend=vllm needs vLLM on a CUDA machine: pip install 'palate[vllm]'")


@dataclass
class Experience:
    prompts: list  # [P]
    rollout: Rollout  # B = P * n responses
    rewards: Rewards
    ref_logprobs: torch.Tensor | None  # [B, T], None without a KL term
    seconds: dict[str, float]
    correction: SamplerCorrection | None = None  # rollout.backend=vllm: per-token importance weights

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.response_mask

    def kl_tokens(self, kind: str = "k1") -> torch.Tensor | None:
        """Per-token KL estimate of the sampled responses to the reference: [B, T] (0 at padding)."""
        if self.ref_logprobs is None:
            return None
        return kl_penalty(self.rollout.logprobs, self.ref_logprobs, kind) * self.mask


def score_rollout(rewarder: Rewarder, prompts: list, r: Rollout) -> Rewards:
    """Score every sampled response of ``r`` (row b answers prompt b // n)."""
    return rewarder([prompts[b // r.n] for b in range(len(r.texts))], r.texts, r.lengths, r.finished)


def sample_rollout(policy, tok, prompts: list, cfg: RolloutConfig, seed: int,
                   engine=None) -> tuple[Rollout, SamplerCorrection | None]:
    """Sample with the configured backend. ``hf``: the trainer's own model, whose sampled log-probs are π_old.
    ``vllm`` (or any ``engine`` with ``sync(policy)`` and ``rollout(prompts, **settings)``): the engine gets
    the policy's current weights and samples; the trainer then recomputes the sampled tokens' log-probs
    (π_old of the PPO ratio, in ``logprobs``; the engine's stay in ``sampler_logprobs``) and the truncated
    importance weights correct the loss for the engine's mismatch (:func:`sampler_correction`)."""
    settings = dict(n=cfg.n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                    top_k=cfg.top_k, stop=tuple(cfg.stop), seed=seed)
    if engine is None and cfg.backend == "hf":
        was_training = policy.training
        policy.eval()
        r = rollout(policy, tok, prompts, **settings)
        policy.train(was_training)
        return r, None
    if engine is None:
        if cfg.backend != "vllm":
            raise ValueError(f"rollout.backend must be hf or vllm, got {cfg.backend!r}")
        from palate.rollout.vllm import sampler_for

        engine = sampler_for(policy, tok, cfg.vllm_gpu_memory_utilization, seed=0)
    engine.sync(policy)
    r = engine.rollout(prompts, **settings)
    r.sampler_logprobs = r.logprobs * r.response_mask
    r.logprobs = rollout_logprobs(policy, r, cfg.temperature)
    return r, sampler_correction(r.logprobs, r.sampler_logprobs, r.response_mask, cfg.correction_cap,
                                 cfg.correction_level)


def collect(policy, tok, prompts: list, cfg: RolloutConfig, rewarder: Rewarder, reference: Reference | None,
            seed: int, engine=None) -> Experience:
    t0 = time.perf_counter()
    r, correction = sample_rollout(policy, tok, prompts, cfg, seed, engine)
    t1 = time.perf_counter()
    rewards = score_rollout(rewarder, prompts, r)
    t2 = time.perf_counter()
    ref = reference.response_logprobs(r, cfg.temperature) if reference is not None else None
    t3 = time.perf_counter()
    return Experience(prompts, r, rewards, ref, {"generate": t1 - t0, "score": t2 - t1, "reference": t3 - t2},
                      correction)


def experience_metrics(exp: Experience) -> dict[str, float]:
    """Reward, KL, length and throughput figures of one batch of experience (the per-step diagnostics)."""
    r, rw = exp.rollout, exp.rewards
    lengths = r.lengths.float()
    m = {
        "reward": float(rw.total.mean()), "reward_std": float(rw.total.std()) if len(rw.total) > 1 else 0.0,
        "score": float(rw.score.mean()),
        "response_length": float(lengths.mean()),
        "truncated_fraction": float((~r.finished).float().mean()),
        "generated_tokens": float(lengths.sum()),
        "generate_tokens_per_s": float(lengths.sum()) / max(exp.seconds["generate"], 1e-9),
        **{f"seconds_{k}": v for k, v in exp.seconds.items()},
    }
    if rw.std is not None:
        m["ensemble_std"] = float(rw.std.mean())
    for name, values in rw.penalties.items():
        m[f"penalty_{name}"] = float(values.mean())
    kl = exp.kl_tokens("k1")
    if kl is not None:
        m["kl"] = float(kl.sum(-1).mean())  # per sequence, nats
        m["kl_k3"] = float(exp.kl_tokens("k3").sum(-1).mean())
    m["sample_entropy_proxy"] = float(-masked_mean(r.logprobs, r.response_mask))  # −log p of sampled tokens
    if exp.correction is not None:  # rollout engine != trainer: how far apart they are, and the weights used
        c = exp.correction
        m.update(sampler_mismatch_kl=float(c.mismatch_kl), sampler_weight_mean=float(c.weight_mean),
                 sampler_truncated_fraction=float(c.truncated_fraction))
    return m


def warn_negative_kl(step: int, kl: float) -> None:
    if kl < 0:
        log.warning(
            "step %d: the KL estimate to the reference is negative (%.4f). The k1 estimator is unbiased but noisy: "
            "a negative mean means too few samples for the current divergence, or sampling differs from the "
            "distribution the log-probs describe (top-p/top-k truncate it). Use more samples, top_p=1/top_k=0, "
            "or kl_estimator=k3 (always >= 0).", step, kl)


def require_finite(step: int, **values) -> None:
    """Raise :class:`NonFiniteError` naming the quantity when a loss or reward is NaN or infinite."""
    for name, v in values.items():
        bad = not torch.isfinite(v).all() if isinstance(v, torch.Tensor) else not math.isfinite(v)
        if bad:
            raise NonFiniteError(f"step {step}: {name} is not finite")


@torch.no_grad()
def evaluate(policy, tok, prompts: list, cfg: RolloutConfig, rewarder: Rewarder, reference: Reference | None,
             seed: int, samples: int = 1) -> tuple[dict[str, float], Experience]:
    """Held-out reward (and KL to the reference) of ``samples`` fresh samples per prompt, with a fixed seed
    so every evaluation of a run sees the same sampling noise."""
    if samples < 1:
        raise ValueError(f"held-out samples per prompt must be >= 1, got {samples}")
    exp = collect(policy, tok, prompts, RolloutConfig(n=samples, max_new_tokens=cfg.max_new_tokens,
                                                      temperature=cfg.temperature, top_p=cfg.top_p,
                                                      top_k=cfg.top_k, stop=cfg.stop), rewarder, reference, seed)
    m = experience_metrics(exp)
    out = {f"eval_{k}": m[k] for k in ("reward", "score", "response_length", "kl") if k in m}
    return out, exp


def write_samples(run, step: int, exp: Experience, limit: int = 4) -> None:
    """Append a few (prompt, response, reward) rows of this step to ``samples.jsonl`` in the run dir."""
    import json

    from palate.data.records import prompt_text

    n = exp.rollout.n
    with open(run.path / "samples.jsonl", "a") as f:
        for i in range(0, min(limit * n, len(exp.rollout.texts)), n):  # the first sample of each prompt
            f.write(json.dumps({"step": step, "prompt": prompt_text(exp.prompts[i // n]),
                                "response": exp.rollout.texts[i], "reward": float(exp.rewards.total[i]),
                                "stop": exp.rollout.stop_reason[i]}, ensure_ascii=False) + "\n")


def record_eval(where: Path, step: int, exp: Experience) -> None:
    """Every held-out answer of one evaluation with its reward and KL (``where/eval_samples.jsonl``), for the
    paired before/after comparison and the reward/KL trade-off of :func:`palate.eval.rl.rl_report`."""
    from palate.data.records import prompt_text
    from palate.eval.rl import write_eval_samples

    kl = exp.kl_tokens("k1")
    write_eval_samples(where, step, [prompt_text(p) for p in exp.prompts], exp.rollout.texts,
                       exp.rewards.total.tolist(), kl.sum(-1).tolist() if kl is not None else None,
                       samples=exp.rollout.n, scores=exp.rewards.score.tolist(),
                       truncated=(~exp.rollout.finished).tolist())


def eval_seed(seed: int) -> int:
    """The sampling seed of every held-out evaluation of a run trained with ``seed``."""
    return seed * 7919 + 1


def finish_rl(loop, run, tok, merge: bool, watch: Watch | None = None, **kw):
    """Write the run's RL report (held-out reward before vs after with a CI, reward/KL charts), print it,
    and save the final model with the improvement in the run summary. When the monitor stopped the run,
    ``final/`` is the best policy by the gold score (the policy at the stop is kept in ``final_at_stop/``)."""
    from palate.eval.rl import format_rl_report, rl_report

    if watch is not None:
        run.write_json("monitor.json", watch.monitor.summary())
        if watch.monitor.best_gold_step is not None:
            kw.update(best_gold_step=watch.monitor.best_gold_step, best_gold=watch.monitor.best_gold)
        if watch.stopped_at is not None:
            kw["stopped_by_monitor_at_step"] = watch.stopped_at
    summary = rl_report(run.path)
    text = format_rl_report(summary)
    if text:
        log.info("RL report (%s):\n%s", run.path / "report", text)
    imp = summary.get("improvement", {})
    extra = {"heldout_reward_before": imp.get("before"), "heldout_reward_after": imp.get("after"),
             "heldout_reward_delta_ci": imp.get("delta_ci"), "final_kl": summary.get("final_kl")} if imp else {}
    final = loop.finish(tok, merge=merge, **extra, **kw)
    if watch is not None and watch.stopped_at is not None:
        watch.keep_best_gold(final)
    return final


def minibatches(n_prompts: int, n: int, count: int, generator: torch.Generator | None):
    """Split a batch into ``count`` minibatches of whole prompt groups (so each group's prompt is still
    encoded once): yields ``(prompt_indices [p], row_indices [p * n])``; shuffled when a generator is given."""
    order = torch.randperm(n_prompts, generator=generator) if generator is not None else torch.arange(n_prompts)
    per = n_prompts // count
    for s in range(0, n_prompts, per):
        pidx = order[s : s + per]
        yield pidx, (pidx[:, None] * n + torch.arange(n)[None, :]).reshape(-1)


def policy_forward(model, r: Rollout, pidx: torch.Tensor, rows: torch.Tensor, temperature: float,
                   with_entropy: bool = True):
    """Hidden states, log-probs and entropies [b, T] of rows ``rows`` (answers to prompts ``pidx``) under
    ``model``, with gradients; the hidden states serve a shared value head."""
    hidden = response_hidden(model, r.prompt_ids[pidx], r.prompt_mask[pidx], r.response_ids[rows], r.n)
    logp, ent = response_logprobs(model, hidden, r.response_ids[rows], r.response_mask[rows], temperature,
                                  with_entropy=with_entropy)
    return hidden, logp, ent


class Watch:
    """The reward-hacking monitor of an RL run (:class:`palate.eval.monitor.Monitor`) fed every step, with an
    optional gold signal (``gold``: a reward model or function the policy never optimises) scored on the
    held-out answers at each evaluation. Alerts go to the log and ``monitor.jsonl``; each new best gold
    score saves the policy to ``best_gold/``; with ``action=stop`` an alert ends the run."""

    def __init__(self, run, policy, tok, cfg, gold_cfg: RewardConfig | None, start_step: int):
        from palate.eval.monitor import Monitor, monitor_metrics

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
            from palate.models.lora import save_model

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
        from palate.eval.text import repeated_ngram_fraction

        r = exp.rollout
        repetition = sum(repeated_ngram_fraction(t) for t in r.texts) / max(len(r.texts), 1)
        metrics["repetition"] = repetition
        self.update(step, proxy=metrics["reward"], reward=exp.rewards.score.tolist(), length=r.lengths.tolist(),
                    repetition=repetition, kl=metrics.get("kl"), ensemble_std=metrics.get("ensemble_std"),
                    gold=metrics.get("eval_gold"))
        metrics["monitor_alerts"] = len(self.monitor.alerts)

    def keep_best_gold(self, final: Path) -> None:
        """After a monitor stop: ``final/`` becomes the best-gold policy, the policy at the stop moves to
        ``final_at_stop/`` (nothing changes when no best-gold policy was saved)."""
        import shutil

        best, keep = self.run.path / "best_gold", self.run.path / "final_at_stop"
        if not best.exists():
            return
        shutil.rmtree(keep, ignore_errors=True)
        final.rename(keep)
        shutil.copytree(best, final)
        log.info("final/ is the best policy by the gold score (step %d); the policy at the stop is in %s",
                 self.monitor.best_gold_step, keep)


def drive(loop, run, policy, tok, held: list, rc: RolloutConfig, rewarder: Rewarder, reference: Reference | None,
          seed: int, sample_every: int, eval_every: int, update, watch: Watch | None = None, engine=None,
          eval_samples: int = 1) -> None:
    """The online-RL step loop shared by PPO and GRPO: for each step collect experience, call
    ``update(step, exp) -> metrics`` (the algorithm), then log diagnostics, samples and held-out reward.

    Held-out reward is measured before the first step too. A NaN/inf reward or loss stops the run with the
    last good state saved as a checkpoint. The sampling seed of step s is ``seed·100003 + s``. ``engine``:
    a rollout engine that samples the training steps instead of the trainer (Ray workers); held-out
    evaluation always samples in the trainer, ``eval_samples`` answers per held-out prompt.
    """
    held_seed = eval_seed(seed)
    if held and loop.start_step == 0:
        metrics, exp = evaluate(policy, tok, held, rc, rewarder, reference, held_seed, eval_samples)
        gold = watch.gold_score(exp) if watch else None
        if gold is not None:
            metrics["eval_gold"] = gold
            watch.update(0, gold=gold)
        record_eval(run.path, 0, exp)
        run.log(0, metrics)
        log.info("before training: %s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    for step, (prompts,) in loop:
        try:
            exp = collect(policy, tok, prompts, rc, rewarder, reference, seed=seed * 100_003 + step, engine=engine)
            metrics = experience_metrics(exp)
            require_finite(step, reward=exp.rewards.total)
            metrics.update(update(step, exp))
        except NonFiniteError as e:
            loop.step = step - 1
            path = loop.checkpoint()
            raise NonFiniteError(f"{e}; stopped. The last good state is saved at {path}") from None
        metrics = loop.end_step(**metrics)
        if "kl" in metrics:
            warn_negative_kl(step, metrics["kl"])
        if sample_every and (step % sample_every == 0 or step == 1):
            write_samples(run, step, exp)
        if held and loop.due(eval_every):
            ev, held_exp = evaluate(policy, tok, held, rc, rewarder, reference, held_seed, eval_samples)
            record_eval(run.path, step, held_exp)
            metrics.update(ev)
            gold = watch.gold_score(held_exp) if watch else None
            if gold is not None:
                metrics["eval_gold"] = gold
        if watch is not None:
            watch.observe(step, exp, metrics)
        loop.log(step, metrics)
        if watch is not None and watch.stopped_at is not None:
            loop.checkpoint()
            log.error("step %d: the reward-hacking monitor stopped the run (monitor.action=stop); see monitor.jsonl",
                      step)
            break
