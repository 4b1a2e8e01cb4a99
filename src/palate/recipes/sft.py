"""Supervised fine-tuning: imitate demonstrations, loss on completion tokens only.

    load demonstrations -> tokenise with the chat template -> bucketed batches
    for each optimizer step: forward micro-batches -> NLL of completion tokens -> backward
                             clip -> AdamW -> warmup+cosine lr -> log -> eval -> checkpoint
    save final/ (HF-loadable)

Rerunning the same command after a crash resumes from the newest checkpoint and continues on the
identical loss curve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from palate.config import DataConfig, LogConfig, LoraConfig, ModelConfig, TrainConfig
from palate.data.batching import epoch_batches, padding_stats
from palate.data.errors import SkipLog
from palate.data.readers import read_demonstrations
from palate.data.split import split_heldout
from palate.data.tokenize import encode_demonstrations
from palate.infra import session
from palate.infra.run import RunDir, recorded
from palate.losses.sft import sft_loss
from palate.models.logprobs import project, target_hidden

log = logging.getLogger("palate.sft")


@dataclass(frozen=True)
class SFTConfig:
    run_dir: str = "runs/sft"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    log: LogConfig = field(default_factory=LogConfig)


def batch_loss(model, batch, normalizer: float) -> torch.Tensor:
    hidden, targets = target_hidden(model, batch)
    return sft_loss(project(model, hidden), targets, normalizer)


@torch.no_grad()
def evaluate(model, batches, precision: str, device) -> float:
    """Token-mean NLL over the held-out batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        with session.autocast(precision, device):
            total += float(batch_loss(model, b, normalizer=1.0))
        count += b.n_targets
    model.train(was_training)
    return total / max(1, count)


@recorded
def train(cfg: SFTConfig, *, overwrite: bool = False) -> Path:
    run = RunDir.open(cfg.run_dir, cfg, overwrite=overwrite)
    env = session.start(cfg.train, cfg.model, run, cfg.log, cfg)
    tok = session.tokenizer(cfg.model)

    skips = SkipLog()
    records = read_demonstrations(
        cfg.data.path, columns=cfg.data.columns, split=cfg.data.split, on_error=cfg.data.on_error, skips=skips
    )
    if cfg.data.eval_path:
        train_recs = records
        eval_recs = read_demonstrations(cfg.data.eval_path, columns=cfg.data.columns, on_error=cfg.data.on_error, skips=skips)
    else:
        train_recs, eval_recs = split_heldout(records, cfg.data.eval_fraction, cfg.train.seed)
    encode = dict(max_length=cfg.data.max_length, skips=skips, chat_template=cfg.data.chat_template,
                  truncate_completion=cfg.data.truncate_completion, long_prompts=cfg.data.long_prompts)
    train_ex = encode_demonstrations(tok, train_recs, **encode)
    eval_ex = encode_demonstrations(tok, eval_recs, **encode) if eval_recs else []
    session.report_data(run, skips, n_train=len(train_ex), n_eval=len(eval_ex))

    model = session.policy(cfg.model, cfg.lora, cfg.train, env, tok)

    def batches_of_epoch(epoch: int):
        return epoch_batches(train_ex, cfg.train.batch_size, tok.pad_token_id, cfg.train.seed, epoch,
                             bucket=cfg.data.bucket, packing=cfg.data.packing, max_length=cfg.data.max_length)

    stream = session.BatchStream(batches_of_epoch, cfg.train.grad_accum)
    eval_batches = epoch_batches(eval_ex, cfg.train.batch_size, tok.pad_token_id, 0, 0) if eval_ex else []
    log.info("train: %d examples, %d batches/epoch, padding %.1f%%", len(train_ex), stream.batches_per_epoch,
             100 * padding_stats(stream.epoch(0))["padding_fraction"])

    loop = session.Loop(run, model, cfg.train, env, stream)
    for step, micro in loop:
        n_targets = loop.all_sum(sum(b.n_targets for b in micro))  # over every process's slice of the step
        loss_sum = 0.0
        for b in loop.accumulate(micro):
            with session.autocast(env.precision, env.device):
                loss = loop.forward(batch_loss, b, normalizer=n_targets)
            loop.backward(loss)
            loss_sum += float(loss.detach())
        measured = loop.all_sum({"loss": loss_sum, "tokens": sum(b.n_tokens for b in micro)})
        metrics = loop.optimizer_step(**measured, targets=n_targets)
        if eval_batches and loop.due(cfg.train.eval_every):
            metrics["eval_loss"] = evaluate(loop.whole(), eval_batches, env.precision, env.device)
        loop.log(step, metrics)
    return loop.finish(tok, merge=cfg.lora.merge)
