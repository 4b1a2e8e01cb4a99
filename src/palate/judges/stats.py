"""Bias and agreement figures for judges. Pure Python on lists of labels; every formula is stated.

(``palate.feedback.agreement`` covers agreement among human labelers; this module has no dependency on it.)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

from palate.judges.debias import PairJudgment, winner


def cohen_kappa(x: Sequence[Hashable], y: Sequence[Hashable]) -> float:
    """Cohen's κ = (p_o − p_e) / (1 − p_e): p_o the fraction of items where the two raters agree,
    p_e = Σ_k p_x(k)·p_y(k) the agreement expected by chance from each rater's label frequencies.
    ``nan`` when p_e = 1 (both raters used one and the same label throughout: κ is undefined)."""
    if len(x) != len(y):
        raise ValueError(f"cohen_kappa: {len(x)} labels vs {len(y)}")
    n = len(x)
    if n == 0:
        return math.nan
    p_o = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[k] * cy[k] for k in cx) / (n * n)
    return math.nan if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)


def _frac(hits: int, n: int) -> float | None:
    return hits / n if n else None


def position_bias(judgments: Sequence[PairJudgment]) -> dict:
    """Over every decisive single-order verdict (both orders of each pair, ties and malformed left out):
    ``first_slot_rate`` = fraction preferring the answer shown first (0.5 = no position bias)."""
    first = [winner(v.p_a) for j in judgments for v in (j.first, j.second) if v.p_a is not None]
    decisive = [w for w in first if w != "tie"]
    return {"first_slot_rate": _frac(sum(w == "a" for w in decisive), len(decisive)), "n": len(decisive)}


def inconsistency(judgments: Sequence[PairJudgment]) -> dict:
    """Pairs whose two orders named different winners, of the pairs judged in both orders."""
    judged = [j for j in judgments if j.consistent is not None]
    bad = sum(not j.consistent for j in judged)
    return {"inconsistent": bad, "n": len(judged), "rate": _frac(bad, len(judged))}


def length_bias(judgments: Sequence[PairJudgment], len_a: Sequence[int], len_b: Sequence[int]) -> dict:
    """Of the decisive combined verdicts on pairs of unequal length: fraction preferring the longer answer.
    Compare with the human rate on the same pairs before calling it a bias."""
    longer = [(j.preference == "a") == (la > lb) for j, la, lb in zip(judgments, len_a, len_b)
              if j.preference in ("a", "b") and la != lb]
    return {"longer_rate": _frac(sum(longer), len(longer)), "n": len(longer)}


def self_preference(judgments: Sequence[PairJudgment], own: Sequence[str | None]) -> dict:
    """``own[i]`` is ``"a"``/``"b"`` when that answer of pair i was written by the judge itself, else None.
    Rate = fraction of decisive verdicts on such pairs that prefer the judge's own answer."""
    hits = [j.preference == o for j, o in zip(judgments, own) if o in ("a", "b") and j.preference in ("a", "b")]
    return {"self_preference_rate": _frac(sum(hits), len(hits)), "n": len(hits)}


def agreement(judge_labels: Sequence[str | None], human_labels: Sequence[str]) -> dict:
    """Judge vs human on the same pairs (labels ``"a"``/``"b"``/``"tie"``; ``None`` = malformed, left out).

    ``accuracy`` = agreement on the pairs where both gave a decisive verdict; ``kappa`` = Cohen's κ over all
    judged pairs with ties as their own category; ``coverage`` = fraction of pairs with a decisive judge verdict."""
    pairs = [(j, h) for j, h in zip(judge_labels, human_labels) if j is not None]
    decisive = [(j, h) for j, h in pairs if j != "tie" and h != "tie"]
    return {
        "n": len(human_labels), "judged": len(pairs), "decisive": len(decisive),
        "accuracy": _frac(sum(j == h for j, h in decisive), len(decisive)),
        "kappa": cohen_kappa([j for j, _ in pairs], [h for _, h in pairs]) if pairs else math.nan,
        "coverage": _frac(len(decisive), len(human_labels)),
    }
