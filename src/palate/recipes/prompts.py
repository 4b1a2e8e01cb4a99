"""The prompt source PPO and GRPO share: its config, the prompt/answer token limit, and the resumable stream
of training prompts with its held-out split."""

from __future__ import annotations

import random
from dataclasses import dataclass

from palate.config import ConfigError
from palate.data.errors import SkipLog
from palate.data.readers import read_prompt_rows
from palate.data.split import split_heldout
from palate.data.tokenize import fit_prompts
from palate.infra import session
from palate.models.heads import reward_model_meta
from palate.rollout.rewards import RewardConfig


@dataclass(frozen=True)
class PromptsConfig:
    path: str = "bundled:preferences"
    """any source with a prompt column (or chat messages)"""
    limit: int | None = None
    eval_fraction: float = 0.1
    eval_max: int = 32
    """held-out prompts used for the eval reward"""
    eval_samples: int = 1
    """answers per held-out prompt at each evaluation (more: a tighter before/after CI)"""
    max_length: int | None = None
    """A prompt that leaves fewer than rollout.max_new_tokens tokens of max_length (None: the reward model's
    max_length from its palate_reward.json; no limit with a reward function) is skipped (counted in
    data_report.json) or cut from the left (truncate_left), as data.long_prompts does for rm / dpo."""
    long_prompts: str = "skip"

    def __post_init__(self):
        if self.long_prompts not in ("skip", "truncate_left"):
            raise ConfigError(f"prompts.long_prompts must be skip or truncate_left, got {self.long_prompts!r}")


def prompt_limit(cfg_prompts: PromptsConfig, reward: RewardConfig) -> int | None:
    """The token limit of prompt + answer: ``prompts.max_length``, else the reward model's ``max_length``."""
    if cfg_prompts.max_length is not None:
        return cfg_prompts.max_length
    return reward_model_meta(reward.model).get("max_length") if reward.model else None


def prompt_stream(cfg_prompts: PromptsConfig, per_step: int, seed: int, tok=None, *, max_length: int | None = None,
                  room: int = 0, skips: SkipLog | None = None) -> tuple[session.BatchStream, list]:
    """Train prompts in seeded shuffled steps of ``per_step`` (a function of the step: resumable), and the
    held-out prompts. With ``max_length``, prompts leaving fewer than ``room`` tokens for the answer are
    skipped or cut from the left (``prompts.long_prompts``; counted in ``skips``) before the split."""
    if cfg_prompts.eval_samples < 1:
        raise ConfigError(f"prompts.eval_samples must be >= 1, got {cfg_prompts.eval_samples}")
    rows = read_prompt_rows(cfg_prompts.path, limit=cfg_prompts.limit)
    prompts = [p for p, _, _ in rows]
    if max_length is not None:
        skips = skips if skips is not None else SkipLog()
        skips.seen += len(rows)
        try:
            kept = fit_prompts(tok, prompts, max_length, room=room, long_prompts=cfg_prompts.long_prompts,
                               skips=skips, where=[(src, n) for _, src, n in rows])
        except ValueError as e:
            raise ConfigError(f"prompts.max_length: {e}") from None
        prompts = [p for _, p in kept]
        if not prompts:
            raise ConfigError(f"{cfg_prompts.path}: every prompt is too long for max_length {max_length} with "
                              f"{room}-token answers\n{skips.summary()}")
    train, held = split_heldout(prompts, cfg_prompts.eval_fraction, seed)
    if len(train) < per_step:
        raise ConfigError(f"{cfg_prompts.path}: {len(train)} training prompts, fewer than one step's {per_step}")

    def steps_of_epoch(epoch: int) -> list[list]:
        order = list(range(len(train)))
        random.Random(f"prompts:{seed}:{epoch}").shuffle(order)
        return [[train[i] for i in order[s : s + per_step]] for s in range(0, len(order) - per_step + 1, per_step)]

    return session.BatchStream(steps_of_epoch, 1), held[: cfg_prompts.eval_max]
