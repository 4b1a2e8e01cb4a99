"""Derive ``ratings.jsonl`` (unpaired thumbs up/down, for KTO) from ``preferences.jsonl``.

Run from anywhere: ``python src/palate/data/bundled/make_ratings.py``. The output is deterministic
(fixed seed), so re-running it on an unchanged ``preferences.jsonl`` rewrites the same file.

How a rating is derived from a preference pair (``pref-NNNN``):

* ``BOTH`` pairs (40, drawn with the seed) give two ratings: the chosen response with
  ``score`` 1 and the rejected one with ``score`` 0, so those prompts have a thumbs-up and a
  thumbs-down.
* Every other pair gives exactly one rating. Within each category the remaining pairs are shuffled
  with the seed and alternately keep their chosen response (``score`` 1) or their rejected one
  (``score`` 0), so each category is about half desirable and the whole file is exactly half.

Each output row is ``{"id": "rating-NNNN", "category", "prompt", "response", "score": 1 or 0,
"scale": [0, 1], "source_id": "pref-NNNN"}``, in the order of the source pairs (the two ratings of
a ``BOTH`` pair in seeded order), numbered from ``rating-0001``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20240611
BOTH = 40
HERE = Path(__file__).resolve().parent
SOURCE = HERE / "preferences.jsonl"
TARGET = HERE / "ratings.jsonl"


def derive(pairs: list[dict], seed: int = SEED, both: int = BOTH) -> list[dict]:
    """The ratings for ``pairs`` (rows of preferences.jsonl), as described in the module docstring."""
    rng = random.Random(seed)
    both_ids = set(rng.sample([p["id"] for p in pairs], both))
    keep: dict[str, list[str]] = {pid: ["chosen", "rejected"] for pid in both_ids}
    start = 1
    for category in sorted({p["category"] for p in pairs}):
        rest = [p["id"] for p in pairs if p["category"] == category and p["id"] not in both_ids]
        rng.shuffle(rest)
        for k, pid in enumerate(rest):
            keep[pid] = ["chosen" if (k + start) % 2 else "rejected"]
        start += len(rest)  # the next category starts where this one's alternation left off
    for pid in sorted(both_ids):  # sorted: set order varies between runs (hash seed)
        rng.shuffle(keep[pid])

    ratings = []
    for p in pairs:
        for side in keep[p["id"]]:
            ratings.append({
                "id": f"rating-{len(ratings) + 1:04d}",
                "category": p["category"],
                "prompt": p["prompt"],
                "response": p[side],
                "score": 1 if side == "chosen" else 0,
                "scale": [0, 1],
                "source_id": p["id"],
            })
    return ratings


def main() -> None:
    pairs = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines() if line.strip()]
    ratings = derive(pairs)
    with open(TARGET, "w", encoding="utf-8") as f:
        for row in ratings:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    up = sum(r["score"] for r in ratings)
    print(f"{TARGET.name}: {len(ratings)} ratings from {len(pairs)} pairs ({up} thumbs-up, {len(ratings) - up} thumbs-down)")


if __name__ == "__main__":
    main()
