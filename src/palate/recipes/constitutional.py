"""Constitutional AI, supervised stage (Bai et al. 2022, arXiv:2212.08073): critique and revise.

    for each prompt:
        response_0 = policy(prompt)
        for round k = 1..R:
            principle = a principle of the constitution, sampled (seeded per prompt and round)
            critique  = policy(critique template: prompt, response_{k-1}, principle.critique)
            response_k = policy(revision template: prompt, response_{k-1}, critique, principle.revision)
    write sft.jsonl   (prompt, response_R)              -> palate sft
          pairs.jsonl (prompt, chosen=response_R, rejected=response_0)  -> palate rm / palate dpo

Prompts are processed in chunks, each generated as one batch; a chunk's records are appended to
``records.jsonl`` when it is done, so rerunning the same command continues after the last finished chunk.
Revisions that are empty or identical to the original are kept out of the pairs (counted).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from palate.config import ConfigError, ModelConfig
from palate.data.readers import read_prompts
from palate.data.records import prompt_text
from palate.infra.logging import setup_logging
from palate.infra.run import RunDir, recorded
from palate.judges.templates import TEMPLATE_DIR, load_template, render

log = logging.getLogger("palate.constitutional")


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    revision: str


@dataclass(frozen=True)
class ConstitutionalConfig:
    run_dir: str = "runs/constitutional"
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: str = "bundled:preferences"
    """any source with a prompt column (or chat messages)"""
    max_prompts: int = 16
    constitution: str = str(TEMPLATE_DIR / "constitution.yaml")
    critique_template: str = "critique"
    revision_template: str = "revision"
    rounds: int = 1
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 = greedy"""
    top_p: float = 1.0
    repetition_penalty: float = 1.2
    batch_size: int = 8
    """prompts per chunk (one generation batch, one resume unit)"""
    seed: int = 0


def read_constitution(path: str | Path) -> list[Principle]:
    """A YAML file with ``principles: [{name, critique, revision}, ...]``; errors name the file and entry."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    entries = data.get("principles") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected a top-level 'principles:' list")
    out = []
    for i, p in enumerate(entries):
        for key in ("name", "critique", "revision"):
            if not isinstance(p, dict) or not isinstance(p.get(key), str) or not p[key].strip():
                raise ConfigError(f"{path}: principles[{i}] needs a non-empty text '{key}'")
        out.append(Principle(p["name"], p["critique"].strip(), p["revision"].strip()))
    return out


def pick_principle(principles: list[Principle], seed: int, prompt_index: int, round_: int) -> Principle:
    return principles[random.Random(f"{seed}/{prompt_index}/{round_}").randrange(len(principles))]


@recorded
def train(cfg: ConstitutionalConfig, *, overwrite: bool = False) -> Path:
    """Run the loop over every prompt; returns the directory holding ``sft.jsonl`` and ``pairs.jsonl``."""
    from palate.infra.device import pick_device
    from palate.models.load import load_model, load_tokenizer
    from palate.rollout.generate import sample

    if cfg.rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {cfg.rounds}")
    principles = read_constitution(cfg.constitution)
    critique_t, revision_t = load_template(cfg.critique_template), load_template(cfg.revision_template)
    setup_logging()
    run = RunDir.open(cfg.run_dir, cfg, overwrite=overwrite)
    prompts = read_prompts(cfg.prompts, limit=cfg.max_prompts)
    records_path = run.path / "records.jsonl"
    done = [json.loads(x) for x in records_path.read_text().splitlines()] if records_path.exists() else []
    if done:
        log.info("resuming: %d of %d prompts already done", len(done), len(prompts))
    tok = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name, tokenizer=tok, dtype=cfg.model.dtype, device=str(pick_device(cfg.model.device)),
                       seed=cfg.seed).eval()

    def generate(texts: list, seed: int) -> list[str]:
        out = sample(model, tok, texts, n=1, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                     top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty, seed=seed, batch_size=len(texts))
        return [group[0].text for group in out]

    for start in range(len(done), len(prompts), cfg.batch_size):
        idx = list(range(start, min(start + cfg.batch_size, len(prompts))))
        chunk = [prompts[i] for i in idx]
        original = generate(chunk, cfg.seed * 100003 + start)
        current, history = list(original), [[] for _ in idx]
        for r in range(1, cfg.rounds + 1):
            picked = [pick_principle(principles, cfg.seed, i, r) for i in idx]
            critiques = generate([render(critique_t, prompt=prompt_text(p), response=resp, critique_request=pr.critique)
                                  for p, resp, pr in zip(chunk, current, picked)], cfg.seed * 100003 + start + 7919 * r)
            revised = generate([render(revision_t, prompt=prompt_text(p), response=resp, critique=c,
                                       revision_request=pr.revision)
                                for p, resp, c, pr in zip(chunk, current, critiques, picked)],
                               cfg.seed * 100003 + start + 7919 * r + 1)
            for k in range(len(idx)):
                history[k].append({"round": r, "principle": picked[k].name, "critique": critiques[k],
                                   "revision": revised[k]})
            current = [rev if rev.strip() else cur for rev, cur in zip(revised, current)]
        with open(records_path, "a", encoding="utf-8") as f:
            for k, i in enumerate(idx):
                f.write(json.dumps({"index": i, "prompt": chunk[k], "original": original[k], "revised": current[k],
                                    "rounds": history[k]}, ensure_ascii=False) + "\n")
        log.info("prompts %d-%d of %d done; e.g. %r -> %r", idx[0] + 1, idx[-1] + 1, len(prompts),
                 prompt_text(chunk[0])[:60], current[0][:100])
    records = [json.loads(x) for x in records_path.read_text().splitlines()]
    summary = write_outputs(run.path, records)
    run.mark_finished(summary=summary)
    run.close()
    log.info("%d SFT rows -> %s; %d pairs -> %s (%d unchanged revisions left out)", summary["sft_rows"],
             run.path / "sft.jsonl", summary["pairs"], run.path / "pairs.jsonl", summary["unchanged"])
    return run.path


def write_outputs(root: Path, records: list[dict]) -> dict:
    """``sft.jsonl`` (the final revisions) and ``pairs.jsonl`` (revised over original) from ``records``."""
    sft, pairs, unchanged = [], [], 0
    for rec in records:
        if rec["revised"].strip():
            sft.append({"prompt": rec["prompt"], "response": rec["revised"], "index": rec["index"]})
        if rec["revised"].strip() == rec["original"].strip() or not rec["original"].strip():
            unchanged += 1
        else:
            pairs.append({"prompt": rec["prompt"], "chosen": rec["revised"], "rejected": rec["original"],
                          "index": rec["index"], "principles": ",".join(h["principle"] for h in rec["rounds"])})
    for name, rows in (("sft.jsonl", sft), ("pairs.jsonl", pairs)):
        tmp = root / f"{name}.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        tmp.replace(root / name)
    return {"prompts": len(records), "sft_rows": len(sft), "pairs": len(pairs), "unchanged": unchanged}
