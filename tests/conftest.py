import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows may be dicts (dumped as JSON) or raw strings (written as-is, for malformed-input tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


@pytest.fixture(scope="session")
def tok():
    from palate.models.load import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture
def arithmetic_jsonl(tmp_path) -> Path:
    """60 short demonstrations with a learnable pattern."""
    rows = [{"prompt": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}."}
            for a in range(10) for b in range(6)]
    return write_jsonl(tmp_path / "arith.jsonl", rows)


_WORDS = ("river stone garden window paper lamp forest music bread cloud train pencil mountain coffee letter "
          "bridge candle ocean market winter").split()


def marker_preferences(n: int, seed: int = 0, marker: str = "sunshine") -> list[dict]:
    """Synthetic pairs with a learnable preference: the chosen response contains ``marker`` (in place of
    one word, at a random position), the rejected one does not; both have the same number of words, so
    only the marker separates them."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 9))]
        other = [rng.choice(_WORDS) for _ in range(len(words))]
        with_marker = list(other)
        with_marker[rng.randrange(len(other))] = marker
        rows.append({"prompt": f"Say something about the {rng.choice(_WORDS)}.",
                     "chosen": " ".join(with_marker), "rejected": " ".join(words),
                     "labeler_group": "A" if i % 2 else "B"})
    return rows


@pytest.fixture
def marker_jsonl(tmp_path) -> Path:
    return write_jsonl(tmp_path / "marker.jsonl", marker_preferences(240))
