"""``palate score``: score (prompt, response) rows with a reward model and write each row back with its reward."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def data_stem(source: str) -> str:
    """``data/test.jsonl.gz`` -> ``test``; ``bundled:preferences`` -> ``preferences``."""
    from palate.data.readers import COMPRESSIONS

    path = Path(source.replace("bundled:", ""))
    if path.suffix.lower() in COMPRESSIONS:
        path = path.with_suffix("")
    return path.stem


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
