"""``palate data check``'s config and body (:mod:`palate.data.check` reads a dataset as training would)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from palate.config import ConfigError
from palate.data.check import KINDS, check_dataset, detect_kind, format_check


@dataclass(frozen=True)
class DataCheckConfig:
    """Each flag of ``palate data check`` is a shortcut for the key of the same name (``--json``: ``json=true``)."""

    path: str | None = None
    """file (.jsonl/.json, compressed or not; .parquet, .csv), dataset dir, bundled:NAME, hub"""
    kind: str = "auto"
    """auto (from the first row) | demonstrations | preferences | rankings | ratings"""
    model: str = "bundled"
    """tokenizer to measure lengths with (the model you will train)"""
    max_length: int = 512
    """data.max_length of the run"""
    long_prompts: str = "skip"
    """data.long_prompts of the run: skip | truncate_left"""
    on_error: str = "raise"
    """raise | skip"""
    split: str = "train"
    """split of a dataset dir or hub dataset"""
    json: bool = False
    """print the report as JSON"""

    def __post_init__(self):
        if self.kind != "auto" and self.kind not in KINDS:
            raise ConfigError(f"--kind must be auto or one of {', '.join(KINDS)}, got {self.kind!r}")


def check_report(cfg: DataCheckConfig, load_tokenizer: Callable[[str], Any]) -> str:
    """What ``palate data check`` prints; ``load_tokenizer(cfg.model)`` gives the tokenizer (the data layer
    loads no models: the caller passes :func:`palate.models.load.load_tokenizer`)."""
    if cfg.path is None:
        raise ConfigError("data check needs a PATH (argument or path=...)")
    kind = detect_kind(cfg.path, cfg.split) if cfg.kind == "auto" else cfg.kind
    report = check_dataset(cfg.path, kind, load_tokenizer(cfg.model), cfg.max_length, long_prompts=cfg.long_prompts,
                           on_error=cfg.on_error, split=cfg.split)
    return json.dumps(report, indent=1) if cfg.json else format_check(report)
