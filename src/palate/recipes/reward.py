"""Reward modelling: learn r(x, y) from comparisons.

    load preferences (or rankings) -> ties dropped with a count, or kept with a tie-aware loss
    tokenise each comparison group with the chat template -> bucketed batches, a group's rows together
    for each optimizer step: one forward scores every row at its last real token (K heads)
                             Bradley–Terry (margin, smoothing) or Plackett–Luce, weighted per example
                             (and per head: Poisson bootstrap) -> backward -> clip -> AdamW -> log
    held-out evaluation (accuracy + CI, calibration, length bias, per group) -> rm_eval.json, plots
    normalisation stats on training responses -> final/ (AutoModelForSequenceClassification + palate_reward.json)
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from palate.config import DataConfig, LogConfig, LoraConfig, ModelConfig, TrainConfig
from palate.data.batching import Batch, bucketed_padding_stats, group_batches, padding_stats
from palate.data.errors import SkipLog
from palate.data.readers import read_preferences, read_rankings
from palate.data.records import Preference, Ranking, ranking_pairs
from palate.data.split import split_heldout
from palate.data.tokenize import encode_groups, uses_chat_template
from palate.infra import session
from palate.infra.run import RunDir, recorded
from palate.losses.reward import bradley_terry_loss, centering_penalty, plackett_luce_loss
from palate.models.heads import REWARD_META, RewardModel, distinct_pad_token, init_heads, reward_scores

log = logging.getLogger("palate.rm")

LOSSES = ("bradley_terry", "plackett_luce")
# A comparison batch's rows (chosen and rejected of every pair) run as up to this many length buckets, so a
# pair's two responses do not pad each other; the scores return in the batch's order, pairs intact.
# Two, not more: on the bench pairs (4 per batch) 2 buckets cut padding 22.3% -> 5.7% and 4 buckets to 2.3%,
# but on a 2-core CPU 4 forwards of 1-2 rows ran ~35% slower than one padded forward (smaller GEMMs),
# while 2 were on par or faster (one noisy run on a shared machine: 13.8 / 14.3 / 8.8 tok/s for 1 / 2 / 4).
ROW_PARTS = 2


def batch_scores(model, batch: Batch) -> torch.Tensor:
    """``[rows, heads]`` rewards of a comparison batch, its rows run in length buckets (:data:`ROW_PARTS`)."""
    return reward_scores(model, batch, row_parts=ROW_PARTS)


@dataclass(frozen=True)
class RewardSpec:
    records: str = "preferences"
    """preferences | rankings"""
    loss: str = "bradley_terry"
    """bradley_terry | plackett_luce (rankings; Bradley–Terry expands them to pairs)"""
    use_margin: bool = True
    """subtract each pair's ``margin`` (when the data has one) inside the sigmoid"""
    label_smoothing: float = 0.0
    """probability a label is wrong (noisy-label robust loss)"""
    ties: str = "drop"
    """drop (counted) | soft (tie-aware loss: the two rewards pulled together)"""
    center_coef: float = 0.0
    """reward-centering regulariser, e.g. 0.01"""
    heads: int = 1
    """ensemble heads on one backbone; score() returns their mean and std"""
    bootstrap: bool = True
    """with heads > 1, each head weights examples by its own Poisson(1) resample"""
    normalize_samples: int = 256
    """training responses scored for the saved mean/std"""


@dataclass(frozen=True)
class RewardConfig:
    run_dir: str = "runs/rm"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(path="bundled:preferences", eval_fraction=0.2))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, epochs=1))
    lora: LoraConfig = field(default_factory=LoraConfig)
    log: LogConfig = field(default_factory=LogConfig)
    reward: RewardSpec = field(default_factory=RewardSpec)


def check(spec: RewardSpec) -> None:
    from palate.config import ConfigError

    if spec.loss not in LOSSES:
        raise ConfigError(f"reward.loss must be one of {', '.join(LOSSES)}, got {spec.loss!r}")
    if spec.records not in ("preferences", "rankings"):
        raise ConfigError(f"reward.records must be preferences or rankings, got {spec.records!r}")
    if spec.ties not in ("drop", "soft"):
        raise ConfigError(f"reward.ties must be drop or soft, got {spec.ties!r}")
    if spec.heads < 1:
        raise ConfigError(f"reward.heads must be >= 1, got {spec.heads}")
    if not 0.0 <= spec.label_smoothing < 0.5:
        raise ConfigError(f"reward.label_smoothing must be in [0, 0.5), got {spec.label_smoothing}")


def read_comparisons(data: DataConfig, spec: RewardSpec, skips: SkipLog, path: str | None = None) -> list:
    """Preference or Ranking records; ties dropped (counted) unless ``ties=soft``; rankings expanded to
    pairs for Bradley–Terry."""
    source = path or data.path
    reader = read_rankings if spec.records == "rankings" else read_preferences
    records = reader(source, columns=data.columns, split=data.split, on_error=data.on_error, skips=skips)
    if spec.records == "rankings" and spec.loss == "bradley_terry":
        records = [p for r in records for p in ranking_pairs(r)]
    kept = []
    for rec in records:
        if isinstance(rec, Preference) and rec.tie and spec.ties == "drop":
            skips.skip(rec.meta.get("source", source), rec.meta.get("row"), "tie", "tie dropped (reward.ties=drop)")
            continue
        kept.append(rec)
    return kept


