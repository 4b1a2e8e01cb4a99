"""RLAIF labeling (``palate judge``): a judge turns candidate pairs into preference data.

Input rows hold a prompt and two responses, either ``response_a``/``response_b`` (optional ``model_a``/
``model_b``: who wrote them, for the self-preference rate; ``reference``: a reference answer for the
``reference`` template) or ``chosen``/``rejected`` (any format
``palate dpo`` reads; the human label then gives agreement figures, and each pair's slots are assigned by
a seeded coin so the judge never sees the human's choice in a fixed slot). Each pair is judged in both
orders (:mod:`palate.judges.debias`). Output:

* ``OUT`` — Preference JSONL (prompt, chosen, rejected, weight = ``|2p − 1|``, tie, confidence, ...) that
  ``palate rm`` and ``palate dpo`` read;
* ``OUT.summary.json`` — counts, position/length/self-preference bias, inconsistency, agreement, timing;
* ``OUT.malformed.jsonl`` — the pairs whose verdict could not be read, with the judge's raw output.

A malformed verdict is an *answer* the judge gave whose text holds no readable verdict. A request that
failed (an HTTP judge's timeouts, refused connections, 429/5xx) is retried, and if it never succeeds the run
stops with the judge's error before anything is written; it is never counted as malformed or as a tie. For
an HTTP judge the summary counts the requests sent, the retries among them and the answers read from cache.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from palate.config import ConfigError
from palate.data.errors import DataError
from palate.data.readers import iter_rows, read_preferences
from palate.data.records import Prompt
from palate.judges import make_judge, stats
from palate.judges.debias import PairJudgment, combine


@dataclass(frozen=True)
class Candidate:
    prompt: Prompt
    a: str
    b: str
    human: str | None = None
    """"a" | "b" | "tie" when the row carries a human label"""
    own: str | None = None
    """"a" | "b" when that answer was written by the judge itself"""
    reference: str | None = None
    """a reference answer (for the reference-guided template)"""
    meta: dict = field(default_factory=dict)


def _text(row: dict, name: str, src: str, n: int) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(src, n, name, "missing or empty response" if not value else f"expected text, got {type(value).__name__}")
    return value


def read_candidates(source: str, *, seed: int = 0, judge_name: str | None = None, limit: int | None = None) -> list[Candidate]:
    first = next(iter(iter_rows(source)), None)
    if first is None:
        raise DataError(str(source), None, None, "no rows")
    rng = random.Random(seed)
    out = []
    if "response_a" in first[2] or "response_b" in first[2]:
        from palate.data.readers import _prompt_value

        for src, n, row in iter_rows(source):
            prompt = _prompt_value(row, "prompt", src, n)
            a, b = _text(row, "response_a", src, n), _text(row, "response_b", src, n)
            own = next((s for s in ("a", "b") if judge_name and row.get(f"model_{s}") == judge_name), None)
            ref = _text(row, "reference", src, n) if "reference" in row else None
            out.append(Candidate(prompt, a, b, own=own, reference=ref, meta={"source": src, "row": n, **({"id": row["id"]} if "id" in row else {})}))
            if limit and len(out) >= limit:
                break
        return out
    for p in read_preferences(source):
        flip = rng.random() < 0.5  # the human's choice lands in slot b half the time
        a, b = (p.rejected, p.chosen) if flip else (p.chosen, p.rejected)
        human = "tie" if p.tie else ("b" if flip else "a")
        out.append(Candidate(p.prompt, a, b, human=human, meta={k: p.meta[k] for k in ("source", "row", "id") if k in p.meta}))
        if limit and len(out) >= limit:
            break
    return out


def judge_pairs(judge, cands: list[Candidate], mode: str = "tie") -> list[PairJudgment]:
    """Both orders of every pair in one call to the judge (it batches or runs them concurrently)."""
    items = [(c.prompt, c.a, c.b, c.reference) for c in cands] + [(c.prompt, c.b, c.a, c.reference) for c in cands]
    verdicts = judge.compare_many(items)
    n = len(cands)
    return [combine(verdicts[i], verdicts[n + i], mode) for i in range(n)]


def summarize(cands: list[Candidate], judged: list[PairJudgment], seconds: float) -> dict:
    malformed = [i for i, j in enumerate(judged) if j.malformed]
    out = {
        "pairs": len(cands), "judgments": 2 * len(cands), "malformed": len(malformed),
        "malformed_single_verdicts": sum(v.malformed for j in judged for v in (j.first, j.second)),
        "ties": sum(j.preference == "tie" for j in judged),
        "position_bias": stats.position_bias(judged), "inconsistency": stats.inconsistency(judged),
        "length_bias": stats.length_bias(judged, [len(c.a) for c in cands], [len(c.b) for c in cands]),
        "seconds": seconds, "seconds_per_judgment": seconds / max(1, 2 * len(cands)),
    }
    if any(c.own for c in cands):
        out["self_preference"] = stats.self_preference(judged, [c.own for c in cands])
    labeled = [i for i, c in enumerate(cands) if c.human is not None]
    if labeled:
        out["agreement"] = stats.agreement([judged[i].preference for i in labeled], [cands[i].human for i in labeled])
        hum = [cands[i] for i in labeled if cands[i].human != "tie"]
        if hum:  # the human labelers' own rate of preferring the longer answer, for comparison
            longer = [(c.human == "a") == (len(c.a) > len(c.b)) for c in hum if len(c.a) != len(c.b)]
            out["length_bias"]["human_longer_rate"] = sum(longer) / len(longer) if longer else None
    return out


def preference_row(c: Candidate, j: PairJudgment, judge_name: str) -> dict:
    chosen, rejected = (c.b, c.a) if j.preference == "b" else (c.a, c.b)
    p = j.p_a if j.preference != "b" else 1 - j.p_a
    row = {"prompt": c.prompt, "chosen": chosen, "rejected": rejected,
           "weight": 1.0 if j.preference == "tie" else round(j.weight, 6), "tie": j.preference == "tie",
           "confidence": round(max(p, 1 - p), 6), "consistent": j.consistent, "judge": judge_name,
           "p_first_order": j.first.p_a, "p_second_order": j.second.p_a}
    return {**row, **{f"source_{k}": v for k, v in c.meta.items()}}


def label_file(judge, source: str, out: str | Path, *, mode: str = "tie", seed: int = 0, limit: int | None = None,
               judge_name: str | None = None) -> dict:
    """Judge every candidate pair of ``source``; write ``out``, its summary and malformed rows (see module doc)."""
    name = judge_name or getattr(judge, "name", "judge")
    cands = read_candidates(source, seed=seed, judge_name=name, limit=limit)
    before = _transport_counts(judge)
    t0 = time.perf_counter()
    judged = judge_pairs(judge, cands, mode)
    summary = summarize(cands, judged, time.perf_counter() - t0)
    if before is not None:
        summary["http"] = {k: v - before[k] for k, v in _transport_counts(judge).items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [preference_row(c, j, name) for c, j in zip(cands, judged) if not j.malformed]
    _write_jsonl(out, rows)
    bad = [{**{f"source_{k}": v for k, v in c.meta.items()}, "prompt": c.prompt,
            "first_order": {"raw": j.first.raw[:2000], "why": j.first.rationale if j.first.malformed else None},
            "second_order": {"raw": j.second.raw[:2000], "why": j.second.rationale if j.second.malformed else None}}
           for c, j in zip(cands, judged) if j.malformed]
    _write_jsonl(out.with_suffix(".malformed.jsonl"), bad)
    summary.update({"written": len(rows), "output": str(out), "mode": mode, "judge": name})
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@dataclass(frozen=True)
class JudgeConfig:
    """``palate judge``'s config (each flag is a shortcut for the key of the same name)."""

    input: str | None = None
    """candidate pairs: prompt + response_a/response_b, or chosen/rejected; bundled:NAME"""
    out: str | None = None
    """Preference JSONL to write (+ .summary.json, .malformed.jsonl)"""
    judge: str = "bundled"
    """local model name/run dir, or an OpenAI-compatible base URL (http://host:port/v1)"""
    model: str = "default"
    """model name to request from an HTTP judge"""
    mode: str = "tie"
    """what verdicts that flip with the order become: tie | weight"""
    template: str = "pairwise"
    """template name (pairwise, reference) or path to your own"""
    limit: int | None = None
    """judge only the first N pairs"""
    seed: int = 0
    """seed of the slot assignment for chosen/rejected rows"""
    api_key_env: str = "OPENAI_API_KEY"
    """environment variable holding the HTTP judge's key"""
    cache_dir: str | None = None
    """HTTP answer cache (default: OUT's folder/.judge-cache)"""
    concurrency: int = 4
    """HTTP requests in flight"""
    rate_limit: float | None = None
    """HTTP requests per second at most"""
    max_retries: int = 5
    """HTTP retries before the run stops with an error"""
    timeout: float = 120.0
    """HTTP judge: seconds to wait for a connection and for each read"""
    max_tokens: int = 512
    """HTTP judge: longest answer (explanation + verdict) to ask for"""
    batch_size: int = 8
    """local judge: prompts per forward"""
    min_mass: float = 0.0
    """local judge: verdict tokens' probability below this is malformed"""
    judge_name: str | None = None
    """name matched against model_a/model_b for the self-preference rate"""

    def __post_init__(self):
        if self.mode not in ("tie", "weight"):
            raise ConfigError(f"--mode must be tie or weight, got {self.mode!r}")


