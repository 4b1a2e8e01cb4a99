"""Held-out splits shared by every recipe (SFT, reward models, DPO, GRPO/PPO prompts)."""

from __future__ import annotations

import random


def split_heldout(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic held-out split: ``fraction`` of records (at least one when > 0) for evaluation."""
    if fraction <= 0 or len(records) < 2:
        return records, []
    order = list(range(len(records)))
    random.Random(f"heldout:{seed}").shuffle(order)
    n_eval = max(1, round(fraction * len(records)))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]
