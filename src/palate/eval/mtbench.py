"""MT-Bench (Zheng et al. 2023): two-turn questions answered by a policy, graded by an AI judge as FastChat does.

    questions   FastChat's ``question.jsonl`` as shipped, with ``--references reference_answer/gpt-4.jsonl``
                for the questions graded against a reference (math, reasoning, coding):
                :func:`palate.eval.prompts.read_mtbench`; a reference-graded question without a reference is
                refused before any answer is generated
    answers     turn t is generated with the conversation so far (question 1, the model's answer 1, …,
                question t) as chat messages; cached in ``OUT/mtbench/answers.jsonl`` (a rerun generates
                nothing new)
    single      each turn graded 1-10 with FastChat's judge prompt for it (single-v1, single-math-v1 and their
                multi-turn forms: :mod:`palate.eval.mtbench_judge`), system prompt and all; FastChat's own
                ``judge_prompts.jsonl`` ships with palate, ``--judge-prompts FILE`` takes another
    pairwise    with a baseline: each (question, turn) judged in both orders with pair-v2 / pair-math-v1 (and the
                multi-turn forms); a tie when either game is a tie or the two disagree, as FastChat scores them
                (:func:`palate.eval.mtbench_results.outcome`); win rate (ties ½) with a bootstrap CI, per category
    report      ``OUT/mtbench/mtbench.json`` (per model: MT-Bench score, per turn, per category, as
                ``show_result.py`` computes them, :mod:`palate.eval.mtbench_results`),
                ``model_judgment/single.jsonl`` and ``pair.jsonl`` in FastChat's judgment format (FastChat's
                ``show_result.py --input-file`` reads them), ``radar.svg``; ``palate report OUT`` shows them

Judges are any :func:`palate.judges.make_judge` spec: ``local:MODEL`` (or a model name) or an
OpenAI-compatible URL ``http(s)://host/v1`` (asked as FastChat asks GPT-4: temperature 0, up to 2048 tokens).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from palate.eval.mtbench_judge import (
    JudgePrompts,
    judged_turns,
    pair_prompt,
    single_prompt,
)
from palate.eval.mtbench_results import outcome, summarise_single
from palate.eval.prompts import MTBenchQuestion, read_mtbench

MTBENCH = "mtbench"


def fastchat_id(qid: str) -> int | str:
    """FastChat's question ids are integers; palate keeps ids as text."""
    return int(qid) if qid.isdigit() else qid


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


def grade(judge, prompts: JudgePrompts, questions: list[MTBenchQuestion], answers: list[list[str]], *,
          model: str = "model", judge_name: str = "judge") -> list[dict[str, Any]]:
    """Single-answer grades, one FastChat ``*_single.jsonl`` row per judged (question, turn), plus ``category``:
    ``score`` is -1 where the judge gave no readable grade (counted, never guessed)."""
    todo = [(q, ans, t) for q, ans in zip(questions, answers) for t in judged_turns(q)]
    built = [single_prompt(prompts, q, ans, t) for q, ans, t in todo]
    scores = judge.rate_prompts([(system, user) for _, system, user in built], (1, 10))
    return [{"question_id": fastchat_id(q.question_id), "model": model, "judge": [judge_name, name],
             "user_prompt": user, "judgment": s.raw or s.rationale, "score": -1 if s.score is None else s.score,
             "turn": t, "tstamp": time.time(), "category": q.category}
            for (q, _, t), (name, _, user), s in zip(todo, built, scores)]


