"""Direct preference optimisation and its family on preference pairs: DPO, IPO, cDPO, robust DPO, RPO, SimPO,
ORPO (KTO, on unpaired ratings, is its own recipe: :mod:`palate.recipes.kto`).

    load preference pairs (ties dropped, counted) -> tokenise -> bucketed batches, chosen and rejected rows
        of a pair in one padded batch
    reference log-probs: computed once over the dataset and cached in the run dir (or live: the disabled
        LoRA adapter, or a frozen copy), none for SimPO/ORPO (:mod:`palate.recipes.reference_cache`)
    greedy samples from the starting policy on held-out prompts
    for each optimizer step: one forward -> completion log-probs (projection only on completion tokens, in
        chunks) -> the chosen loss -> backward -> clip -> AdamW -> log implicit rewards, accuracy, margins,
        chosen log-prob, log-ratio to the reference
    held-out metrics (and the reward-hacking watch); samples again from the trained policy (before/after
        side by side) -> final/
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from palate.config import (
    ConfigError,
    DataConfig,
    LogConfig,
    LoraConfig,
    ModelConfig,
    TrainConfig,
)
from palate.data.batching import Batch, group_batches, padding_stats
from palate.data.errors import SkipLog
from palate.data.readers import read_preferences
from palate.data.split import split_heldout
from palate.data.tokenize import encode_groups
from palate.eval.monitor import MonitorConfig
from palate.infra import session
from palate.infra.run import RunDir, recorded
from palate.losses.preference import (
    PREFERENCE_LOSSES,
    cdpo_loss,
    dpo_loss,
    ipo_loss,
    orpo_loss,
    requires_reference,
    robust_dpo_loss,
    rpo_loss,
    simpo_loss,
)
from palate.models.logprobs import sequence_logprobs
from palate.recipes.held_out import (
    add,
    as_encoded,
    check_watch,
    eval_sums,
    finish,
    held_out_samples,
    start_watch,
)
from palate.recipes.reference_cache import (
    REFERENCE_CACHE,
    live_reference,
    precomputed_references,
    reference_logprobs,
)

log = logging.getLogger("palate.dpo")

__all__ = [
    "DEFAULTS",
    "LOSSES",
    "REFERENCE_CACHE",
    "DPOConfig",
    "DPOSpec",
    "check",
    "pair_loss",
    "reference_logprobs",
    "train",
]

LOSSES = tuple(PREFERENCE_LOSSES)

# Each loss's own hyperparameters with their defaults (those of losses/preference.py, from the papers); a
# field left unset (None) takes its loss's default, and a field the loss does not use is refused.
DEFAULTS: dict[str, dict[str, float]] = {
    "dpo": {"beta": 0.1},
    "ipo": {"beta": 0.1},  # β is the paper's τ
    "cdpo": {"beta": 0.1, "label_smoothing": 0.1},
    "robust": {"beta": 0.1, "label_smoothing": 0.1},
    "rpo": {"beta": 0.1, "alpha": 1.0},
    "simpo": {"beta": 2.0, "gamma": 0.5},  # SimPO's β scales per-token average log-probs, not sums
    "orpo": {"beta": 0.1},  # β is the paper's λ, the weight of the odds-ratio term
}
PER_LOSS = ("label_smoothing", "gamma", "alpha")


@dataclass(frozen=True)
class DPOSpec:
    loss: str = "dpo"
    """dpo | ipo | cdpo | robust | rpo | simpo | orpo"""
    beta: float | None = None
    """None: the loss's default (DEFAULTS: 0.1; simpo 2.0; orpo: its λ, 0.1)"""
    label_smoothing: float | None = None
    """cdpo/robust: probability a label is flipped (default 0.1)"""
    gamma: float | None = None
    """simpo: target reward margin γ (paper's units: γ, not γ/β; default 0.5)"""
    alpha: float | None = None
    """rpo: weight of the chosen NLL term (default 1.0)"""
    reference: str = "precompute"
    """precompute (cached once) | live (disabled LoRA adapter, or a frozen copy)"""
    samples: int = 4
    """held-out prompts answered before and after training (0: none)"""
    sample_max_new_tokens: int = 96
    reward_model: str | None = None
    """optional: a palate reward model that scores the before/after samples"""
    gold: str | None = None
    """Held-out answers at every evaluation (the reward-hacking monitor): the first ``watch_prompts`` held-out prompts
    answered greedily, scored by ``reward_model`` (the proxy, logged as eval_reward) and by ``gold`` (``panel``:
    the simulated labeler panel's mean rubric score, or a ``module:function`` / ``file.py:function`` reward; never
    optimised; logged as eval_gold). Without a reward model the monitor's proxy is the held-out implicit reward
    margin. 0 prompts or neither scorer: off."""
    watch_prompts: int = 0
    watch_max_new_tokens: int = 64

    def __post_init__(self):  # resolved here, so the run's config.yaml says what trained
        if self.loss == "kto":
            raise ConfigError("KTO is its own recipe: run `palate kto CONFIG.yaml` (its settings under kto:, "
                              "e.g. kto.beta, kto.desirable_weight) instead of dpo.loss=kto")
        if self.loss not in DEFAULTS:
            raise ConfigError(f"dpo.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in PER_LOSS:
            if getattr(self, name) is not None and name not in DEFAULTS[self.loss]:
                users = [loss for loss, d in DEFAULTS.items() if name in d]
                raise ConfigError(f"dpo.{name} applies to dpo.loss={' | '.join(users)} only, not {self.loss}")
        for name, default in DEFAULTS[self.loss].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)


