"""What the preference recipes (DPO family, KTO) show on their held-out records: the loss and metrics of an
evaluation pass, greedy answers before and after training (``samples.json``, optionally scored by an
independent reward model), and the reward-hacking watch (:class:`palate.eval.watch.HeldOutWatch`).

``spec`` below is a recipe's own section (``dpo:`` or ``kto:``), which has the same held-out fields:
``samples``, ``sample_max_new_tokens``, ``reward_model``, ``gold``, ``watch_prompts``, ``watch_max_new_tokens``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch

from palate.config import ConfigError
from palate.data.records import Preference, prompt_text
from palate.data.tokenize import Example
from palate.eval.watch import HeldOutWatch, distinct_prompts
from palate.infra import distributed
from palate.models.heads import RewardModel
from palate.rollout.generate import reply

log = logging.getLogger("palate.dpo")


def as_encoded(records: list, groups: list[list[Example]]) -> list:
    """The records that tokenisation kept (``groups``), in order, each with its prompt as cut when
    ``data.long_prompts=truncate_left`` cut it: what held-out samples and the watch should answer."""
    out = []
    for g in sorted(groups, key=lambda g: g[0].index):
        rec = records[g[0].index]
        out.append(dataclasses.replace(rec, prompt=g[0].prompt) if g[0].prompt is not None else rec)
    return out


def add(sums: dict[str, float], values: dict) -> None:
    for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + float(v)


@torch.no_grad()
def eval_sums(model, batches: list, n: int, step, *args) -> dict[str, float]:
    """Summed held-out loss (``"loss"``) and metrics of ``step(model, batch, *args, n) -> (loss, metrics)``
    over ``batches`` (``n``: the records they hold), the model in eval mode."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    for b in batches:
        loss, m = step(model, b, *args, n)
        add(sums, {"loss": loss * n, **m})
    model.train(was_training)
    return sums


# ----------------------------------------------------------------------------- before/after samples


def held_out_samples(model, tok, eval_recs: list, spec) -> list[dict]:
    """Greedy replies to the first held-out prompts (the run's before/after evidence)."""
    was_training = model.training
    model.eval()
    out = []
    for rec in distinct_prompts(eval_recs, spec.samples):
        text = reply(model, tok, rec.prompt, max_new_tokens=spec.sample_max_new_tokens, repetition_penalty=1.2)
        entry = {"prompt": prompt_text(rec.prompt), "response": text, "prompt_record": rec.prompt}
        if isinstance(rec, Preference):
            entry.update(chosen=rec.chosen, rejected=rec.rejected)
        out.append(entry)
    model.train(was_training)
    return out


def score_samples(reward_model: str, rows: list[dict], prompts: list) -> dict[str, float]:
    """Score before/after answers with an independent reward model (adds ``reward_before/after`` to rows)."""
    rm = RewardModel.load(reward_model)
    before = rm.score(prompts, [r["before"] for r in rows]).mean.tolist()
    after = rm.score(prompts, [r["after"] for r in rows]).mean.tolist()
    for r, b, a in zip(rows, before, after):
        r["reward_before"], r["reward_after"] = b, a
    # a prompt the reward model skips (its long_prompts rule) scores NaN: averaged over the scored ones
    scored = [(b, a) for b, a in zip(before, after) if not (math.isnan(b) or math.isnan(a))] or [(float("nan"), float("nan"))]
    summary = {"sample_reward_before": sum(b for b, _ in scored) / len(scored),
               "sample_reward_after": sum(a for _, a in scored) / len(scored)}
    log.info("held-out samples scored by %s: mean reward %.3f before, %.3f after", reward_model,
             summary["sample_reward_before"], summary["sample_reward_after"])
    return summary


def before_after(loop, tok, shown: list, before: list[dict], spec) -> dict:
    """Answer the held-out prompts of ``before`` again with the trained model; write ``samples.json``
    (before/after side by side) and return what goes into the run summary."""
    if not before:
        return {}
    after = held_out_samples(loop.whole(), tok, shown, spec)
    rows = [{"prompt": b["prompt"], "before": b["response"], "after": a["response"],
             **{k: b[k] for k in ("chosen", "rejected") if k in b}} for b, a in zip(before, after)]
    summary = {}
    if spec.reward_model:
        summary.update(score_samples(spec.reward_model, rows, [b["prompt_record"] for b in before]))
    loop.run.write_json("samples.json", rows)
    summary["samples"] = "samples.json"
    return summary


# ----------------------------------------------------------------------------- the watch


def watching(spec) -> bool:
    return spec.watch_prompts > 0 and bool(spec.gold or spec.reward_model)


def check_watch(spec, section: str) -> None:
    if watching(spec) and distributed.world_size() > 1:
        raise ConfigError(f"{section}.watch_prompts (the held-out watch) runs on one process only for now; "
                          f"set {section}.watch_prompts=0 to train on several")


def start_watch(loop, model, tok, shown: list, spec, monitor_cfg) -> HeldOutWatch | None:
    """The held-out watch when ``spec`` asks for one, measured once before the first step of a new run."""
    if not watching(spec):
        return None
    watch = HeldOutWatch(loop.run, model, tok, shown, monitor_cfg, loop.start_step, n_prompts=spec.watch_prompts,
                         reward_model=spec.reward_model, gold=spec.gold, max_new_tokens=spec.watch_max_new_tokens,
                         precision=loop.env.precision)
    if loop.start_step == 0:
        loop.run.log(0, watch.measure(0))
    return watch


def finish(loop, tok, merge: bool, shown: list, samples_before: list[dict], spec, watch: HeldOutWatch | None) -> Path:
    """Samples after training, the watch's summary, ``final/``; after a monitor stop ``final/`` is the
    best-gold policy."""
    summary = before_after(loop, tok, shown, samples_before, spec)
    if watch is not None:
        summary.update(watch.summary())
    final = loop.finish(tok, merge=merge, **summary)
    if watch is not None and watch.stop:
        watch.keep_best_gold(final)
    return final
