"""Task success rate: prompts with a checker each, and ROUGE-L / BLEU against references.

Task file (JSONL, or anything :func:`palate.data.readers.iter_rows` reads), one task per row:

    {"id": "add-1", "prompt": "What is 2 + 2?", "numeric": 4, "tolerance": 0.01, "category": "math"}

    id          text or number (default: the line number)
    prompt      text or chat messages
    checker     at most one of
        exact      text: the answer, stripped, equals it, stripped
        regex      pattern: ``re.search`` finds it in the answer (compiled when read)
        numeric    number: the last number in the answer (commas dropped) is within ``tolerance``
                   (absolute, default 1e-6)
        python     source defining ``check(answer: str) -> bool``; run in :mod:`palate.eval.sandbox`, the
                   task passes only if it returns ``True``
    reference   text (optional): the answer's ROUGE-L F1 (``rouge-score``, stemmed) and corpus BLEU
                (``sacrebleu``) over the rows that have one
    category    text (optional): success rate per category

A row needs a checker or a reference. Malformed rows raise :class:`DataError` naming file, line, field.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palate.data.errors import DataError
from palate.data.readers import _prompt_value, iter_rows
from palate.data.records import Prompt
from palate.eval.sandbox import Limits, run_python

CHECKERS = ("exact", "regex", "numeric", "python")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Task:
    id: str
    prompt: Prompt
    checker: str | None
    """one of CHECKERS"""
    target: Any
    """the checker's value"""
    tolerance: float = 1e-6
    reference: str | None = None
    category: str | None = None


def read_tasks(source: str | Path) -> list[Task]:
    out, seen = [], {}
    for src, n, row in iter_rows(source):
        given = [c for c in CHECKERS if c in row]
        if len(given) > 1:
            raise DataError(src, n, given[1], f"one checker per task, got {', '.join(given)}")
        if "prompt" not in row:
            raise DataError(src, n, "prompt", "missing field")
        prompt = _prompt_value(row, "prompt", src, n)
        ref = row.get("reference")
        if ref is not None and (not isinstance(ref, str) or not ref.strip()):
            raise DataError(src, n, "reference", "expected non-empty text")
        if not given and ref is None:
            raise DataError(src, n, None, f"no checker: give one of {', '.join(CHECKERS)} or a reference")
        checker = given[0] if given else None
        target, tol = row.get(checker) if checker else None, 1e-6
        if checker in ("exact", "regex", "python") and (not isinstance(target, str) or not target.strip()):
            raise DataError(src, n, checker, "expected non-empty text")
        if checker == "regex":
            try:
                re.compile(target)
            except re.error as e:
                raise DataError(src, n, "regex", f"not a valid regular expression: {e}") from None
        if checker == "numeric":
            if not isinstance(target, (int, float)) or isinstance(target, bool) or not math.isfinite(target):
                raise DataError(src, n, "numeric", f"expected a finite number, got {target!r}")
            tol = row.get("tolerance", 1e-6)
            if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol >= 0:
                raise DataError(src, n, "tolerance", f"expected a number >= 0, got {tol!r}")
        if checker == "python":
            try:
                tree = ast.parse(target)
            except SyntaxError as e:
                raise DataError(src, n, "python",
                                f"checker does not parse: {e.msg} (checker line {e.lineno})") from None
            if not any(isinstance(x, ast.FunctionDef) and x.name == "check" for x in tree.body):
                raise DataError(src, n, "python", "checker must define check(answer) -> bool")
        tid = row.get("id", n)
        if not isinstance(tid, (str, int)) or isinstance(tid, bool):
            raise DataError(src, n, "id", f"expected text or a number, got {type(tid).__name__}")
        if str(tid) in seen:
            raise DataError(src, n, "id", f"duplicate id {tid!r} (first at line {seen[str(tid)]})")
        seen[str(tid)] = n
        cat = row.get("category")
        if cat is not None and not isinstance(cat, str):
            raise DataError(src, n, "category", "expected text")
        out.append(Task(str(tid), prompt, checker, target, float(tol), ref, cat))
    if not out:
        raise DataError(str(source), None, None, "no tasks found")
    return out


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def python_program(source: str) -> str:
    return (source + "\n\nimport json as _json\n_result = check(_json.load(open('answer.json', encoding='utf-8')))\n"
            "if _result is not True:\n    raise SystemExit('check returned ' + repr(_result))\n")