def group_rewards(scores: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``[N, K]`` (group-major) -> ``[G, Kmax, K]`` best first, with a ``[G, Kmax]`` validity mask."""
    sizes = batch.group_sizes
    width = max(sizes)
    out = scores.new_zeros(len(sizes), width, scores.shape[-1])
    mask = torch.zeros(len(sizes), width, dtype=torch.bool, device=scores.device)
    at = 0
    for g, n in enumerate(sizes):
        out[g, :n] = scores[at : at + n]
        mask[g, :n] = True
        at += n
    return out, mask


def comparison_loss(scores: torch.Tensor, batch: Batch, records: list, spec: RewardSpec) -> torch.Tensor:
    """Per-group, per-head losses ``[G, K]`` for one batch of comparison groups."""
    grouped, mask = group_rewards(scores, batch)
    recs = [records[i] for i in batch.indices]
    if spec.loss == "plackett_luce":
        return plackett_luce_loss(grouped, mask)
    rc, rr = grouped[:, 0], grouped[:, 1]
    margin = None
    if spec.use_margin:
        margin = torch.tensor([r.margin or 0.0 for r in recs], device=scores.device)
    eps = torch.tensor([0.5 if r.tie else spec.label_smoothing for r in recs], device=scores.device)
    losses = bradley_terry_loss(rc, rr, margin=margin, label_smoothing=eps)
    if spec.center_coef:
        losses = losses + spec.center_coef * centering_penalty(rc, rr)
    return losses


def example_weights(records: list, indices: list[int], boot: torch.Tensor | None, heads: int) -> torch.Tensor:
    """Weights ``[G, K]``: the record's own weight (labeler confidence), times each head's bootstrap count."""
    w = torch.tensor([getattr(records[i], "weight", 1.0) for i in indices])[:, None].expand(-1, heads)
    return w * boot[indices] if boot is not None else w


def bootstrap_counts(n: int, heads: int, seed: int, enabled: bool) -> torch.Tensor | None:
    """Poisson(1) resample counts per (record, head): each head trains on its own bootstrap sample."""
    if heads == 1 or not enabled:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.ones(n, heads), generator=g)


@torch.no_grad()
def normalisation_stats(rm: RewardModel, records: list, n: int, seed: int) -> dict[str, float]:
    """Mean and std of the (head-mean) reward over up to ``n`` training responses (read as scoring reads
    them: a prompt too long for the model is cut or skipped by its ``long_prompts`` rule, and counted)."""
    pairs = [(r.prompt, resp, (r.meta.get("source", "<records>"), r.meta.get("row", i + 1)))
             for i, r in enumerate(records)
             for resp in ([r.chosen, r.rejected] if isinstance(r, Preference) else list(r.responses))]
    random.Random(f"normalise:{seed}").shuffle(pairs)
    pairs = pairs[:n]
    skips = SkipLog(seen=len(pairs))
    scores = rm.score([p for p, _, _ in pairs], [r for _, r, _ in pairs], skips=skips, where=[w for _, _, w in pairs])
    rewards = scores.mean[~torch.isnan(scores.mean)]
    if len(rewards) == 0:
        raise ValueError(f"normalisation: none of {len(pairs)} training responses could be scored at max_length "
                         f"{rm.max_length} (every prompt too long)")
    std = rewards.std().clamp_min(1e-6) if len(rewards) > 1 else torch.tensor(1.0)
    return {"mean": float(rewards.mean()), "std": float(std), "n": len(rewards), "n_skipped": len(scores.skipped),
            "n_truncated": len(skips.truncations)}


@recorded
def train(cfg: RewardConfig, *, overwrite: bool = False) -> Path:
    check(cfg.reward)
    spec = cfg.reward
    run = RunDir.open(cfg.run_dir, cfg, overwrite=overwrite)
    env = session.start(cfg.train, cfg.model, run, cfg.log, cfg)
    tok = session.tokenizer(cfg.model)
    distinct_pad_token(tok)

    skips = SkipLog()
    records = read_comparisons(cfg.data, spec, skips)
    if cfg.data.eval_path:
        train_recs, eval_recs = records, read_comparisons(cfg.data, spec, skips, path=cfg.data.eval_path)
    else:
        train_recs, eval_recs = split_heldout(records, cfg.data.eval_fraction, cfg.train.seed)
    encode = dict(max_length=cfg.data.max_length, skips=skips, chat_template=cfg.data.chat_template,
                  truncate_completion=cfg.data.truncate_completion, long_prompts=cfg.data.long_prompts)
    groups = encode_groups(tok, train_recs, **encode)
    n_ties = sum(1 for r in train_recs if isinstance(r, Preference) and r.tie)
    session.report_data(run, skips, n_train=len(groups), n_eval=len(eval_recs), n_train_ties=n_ties)

    model = session.policy(cfg.model, cfg.lora, cfg.train, env, tok, num_labels=spec.heads,
                           init=lambda m: init_heads(m, cfg.train.seed))
    model.config.pad_token_id = tok.pad_token_id
    boot = bootstrap_counts(len(train_recs), spec.heads, cfg.train.seed, spec.bootstrap)

    stream = session.BatchStream(
        lambda epoch: group_batches(groups, cfg.train.batch_size, tok.pad_token_id, cfg.train.seed, epoch,
                                    bucket=cfg.data.bucket),
        cfg.train.grad_accum,
    )
    first = stream.epoch(0)
    log.info("train: %d comparisons, %d batches/epoch, padding %.1f%% (%.1f%% in the length-bucketed forwards), "
             "%d head(s)%s", len(groups), stream.batches_per_epoch, 100 * padding_stats(first)["padding_fraction"],
             100 * bucketed_padding_stats(first, ROW_PARTS)["padding_fraction"], spec.heads,
             " with bootstrap resampling" if boot is not None else "")

    loop = session.Loop(run, model, cfg.train, env, stream)
    for step, micro in loop:
        total_w = loop.all_sum(sum(float(example_weights(train_recs, b.indices, boot, spec.heads).sum()) for b in micro))
        loss_sum, correct, n_groups, gap = 0.0, 0, 0, 0.0
        for b in loop.accumulate(micro):
            with session.autocast(env.precision, env.device):
                scores = loop.forward(batch_scores, b)
            losses = comparison_loss(scores, b, train_recs, spec)
            w = example_weights(train_recs, b.indices, boot, spec.heads).to(losses.device)
            loss = (w * losses).sum() / max(total_w, 1e-12)
            loop.backward(loss)
            loss_sum += float(loss.detach())
            grouped, _ = group_rewards(scores.detach().mean(-1, keepdim=True), b)
            correct += int((grouped[:, 0, 0] > grouped[:, 1, 0]).sum())
            gap += float((grouped[:, 0, 0] - grouped[:, 1, 0]).sum())
            n_groups += len(b.group_sizes)
        m = loop.all_sum({"loss": loss_sum, "correct": correct, "groups": n_groups, "gap": gap,
                          "tokens": sum(b.n_tokens for b in micro)})
        metrics = loop.optimizer_step(loss=m["loss"], accuracy=m["correct"] / m["groups"],
                                      reward_gap=m["gap"] / m["groups"], tokens=m["tokens"])
        if eval_recs and loop.due(cfg.train.eval_every) and step < loop.total:
            metrics.update(quick_eval(loop.whole(), tok, eval_recs, cfg))
        loop.log(step, metrics)

    meta = {"max_length": cfg.data.max_length, "chat_template": uses_chat_template(tok, cfg.data.chat_template),
            "long_prompts": cfg.data.long_prompts, "heads": spec.heads, "loss": spec.loss, "base_model": cfg.model.name}
    rm = RewardModel(loop.whole(), tok, meta, env.device)  # under FSDP a gathered copy on every process
    # the records training used (a skipped one would only be skipped again)
    meta.update(normalisation_stats(rm, [train_recs[g[0].index] for g in groups], spec.normalize_samples,
                                    cfg.train.seed))
    summary = {}
    if eval_recs and run.writes:  # the main process evaluates and writes eval/
        from palate.eval.reward import evaluate_reward_model, format_report

        pairs = [p for r in eval_recs for p in (ranking_pairs(r) if isinstance(r, Ranking) else [r])]
        report = evaluate_reward_model(rm, pairs, run.path / "eval", seed=cfg.train.seed)
        log.info("held-out evaluation:\n%s", format_report(report))
        summary = {"eval_accuracy": report["accuracy"]["accuracy"], "eval_ece": report["calibration"]["ece"]}
    return loop.finish(tok, merge=cfg.lora.merge, extra_json={REWARD_META: meta}, **summary)


@torch.no_grad()
def quick_eval(model, tok, eval_recs: list, cfg: RewardConfig) -> dict[str, float]:
    """Held-out loss and accuracy during training (the full report runs at the end)."""
    was_training = model.training
    model.eval()
    skips = SkipLog()
    groups = encode_groups(tok, eval_recs, cfg.data.max_length, skips=skips, chat_template=cfg.data.chat_template,
                           long_prompts=cfg.data.long_prompts)
    total, correct, n = 0.0, 0, 0
    for b in group_batches(groups, cfg.train.batch_size, tok.pad_token_id, 0, 0):
        scores = batch_scores(model, b)
        total += float(comparison_loss(scores, b, eval_recs, cfg.reward).mean(-1).sum())
        grouped, _ = group_rewards(scores.mean(-1, keepdim=True), b)
        correct += int((grouped[:, 0, 0] > grouped[:, 1, 0]).sum())
        n += len(b.group_sizes)
    model.train(was_training)
    return {"eval_loss": total / max(n, 1), "eval_accuracy": correct / max(n, 1)}