@dataclass(frozen=True)
class DPOConfig:
    run_dir: str = "runs/dpo"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(path="bundled:preferences", eval_fraction=0.1))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6, epochs=1, warmup_ratio=0.1))
    lora: LoraConfig = field(default_factory=LoraConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dpo: DPOSpec = field(default_factory=DPOSpec)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


def check(spec: DPOSpec) -> None:
    if spec.reference not in ("precompute", "live"):
        raise ConfigError(f"dpo.reference must be precompute or live, got {spec.reference!r}")
    check_watch(spec, "dpo")


# ----------------------------------------------------------------------------- data


def read_pairs(data: DataConfig, skips: SkipLog, path: str | None = None) -> list:
    """Preference pairs; ties dropped with a count (no preference to learn)."""
    source = path or data.path
    kept = []
    for rec in read_preferences(source, columns=data.columns, split=data.split, on_error=data.on_error, skips=skips):
        if rec.tie:
            skips.skip(rec.meta.get("source", source), rec.meta.get("row"), "tie", "tie dropped (no preference to learn)")
            continue
        kept.append(rec)
    return kept


def read_and_encode(cfg: DPOConfig, tok, run: RunDir) -> tuple[list, list, list, list]:
    """Train and held-out records (``data.eval_path``, else a seeded ``data.eval_fraction``) and their
    tokenised ``[chosen, rejected]`` groups; what was skipped goes to ``data_report.json``."""
    skips = SkipLog()
    records = read_pairs(cfg.data, skips)
    if cfg.data.eval_path:
        train_recs, eval_recs = records, read_pairs(cfg.data, skips, path=cfg.data.eval_path)
    else:
        train_recs, eval_recs = split_heldout(records, cfg.data.eval_fraction, cfg.train.seed)
    enc = {"max_length": cfg.data.max_length, "skips": skips, "chat_template": cfg.data.chat_template,
           "long_prompts": cfg.data.long_prompts}
    groups = encode_groups(tok, train_recs, truncate_completion=cfg.data.truncate_completion, **enc)
    eval_groups = encode_groups(tok, eval_recs, **enc) if eval_recs else []
    session.report_data(run, skips, n_train=len(groups), n_eval=len(eval_groups))
    return train_recs, eval_recs, groups, eval_groups


# ----------------------------------------------------------------------------- losses

# loss name -> its call on the spec ``s``, summed log-probs (``pc``, ``pr``), completion lengths (``lc``, ``lr``)
# and the reference's summed log-probs (``rc``, ``rr``; None for the reference-free losses)
PAIR_LOSSES = {
    "dpo": lambda s, pc, pr, lc, lr, rc, rr: dpo_loss(pc, pr, rc, rr, beta=s.beta),
    # IPO (and TRL) compare per-token average log-probs
    "ipo": lambda s, pc, pr, lc, lr, rc, rr: ipo_loss(pc / lc, pr / lr, rc / lc, rr / lr, beta=s.beta),
    "cdpo": lambda s, pc, pr, lc, lr, rc, rr: cdpo_loss(pc, pr, rc, rr, beta=s.beta, label_smoothing=s.label_smoothing),
    "robust": lambda s, pc, pr, lc, lr, rc, rr: robust_dpo_loss(pc, pr, rc, rr, beta=s.beta,
                                                                label_smoothing=s.label_smoothing),
    "rpo": lambda s, pc, pr, lc, lr, rc, rr: rpo_loss(pc, pr, rc, rr, -pc / lc, beta=s.beta, alpha=s.alpha),
    "simpo": lambda s, pc, pr, lc, lr, rc, rr: simpo_loss(pc, pr, lc, lr, beta=s.beta, gamma=s.gamma),
    "orpo": lambda s, pc, pr, lc, lr, rc, rr: orpo_loss(pc, pr, lc, lr, -pc / lc, beta=s.beta),
}


def pair_loss(spec: DPOSpec, pol: torch.Tensor, counts: torch.Tensor, ref: torch.Tensor | None):
    """The configured pairwise loss on summed log-probs ``pol`` ``[2B]`` (rows alternate chosen, rejected);
    ``ref``: the reference's ``[B, 2]`` (chosen, rejected), None for SimPO/ORPO."""
    pc, pr = pol[0::2], pol[1::2]
    lc, lr = counts[0::2].clamp_min(1).to(pol.dtype), counts[1::2].clamp_min(1).to(pol.dtype)
    rc, rr = (ref[:, 0].to(pol.device), ref[:, 1].to(pol.device)) if ref is not None else (None, None)
    return PAIR_LOSSES[spec.loss](spec, pc, pr, lc, lr, rc, rr)


def pair_metrics(out, pol, counts, ref) -> dict[str, torch.Tensor]:
    """Sums of what a DPO user watches, to be averaged over the step."""
    pc, pr = pol[0::2].detach(), pol[1::2].detach()
    lc, lr = counts[0::2].clamp_min(1).float(), counts[1::2].clamp_min(1).float()
    m = {
        "rewards_chosen": out.chosen_rewards.sum(), "rewards_rejected": out.rejected_rewards.sum(),
        "reward_accuracy": (out.chosen_rewards > out.rejected_rewards).float().sum(),
        "reward_margin": (out.chosen_rewards - out.rejected_rewards).sum(),
        "logp_chosen": pc.sum(), "logp_rejected": pr.sum(),
        "logp_chosen_per_token": (pc / lc).sum(), "len_chosen": lc.sum(), "len_rejected": lr.sum(),
    }
    if ref is not None:  # mean per-token log-ratio on the data's responses: a proxy for KL(π‖π_ref)
        rc, rr = ref[:, 0].to(pc.device), ref[:, 1].to(pc.device)
        m["logratio_per_token"] = (((pc - rc) + (pr - rr)) / (lc + lr)).sum()
    return m


def reference_rows(table: torch.Tensor | None, live, batch: Batch) -> torch.Tensor | None:
    """The reference's ``[B, 2]`` (chosen, rejected) log-probs of a batch's pairs: from the precomputed
    table, or the live reference; None without a reference."""
    if table is not None:
        return table[torch.tensor(batch.indices)]
    if live is not None:
        return live.sequence_logprobs(batch).view(-1, 2)
    return None


def pair_step(model, batch, records, ref_table, live, spec, env, n_examples):
    with session.autocast(env.precision, env.device):
        pol, counts = sequence_logprobs(model, batch)
    ref = reference_rows(ref_table, live, batch)
    out = pair_loss(spec, pol.float(), counts, ref)
    weights = torch.tensor([records[i].weight for i in batch.indices], device=out.losses.device)
    loss = (weights * out.losses).sum() / n_examples
    return loss, pair_metrics(out, pol, counts, ref)


def evaluate(model, batches, records, ref_table, live, spec, env) -> dict[str, float]:
    """Held-out loss and the same metrics as training, prefixed ``eval_``."""
    n = sum(len(b.indices) for b in batches)
    sums = eval_sums(model, batches, n, pair_step, records, ref_table, live, spec, env)
    return {f"eval_{k}": v / n for k, v in sums.items()}


# ----------------------------------------------------------------------------- the recipe


def references(cfg: DPOConfig, run, model, tok, stream, groups, eval_groups, env, n_train: int, n_eval: int):
    """``(train table, eval table, live reference)``: the tables for ``dpo.reference=precompute``, the live
    reference for ``live``; all None for the reference-free losses."""
    if not requires_reference(cfg.dpo.loss):
        return None, None, None
    if cfg.dpo.reference == "live":
        return None, None, live_reference(model, env, "dpo", cfg.train.sharding)
    return (*precomputed_references(run, model, tok, cfg, cfg.dpo.loss, stream, groups, eval_groups, env,
                                    n_train, n_eval), None)


@recorded
def train(cfg: DPOConfig, *, overwrite: bool = False) -> Path:
    check(cfg.dpo)
    spec = cfg.dpo
    run = RunDir.open(cfg.run_dir, cfg, overwrite=overwrite)
    env = session.start(cfg.train, cfg.model, run, cfg.log, cfg)
    tok = session.tokenizer(cfg.model)
    train_recs, eval_recs, groups, eval_groups = read_and_encode(cfg, tok, run)
    model = session.policy(cfg.model, cfg.lora, cfg.train, env, tok)

    def batches_of_epoch(epoch: int, which=groups, seed=cfg.train.seed, bucket=cfg.data.bucket):
        return group_batches(which, cfg.train.batch_size, tok.pad_token_id, seed, epoch, bucket=bucket)

    stream = session.BatchStream(batches_of_epoch, cfg.train.grad_accum)
    eval_batches = batches_of_epoch(0, eval_groups, 0) if eval_groups else []
    log.info("train: %d pairs, %d batches/epoch, padding %.1f%%, loss %s (β=%g)", len(groups),
             stream.batches_per_epoch, 100 * padding_stats(stream.epoch(0))["padding_fraction"], spec.loss, spec.beta)
    ref_train, ref_eval, live = references(cfg, run, model, tok, stream, groups, eval_groups, env,
                                           len(train_recs), len(eval_recs))
    shown = as_encoded(eval_recs, eval_groups)  # held-out prompts as the rule left them (skipped: out; cut: cut)
    samples_before = held_out_samples(model, tok, shown, spec) if spec.samples else []

    loop = session.Loop(run, model, cfg.train, env, stream)
    watch = start_watch(loop, model, tok, shown, spec, cfg.monitor)
    for step, micro in loop:
        n_examples = loop.all_sum(sum(len(b.indices) for b in micro))
        sums: dict[str, float] = {"loss": 0.0}
        for b in loop.accumulate(micro):
            loss, m = loop.forward(pair_step, b, train_recs, ref_train, live, spec, env, n_examples)
            loop.backward(loss)
            add(sums, {"loss": loss.detach(), **m})
        sums = loop.all_sum({**sums, "tokens": sum(b.n_tokens for b in micro)})  # over every process's slice
        loss_sum, tokens = sums.pop("loss"), sums.pop("tokens")
        metrics = loop.optimizer_step(loss=loss_sum, tokens=tokens, **{k: v / n_examples for k, v in sums.items()})
        if eval_batches and loop.due(cfg.train.eval_every):
            metrics.update(evaluate(loop.whole(), eval_batches, eval_recs, ref_eval, live, spec, env))
            if watch is not None:
                metrics.update(watch.measure(step, metrics.get("eval_reward_margin")))
        loop.log(step, metrics)
        if watch is not None and watch.stop:
            log.warning("monitor: stopping at step %d (monitor.action=stop); final/ is the best-gold policy", step)
            break
    return finish(loop, tok, cfg.lora.merge, shown, samples_before, spec, watch)