def pairwise(judge, prompts: JudgePrompts, questions: list[MTBenchQuestion], answers_1: list[list[str]],
             answers_2: list[list[str]], *, model_1: str = "model_1", model_2: str = "model_2",
             judge_name: str = "judge") -> list[dict[str, Any]]:
    """FastChat ``*_pair.jsonl`` rows (plus ``category``) per judged (question, turn): game 1 shows model_1 as
    assistant A, game 2 shows model_2 as A; ``g1_winner``/``g2_winner`` are model_1, model_2, tie or error."""
    todo = [(q, a1, a2, t) for q, a1, a2 in zip(questions, answers_1, answers_2) for t in judged_turns(q)]
    g1 = [pair_prompt(prompts, q, a1, a2, t) for q, a1, a2, t in todo]
    g2 = [pair_prompt(prompts, q, a2, a1, t) for q, a1, a2, t in todo]
    verdicts = judge.compare_prompts([(system, user) for _, system, user in g1 + g2])
    first, second = verdicts[: len(todo)], verdicts[len(todo):]
    as_1 = {"A": "model_1", "B": "model_2", "tie": "tie", None: "error"}
    as_2 = {"A": "model_2", "B": "model_1", "tie": "tie", None: "error"}
    return [{"question_id": fastchat_id(q.question_id), "model_1": model_1, "model_2": model_2,
             "g1_winner": as_1[v1.preference], "g2_winner": as_2[v2.preference], "judge": [judge_name, p1[0]],
             "g1_user_prompt": p1[2], "g1_judgment": v1.raw or v1.rationale, "g2_user_prompt": p2[2],
             "g2_judgment": v2.raw or v2.rationale, "turn": t, "tstamp": time.time(), "category": q.category}
            for (q, _, _, t), p1, p2, v1, v2 in zip(todo, g1, g2, first, second)]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def run_mtbench(policies: list[str], questions_file: str, out: str | Path, *, judge: str, baseline: str | None = None,
                references: str | None = None, judge_prompts: str | None = None, limit: int | None = None,
                settings=None, device: str = "cpu", batch_size: int = 8, n_resamples: int = 1000) -> dict[str, Any]:
    """Answer, grade (and compare with ``baseline``), write OUT/mtbench/ (module docstring)."""
    from dataclasses import asdict

    from palate.eval.mtbench_judge import SHIPPED, check_references, load_judge_prompts
    from palate.eval.plots import radar_svg
    from palate.eval.policy import AnswerCache, GenSettings, label_of
    from palate.eval.winrate import compare
    from palate.judges import make_judge

    settings = settings or GenSettings(max_new_tokens=256)
    questions = read_mtbench(questions_file, references=references, limit=limit)
    check_references(questions)
    prompts = load_judge_prompts(judge_prompts)
    spec = judge.removeprefix("local:")
    if spec in ("panel", "") or spec.startswith("reward:"):
        raise ValueError("--suite mtbench grades with an AI judge: --judge local:MODEL or http(s)://HOST/v1")
    target = Path(out) / MTBENCH
    j = (make_judge(spec, max_tokens=2048, cache_dir=target / ".judge-cache") if spec.startswith("http")
         else make_judge(spec, device=device, batch_size=batch_size))
    cache = AnswerCache(target / "answers.jsonl")
    models = [(label_of(p), p) for p in policies] + ([(label_of(baseline), baseline)] if baseline else [])
    answers = {lab: generate_turns(p, questions, cache, settings, label=lab, device=device, batch_size=batch_size)
               for lab, p in models}
    cache.save()
    labels = list(answers)  # each model graded once, also when the baseline is one of the policies
    single = [r for lab in labels for r in grade(j, prompts, questions, answers[lab], model=lab, judge_name=judge)]
    summary: dict[str, Any] = {"suite": MTBENCH, "questions": str(questions_file), "n_questions": len(questions),
                               "references": str(references) if references else "question rows",
                               "judge": judge, "judge_prompts": str(judge_prompts or SHIPPED),
                               "baseline": label_of(baseline) if baseline else None,
                               "generation": asdict(settings), "generated": cache.generated, "reused": cache.reused,
                               "models": summarise_single(single, {q.question_id: q.category for q in questions},
                                                          labels)}
    _write_jsonl(target / "model_judgment" / "single.jsonl", single)
    if baseline:
        base = label_of(baseline)
        pairs = [r for lab, _ in models[:-1] for r in pairwise(j, prompts, questions, answers[lab], answers[base],
                                                                model_1=lab, model_2=base, judge_name=judge)]
        summary["pairwise"] = {}
        for lab, _ in models[:-1]:
            rows = [r for r in pairs if r["model_1"] == lab]
            keep = [(outcome(r), r["category"]) for r in rows if outcome(r) is not None]
            entry: dict[str, Any] = {"n_malformed": len(rows) - len(keep)}
            if keep:
                res = compare([o for o, _ in keep], None, None, [c for _, c in keep], policy=lab,
                              n_resamples=n_resamples, seed=settings.seed)
                n = res["n"]  # show_result.py's columns; its win_rate_adjusted is palate's win_rate (ties half)
                entry.update({k: res[k] for k in ("n", "wins", "ties", "losses", "win_rate", "ci")},
                             by_category=res.get("by_group"),
                             fastchat={"win_rate": res["wins"] / n, "loss_rate": res["losses"] / n,
                                       "win_rate_adjusted": (res["wins"] + 0.5 * res["ties"]) / n})
            summary["pairwise"][lab] = entry
        _write_jsonl(target / "model_judgment" / "pair.jsonl", pairs)
    target.mkdir(parents=True, exist_ok=True)
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
