"""Optimizer and learning-rate schedule shared by the recipes."""

from __future__ import annotations

import math

import torch


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1):
    """Multiplier on the base lr: linear warmup from 0, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
          lr_scale: dict[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over trainable parameters; biases and norms get no weight decay. ``lr_scale`` maps a parameter
    name prefix to a multiplier of ``lr`` for those parameters (e.g. a freshly initialised value head)."""
    scales = sorted((lr_scale or {}).items(), key=lambda kv: -len(kv[0]))  # the longest matching prefix wins
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((v for prefix, v in scales if name.startswith(prefix)), 1.0)
            groups.setdefault((scale, p.ndim < 2), []).append(p)
    params = [p for ps in groups.values() for p in ps]
    param_groups = [{"params": ps, "lr": lr * scale, "weight_decay": 0.0 if no_decay else weight_decay}
                    for (scale, no_decay), ps in sorted(groups.items())]
    # Fused AdamW runs on CPU and CUDA: 0.068 s per step for 135M parameters on 2 CPU threads, against
    # 0.23 s for foreach (bench/sft.py profile). Other devices get torch's default implementation.
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=fused or None)


def scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps, min_ratio))
