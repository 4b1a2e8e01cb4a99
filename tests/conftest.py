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
