from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random policy (seed 1, so it differs from ``tiny``) and a tiny reward model, saved as model dirs."""
    from palate.models.load import load_tokenizer, tiny_model

    root = tmp_path_factory.mktemp("tiny-dirs")
    tok = load_tokenizer("tiny")
    for name, kw in (("policy", {"seed": 1}), ("rm", {"seed": 2, "num_labels": 1})):
        tiny_model(tok, **kw).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root / "policy", root / "rm"
