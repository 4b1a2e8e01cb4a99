"""Win rate of a policy A over a baseline B, raw and length-controlled, with bootstrap CIs.

A judgment per prompt is the probability that A's answer is preferred: ``"win"`` → 1, ``"tie"`` → ½,
``"loss"`` → 0, or a number in [0, 1] (a judge's probability, an average over position swaps or raters).

    raw win rate   W = (1/n) Σ_i p_i                         (ties count ½)

Length control (AlpacaEval 2, Dubois et al. 2024): judges favour longer answers, so a policy can "win" by
talking more. Fit a logistic regression of the preference on the length difference,

    P(A preferred | i) = σ(θ₀ + θ₁ · f(d_i)),   d_i = len(A_i) − len(B_i),
    f(d) = tanh(d / s) ("tanh", AlpacaEval's choice) or d / s ("plain"),  s = std(d) over the prompts

and report the predicted win rate at zero length difference, LC = σ(θ₀). A judge that only rewards length
gives LC ≈ ½ however long A talks; a policy better at equal length keeps LC ≈ W.

:func:`compare` (or :func:`compare_rows` over judged rows) gives both with CIs (and per group);
:func:`write_winrates` stores them as
``eval/winrates.json`` — the file ``palate report`` shows::

    {"version": 1, "baseline": "sft", "judge": "...", "results": [
       {"policy": "dpo", "n": 200, "wins": 120, "ties": 10, "losses": 70,
        "win_rate": 0.625, "ci": [0.56, 0.69], "lc_win_rate": 0.58, "lc_ci": [0.51, 0.65],
        "length_coef": 0.9, "mean_length_policy": 87.0, "mean_length_baseline": 64.2, "length_unit": "words",
        "by_group": {"coding": {"n": 50, "win_rate": ..., "ci": [...]}, ...}}]}
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from palate.eval.stats import bootstrap_ci

WINRATES = "winrates.json"
_LABELS = {"win": 1.0, "a": 1.0, "tie": 0.5, "draw": 0.5, "loss": 0.0, "lose": 0.0, "b": 0.0}


def preference_values(judgments: Sequence[Any]) -> np.ndarray:
    """Judgments as probabilities that A is preferred: win/tie/loss (or "A"/"B") → 1/½/0, numbers kept."""
    out = np.empty(len(judgments), dtype=float)
    for i, j in enumerate(judgments):
        if isinstance(j, str):
            key = j.strip().lower()
            if key not in _LABELS:
                raise ValueError(f"judgment {i}: {j!r} is not one of win/tie/loss (or A/B) nor a probability")
            out[i] = _LABELS[key]
        else:
            v = float(j)
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"judgment {i}: {v} is outside [0, 1]")
            out[i] = v
    return out


def win_rate(judgments: Sequence[Any], *, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """W = mean of p_i (ties ½) with its 95% percentile-bootstrap CI, and the win/tie/loss counts."""
    p = preference_values(judgments)
    if p.size == 0:
        raise ValueError("win_rate needs at least one judgment")
    w, low, high = bootstrap_ci(p, n_resamples=n_resamples, seed=seed)
    return {"n": int(p.size), "wins": int((p > 0.5).sum()), "ties": int((p == 0.5).sum()),
            "losses": int((p < 0.5).sum()), "win_rate": w, "ci": [low, high]}


def logistic_regression(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, max_iter: int = 100,
                        tol: float = 1e-10) -> np.ndarray:
    """Coefficients θ of P(y=1|x) = σ(θ·x) by Newton's method (IRLS) on the penalised log-likelihood

        L(θ) = Σ_i [y_i log σ(θ·x_i) + (1−y_i) log(1−σ(θ·x_i))] − (l2/2) Σ_{j≥1} θ_j²

    ``x`` is ``[n, d]`` with the intercept column first (not penalised); ``y`` may be soft labels in [0, 1].
    Each step solves (XᵀWX + Λ) Δ = Xᵀ(y − p) − Λθ with W = diag(p(1−p)), Λ = diag(0, l2, …, l2).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    theta = np.zeros(x.shape[1])
    lam = np.full(x.shape[1], l2)
    lam[0] = 0.0
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        grad = x.T @ (y - p) - lam * theta
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(lam) + 1e-12 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        theta = theta + step
        if float(np.max(np.abs(step))) < tol:
            break
    return theta


def _length_feature(len_a: np.ndarray, len_b: np.ndarray, transform: str, scale: float) -> np.ndarray:
    d = (len_a - len_b) / scale
    if transform == "tanh":
        return np.tanh(d)
    if transform == "plain":
        return d
    raise ValueError(f"length transform must be tanh or plain, got {transform!r}")


