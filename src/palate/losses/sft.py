"""Supervised fine-tuning loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
    """Negative log-likelihood of the demonstration tokens.

    ``logits`` [N, V] are the model's outputs at the N positions whose *next* token is a completion
    token, ``targets`` [N] those tokens. Returns ``sum_i -log softmax(logits_i)[targets_i] / normalizer``.

    ``normalizer`` defaults to N (the token mean). With gradient accumulation pass the number of
    target tokens in the whole optimizer step, so that every token weighs the same however the
    tokens fall into micro-batches (a per-micro-batch mean over-weights tokens in short batches).
    """
    nll = F.cross_entropy(logits.float(), targets, reduction="sum")
    return nll / (normalizer if normalizer is not None else max(1, targets.numel()))
