"""MT-Bench judgment files in FastChat's format, and its tables (``fastchat/llm_judge/show_result.py``).

Files (one JSON object a line; palate writes the same, so FastChat's ``show_result.py --input-file`` reads
palate's judgments and :func:`summarise_single` / :func:`summarise_pairwise` read FastChat's):

    model_judgment/<judge>_single.jsonl   question_id, model, judge [judge model, prompt name], user_prompt,
                                          judgment, score (-1: no readable grade), turn (1|2), tstamp
    model_judgment/<judge>_pair.jsonl     question_id, model_1, model_2, g1_winner, g2_winner (model_1 |
                                          model_2 | tie | error), judge, g1_user_prompt, g1_judgment,
                                          g2_user_prompt, g2_judgment, turn, tstamp

Game 1 shows model_1 as assistant A, game 2 shows model_2 as A; the winners are already mapped back to
model_1/model_2.

Single grading, as ``show_result.py --mode single``: rows with score -1 are left out; each model's turn-1
score is the mean over its turn-1 rows, turn 2 likewise, and its MT-Bench score the mean over all its rows
(not the mean of the two turn means). Every row counts, so a (question, turn) judged twice counts twice, as in
FastChat; :func:`summarise_single` reports how many such repeats there are. palate adds the mean per category
(both turns; the category comes from ``question.jsonl`` by question_id), which ``show_result.py`` does not print.

Pairwise, as ``--mode pairwise-baseline`` (or ``pairwise-all`` with no baseline): rows where either game is
``error`` are left out; a game pair is a tie when game 1 is a tie or the two games disagree, otherwise a win for
the winner and a loss for the other; with a baseline only games involving it count, and the baseline's own
row is dropped. ``win_rate = win / n``, ``loss_rate = loss / n``, ``win_rate_adjusted = (win + tie / 2) / n``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from palate.data.errors import DataError
from palate.data.readers import iter_rows

WINNERS = ("model_1", "model_2", "tie", "error")


def _need(row: dict, names: Iterable[str], src: str, n: int, what: str) -> None:
    for name in names:
        if name not in row:
            raise DataError(src, n, name, f"missing field (a FastChat {what} judgment row needs "
                            f"{', '.join(names)}; fields present: {', '.join(sorted(row)) or 'none'})")


def _name(row: dict, name: str, src: str, n: int) -> str:
    v = row[name]
    if not isinstance(v, str) or not v:
        raise DataError(src, n, name, f"expected a model name, got {v!r}")
    return v


def _qid(row: dict, src: str, n: int) -> str:
    v = row["question_id"]
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise DataError(src, n, "question_id", f"expected an id, got {v!r}")
    return str(v)


def _turn(row: dict, src: str, n: int) -> int:
    v = row["turn"]
    if isinstance(v, bool) or v not in (1, 2):
        raise DataError(src, n, "turn", f"expected 1 or 2, got {v!r}")
    return int(v)


def read_single_judgments(source: str | Path) -> list[dict[str, Any]]:
    """The rows of a FastChat ``*_single.jsonl`` (fields checked: question_id, model, score, turn)."""
    out = []
    for src, n, row in iter_rows(source):
        if "model_1" in row and "model" not in row:
            raise DataError(src, n, "model", "a pairwise judgment row (model_1, model_2) in single mode: read it "
                            "with --mode pairwise-baseline or pairwise-all")
        _need(row, ("question_id", "model", "score", "turn"), src, n, "single")
        score = row["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            raise DataError(src, n, "score", f"expected a number (-1 for no grade), got {score!r}")
        out.append({**row, "question_id": _qid(row, src, n), "model": _name(row, "model", src, n),
                    "turn": _turn(row, src, n)})
    if not out:
        raise DataError(str(source), None, "score", "no judgments found")
    return out


def read_pair_judgments(source: str | Path) -> list[dict[str, Any]]:
    """The rows of a FastChat ``*_pair.jsonl`` (fields checked: question_id, model_1, model_2, g1/g2_winner)."""
    out = []
    for src, n, row in iter_rows(source):
        if "model" in row and "model_1" not in row:
            raise DataError(src, n, "model_1", "a single-grading judgment row (model, score) in pairwise mode: "
                            "read it with --mode single")
        _need(row, ("question_id", "model_1", "model_2", "g1_winner", "g2_winner"), src, n, "pairwise")
        for g in ("g1_winner", "g2_winner"):
            if row[g] not in WINNERS:
                raise DataError(src, n, g, f"expected one of {', '.join(WINNERS)}, got {row[g]!r}")
        out.append({**row, "question_id": _qid(row, src, n), "model_1": _name(row, "model_1", src, n),
                    "model_2": _name(row, "model_2", src, n)})
    if not out:
        raise DataError(str(source), None, "g1_winner", "no judgments found")
    return out


def _mean(v: list[float]) -> float | None:
    return sum(v) / len(v) if v else None


def summarise_single(rows: list[dict[str, Any]], categories: dict[str, str] | None = None,
                     models: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per model (in order of first appearance, or ``models``): ``score`` (mean over all graded rows),
    ``by_turn`` {"1", "2"}, ``by_category``, ``n_graded``, ``n_malformed`` (score -1) and ``n_repeated``
    (rows beyond the first for the same question, turn and judge prompt; they count, as in FastChat)."""
    out: dict[str, dict[str, Any]] = {}
    names = models if models is not None else list(dict.fromkeys(r["model"] for r in rows))
    for m in names:
        mine = [r for r in rows if r["model"] == m]
        ok = [r for r in mine if r["score"] != -1]
        by_turn, by_cat = defaultdict(list), defaultdict(list)
        for r in ok:
            by_turn[r["turn"]].append(r["score"])
            cat = r.get("category") or (categories or {}).get(str(r["question_id"]))
            if cat is not None:
                by_cat[cat].append(r["score"])
        keys = Counter((str(r["question_id"]), r["turn"], str(r.get("judge"))) for r in mine)
        order = list(dict.fromkeys((categories or {}).values())) + sorted(set(by_cat) - set((categories or {}).values()))
        out[m] = {"score": _mean([r["score"] for r in ok]), "n_graded": len(ok), "n_malformed": len(mine) - len(ok),
                  "n_repeated": sum(c - 1 for c in keys.values()),
                  "by_turn": {str(t): _mean(v) for t, v in sorted(by_turn.items())},
                  "by_category": {c: _mean(by_cat[c]) for c in order if c in by_cat}}
    return out


