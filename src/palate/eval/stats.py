"""Small statistics for evaluation: bootstrap CIs, calibration, correlations, histograms.

Pure Python/numpy, deterministic for a seed. Every function states its formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np


def _weighted_mean(x: np.ndarray, w: np.ndarray | None) -> float:
    return float(np.average(x, weights=w)) if w is not None else float(np.mean(x))


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[..., float] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> tuple[float, float, float]:
    """Percentile bootstrap: ``(estimate, low, high)``.

    Resample the n values with replacement ``n_resamples`` times, compute the statistic on each, and take
    the (1−c)/2 and (1+c)/2 quantiles. The default statistic is the (weighted) mean.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    w = None if weights is None else np.asarray(weights, dtype=float)
    stat = statistic or (lambda v, ww=None: _weighted_mean(v, ww))
    point = float(stat(x, w)) if statistic is None else float(stat(x))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    if statistic is None:
        if w is None:
            boots = x[idx].mean(axis=1)
        else:
            ws = w[idx]
            boots = (x[idx] * ws).sum(axis=1) / np.maximum(ws.sum(axis=1), 1e-300)
    else:
        boots = np.array([statistic(x[i]) for i in idx])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return point, float(low), float(high)


def accuracy_ci(correct: Sequence[float], weights: Sequence[float] | None = None, *, n_resamples: int = 2000,
                confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """(Weighted) accuracy of 0/1 outcomes with its bootstrap CI: ``{accuracy, ci_low, ci_high, n}``."""
    point, low, high = bootstrap_ci(correct, n_resamples=n_resamples, confidence=confidence, seed=seed, weights=weights)
    return {"accuracy": point, "ci_low": low, "ci_high": high, "n": len(correct)}


def grouped_accuracy(correct: Sequence[float], groups: Sequence[Hashable], **kw: Any) -> dict[Any, dict[str, Any]]:
    """:func:`accuracy_ci` per group, keys sorted."""
    if len(correct) != len(groups):
        raise ValueError(f"{len(correct)} outcomes but {len(groups)} group labels")
    by: dict[Any, list[float]] = {}
    for c, g in zip(correct, groups):
        by.setdefault(g, []).append(float(c))
    return {g: accuracy_ci(by[g], **kw) for g in sorted(by, key=str)}


def calibration(probs: Sequence[float], outcomes: Sequence[float], n_bins: int = 10) -> dict[str, Any]:
    """Expected calibration error over equal-width bins of predicted probability:

        ECE = Σ_b (n_b / N) · |mean_prob_b − mean_outcome_b|,   Brier = mean((p − y)²)

    ``outcomes`` may be soft labels in [0, 1]. For a pairwise reward model: p = σ(r_a − r_b) and y = 1 when
    a was preferred (orient pairs at random so both halves of [0, 1] are used). Empty bins are listed
    with ``n = 0`` and ``None`` means.
    """
    p = np.asarray(probs, dtype=float)
    y = np.asarray(outcomes, dtype=float)
    if p.size == 0 or p.size != y.size:
        raise ValueError(f"calibration needs equally many probabilities and outcomes, got {p.size} and {y.size}")
    which = np.minimum((p * n_bins).astype(int), n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = which == b
        n = int(sel.sum())
        entry = {"low": b / n_bins, "high": (b + 1) / n_bins, "n": n, "mean_prob": None, "frequency": None}
        if n:
            entry["mean_prob"], entry["frequency"] = float(p[sel].mean()), float(y[sel].mean())
            ece += n / p.size * abs(entry["mean_prob"] - entry["frequency"])
        bins.append(entry)
    return {"ece": float(ece), "brier": float(np.mean((p - y) ** 2)), "n": int(p.size), "bins": bins}


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """r = Σ(x−x̄)(y−ȳ) / √(Σ(x−x̄)² Σ(y−ȳ)²); ``nan`` when either side is constant or there are < 2 points."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size != b.size:
        raise ValueError(f"pearson needs equal lengths, got {a.size} and {b.size}")
    if a.size < 2:
        return float("nan")
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((da * da).sum() * (db * db).sum()))
    return float((da * db).sum() / denom) if denom > 0 else float("nan")


def _ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the average of the ranks they span."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(v.size, dtype=float)
    sorted_v = v[order]
    i = 0
    while i < v.size:
        j = i
        while j + 1 < v.size and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson's r of the ranks (average ranks for ties); ``nan`` when a side is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size != b.size:
        raise ValueError(f"spearman needs equal lengths, got {a.size} and {b.size}")
    return pearson(_ranks(a), _ranks(b))


def histogram(values: Sequence[float], bins: int = 20, range: tuple[float, float] | None = None) -> dict[str, list]:  # noqa: A002
    """Counts over ``bins`` equal-width bins: ``{edges: [bins+1], counts: [bins]}``."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"edges": [], "counts": []}
    lo, hi = range if range is not None else (float(v.min()), float(v.max()))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return {"edges": edges.tolist(), "counts": counts.astype(int).tolist()}
