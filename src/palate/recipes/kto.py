"""KTO (Ethayarajh et al. 2024, :func:`palate.losses.preference.kto_loss`) on unpaired thumbs up/down.

    load ratings (score above the scale's midpoint: desirable, below: undesirable, at it: skipped, counted), or
        preference pairs split into one of each -> tokenise each rating twice: its prompt with its own
        response, and with a seeded partner's response (the mismatched pair of KTO's KL reference point)
    reference log-probs of both rows: computed once and cached in the run dir, or live (the disabled LoRA
        adapter, or a frozen copy) (:mod:`palate.recipes.reference_cache`)
    greedy samples from the starting policy on held-out prompts
    for each optimizer step: forward own rows (with gradients) and mismatched rows (without) -> z₀ =
        max(0, mean log-ratio of the mismatched rows) -> KTO loss -> backward -> clip -> AdamW -> log
        rewards of each class, z₀
    held-out metrics (and the reward-hacking watch); samples again from the trained policy -> final/
"""

from __future__ import annotations

import logging
import random
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
from palate.data.batching import Batch, collate, padding_stats, plan_batches
from palate.data.errors import SkipLog
from palate.data.readers import read_preferences, read_ratings
from palate.data.records import Preference, Rating
from palate.data.split import split_heldout
from palate.data.tokenize import Example, encode_responses, uses_chat_template
from palate.eval.monitor import MonitorConfig
from palate.infra import session
from palate.infra.run import RunDir, recorded
from palate.losses.preference import kto_loss, kto_reference_point
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
from palate.recipes.reference_cache import live_reference, precomputed_references

log = logging.getLogger("palate.kto")


@dataclass(frozen=True)
class KTOSpec:
    beta: float = 0.1
    """β of the paper (and TRL's default)"""
    desirable_weight: float = 1.0
    """λ_D; the paper suggests λ_D·n_D / (λ_U·n_U) in [1, 4/3]"""
    undesirable_weight: float = 1.0
    """λ_U"""
    records: str = "auto"
    """auto (ratings, else preference pairs) | ratings | preferences (split into up/down)"""
    reference: str = "precompute"
    """precompute (cached once) | live (disabled LoRA adapter, or a frozen copy)"""
    samples: int = 4
    """held-out prompts answered before and after training (0: none)"""
    sample_max_new_tokens: int = 96
    reward_model: str | None = None
    """optional: a palate reward model that scores the before/after samples"""
    gold: str | None = None
    """The held-out watch (reward-hacking monitor), as dpo.gold / dpo.watch_prompts: answers to the first
    ``watch_prompts`` held-out prompts at every evaluation, scored by ``reward_model`` and ``gold``."""
    watch_prompts: int = 0
    watch_max_new_tokens: int = 64


@dataclass(frozen=True)
class KTOConfig:
    run_dir: str = "runs/kto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(path="bundled:preferences", eval_fraction=0.1))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6, epochs=1, warmup_ratio=0.1))
    lora: LoraConfig = field(default_factory=LoraConfig)
    log: LogConfig = field(default_factory=LogConfig)
    kto: KTOSpec = field(default_factory=KTOSpec)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


def check(spec: KTOSpec) -> None:
    if spec.reference not in ("precompute", "live"):
        raise ConfigError(f"kto.reference must be precompute or live, got {spec.reference!r}")
    if spec.records not in ("auto", "preferences", "ratings"):
        raise ConfigError(f"kto.records must be auto, preferences or ratings, got {spec.records!r}")
    check_watch(spec, "kto")


# ----------------------------------------------------------------------------- data


def read_records(data: DataConfig, spec: KTOSpec, skips: SkipLog, path: str | None = None) -> list[Rating]:
    """KTO's view of a data file: its ratings, or its preference pairs (``records=auto``: when the file has
    no ratings) as one desirable and one undesirable rating each; ties dropped with a count."""
    source = path or data.path
    read = read_preferences if spec.records == "preferences" else read_ratings
    try:
        records = read(source, columns=data.columns, split=data.split, on_error=data.on_error, skips=skips)
    except Exception:
        if spec.records != "auto":
            raise
        records = read_preferences(source, columns=data.columns, split=data.split, on_error=data.on_error, skips=skips)
    kept = []
    for rec in records:
        if isinstance(rec, Preference) and rec.tie:
            skips.skip(rec.meta.get("source", source), rec.meta.get("row"), "tie", "tie dropped (no preference to learn)")
            continue
        kept.append(rec)
    return unpaired(kept, skips)


