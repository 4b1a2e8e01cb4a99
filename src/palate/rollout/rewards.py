"""Rewards for RL: a palate reward model (normalised with its saved statistics), an ensemble's mean or
pessimistic ``mean − k·std``, or a Python function ``reward(prompt, response) -> float`` named by import
path; plus optional penalties for length, repetition and a missing end-of-sequence.

The penalties are shaping terms a user turns on knowingly: each is logged on its own so the score the
policy actually optimises can always be told apart from the reward model's opinion.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from palate.config import ConfigError
from palate.data.records import prompt_text
from palate.errors import PalateError
from palate.data.text import repeated_ngram_fraction


class NonFiniteError(PalateError, RuntimeError):
    """A reward or loss became NaN or infinite: the run stops (online RL saves its last good state)."""


@dataclass(frozen=True)
class RewardConfig:
    model: str | None = None
    """a palate reward model run (palate rm) or HF sequence classifier"""
    function: str | None = None
    """"package.module:function" or "path/to/file.py:function" """
    ensemble: str = "mean"
    """mean | pessimistic (mean − pessimism·std over the reward model's heads)"""
    pessimism: float = 1.0
    normalize: bool = True
    """(r − mean) / std with the reward model's saved reference statistics"""
    length_penalty: float = 0.0
    """subtracted per response token"""
    repetition_penalty: float = 0.0
    """times the fraction of repeated word 3-grams"""
    missing_eos_penalty: float = 0.0
    """subtracted when a response hit the token limit"""
    batch_size: int = 16


@dataclass
class Rewards:
    total: torch.Tensor
    """[B] what the policy maximises"""
    score: torch.Tensor
    """[B] the reward model's / function's score alone"""
    std: torch.Tensor | None
    """[B] ensemble disagreement, when the reward model has several heads"""
    penalties: dict[str, torch.Tensor]
    """name -> [B], each already subtracted from total"""


def load_function(spec: str) -> Callable[[str, str], float]:
    """``module:function`` or ``file.py:function`` → the callable (a clear error when it is not there)."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ConfigError(f"reward.function must look like 'module:function' or 'file.py:function', got {spec!r}")
    if where.endswith(".py"):
        path = Path(where)
        if not path.exists():
            raise ConfigError(f"reward.function: file {path} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"palate_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ConfigError(f"reward.function: cannot import {where!r}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"reward.function: {where!r} has no callable {name!r}")
    return fn


class Rewarder:
    """Scores (prompt, response) rows as configured; build once per run."""

    def __init__(self, cfg: RewardConfig, device: str = "auto"):
        if (cfg.model is None) == (cfg.function is None):
            raise ConfigError("set exactly one of reward.model (a reward model) or reward.function (module:function)")
        if cfg.ensemble not in ("mean", "pessimistic"):
            raise ConfigError(f"reward.ensemble must be mean or pessimistic, got {cfg.ensemble!r}")
        self.cfg = cfg
        self.model = self.function = None
        if cfg.model is not None:
            from palate.models.heads import RewardModel

            self.model = RewardModel.load(cfg.model, device=device)
        else:
            self.function = load_function(cfg.function)

    def __call__(self, prompts: list, responses: list[str], n_tokens: torch.Tensor,
                 finished: torch.Tensor) -> Rewards:
        cfg, std = self.cfg, None
        if self.model is not None:
            scores = self.model.score(prompts, responses, batch_size=cfg.batch_size, normalize=cfg.normalize)
            score = scores.mean.float()
            if self.model.n_heads > 1:
                std = scores.std.float()
                if cfg.ensemble == "pessimistic":
                    score = score - cfg.pessimism * std
        else:
            values = []
            for i, (p, r) in enumerate(zip(prompts, responses)):
                v = float(self.function(prompt_text(p), r))
                if not math.isfinite(v):
                    raise NonFiniteError(f"reward function {cfg.function} returned {v} for row {i} "
                                     f"(prompt {prompt_text(p)[:60]!r}, response {r[:60]!r})")
                values.append(v)
            score = torch.tensor(values, dtype=torch.float32)
        penalties = {}
        if cfg.length_penalty:
            penalties["length"] = cfg.length_penalty * n_tokens.float()
        if cfg.repetition_penalty:
            penalties["repetition"] = cfg.repetition_penalty * torch.tensor(
                [repeated_ngram_fraction(r) for r in responses])
        if cfg.missing_eos_penalty:
            penalties["missing_eos"] = cfg.missing_eos_penalty * (~finished).float()
        total = score - sum(penalties.values()) if penalties else score.clone()
        return Rewards(total, score, std, penalties)
