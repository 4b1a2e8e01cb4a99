"""``palate rl-eval``: a closer look at a finished PPO or GRPO run's held-out gain than its own evaluations:
the starting and the trained policy answer the run's held-out prompts several times each, paired by prompt."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from palate.config import ConfigError, load_config
from palate.eval.rl import (
    EVAL_SAMPLES,
    REEVAL,
    compare_evaluations,
    read_eval_samples,
    record_eval,
)
from palate.models.load import load_model, load_tokenizer
from palate.models.reference import Reference
from palate.recipes.grpo import GRPOConfig
from palate.recipes.ppo import PPOConfig
from palate.recipes.prompts import prompt_limit, prompt_stream
from palate.rollout.experience import eval_seed, evaluate
from palate.rollout.rewards import Rewarder


def reevaluate(run_path: str | Path, *, samples: int = 8, policy: str | None = None, max_new_tokens: int | None = None,
               device: str = "cpu") -> dict[str, Any]:
    """A closer look at an RL run's held-out gain than its own evaluations (often one sample per prompt):
    the starting policy (``model.name`` of the run) and the trained one (``policy``, default the run's
    ``final/``) answer each of the run's held-out prompts ``samples`` times with the run's rollout settings,
    reward and evaluation seed; the per-prompt mean rewards are compared pairwise (:func:`paired_improvement`).

    Writes ``report/reeval/eval_samples.jsonl`` (every answer; step 0 = start, step 1 = trained) and
    ``report/rl_reeval.json``; returns the summary."""
    run_path = Path(run_path)
    cfg_path = run_path / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_path}: not a run dir (no config.yaml)")
    raw = yaml.safe_load(cfg_path.read_text()) or {}
    if "ppo" in raw:
        cfg = load_config(PPOConfig, cfg_path)
        per_step = cfg.ppo.prompts_per_step
    elif "grpo" in raw:
        cfg = load_config(GRPOConfig, cfg_path)
        per_step = cfg.grpo.prompts_per_step
    else:
        raise ConfigError(f"{cfg_path}: not a palate ppo or grpo run (no ppo: or grpo: section)")
    trained = Path(policy) if policy else run_path / "final"
    if not trained.exists():
        raise FileNotFoundError(f"{trained}: no trained policy to evaluate (has the run finished?)")
    tok = load_tokenizer(str(trained))
    # the run's held-out prompts, as its long-prompt rule left them (room: the run's answer length)
    _, held = prompt_stream(cfg.prompts, per_step, cfg.train.seed, tok, room=cfg.rollout.max_new_tokens,
                            max_length=prompt_limit(cfg.prompts, cfg.reward))
    if not held:
        raise ConfigError(f"{cfg_path}: the run has no held-out prompts (prompts.eval_fraction is 0)")
    rc = cfg.rollout if max_new_tokens is None else dataclasses.replace(cfg.rollout, max_new_tokens=max_new_tokens)
    seed = eval_seed(cfg.train.seed)  # the run's own evaluation seed
    rewarder = Rewarder(cfg.reward)
    out_dir = run_path / "report" / "reeval"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / EVAL_SAMPLES).unlink(missing_ok=True)
    start = load_model(cfg.model.name, dtype=cfg.model.dtype, device=device, tokenizer=tok, seed=cfg.train.seed).eval()
    _, exp = evaluate(start, tok, held, rc, rewarder, None, seed, samples)
    truncated = {"start": _truncated(exp)}
    record_eval(out_dir, 0, exp)
    reference = Reference(start, copy_weights=False)
    model = load_model(str(trained), dtype=cfg.model.dtype, device=device, tokenizer=tok).eval()
    ev_trained, exp = evaluate(model, tok, held, rc, rewarder, reference, seed, samples)
    truncated["trained"] = _truncated(exp)
    record_eval(out_dir, 1, exp)
    evals = read_eval_samples(out_dir)
    summary = {"run": str(run_path), "start": cfg.model.name, "trained": str(trained),
               "max_new_tokens": rc.max_new_tokens, "temperature": rc.temperature, "seed": seed,
               "truncated_fraction": truncated, **compare_evaluations(evals[0], evals[1]),
               "kl": ev_trained.get("eval_kl")}
    (run_path / "report" / REEVAL).write_text(json.dumps(summary, indent=1))
    return summary


def _truncated(exp) -> float:
    """Fraction of the answers that hit the token limit."""
    return float((~exp.rollout.finished).float().mean())
