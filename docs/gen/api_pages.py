"""The Python API pages: one page per package, one mkdocstrings block per module (found on disk, so a new
module is documented without editing anything)."""

from __future__ import annotations

from pathlib import Path

import palate

SRC = Path(palate.__file__).resolve().parent
PACKAGES = {
    "losses": "Every loss is a pure function of tensors with its formula (in a code block) and its paper in "
              "the docstring, tested against hand-computed numbers.",
    "data": "Records, readers for every supported format, tokenisation, batching and checks.",
    "models": "Loading models (bundled, tiny, run dirs, Hugging Face dirs and Hub names, GGUF), reward/value "
              "heads, LoRA, log-probs and the reference model.",
    "eval": "Win rates with confidence intervals, reward-model evaluation, text statistics, the reward-hacking "
            "monitor, red-teaming, benchmarks and the HTML report.",
    "judges": "AI judges (local model, OpenAI-compatible HTTP), position-swap debiasing, verdict parsing, "
              "templates.",
}


def modules(package: str) -> list[str]:
    root = SRC / package
    return [f"palate.{package}.{p.stem}" for p in sorted(root.glob("*.py")) if not p.stem.startswith("_")]


def render(package: str) -> str:
    out = [f"# palate.{package}", "", PACKAGES[package], "",
           "Generated from the docstrings by mkdocstrings (`docs/gen/api_pages.py` lists the modules).", ""]
    for mod in modules(package):
        out += [f"::: {mod}", ""]
    return "\n".join(out) + "\n"
