"""What palate changes in a model it trains, in place, before any adapter wraps it: the shared entry point of
``session.policy`` and the benchmarks' palate workloads."""

from __future__ import annotations

from typing import Any

import torch

from palate.models.attention import use_cpu_training_attention
from palate.models.lean_layers import use_lean_layers


def use_training_layers(model: torch.nn.Module, device: torch.device, precision: str) -> dict[str, Any]:
    """RMSNorm and SwiGLU MLPs with the lean backward (:mod:`palate.models.lean_layers`, every device and
    precision) and, for bf16 training on CPU, palate's attention backward (:mod:`palate.models.attention`).
    Returns what applied: ``{"cpu_training_attention": bool, "lean_layers": {"rms_norm": n, "swiglu": n}}``."""
    attention = torch.device(device).type == "cpu" and precision == "bf16" and use_cpu_training_attention(model)
    return {"cpu_training_attention": attention, "lean_layers": use_lean_layers(model)}
