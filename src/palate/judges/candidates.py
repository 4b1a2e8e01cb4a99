"""``palate label generate``: sample candidate responses with a palate model for a labeling project (or for
``palate judge``). Writes JSONL rows ``{prompt, response, model, finished}``; empty responses are left out and
counted. Lives outside :mod:`palate.feedback`, which must not import torch."""

from __future__ import annotations

import json
from pathlib import Path

from palate.data.readers import read_prompts


def sample_candidates(model: str, prompts: str, out: str | Path, *, n: int = 2, name: str | None = None,
                      max_new_tokens: int = 128, temperature: float = 0.8, top_p: float = 0.95, seed: int = 0,
                      append: bool = False) -> tuple[int, int]:
    """``n`` sampled responses per prompt of ``prompts`` from ``model``, written to (or, with ``append``, added
    to) ``out``; returns (responses written, empty responses left out)."""
    from palate.models.load import load_model, load_tokenizer
    from palate.rollout.generate import sample

    prompt_list = read_prompts(str(prompts))
    tok = load_tokenizer(model)
    lm = load_model(model, tokenizer=tok).eval()
    samples = sample(lm, tok, prompt_list, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                     seed=seed)
    written, empty = 0, 0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a" if append else "w", encoding="utf-8") as f:
        for prompt, group in zip(prompt_list, samples):
            for smp in group:
                if not smp.text.strip():
                    empty += 1
                    continue
                f.write(json.dumps({"prompt": prompt, "response": smp.text, "model": name or model,
                                    "finished": smp.finished}, ensure_ascii=False) + "\n")
                written += 1
    return written, empty