def judge_from_config(cfg: JudgeConfig) -> dict:
    """Make ``cfg``'s judge (:func:`palate.judges.make_judge`) and label ``cfg.input`` with it
    (:func:`label_file`); returns the summary."""
    if cfg.input is None or cfg.out is None:
        raise ConfigError("judge needs an INPUT (argument or input=...) and --out (out=...)")
    if cfg.judge.startswith(("http://", "https://")):
        kw = dict(model=cfg.model, api_key_env=cfg.api_key_env, template=cfg.template, concurrency=cfg.concurrency,
                  rate_limit=cfg.rate_limit, max_retries=cfg.max_retries, name=cfg.judge_name,
                  max_tokens=cfg.max_tokens, timeout=cfg.timeout,
                  cache_dir=cfg.cache_dir or str(Path(cfg.out).resolve().parent / ".judge-cache"))
    else:
        kw = dict(template=cfg.template, batch_size=cfg.batch_size, min_mass=cfg.min_mass)
    judge = make_judge(cfg.judge, **kw)
    return label_file(judge, cfg.input, cfg.out, mode=cfg.mode, seed=cfg.seed, limit=cfg.limit,
                      judge_name=cfg.judge_name)


def _transport_counts(judge) -> dict | None:
    """An HTTP judge's request counters (None for a judge without them, e.g. a local model)."""
    names = {"requests": "requests_made", "retries": "retries", "cache_hits": "cache_hits"}
    if not all(hasattr(judge, a) for a in names.values()):
        return None
    return {k: getattr(judge, a) for k, a in names.items()}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)