def _lc_fit(p: np.ndarray, feature: np.ndarray, l2: float) -> tuple[float, float]:
    theta = logistic_regression(np.column_stack([np.ones_like(feature), feature]), p, l2=l2)
    return 1.0 / (1.0 + math.exp(-theta[0])), float(theta[1])


def length_controlled_win_rate(judgments: Sequence[Any], len_a: Sequence[float], len_b: Sequence[float], *,
                               transform: str = "tanh", l2: float = 1e-3, n_resamples: int = 1000,
                               seed: int = 0) -> dict[str, Any]:
    """LC = σ(θ₀) of the fit P(A preferred) = σ(θ₀ + θ₁ f(len_A − len_B)), with a bootstrap CI (prompts
    resampled, the model refitted; the scale s = std(d) is fixed from the full set)."""
    p = preference_values(judgments)
    a, b = np.asarray(len_a, dtype=float), np.asarray(len_b, dtype=float)
    if not (p.size == a.size == b.size) or p.size == 0:
        raise ValueError(f"need equally many judgments and lengths, got {p.size}, {a.size} and {b.size}")
    scale = float(np.std(a - b)) or 1.0
    feature = _length_feature(a, b, transform, scale)
    lc, coef = _lc_fit(p, feature, l2)

    def stat(idx: np.ndarray) -> float:
        i = idx.astype(int)
        return _lc_fit(p[i], feature[i], l2)[0]

    _, low, high = bootstrap_ci(np.arange(p.size), statistic=stat, n_resamples=n_resamples, seed=seed)
    return {"lc_win_rate": lc, "lc_ci": [low, high], "length_coef": coef, "length_scale": scale,
            "transform": transform}


def compare(judgments: Sequence[Any], len_a: Sequence[float] | None = None, len_b: Sequence[float] | None = None,
            groups: Sequence[Hashable] | None = None, *, policy: str = "A", length_unit: str = "words",
            n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """One ``results`` entry of ``winrates.json``: raw win rate with CI, length-controlled win rate with CI
    when lengths are given, and the raw win rate per group when group labels are given."""
    out: dict[str, Any] = {"policy": policy, **win_rate(judgments, n_resamples=n_resamples, seed=seed)}
    if len_a is not None and len_b is not None:
        out.update(length_controlled_win_rate(judgments, len_a, len_b, n_resamples=n_resamples, seed=seed))
        out.update(mean_length_policy=float(np.mean(len_a)), mean_length_baseline=float(np.mean(len_b)),
                   length_unit=length_unit)
    if groups is not None:
        if len(groups) != len(judgments):
            raise ValueError(f"{len(judgments)} judgments but {len(groups)} group labels")
        by: dict[str, list] = {}
        for j, g in zip(judgments, groups):
            by.setdefault(str(g), []).append(j)
        out["by_group"] = {g: win_rate(by[g], n_resamples=n_resamples, seed=seed) for g in sorted(by)}
    return out


def compare_rows(rows: Sequence[dict[str, Any]], *, policy: str = "A", judgment_key: str = "judgment",
                 n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """:func:`compare` over judged rows ``{"judgment": win|tie|loss|p, "response_a": policy's answer,
    "response_b": baseline's answer, "group": optional}``; lengths are counted in words."""
    if not rows:
        raise ValueError("compare_rows needs at least one judged row")
    for n, r in enumerate(rows):
        missing = [k for k in (judgment_key, "response_a", "response_b") if k not in r]
        if missing:
            raise ValueError(f"row {n}: missing field(s) {', '.join(missing)}")
    groups = [r.get("group") for r in rows]
    return compare([r[judgment_key] for r in rows], [len(str(r["response_a"]).split()) for r in rows],
                   [len(str(r["response_b"]).split()) for r in rows],
                   [("none" if g is None else g) for g in groups] if any(g is not None for g in groups) else None,
                   policy=policy, n_resamples=n_resamples, seed=seed)


def write_winrates(path: str | Path, results: list[dict[str, Any]], *, baseline: str, judge: str | None = None) -> Path:
    """Write ``winrates.json`` (schema in the module docstring); ``path`` is the file or its directory."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / WINRATES
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "baseline": baseline, "judge": judge, "results": results}, indent=1))
    return path


def read_winrates(path: str | Path) -> dict[str, Any]:
    """Read and check ``winrates.json``: a clear error names the file and the missing field."""
    path = Path(path)
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError(f"{path}: expected an object with a 'results' list")
    for k, r in enumerate(data["results"]):
        for field in ("policy", "n", "win_rate", "ci"):
            if field not in r:
                raise ValueError(f"{path}: results[{k}] has no '{field}'")
    return data
