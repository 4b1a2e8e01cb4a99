"""MT-Bench (Zheng et al. 2023): two-turn questions answered by a policy, graded by an AI judge.

    questions   MT-Bench ``question.jsonl`` (:func:`palate.eval.prompts.read_mtbench`)
    answers     turn t is generated with the conversation so far (question 1, the model's answer 1, …,
                question t) as chat messages; cached in ``OUT/mtbench/answers.jsonl`` (a rerun generates
                nothing new)
    single      ``judge.rate`` grades each turn's answer 1–10 (for turn 2 the judge sees the conversation:
                the question field holds the earlier turns); malformed grades are counted and left out
    pairwise    with a baseline: ``judge.compare_many`` in both orders, combined by
                :func:`palate.judges.debias.combine` (an order-dependent verdict is a tie). Each side is
                shown as its whole conversation up to that turn; :func:`palate.eval.winrate.compare` gives
                the win rate (ties ½) with a bootstrap CI, per category
    report      ``OUT/mtbench/mtbench.json`` (mean score per model, per turn, per category),
                ``judgments.jsonl``, ``radar.svg``; ``palate report OUT`` shows them

Judges are any :func:`palate.judges.make_judge` spec: ``local:MODEL`` (or a model name) or an
OpenAI-compatible URL ``http(s)://host/v1``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from palate.eval.prompts import MTBenchQuestion, read_mtbench

MTBENCH = "mtbench"
RUBRIC = ("Consider the helpfulness, relevance, accuracy, depth, creativity and level of detail of the response. "
          "For the second turn, grade only the answer to the last user question, in the light of the conversation.")


def conversation(q: MTBenchQuestion, answers: list[str], turn: int) -> list[dict[str, str]]:
    """Chat messages up to and including the user's question of ``turn`` (0-based)."""
    msgs: list[dict[str, str]] = []
    for t in range(turn):
        msgs += [{"role": "user", "content": q.turns[t]}, {"role": "assistant", "content": answers[t]}]
    return msgs + [{"role": "user", "content": q.turns[turn]}]


def generate_turns(model_name: str, questions: list[MTBenchQuestion], cache, settings, *, label: str,
                   device: str = "cpu", batch_size: int = 8) -> list[list[str]]:
    """``[question][turn]`` answers, turn by turn (turn t sees the model's own earlier answers)."""
    from palate.eval.policy import generate_answers

    answers: list[list[str]] = [[] for _ in questions]
    for t in range(max(len(q.turns) for q in questions)):
        idx = [i for i, q in enumerate(questions) if t < len(q.turns)]
        got = generate_answers(model_name, [conversation(questions[i], answers[i], t) for i in idx], cache, settings,
                               label=label, device=device, batch_size=batch_size)
        for i, a in zip(idx, got):
            answers[i].append(a)
    return answers


def _question_text(q: MTBenchQuestion, turn: int, answers: list[str]) -> str:
    if turn == 0:
        return q.turns[0]
    earlier = "\n\n".join(f"[User, turn {t + 1}]\n{q.turns[t]}\n\n[Assistant, turn {t + 1}]\n{answers[t]}"
                          for t in range(turn))
    return f"{earlier}\n\n[User, turn {turn + 1}]\n{q.turns[turn]}"


def _transcript(q: MTBenchQuestion, turn: int, answers: list[str]) -> str:
    if turn == 0:
        return answers[0]
    return "\n\n".join(f"[Turn {t + 1}] {answers[t]}" for t in range(turn + 1))


def grade(judge, questions: list[MTBenchQuestion], answers: list[list[str]]) -> list[dict[str, Any]]:
    """One row per (question, turn): ``{question_id, category, turn, score (None if malformed), rationale}``."""
    rows = []
    for q, ans in zip(questions, answers):
        for t in range(len(ans)):
            s = judge.rate(_question_text(q, t, ans), ans[t], RUBRIC, (1, 10))
            rows.append({"question_id": q.question_id, "category": q.category, "turn": t + 1, "score": s.score,
                         "rationale": s.rationale})
    return rows