def outcome(row: dict[str, Any]) -> str | None:
    """A game pair's result for model_1 under FastChat's rule: ``win``, ``loss``, ``tie``, or None (an error)."""
    g1, g2 = row["g1_winner"], row["g2_winner"]
    if "error" in (g1, g2):
        return None
    if g1 == "tie" or g1 != g2:
        return "tie"
    return "win" if g1 == "model_1" else "loss"


def summarise_pairwise(rows: list[dict[str, Any]], baseline: str | None = None,
                       models: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per model: ``win``, ``loss``, ``tie``, ``n``, ``win_rate``, ``loss_rate``, ``win_rate_adjusted`` and
    ``n_error`` (game pairs left out), as ``show_result.py`` (``models`` filters on model_1, like its
    ``--model-list``; ``baseline`` keeps only games against it and drops its own row)."""
    tally: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        if models is not None and r["model_1"] not in models:
            continue
        if baseline is not None and baseline not in (r["model_1"], r["model_2"]):
            continue
        res = outcome(r)
        if res is None:
            for m in (r["model_1"], r["model_2"]):
                tally[m]["n_error"] += 1
            continue
        other = {"win": "loss", "loss": "win", "tie": "tie"}[res]
        tally[r["model_1"]][res] += 1
        tally[r["model_2"]][other] += 1
    out = {}
    for m, c in tally.items():
        if m == baseline:
            continue
        n = c["win"] + c["loss"] + c["tie"]
        out[m] = {"win": c["win"], "loss": c["loss"], "tie": c["tie"], "n": n, "n_error": c["n_error"],
                  "win_rate": c["win"] / n if n else None, "loss_rate": c["loss"] / n if n else None,
                  "win_rate_adjusted": (c["win"] + 0.5 * c["tie"]) / n if n else None}
    return dict(sorted(out.items(), key=lambda kv: -(kv[1]["win_rate_adjusted"] or 0)))


def format_single(summary: dict[str, dict[str, Any]]) -> str:
    """The three tables of ``show_result.py --mode single`` (each sorted by score), then palate's categories."""
    lines = []
    for title, key in (("First turn", "1"), ("Second turn", "2"), ("Average", None)):
        vals = [(m, s["by_turn"].get(key) if key else s["score"]) for m, s in summary.items()]
        vals = sorted([v for v in vals if v[1] is not None], key=lambda v: -v[1])
        if not vals:
            continue
        lines += [f"########## {title} ##########"] + [f"  {m:<40} {v:.6f}" for m, v in vals]
    for m, s in summary.items():
        extra = f"{s['n_malformed']} rows with score -1 left out"
        if s["n_repeated"]:
            extra += f", {s['n_repeated']} repeated judgments counted (as FastChat does)"
        lines.append(f"{m}: {extra}")
        if s["by_category"]:
            lines.append("  " + ", ".join(f"{c} {v:.2f}" for c, v in s["by_category"].items()))
    return "\n".join(lines)


def format_pairwise(summary: dict[str, dict[str, Any]]) -> str:
    lines = [(f"  {'model':<40} {'win':>4} {'loss':>4} {'tie':>4} {'win_rate':>9} {'loss_rate':>9} "
              f"{'win_rate_adjusted':>17}")]
    for m, s in summary.items():
        if s["n"]:
            lines.append(f"  {m:<40} {s['win']:>4} {s['loss']:>4} {s['tie']:>4} {s['win_rate']:>9.6f} "
                         f"{s['loss_rate']:>9.6f} {s['win_rate_adjusted']:>17.6f}")
    return "\n".join(lines)
