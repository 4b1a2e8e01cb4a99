"""A reward model on files: ``palate score`` (score (prompt, response) rows and write each row back with its
reward) and ``palate rm-eval`` (accuracy, calibration and length bias on preference pairs), with their configs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palate.config import ConfigError


@dataclass(frozen=True)
class ScoreConfig:
    """``palate score``'s config (each flag is a shortcut for the key of the same name)."""

    model: str | None = None
    """reward model: palate run dir or HF sequence-classification model dir"""
    input: str | None = None
    """JSONL/dataset with prompt and response columns"""
    output: str | None = None
    """JSONL to write (default: INPUT with .scored.jsonl)"""
    batch_size: int = 16
    normalize: bool = False
    """(r - mean) / std with the stats saved at training time"""


@dataclass(frozen=True)
class RMEvalConfig:
    """``palate rm-eval``'s config (each flag is a shortcut for the key of the same name)."""

    model: str | None = None
    """reward model: palate run dir or HF sequence-classification model dir"""
    data: str | None = None
    """preference pairs: file, dataset dir, bundled:NAME or hub name"""
    out: str | None = None
    """where to write rm_eval.json and plots (default: MODEL/eval-<data>)"""
    batch_size: int = 16
    seed: int = 0
    """seed of the bootstrap CI and the calibration orientation"""


def data_stem(source: str) -> str:
    """``data/test.jsonl.gz`` -> ``test``; ``bundled:preferences`` -> ``preferences``."""
    from palate.data.readers import COMPRESSIONS

    path = Path(source.replace("bundled:", ""))
    if path.suffix.lower() in COMPRESSIONS:
        path = path.with_suffix("")
    return path.stem


def score_config(cfg: ScoreConfig) -> dict[str, Any]:
    """:func:`score_file` as ``cfg`` says."""
    if cfg.model is None or cfg.input is None:
        raise ConfigError("score needs a MODEL (argument or model=...) and --input (input=...)")
    return score_file(cfg.model, cfg.input, cfg.output, batch_size=cfg.batch_size, normalize=cfg.normalize)


def rm_eval(cfg: RMEvalConfig) -> tuple[dict[str, Any], Path]:
    """Evaluate ``cfg.model`` on the pairs of ``cfg.data`` (:func:`palate.eval.reward.evaluate_reward_model`);
    returns the report and where it was written."""
    from palate.data.readers import read_preferences
    from palate.eval.reward import evaluate_reward_model
    from palate.models.heads import RewardModel

    if cfg.model is None or cfg.data is None:
        raise ConfigError("rm-eval needs a MODEL (argument or model=...) and --data (data=...)")
    rm = RewardModel.load(cfg.model)
    pairs = read_preferences(cfg.data)
    target = Path(cfg.out) if cfg.out else Path(cfg.model) / f"eval-{data_stem(cfg.data)}"
    return evaluate_reward_model(rm, pairs, target, seed=cfg.seed, batch_size=cfg.batch_size), target


def score_file(model: str, input: str, output: str | None = None, *, batch_size: int = 16,
               normalize: bool = False) -> dict[str, Any]:
    """Score every row of ``input`` with the reward model ``model``; write the rows with ``reward`` (and
    ``reward_std`` for an ensemble) to ``output`` (default: INPUT's folder/<stem>.scored.jsonl). A row the
    reward model's ``long_prompts`` rule skips gets ``reward: null`` and ``skipped: <reason>``. Returns counts."""
    from palate.data.errors import SkipLog
    from palate.data.readers import iter_rows, read_demonstrations
    from palate.models.heads import RewardModel

    rows = [row for _, _, row in iter_rows(input)]
    records = read_demonstrations(input)  # validates every row, naming file, line and field
    rm = RewardModel.load(model)
    if len(records) != len(rows):
        raise ValueError(f"{input}: {len(rows) - len(records)} rows have an empty response; nothing written")
    skips = SkipLog(seen=len(records))
    scores = rm.score([r.prompt for r in records], [r.response for r in records], batch_size=batch_size,
                      normalize=normalize, skips=skips, where=[(r.meta["source"], r.meta["row"]) for r in records])
    target = Path(output) if output else Path(input).parent / f"{data_stem(input)}.scored.jsonl"
    reasons = {(s.source, s.row): s.reason for s in skips.skips}
    with open(target, "w") as f:
        for row, rec, mean, std in zip(rows, records, scores.mean.tolist(), scores.std.tolist()):
            extra = {"reward_std": std} if rm.n_heads > 1 else {}
            if mean != mean:  # NaN: skipped by the reward model's long_prompts rule, written as null with the reason
                row, mean, extra = {**row, "skipped": reasons.get((rec.meta["source"], rec.meta["row"]))}, None, {}
            f.write(json.dumps({**row, "reward": mean, **extra}, ensure_ascii=False) + "\n")
    scored = scores.mean[~scores.mean.isnan()]
    return {"scored": len(scored), "rows": len(rows), "output": str(target), "mean": float(scored.mean()),
            "std": float(scored.std()), "normalized": normalize, "max_length": rm.max_length,
            "long_prompts": rm.long_prompts, "skips": skips}


def format_scoring(s: dict[str, Any]) -> str:
    lines = [f"scored {s['scored']} of {s['rows']} rows -> {s['output']} (reward mean {s['mean']:.4f}, "
             f"std {s['std']:.4f}{', normalised' if s['normalized'] else ''})"]
    skips = s["skips"]
    if skips.skips or skips.truncations:
        lines.append(f"reward model max_length {s['max_length']}, long_prompts={s['long_prompts']}: {skips.summary()}")
    return "\n".join(lines)