def format_summary(s: dict) -> str:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    lines = [f"{s['pairs']} pairs judged in both orders ({s['judgments']} judgments, {s['seconds']:.1f} s, "
             f"{s['seconds_per_judgment']:.3f} s/judgment); {s['written']} written to {s['output']}",
             f"malformed: {s['malformed']} pairs ({s['malformed_single_verdicts']} single verdicts); ties: {s['ties']}",
             f"position bias: first slot preferred in {pct(s['position_bias']['first_slot_rate'])} of "
             f"{s['position_bias']['n']} decisive verdicts; inconsistent across orders: {s['inconsistency']['inconsistent']}"
             f" of {s['inconsistency']['n']} ({pct(s['inconsistency']['rate'])})",
             f"length bias: longer answer preferred in {pct(s['length_bias']['longer_rate'])} of {s['length_bias']['n']}"
             + (f" (humans: {pct(s['length_bias']['human_longer_rate'])})" if s["length_bias"].get("human_longer_rate")
                is not None else "")]
    if "http" in s:
        h = s["http"]
        lines.append(f"http: {h['requests']} requests ({h['retries']} retries after transient failures), "
                     f"{h['cache_hits']} answers from cache")
    if "self_preference" in s:
        lines.append(f"self-preference: own answer preferred in {pct(s['self_preference']['self_preference_rate'])} "
                     f"of {s['self_preference']['n']}")
    if "agreement" in s:
        a = s["agreement"]
        lines.append(f"agreement with human labels: accuracy {pct(a['accuracy'])} on {a['decisive']} decisive pairs, "
                     f"Cohen's kappa {a['kappa']:.3f}, coverage {pct(a['coverage'])}")
    return "\n".join(lines)