def check(task: Task, answer: str, limits: Limits = Limits(cpu_s=5, wall_s=10)) -> tuple[bool, str]:
    """(passed, detail) of one answer."""
    if task.checker == "exact":
        return answer.strip() == task.target.strip(), ""
    if task.checker == "regex":
        return re.search(task.target, answer) is not None, ""
    if task.checker == "numeric":
        x = last_number(answer)
        return (x is not None and abs(x - task.target) <= task.tolerance), "no number" if x is None else f"got {x:g}"
    if task.checker == "python":
        r = run_python(python_program(task.target), limits, files={"answer.json": json.dumps(answer)})
        return r.passed, "" if r.passed else f"{r.status}: {r.stderr.strip()[-300:]}"
    raise ValueError(f"task {task.id} has no checker")


def rouge_l(answers: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 of each answer against its reference (``rouge-score``, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, a)["rougeL"].fmeasure for a, r in zip(answers, references)]


def bleu(answers: list[str], references: list[str]) -> float:
    """Corpus BLEU (``sacrebleu`` defaults: 13a tokenisation, 4-grams, brevity penalty), 0–100."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(answers, [references]).score)


def score_tasks(tasks: list[Task], answers: list[str], *, seed: int = 0) -> tuple[dict[str, Any], list[dict]]:
    """Success rate (bootstrap 95% CI) overall, per checker and per category; ROUGE-L / BLEU; per-row results."""
    from palate.eval.stats import accuracy_ci

    rows = []
    for t, a in zip(tasks, answers):
        row = {"id": t.id, "checker": t.checker, "category": t.category, "answer": a}
        if t.checker:
            row["passed"], row["detail"] = check(t, a)
        rows.append(row)
    checked = [r for r in rows if "passed" in r]
    summary: dict[str, Any] = {"n_tasks": len(tasks), "n_checked": len(checked)}
    if checked:
        summary["success"] = accuracy_ci([float(r["passed"]) for r in checked], seed=seed)
        for key in ("checker", "category"):
            groups: dict[str, list[float]] = defaultdict(list)
            for r in checked:
                if r[key] is not None:
                    groups[r[key]].append(float(r["passed"]))
            if groups:
                summary[f"by_{key}"] = {g: {"n": len(v), "success_rate": sum(v) / len(v)}
                                        for g, v in sorted(groups.items())}
    with_ref = [(i, t) for i, t in enumerate(tasks) if t.reference]
    if with_ref:
        refs, ans = [t.reference for _, t in with_ref], [answers[i] for i, _ in with_ref]
        for (i, _), s in zip(with_ref, rouge_l(ans, refs)):
            rows[i]["rouge_l"] = s
        summary["rouge_l"] = sum(rows[i]["rouge_l"] for i, _ in with_ref) / len(with_ref)
        summary["bleu"] = bleu(ans, refs)
        summary["n_references"] = len(with_ref)
    return summary, rows


def run_tasks(model_name: str, tasks_file: str, out: str | Path, *, settings=None, limit: int | None = None,
              device: str = "cpu", batch_size: int = 8) -> dict[str, Any]:
    """Answer every task with ``model_name`` (cached in OUT/tasks/answers.jsonl), check, write OUT/tasks/."""
    from dataclasses import asdict

    from palate.eval.policy import AnswerCache, GenSettings, generate_answers, label_of

    settings = settings or GenSettings()
    tasks = read_tasks(tasks_file)[:limit] if limit else read_tasks(tasks_file)
    target = Path(out) / "tasks"
    cache = AnswerCache(target / "answers.jsonl")
    answers = generate_answers(model_name, [t.prompt for t in tasks], cache, settings, label=label_of(model_name),
                               device=device, batch_size=batch_size)
    cache.save()
    summary, rows = score_tasks(tasks, answers, seed=settings.seed)
    summary = {"suite": "tasks", "model": model_name, "tasks": str(tasks_file), **summary,
               "generation": asdict(settings), "generated": cache.generated, "reused": cache.reused}
    with open(target / "results.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (target / "tasks.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


def format_summary(s: dict[str, Any]) -> str:
    parts = [f"tasks {s['model']}: {s['n_tasks']} tasks"]
    if "success" in s:
        a = s["success"]
        parts.append(f"success {100 * a['accuracy']:.1f}% [{100 * a['ci_low']:.1f}, {100 * a['ci_high']:.1f}] "
                     f"of {s['n_checked']} checked")
    if "rouge_l" in s:
        parts.append(f"ROUGE-L {s['rouge_l']:.3f}, BLEU {s['bleu']:.1f} on {s['n_references']} references")
    return "; ".join(parts)