def summarise_scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of the well-formed grades overall, per turn and per category (the MT-Bench table)."""
    ok = [r for r in rows if r["score"] is not None]
    by_turn, by_cat = defaultdict(list), defaultdict(list)
    for r in ok:
        by_turn[r["turn"]].append(r["score"])
        by_cat[r["category"]].append(r["score"])

    def mean(v: list[float]) -> float | None:
        return sum(v) / len(v) if v else None
    return {"score": mean([r["score"] for r in ok]), "n_graded": len(ok), "n_malformed": len(rows) - len(ok),
            "by_turn": {str(t): mean(v) for t, v in sorted(by_turn.items())},
            "by_category": {c: mean(v) for c, v in by_cat.items()}}


def pairwise(judge, questions: list[MTBenchQuestion], answers_a: list[list[str]], answers_b: list[list[str]]
             ) -> list[dict[str, Any]]:
    """Debiased pairwise verdicts of A vs B per (question, turn): judgment win/tie/loss for A or None."""
    from palate.judges.debias import combine

    items, keys = [], []
    for q, a, b in zip(questions, answers_a, answers_b):
        for t in range(min(len(a), len(b))):
            asked = q.turns[0] if t == 0 else "\n\n".join(f"[Turn {u + 1}] {q.turns[u]}" for u in range(t + 1))
            items.append((asked, _transcript(q, t, a), _transcript(q, t, b)))
            keys.append((q, t))
    first = judge.compare_many(items)
    second = judge.compare_many([(p, y, x) for p, x, y in items])
    choice = {"a": "win", "b": "loss", "tie": "tie"}
    out = []
    for (q, t), f, s in zip(keys, first, second):
        pref = combine(f, s).preference
        out.append({"question_id": q.question_id, "category": q.category, "turn": t + 1,
                    "judgment": None if pref is None else choice[pref]})
    return out


def run_mtbench(policies: list[str], questions_file: str, out: str | Path, *, judge: str, baseline: str | None = None,
                limit: int | None = None, settings=None, device: str = "cpu", batch_size: int = 8,
                n_resamples: int = 1000) -> dict[str, Any]:
    """Answer, grade (and compare with ``baseline``), write OUT/mtbench/ (module docstring)."""
    from dataclasses import asdict

    from palate.eval.plots import radar_svg
    from palate.eval.policy import AnswerCache, GenSettings, label_of
    from palate.eval.winrate import compare
    from palate.judges import make_judge

    settings = settings or GenSettings(max_new_tokens=256)
    questions = read_mtbench(questions_file, limit=limit)
    spec = judge[len("local:"):] if judge.startswith("local:") else judge
    if spec in ("panel", "") or spec.startswith("reward:"):
        raise ValueError("--suite mtbench grades with an AI judge: --judge local:MODEL or http(s)://HOST/v1")
    j = make_judge(spec, device=device, batch_size=batch_size) if not spec.startswith("http") else make_judge(spec)
    target = Path(out) / MTBENCH
    cache = AnswerCache(target / "answers.jsonl")
    models = [(label_of(p), p) for p in policies] + ([(label_of(baseline), baseline)] if baseline else [])
    answers = {lab: generate_turns(p, questions, cache, settings, label=lab, device=device, batch_size=batch_size)
               for lab, p in models}
    cache.save()
    graded = {lab: grade(j, questions, answers[lab]) for lab, _ in models}
    summary: dict[str, Any] = {"suite": MTBENCH, "questions": str(questions_file), "n_questions": len(questions),
                               "judge": judge, "baseline": label_of(baseline) if baseline else None,
                               "generation": asdict(settings), "generated": cache.generated, "reused": cache.reused,
                               "models": {lab: summarise_scores(graded[lab]) for lab, _ in models}}
    judged = [{"model": lab, **r} for lab, _ in models for r in graded[lab]]
    if baseline:
        base = label_of(baseline)
        summary["pairwise"] = {}
        for lab, _ in models[:-1]:
            rows = pairwise(j, questions, answers[lab], answers[base])
            keep = [r for r in rows if r["judgment"] is not None]
            if keep:
                res = compare([r["judgment"] for r in keep], None, None, [r["category"] for r in keep], policy=lab,
                              n_resamples=n_resamples, seed=settings.seed)
                summary["pairwise"][lab] = {k: res[k] for k in ("n", "wins", "ties", "losses", "win_rate", "ci")}
                summary["pairwise"][lab]["by_category"] = res.get("by_group")
            summary["pairwise"].setdefault(lab, {})["n_malformed"] = len(rows) - len(keep)
            judged += [{"model": lab, "vs": base, **r} for r in rows]
    target.mkdir(parents=True, exist_ok=True)
    with open(target / "judgments.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in judged)
    (target / "mtbench.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    (target / "radar.svg").write_text(radar_svg(radar_series(summary), 0, 10, "MT-Bench score by category"))
    return summary


def radar_series(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {lab: {c: v for c, v in s["by_category"].items() if v is not None} for lab, s in summary["models"].items()}


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"MT-Bench on {s['n_questions']} questions, judge {s['judge']}"]
    for lab, m in s["models"].items():
        score = "n/a" if m["score"] is None else f"{m['score']:.2f}"
        turns = ", ".join(f"turn {t} {'n/a' if v is None else f'{v:.2f}'}" for t, v in m["by_turn"].items())
        lines.append(f"  {lab}: score {score} ({turns}; {m['n_malformed']} malformed grades)")
    for lab, p in (s.get("pairwise") or {}).items():
        if "win_rate" in p:
            lines.append(f"  {lab} vs {s['baseline']}: win rate {100 * p['win_rate']:.1f}% "
                         f"[{100 * p['ci'][0]:.1f}, {100 * p['ci'][1]:.1f}] ({p['wins']}/{p['ties']}/{p['losses']})")
    return "\n".join(lines)