def unpaired(records: list, skips: SkipLog) -> list[Rating]:
    """Ratings above the scale's midpoint are desirable, below undesirable (exactly the midpoint: skipped
    with a count); a preference pair gives one of each."""
    out = []
    for rec in records:
        if isinstance(rec, Preference):
            out.append(Rating(rec.prompt, rec.chosen, 1.0, (0.0, 1.0), meta={**rec.meta, "from_pair": "chosen"}))
            out.append(Rating(rec.prompt, rec.rejected, 0.0, (0.0, 1.0), meta={**rec.meta, "from_pair": "rejected"}))
            continue
        if rec.score == sum(rec.scale) / 2:
            skips.skip(rec.meta.get("source", "<records>"), rec.meta.get("row"), "score",
                       "rating at the scale's midpoint is neither desirable nor undesirable")
            continue
        out.append(rec)
    return out


def desirable(rating: Rating) -> bool:
    return rating.score > sum(rating.scale) / 2


def encode_kto(tok, ratings: list[Rating], max_length: int, skips: SkipLog, chat_template, truncate: bool,
               seed: int, long_prompts: str = "skip") -> list[list[Example]]:
    """Each rating as ``[own, mismatched]``: its prompt with its response, and its prompt with another
    rating's response (a fixed seeded partner), whose log-ratio estimates KTO's reference point."""
    use_template = uses_chat_template(tok, chat_template)
    order = list(range(len(ratings)))
    random.Random(f"kto-partner:{seed}").shuffle(order)
    partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
    out = []
    for i, rec in enumerate(ratings):
        src, row = rec.meta.get("source", "<records>"), rec.meta.get("row", i + 1)
        ex = encode_responses(tok, rec.prompt, [rec.response, ratings[partner[i]].response], max_length, skips=skips,
                              where=(src, row), index=i, use_template=use_template, truncate_completion=truncate,
                              fields=["response", "response (as KL partner)"], long_prompts=long_prompts)
        if ex:
            out.append(ex)
    return out


def read_and_encode(cfg: KTOConfig, tok, run: RunDir) -> tuple[list, list, list, list]:
    """Train and held-out ratings and their ``[own, mismatched]`` groups; what was skipped goes to
    ``data_report.json`` with the count of desirable train ratings."""
    skips = SkipLog()
    records = read_records(cfg.data, cfg.kto, skips)
    if cfg.data.eval_path:
        train_recs, eval_recs = records, read_records(cfg.data, cfg.kto, skips, path=cfg.data.eval_path)
    else:
        train_recs, eval_recs = split_heldout(records, cfg.data.eval_fraction, cfg.train.seed)
    d = cfg.data
    groups = encode_kto(tok, train_recs, d.max_length, skips, d.chat_template, d.truncate_completion,
                        cfg.train.seed, d.long_prompts)
    eval_groups = encode_kto(tok, eval_recs, d.max_length, skips, d.chat_template, True, cfg.train.seed,
                             d.long_prompts) if eval_recs else []
    n_desirable = sum(desirable(train_recs[g[0].index]) for g in groups)
    session.report_data(run, skips, n_train=len(groups), n_eval=len(eval_groups), n_desirable=n_desirable)
    return train_recs, eval_recs, groups, eval_groups


def kto_batches(groups: list[list[Example]], batch_size: int, pad_id: int, seed: int, epoch: int,
                bucket: bool = True) -> list[tuple[Batch, Batch]]:
    """``(own rows, mismatched rows)`` batch pairs: the second is only ever run without gradients."""
    order = plan_batches([len(g[0]) for g in groups], batch_size, seed, epoch, bucket=bucket)
    out = []
    for b in order:
        own = collate([groups[i][0] for i in b], pad_id)
        kl = collate([groups[i][1] for i in b], pad_id)
        own.indices = kl.indices = [groups[i][0].index for i in b]
        out.append((own, kl))
    return out


# ----------------------------------------------------------------------------- the loss


def kto_step(model, batches, records, ref_table, live, spec, env, n_examples):
    own, kl = batches
    with session.autocast(env.precision, env.device):
        pol, counts = sequence_logprobs(model, own)
        with torch.no_grad():
            pol_kl, _ = sequence_logprobs(model, kl)
    if ref_table is not None:
        ref = ref_table[torch.tensor(own.indices)]
    else:  # live: stack own and mismatched rows the way the cache stores them
        ref = torch.stack([live.sequence_logprobs(own), live.sequence_logprobs(kl)], dim=1)
    ref = ref.to(pol.device)
    z0 = kto_reference_point(pol_kl.float(), ref[:, 1])
    want = torch.tensor([desirable(records[i]) for i in own.indices], device=pol.device)
    out = kto_loss(pol.float(), ref[:, 0], want, z0, beta=spec.beta, desirable_weight=spec.desirable_weight,
                   undesirable_weight=spec.undesirable_weight)
    weights = torch.tensor([records[i].meta.get("weight", 1.0) for i in own.indices], device=pol.device, dtype=torch.float)
    loss = (weights * out.losses).sum() / n_examples
    r = out.rewards.detach()
    m = {"kl_reference_point": z0 * len(own.indices), "rewards_desirable": (r * want).sum(),
         "rewards_undesirable": (r * ~want).sum(), "desirable": want.float().sum(),
         "logp_per_token": (pol.detach() / counts.clamp_min(1)).sum()}
    return loss, m


