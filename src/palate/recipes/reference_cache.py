"""π_ref for the preference recipes (the DPO family, KTO): summed completion log-probs of two rows per record
(chosen and rejected; KTO: its own response and a mismatched one), either

    precompute: one pass over the records a run will reach, before training, cached in the run dir
        (``reference_logprobs.pt``, keyed by a fingerprint of the starting weights and the token ids), or
    live: :class:`palate.models.reference.Reference` evaluated at every step (the disabled LoRA adapter, or a
        frozen copy of the starting weights for a full fine-tune).
"""

from __future__ import annotations

import hashlib
import logging

import torch

from palate.config import ConfigError
from palate.data.batching import Batch, group_batches
from palate.data.tokenize import Example
from palate.infra import distributed, session
from palate.infra.run import RunDir
from palate.models.logprobs import sequence_logprobs
from palate.models.lora import is_peft
from palate.models.reference import Reference, frozen_forward

log = logging.getLogger("palate.dpo")

REFERENCE_CACHE = "reference_logprobs.pt"


def reference_key(model, tok_name: str, groups: list[list[Example]], loss: str) -> str:
    """Fingerprint of what the cached reference log-probs depend on: the starting weights and the token ids."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tok_name}|{loss}".encode())
    for name, p in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    for g in groups:
        for ex in g:
            h.update(repr((ex.index, ex.completion_start, ex.input_ids)).encode())
    return h.hexdigest()


def reference_logprobs(model, batches: list[Batch], n_records: int, env: session.Env) -> torch.Tensor:
    """Summed completion log-probs of the reference (the starting policy, adapter disabled): ``[N, 2]``
    (chosen, rejected) per record, or (own, mismatched) for KTO; NaN for records not in ``batches``."""
    out = torch.full((n_records, 2), float("nan"))
    with frozen_forward(model, autocast=lambda: session.autocast(env.precision, env.device)):
        for b in batches:
            sums, _ = sequence_logprobs(model, b)
            out[torch.tensor(b.indices)] = sums.float().cpu().view(-1, 2)
    return out


def cached_reference(run: RunDir, key: str, compute) -> torch.Tensor:
    """Load ``reference_logprobs.pt`` if its key matches, else compute and save it (atomically)."""
    path = run.path / REFERENCE_CACHE
    if path.exists():
        saved = torch.load(path, weights_only=True)
        if saved.get("key") == key:
            log.info("reference log-probs: cached (%s)", path.name)
            return saved["values"]
        log.info("reference log-probs: cache out of date (data or model changed); recomputing")
    values = compute()
    if run.writes:  # multi-process: every process computes the same values, the main one saves them
        tmp = path.with_suffix(".tmp")
        torch.save({"key": key, "values": values}, tmp)
        tmp.replace(path)
    return values


def precomputed_references(run, model, tok, cfg, loss: str, stream: session.BatchStream, groups, eval_groups,
                           env, n_train: int, n_eval: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, 2]`` reference tables of the train and eval records (``cfg``: the recipe's config, for its model
    name and ``train`` section). Only the train records the run will reach get a pass; the rows of those it
    never trains on (``train.max_steps`` ends before the epoch does) stay NaN."""
    seen = stream.records_seen(cfg.train.max_steps or stream.steps_for_epochs(cfg.train.epochs))
    reached = [g for g in groups if g[0].index in seen]
    skipped = len(groups) - len(reached)
    key = reference_key(model, cfg.model.name, reached + [[]] + eval_groups, loss)

    def compute() -> dict[str, torch.Tensor]:
        log.info("reference log-probs: one pass over %d train + %d eval records%s", len(reached), len(eval_groups),
                 f" ({skipped} train records are past train.max_steps: not needed)" if skipped else "")
        batches = lambda which: group_batches(which, cfg.train.batch_size * 2, tok.pad_token_id, 0, 0)
        return {"train": reference_logprobs(model, batches(reached), n_train, env),
                "eval": reference_logprobs(model, batches(eval_groups), n_eval, env)}

    values = cached_reference(run, key, compute)
    return values["train"], values["eval"]


def live_reference(model, env: session.Env, section: str, sharding: str | None = None) -> Reference:
    """The reference evaluated every step: the policy with its LoRA adapter disabled (no extra memory), or,
    for a full fine-tune, a frozen copy of the starting weights (one more model in memory).

    Refused for a LoRA policy under FSDP2 (``sharding``: ``train.sharding``): the disabled adapter would run
    the sharded policy outside the training forward, and only on the processes with data in a micro-step."""
    if is_peft(model) and distributed.sharding(sharding) == "fsdp":
        raise ConfigError(f"{section}.reference=live with LoRA under train.sharding=fsdp is not supported: "
                          f"use {section}.reference=precompute (one pass before training, same numbers)")
    ref = Reference(model, autocast=lambda: session.autocast(env.precision, env.device))
    if ref.copies_weights:
        log.warning("%s.reference=live with a full fine-tune keeps a frozen copy of the model in memory; "
                    "%s.reference=precompute avoids it", section, section)
    return ref
