"""Projects from files: a prompts file, a candidates file (model outputs) and optional gold items.

Candidates JSONL, one row per response or per prompt::

    {"prompt": "...", "response": "...", "model": "sft-v2", "scores": [0.3, 0.9, 0.1]}
    {"prompt_id": "p7", "responses": ["...", {"text": "...", "model": "base", "scores": [..]}]}

``prompt`` is text or chat messages; ``prompt_id`` refers to the ``id`` of a row in the prompts file.
``scores`` (optional) are a reward-model ensemble's per-head scores for that response. Items are built
per task type: pairs (pairwise; where scores exist, the pairs the ensemble disagrees on most),
groups of up to ``k`` responses (ranking) or single responses (rating, thumbs).

Gold JSONL (attention checks with known answers)::

    {"prompt": "...", "responses": ["good", "bad"], "answer": 0}          # pairwise: 0, 1 or "tie"
    {"prompt": "...", "responses": ["a", "b", "c"], "answer": [2, 0, 1]}  # ranking: best-to-worst
    {"prompt": "...", "responses": ["..."], "answer": {"helpfulness": 6}} # rating (or a number)
    {"prompt": "...", "responses": ["..."], "answer": true}               # thumbs
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from palate.data.errors import DataError
from palate.data.readers import jsonl_rows
from palate.feedback.db import TASK_TYPES, Item, Project

MAX_TEXT = 50_000  # characters per prompt or response
SLUG_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass
class Candidate:
    text: str
    model: str | None = None
    scores: list[float] | None = None
    where: str = ""


@dataclass
class PromptGroup:
    prompt: Any
    candidates: list[Candidate] = field(default_factory=list)


def _rows(path: Path):
    """(label, line, row) of a JSONL file; a missing file, bad JSON or a non-object row names file and line."""
    if not path.is_file():
        raise DataError(str(path), None, None, "file not found")
    return jsonl_rows(path)


def _prompt(value: Any, src: str, n: int, name: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(src, n, name, "empty prompt")
        if len(value) > MAX_TEXT:
            raise DataError(src, n, name, f"longer than {MAX_TEXT} characters")
        return value
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(src, n, name, f"expected text or a list of chat messages with 'role' and 'content', got {type(value).__name__}")


def _text(value: Any, src: str, n: int, name: str) -> str:
    if not isinstance(value, str):
        raise DataError(src, n, name, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise DataError(src, n, name, "empty response")
    if len(value) > MAX_TEXT:
        raise DataError(src, n, name, f"longer than {MAX_TEXT} characters")
    return value


def _scores(value: Any, src: str, n: int, name: str) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value)):
        raise DataError(src, n, name, "expected a list of finite numbers (one per reward-model head)")
    return [float(x) for x in value]


def _candidate(value: Any, src: str, n: int, name: str, model: Any = None, scores: Any = None) -> Candidate:
    if isinstance(value, dict):
        return _candidate(value.get("text", value.get("response")), src, n, f"{name}.text",
                          value.get("model", model), value.get("scores"))
    if model is not None and not isinstance(model, str):
        raise DataError(src, n, "model", f"expected text, got {type(model).__name__}")
    return Candidate(_text(value, src, n, name), model, _scores(scores, src, n, "scores"), f"{src} line {n}")


def read_prompts_file(path: Path) -> dict[str, Any]:
    """``id`` -> prompt (ids default to the 1-based line number)."""
    out = {}
    for src, n, row in _rows(path):
        if "prompt" not in row:
            raise DataError(src, n, "prompt", f"missing field (fields present: {', '.join(sorted(row)) or 'none'})")
        out[str(row.get("id", n))] = _prompt(row["prompt"], src, n, "prompt")
    if not out:
        raise DataError(str(path), None, None, "no prompts found")
    return out


def read_candidates(path: Path, prompts: dict[str, Any] | None = None) -> list[PromptGroup]:
    """Candidates grouped by prompt, in file order."""
    groups: dict[str, PromptGroup] = {}
    for src, n, row in _rows(path):
        if "prompt_id" in row:
            if prompts is None:
                raise DataError(src, n, "prompt_id", "refers to a prompts file, but none was given (--prompts)")
            if str(row["prompt_id"]) not in prompts:
                raise DataError(src, n, "prompt_id", f"no prompt with id {row['prompt_id']!r} in the prompts file")
            prompt = prompts[str(row["prompt_id"])]
        elif "prompt" in row:
            prompt = _prompt(row["prompt"], src, n, "prompt")
        else:
            raise DataError(src, n, "prompt", f"missing field: need 'prompt' or 'prompt_id' (fields present: {', '.join(sorted(row)) or 'none'})")
        if "responses" in row:
            if not isinstance(row["responses"], list) or not row["responses"]:
                raise DataError(src, n, "responses", "expected a non-empty list of responses")
            cands = [_candidate(v, src, n, f"responses[{j}]", row.get("model")) for j, v in enumerate(row["responses"])]
        elif "response" in row:
            cands = [_candidate(row["response"], src, n, "response", row.get("model"), row.get("scores"))]
        else:
            raise DataError(src, n, "response", f"missing field: need 'response' or 'responses' (fields present: {', '.join(sorted(row))})")
        key = json.dumps(prompt, sort_keys=True)
        groups.setdefault(key, PromptGroup(prompt)).candidates.extend(cands)
    if not groups:
        raise DataError(str(path), None, None, "no candidates found")
    return list(groups.values())


def read_scores_file(path: Path) -> dict[tuple[str, str], list[float]]:
    """Precomputed reward-ensemble scores: rows ``{"prompt", "response", "scores": [per head]}``
    (as ``palate score`` writes them, with ``reward`` accepted for a single head)."""
    out = {}
    for src, n, row in _rows(path):
        prompt = _prompt(row.get("prompt"), src, n, "prompt") if "prompt" in row else None
        if prompt is None:
            raise DataError(src, n, "prompt", "missing field")
        response = _text(row.get("response"), src, n, "response")
        name = "scores" if "scores" in row else "reward"
        scores = _scores(row.get(name), src, n, name)
        if scores is None:
            raise DataError(src, n, "scores", "missing field: need 'scores' (one per head) or 'reward'")
        out[(json.dumps(prompt, sort_keys=True), response)] = scores
    return out


def attach_scores(groups: list[PromptGroup], scores: dict[tuple[str, str], list[float]]) -> int:
    """Give candidates their precomputed scores; returns how many were matched."""
    matched = 0
    for g in groups:
        key = json.dumps(g.prompt, sort_keys=True)
        for c in g.candidates:
            if (key, c.text) in scores:
                c.scores = scores[(key, c.text)]
                matched += 1
    return matched


def pair_disagreement(a: Candidate, b: Candidate) -> float:
    """How much a reward-model ensemble disagrees about ``a`` vs ``b``: the standard deviation over heads
    of the Bradley–Terry probability σ(s_a,h − s_b,h). 0 when the heads agree (or no scores)."""
    if not a.scores or not b.scores or len(a.scores) != len(b.scores) or len(a.scores) < 2:
        return 0.0
    probs = [1 / (1 + math.exp(-(x - y))) for x, y in zip(a.scores, b.scores)]
    mean = sum(probs) / len(probs)
    return math.sqrt(sum((p - mean) ** 2 for p in probs) / len(probs))


def build_items(task_type: str, groups: list[PromptGroup], pairs_per_prompt: int = 1, k: int = 4,
                seed: int = 0) -> tuple[list[dict], dict]:
    """Item rows for a task type, and a report (counts of prompts skipped for too few candidates)."""
    rng = random.Random(seed)
    items, skipped = [], 0
    for g in groups:
        cands = [{"text": c.text, "model": c.model, "scores": c.scores} for c in g.candidates]
        if task_type in ("rating", "thumbs"):
            items += [{"prompt": g.prompt, "candidates": [c], "source": s.where, "priority": 0.0}
                      for c, s in zip(cands, g.candidates)]
            continue
        if len(cands) < 2:
            skipped += 1
            continue
        if task_type == "ranking":
            chosen = list(range(len(cands)))
            rng.shuffle(chosen)
            idx = sorted(chosen[:k])
            items.append({"prompt": g.prompt, "candidates": [cands[i] for i in idx],
                          "source": g.candidates[idx[0]].where, "priority": 0.0})
            continue
        pairs = list(itertools.combinations(range(len(cands)), 2))
        rng.shuffle(pairs)
        scored = sorted(pairs, key=lambda p: -pair_disagreement(g.candidates[p[0]], g.candidates[p[1]]))
        for i, j in scored[:pairs_per_prompt]:
            items.append({"prompt": g.prompt, "candidates": [cands[i], cands[j]], "source": g.candidates[i].where,
                          "priority": pair_disagreement(g.candidates[i], g.candidates[j])})
    return items, {"prompts": len(groups), "items": len(items), "prompts_with_too_few_candidates": skipped}


def read_gold(path: Path, project: Project) -> list[dict]:
    items = []
    for src, n, row in _rows(path):
        prompt = _prompt(row.get("prompt"), src, n, "prompt") if "prompt" in row else None
        if prompt is None:
            raise DataError(src, n, "prompt", "missing field")
        resp = row.get("responses", [row["response"]] if "response" in row else None)
        if not isinstance(resp, list) or not resp:
            raise DataError(src, n, "responses", "expected a non-empty list of responses")
        cands = [{"text": _text(v, src, n, f"responses[{j}]"), "model": None, "scores": None} for j, v in enumerate(resp)]
        items.append({"prompt": prompt, "candidates": cands, "source": f"{src} line {n}", "priority": 0.0,
                      "is_gold": True, "gold": _gold_answer(project, row.get("answer"), len(cands), src, n)})
    return items


def _gold_answer(project: Project, answer: Any, n_cands: int, src: str, n: int) -> dict:
    t = project.task_type
    expect = {"pairwise": 2, "rating": 1, "thumbs": 1}.get(t)
    if expect and n_cands != expect:
        raise DataError(src, n, "responses", f"a {t} gold item needs {expect} response(s), got {n_cands}")
    if t == "pairwise" and answer in (0, 1, "tie") and not isinstance(answer, bool):
        return {"choice": answer}
    if t == "ranking" and isinstance(answer, list) and sorted(answer) == list(range(n_cands)):
        return {"order": answer}
    if t == "thumbs" and isinstance(answer, bool):
        return {"up": answer}
    if t == "rating":
        scores = {c: answer for c in project.criteria} if isinstance(answer, (int, float)) and not isinstance(answer, bool) else answer
        if isinstance(scores, dict) and scores and all(
                c in project.criteria and isinstance(v, (int, float)) and project.scale_low <= v <= project.scale_high
                for c, v in scores.items()):
            return {"scores": scores}
    want = {"pairwise": "0, 1 or \"tie\"", "ranking": f"a permutation of 0..{n_cands - 1}", "thumbs": "true or false",
            "rating": f"a score in [{project.scale_low}, {project.scale_high}] or {{criterion: score}} for {project.criteria}"}[t]
    raise DataError(src, n, "answer", f"expected {want}, got {answer!r}")


def create_project(db: Session, slug: str, task_type: str, title: str = "", criteria: list[str] | None = None,
                   scale: tuple[int, int] = (1, 7), overlap: int = 1, gold_every: int = 0, guidelines: str = "") -> Project:
    if not slug or len(slug) > 64 or not set(slug) <= SLUG_CHARS:
        raise ValueError(f"project name must be 1-64 characters of a-z, 0-9, '-' and '_', got {slug!r}")
    if task_type not in TASK_TYPES:
        raise ValueError(f"task type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
    if db.scalar(select(Project).where(Project.slug == slug)) is not None:
        raise ValueError(f"a project named {slug!r} already exists")
    if overlap < 1:
        raise ValueError(f"overlap must be >= 1, got {overlap}")
    if scale[0] >= scale[1]:
        raise ValueError(f"scale must be low < high, got {scale}")
    criteria = [c.strip() for c in (criteria or ["helpfulness", "harmlessness", "honesty"]) if c.strip()]
    if task_type == "rating" and not criteria:
        raise ValueError("a rating project needs at least one criterion")
    project = Project(slug=slug, title=title or slug, task_type=task_type, criteria=criteria if task_type == "rating" else [],
                      scale_low=scale[0], scale_high=scale[1], overlap=overlap, gold_every=gold_every, guidelines=guidelines)
    db.add(project)
    db.flush()
    return project


def import_items(db: Session, project: Project, candidates: Path | None = None, prompts: Path | None = None,
                 gold: Path | None = None, pairs_per_prompt: int = 1, k: int = 4, seed: int = 0,
                 scores: Path | None = None) -> dict:
    """Add items (and gold items) to a project from files; returns counts. ``scores`` is an optional
    file of precomputed reward-ensemble scores per (prompt, response)."""
    rows, report = [], {"items": 0, "gold": 0}
    if candidates is not None:
        groups = read_candidates(Path(candidates), read_prompts_file(Path(prompts)) if prompts else None)
        matched = attach_scores(groups, read_scores_file(Path(scores))) if scores else None
        rows, report = build_items(project.task_type, groups, pairs_per_prompt, k, seed)
        report["gold"] = 0
        if matched is not None:
            report["scored_candidates"] = matched
    if gold is not None:
        g = read_gold(Path(gold), project)
        rows += g
        report["gold"] = len(g)
    db.add_all(Item(project_id=project.id, **r) for r in rows)
    db.flush()
    return report
