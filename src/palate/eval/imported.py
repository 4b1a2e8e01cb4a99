"""``palate winrate``: win rates from pairwise judgments made elsewhere, written as palate's own judging writes them.

Three formats, told apart by their fields (every file must be one of them):

* **AlpacaEval annotations** (``annotations.json``, also ``.json.gz``/``.json.xz``): a JSON list of rows with
  ``output_1`` (the baseline's answer, ``generator_1``), ``output_2`` (the model's, ``generator_2``) and
  ``preference`` ∈ [1, 2] (1 = output_1/the baseline wins, 2 = output_2/the model wins, 0 = draw), read by
  :func:`palate.eval.alpaca_eval.annotations_from_rows`; the policy is ``generator_2`` (or the folder name in
  ``results/<model>/<annotator>/annotations.json``); rows without a preference are counted and left out.
* **palate judged rows** (``OUT/eval/judgments.jsonl`` of ``palate eval``): ``policy``, ``prompt``,
  ``response_a`` (the policy's answer), ``response_b`` (the baseline's), ``judgment`` (win/tie/loss or P(A));
  a null judgment is a malformed verdict, counted and left out, as ``palate eval`` does.
* **palate Preference rows** (``palate label export``, or any file ``palate dpo`` reads) whose rows name the
  models: ``chosen_model`` and ``rejected_model`` (top level or in ``meta``); ``--baseline`` names the baseline,
  the other model is the policy; a tie is ½.

Prompts are matched across policies by their text, so the joint length-controlled fit
(:func:`palate.eval.winrate.compare_policies`) sees which judgments share a prompt. Answer lengths are counted
in an explicit unit — ``characters`` (AlpacaEval's), ``words`` (``palate eval``'s) or ``tokens`` (a tokenizer) —
and the unit is recorded in every result and at the top of ``winrates.json``. ``--lc alpaca_eval`` adds
AlpacaEval 2's own LC (:mod:`palate.eval.alpaca_eval`: ``length_controlled_noreg`` with an instruction difficulty
refitted on the imported annotations, or v1 with ``--alpaca-eval-repo`` holding the gamed baselines) as
``alpaca_eval_lc`` beside palate's. The difficulty is only as good as the models it is fitted on: from a handful of
files it is a poor estimate (recorded as ``difficulty_models``); ``--alpaca-eval-repo`` adds every leaderboard
model the repository has annotations for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palate.data.errors import DataError
from palate.eval.alpaca_eval import _open_text, annotations_from_rows, text_length
from palate.eval.winrate import compare_policies, preference_values, write_winrates


@dataclass
class Judged:
    """Judgments of several policies against one baseline, keyed by prompt text."""

    baseline: str | None = None
    prompts: dict[str, int] = field(default_factory=dict)
    """prompt text → index"""
    baseline_answers: dict[int, str] = field(default_factory=dict)
    rows: dict[str, list[tuple[int, float, str]]] = field(default_factory=dict)
    """policy → (prompt, p, answer)"""
    left_out: dict[str, int] = field(default_factory=dict)
    """reason → count"""
    sources: list[str] = field(default_factory=list)
    annotations: list[Any] = field(default_factory=list)
    """AlpacaEval Annotations, for --lc alpaca_eval"""

    def add(self, source: str, row: Any, policy: str, prompt: Any, p: float, answer: str, baseline_answer: str,
            baseline: str | None) -> None:
        key = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
        if baseline is not None:
            if self.baseline is None:
                self.baseline = baseline
            elif baseline != self.baseline:
                raise DataError(source, row, None, f"baseline {baseline!r}, but earlier judgments are against "
                                f"{self.baseline!r}: one baseline per win-rate table")
        i = self.prompts.setdefault(key, len(self.prompts))
        known = self.baseline_answers.setdefault(i, baseline_answer)
        if known != baseline_answer:
            raise DataError(source, row, None, "the baseline's answer to this prompt differs from the one in an earlier "
                            "judgment of the same prompt")
        if any(j == i for j, _, _ in self.rows.get(policy, [])):
            raise DataError(source, row, None, f"a second judgment of {policy!r} on the same prompt")
        self.rows.setdefault(policy, []).append((i, p, answer))

    def skip(self, reason: str) -> None:
        self.left_out[reason] = self.left_out.get(reason, 0) + 1


def _load_rows(path: Path) -> list[Any]:
    text = _open_text(path)
    name = path.name.removesuffix(".gz").removesuffix(".xz")
    try:
        if name.endswith(".jsonl"):
            return [json.loads(line) if line.strip() else None for line in text.splitlines()]
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(str(path), getattr(e, "lineno", None), None, f"not JSON: {e.msg}") from None


def _alpaca(judged: Judged, path: Path, rows: list, unit: str, tokenizer: Any, policy: str | None) -> None:
    if policy is None and len(path.parts) >= 3 and path.parent.parent.parent.name == "results":
        policy = path.parent.parent.name  # results/<model>/<annotator>/annotations.json
    ann = annotations_from_rows(rows, str(path), unit="characters", model=policy)
    judged.annotations.append(ann)
    for n, row in enumerate(rows, start=1):
        p = ann.p[n - 1]
        if p != p:  # NaN: the annotator gave no preference
            judged.skip("AlpacaEval row without a preference")
            continue
        judged.add(str(path), n, ann.model, row.get("instruction", f"#{n}"), float(p), ann.model_answers[n - 1],
                   ann.baseline_answers[n - 1], ann.baseline)


def _palate_rows(judged: Judged, path: Path, rows: list) -> None:
    for n, row in enumerate(rows, start=1):
        if row is None:
            continue
        for f in ("policy", "prompt", "response_a", "response_b", "judgment"):
            if f not in row:
                raise DataError(str(path), n, f, "missing")
        if row["judgment"] is None:
            judged.skip("malformed verdict (judgment null)")
            continue
        try:
            p = float(preference_values([row["judgment"]], rows=[n])[0])
        except ValueError as e:
            raise DataError(str(path), n, "judgment", str(e).split(": ", 1)[-1]) from None
        for f in ("response_a", "response_b"):
            if not isinstance(row[f], str):
                raise DataError(str(path), n, f, f"expected text, got {type(row[f]).__name__}")
        judged.add(str(path), n, str(row["policy"]), row["prompt"], p, row["response_a"], row["response_b"],
                   row.get("baseline"))


def _preference_rows(judged: Judged, path: Path, rows: list, baseline: str | None) -> None:
    if baseline is None:
        raise DataError(str(path), None, None, "Preference rows need --baseline (which model is the baseline)")
    for n, row in enumerate(rows, start=1):
        if row is None:
            continue
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        names = {f: row.get(f, meta.get(f)) for f in ("chosen_model", "rejected_model")}
        for f, v in names.items():
            if not isinstance(v, str) or not v:
                raise DataError(str(path), n, f, "a Preference row must name the model of each answer "
                                "(chosen_model, rejected_model) to tell the policy from the baseline")
        for f in ("prompt", "chosen", "rejected"):
            if f not in row:
                raise DataError(str(path), n, f, "missing")
            if f != "prompt" and not isinstance(row[f], str):
                raise DataError(str(path), n, f, f"expected text, got {type(row[f]).__name__}")
        tie = row.get("tie", False)
        if not isinstance(tie, bool):
            raise DataError(str(path), n, "tie", f"expected true/false, got {tie!r}")
        if baseline not in names.values():
            raise DataError(str(path), n, "chosen_model", f"neither answer is the baseline {baseline!r} "
                            f"({names['chosen_model']!r} vs {names['rejected_model']!r})")
        policy_won = names["chosen_model"] != baseline
        policy = names["chosen_model"] if policy_won else names["rejected_model"]
        if policy == baseline:
            raise DataError(str(path), n, "rejected_model", "both answers are the baseline's")
        answer, base = (row["chosen"], row["rejected"]) if policy_won else (row["rejected"], row["chosen"])
        judged.add(str(path), n, policy, row["prompt"], 0.5 if tie else (1.0 if policy_won else 0.0), answer, base,
                   baseline)


def read_judgments(paths: Sequence[str | Path], *, baseline: str | None = None, unit: str = "characters",
                   tokenizer: Any = None, policy: str | None = None) -> Judged:
    """Read every file (module docstring for the formats). ``policy`` names the model of a single AlpacaEval file."""
    judged = Judged(baseline=None)
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        rows = _load_rows(path)
        first = next((r for r in (rows if isinstance(rows, list) else []) if r is not None), None)
        if not isinstance(first, dict):
            raise DataError(str(path), None, None, "expected a JSON list or JSONL of objects")
        if {"output_1", "output_2", "preference"} <= set(first):
            _alpaca(judged, path, rows, unit, tokenizer, policy)
        elif {"policy", "response_a", "response_b", "judgment"} <= set(first):
            _palate_rows(judged, path, rows)
        elif {"chosen", "rejected"} <= set(first):
            _preference_rows(judged, path, rows, baseline)
        else:
            raise DataError(str(path), 1, None, "not AlpacaEval annotations (output_1, output_2, preference), palate "
                            "judged rows (policy, response_a, response_b, judgment) nor Preference rows (chosen, "
                            f"rejected); fields: {', '.join(sorted(first))}")
        judged.sources.append(str(path))
    if baseline is not None and judged.baseline not in (None, baseline):
        raise ValueError(f"--baseline {baseline!r} but the judgments are against {judged.baseline!r}")
    judged.baseline = judged.baseline or baseline or "baseline"
    if not judged.rows:
        raise ValueError("no usable judgment in " + ", ".join(map(str, paths)))
    return judged


def winrates_from_judgments(judged: Judged, out: str | Path, *, unit: str = "characters", tokenizer: Any = None,
                            lc: str = "joint", alpaca_eval_repo: str | None = None, judge: str | None = None,
                            n_resamples: int = 1000, seed: int = 0, report: bool = True) -> dict[str, Any]:
    """Win rates of every policy in ``judged`` (raw with CI; LC from one joint fit, plus AlpacaEval's with
    ``lc="alpaca_eval"``) → ``OUT/eval/winrates.json`` and, with ``report``, ``OUT/report/report.html``."""
    if lc not in ("joint", "alpaca_eval"):
        raise ValueError(f"--lc must be joint or alpaca_eval, got {lc!r}")
    out = Path(out)
    names = sorted(judged.rows)
    n_prompts = len(judged.prompts)
    base_len = [text_length(judged.baseline_answers[i], unit, tokenizer) for i in range(n_prompts)]
    results = compare_policies(
        {k: [p for _, p, _ in judged.rows[k]] for k in names},
        {k: [text_length(a, unit, tokenizer) for _, _, a in judged.rows[k]] for k in names},
        base_len, prompt_index={k: [i for i, _, _ in judged.rows[k]] for k in names}, length_unit=unit,
        n_resamples=n_resamples, seed=seed)
    if lc == "alpaca_eval":
        _add_alpaca_eval_lc(judged, results, alpaca_eval_repo)
    extra = {"source": judged.sources, "length_unit": unit, "left_out": judged.left_out,
             "lc_method": "joint" + ("+alpaca_eval" if lc == "alpaca_eval" else "")}
    path = write_winrates(out / "eval", results, baseline=judged.baseline, judge=judge, **extra)
    summary = {"winrates": str(path), "results": results, "left_out": judged.left_out, "baseline": judged.baseline,
               "length_unit": unit}
    if report:
        from palate.eval.report import write_report

        summary["report"] = str(write_report(out))
    return summary


def _add_alpaca_eval_lc(judged: Judged, results: list[dict[str, Any]], repo_path: str | None) -> None:
    from palate.eval.alpaca_eval import GAMED_BASELINES, Repository, instruction_difficulty, length_controlled_winrate

    if not judged.annotations:
        raise ValueError("--lc alpaca_eval needs AlpacaEval annotations among the inputs")
    anns = list(judged.annotations)
    gamed = []
    if repo_path:
        repo = Repository(repo_path)
        have = {a.model for a in anns}
        for m in repo.leaderboard():
            if m not in have and (a := repo.annotations(m)) is not None:
                anns.append(a)
        gamed = [a for a in anns if a.model in GAMED_BASELINES]
        gamed = gamed if len(gamed) == len(GAMED_BASELINES) else []
    difficulty = instruction_difficulty(anns)
    by_model = {a.model: a for a in judged.annotations}
    for res in results:
        a = by_model.get(res["policy"])
        if a is None:
            continue
        ae = length_controlled_winrate(a, difficulty, gamed=gamed)
        res["alpaca_eval_lc"] = {"lc_win_rate": ae["length_controlled_winrate"] / 100,
                                 "standard_error": ae["lc_standard_error"] / 100, "glm": ae["glm"],
                                 "weights": ae["weights"], "C": ae["C"], "difficulty_models": len(anns),
                                 "length_unit": "characters"}


def format_winrates(summary: dict[str, Any]) -> str:
    lines = [f"against {summary['baseline']} (lengths in {summary['length_unit']}); LC = one joint fit"]
    for r in summary["results"]:
        ae = r.get("alpaca_eval_lc")
        lines.append(f"  {r['policy']:32s} n={r['n']:4d}  win rate {r['win_rate']:.1%} [{r['ci'][0]:.1%}, "
                     f"{r['ci'][1]:.1%}]  LC {r['lc_win_rate']:.1%} [{r['lc_ci'][0]:.1%}, {r['lc_ci'][1]:.1%}]"
                     + (f"  AlpacaEval LC {ae['lc_win_rate']:.1%} ({ae['glm']})" if ae else ""))
        if r.get("lc_warning"):
            lines.append(f"    warning: {r['lc_warning']}")
    for reason, count in summary["left_out"].items():
        lines.append(f"  left out: {count} ({reason})")
    lines.append(f"written: {summary['winrates']}" + (f", report {summary['report']}" if summary.get("report") else ""))
    return "\n".join(lines)