def averaged(sums: dict[str, float], n: int) -> dict[str, float]:
    """Per-example means of summed metrics; the rewards are averaged within their own class."""
    out = {k: v / n for k, v in sums.items()}
    if "desirable" not in sums:  # a process left without a slice of this step
        return out
    n_up = sums["desirable"]
    out["rewards_desirable"] = sums["rewards_desirable"] / n_up if n_up else float("nan")
    out["rewards_undesirable"] = sums["rewards_undesirable"] / (n - n_up) if n - n_up else float("nan")
    return out


def evaluate(model, batches, records, ref_table, live, spec, env) -> dict[str, float]:
    """Held-out loss and the same metrics as training, prefixed ``eval_``."""
    n = sum(len(own.indices) for own, _ in batches)
    sums = eval_sums(model, batches, n, kto_step, records, ref_table, live, spec, env)
    return {f"eval_{k}": v for k, v in averaged(sums, n).items()}


# ----------------------------------------------------------------------------- the recipe


def references(cfg: KTOConfig, run, model, tok, stream, groups, eval_groups, env, n_train: int, n_eval: int):
    """``(train table, eval table, live reference)``: the ``[N, 2]`` (own, mismatched) tables for
    ``kto.reference=precompute``, the live reference for ``live``."""
    if cfg.kto.reference == "live":
        return None, None, live_reference(model, env, "kto", cfg.train.sharding)
    return (*precomputed_references(run, model, tok, cfg, "kto", stream, groups, eval_groups, env,
                                    n_train, n_eval), None)


@recorded
def train(cfg: KTOConfig, *, overwrite: bool = False) -> Path:
    check(cfg.kto)
    spec = cfg.kto
    run = RunDir.open(cfg.run_dir, cfg, overwrite=overwrite)
    env = session.start(cfg.train, cfg.model, run, cfg.log, cfg)
    tok = session.tokenizer(cfg.model)
    train_recs, eval_recs, groups, eval_groups = read_and_encode(cfg, tok, run)
    model = session.policy(cfg.model, cfg.lora, cfg.train, env, tok)

    def batches_of_epoch(epoch: int, which=groups, seed=cfg.train.seed, bucket=cfg.data.bucket):
        return kto_batches(which, cfg.train.batch_size, tok.pad_token_id, seed, epoch, bucket=bucket)

    stream = session.BatchStream(batches_of_epoch, cfg.train.grad_accum)
    eval_batches = batches_of_epoch(0, eval_groups, 0) if eval_groups else []
    first = [b for pair in stream.epoch(0) for b in pair]
    log.info("train: %d ratings, %d batches/epoch, padding %.1f%%, loss kto (β=%g)", len(groups),
             stream.batches_per_epoch, 100 * padding_stats(first)["padding_fraction"], spec.beta)
    ref_train, ref_eval, live = references(cfg, run, model, tok, stream, groups, eval_groups, env,
                                           len(train_recs), len(eval_recs))
    shown = as_encoded(eval_recs, eval_groups)  # held-out prompts as the rule left them (skipped: out; cut: cut)
    samples_before = held_out_samples(model, tok, shown, spec) if spec.samples else []

    loop = session.Loop(run, model, cfg.train, env, stream)
    watch = start_watch(loop, model, tok, shown, spec, cfg.monitor)
    for step, micro in loop:
        n_examples = loop.all_sum(sum(len(own.indices) for own, _ in micro))
        sums: dict[str, float] = {"loss": 0.0}
        for b in loop.accumulate(micro):
            loss, m = loop.forward(kto_step, b, train_recs, ref_train, live, spec, env, n_examples)
            loop.backward(loss)
            add(sums, {"loss": loss.detach(), **m})
        sums = loop.all_sum({**sums, "tokens": sum(own.n_tokens + kl.n_tokens for own, kl in micro)})
        loss_sum, tokens = sums.pop("loss"), sums.pop("tokens")
        metrics = loop.optimizer_step(loss=loss_sum, tokens=tokens, **averaged(sums, n_examples))
        if eval_batches and loop.due(cfg.train.eval_every):
            metrics.update(evaluate(loop.whole(), eval_batches, eval_recs, ref_eval, live, spec, env))
            if watch is not None:
                metrics.update(watch.measure(step))
        loop.log(step, metrics)
        if watch is not None and watch.stop:
            log.warning("monitor: stopping at step %d (monitor.action=stop); final/ is the best-gold policy", step)
            break
    return finish(loop, tok, cfg.lora.merge, shown, samples_before, spec, watch)
