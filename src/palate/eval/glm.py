"""Penalised logistic regression with soft labels on a *factor design*, and its cross-validated penalty.

Length-controlled win rates (:mod:`palate.eval.winrate`, :mod:`palate.eval.alpaca_eval`) fit

    minimise  F(w) = C · Σ_r s_r · CE(y_r, σ(z_r)) + Σ_j l1_j |w_j| + ½ Σ_j l2_j w_j²,     z = X w,
    CE(y, q) = −y log q − (1 − y) log(1 − q)

with soft labels y_r ∈ [0, 1] (a judge's probability), row weights s_r ≥ 0 and per-column L1/L2 penalties.
With ``l1 = 1`` and ``l2 = 0`` this is exactly the objective of scikit-learn's ``LogisticRegression(penalty="l1",
solver="liblinear", fit_intercept=False, C=C)`` fitted, as AlpacaEval does, on every row twice (label 1 with
weight s·y, label 0 with weight s·(1 − y)).

The design is a list of :class:`Factor` blocks. A factor's columns have disjoint row supports: column k holds
``value[r]`` on the rows with ``level[r] == k`` and 0 elsewhere (a per-prompt effect: level = prompt, value = 1;
a per-policy length slope: level = policy, value = f(Δlen); a dense column: one level). So X is never stored:
Xw, Xᵀr and XᵀDX are bincounts, and each factor's own block of XᵀDX is diagonal, which lets a Newton step
eliminate the largest factor by its Schur complement (a few hundred prompts cost nothing).

Solver: Newton's method with backtracking (Armijo) on F, where each |w| is smoothed to √(w² + ε²) and ε is
driven 1e-2 → 1e-8 (each stage warm-started): the result satisfies the L1 optimality conditions (|∂L/∂w_j| ≤ l1_j
at w_j = 0, ∂L/∂w_j = −l1_j sign w_j elsewhere) to ~1e-6, and coefficients below 1e-7 are set to exactly 0.
liblinear stops earlier (tol 1e-4), so its coefficients can differ from these in the 4th digit.
Pure-L2 problems are one smooth Newton solve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EPS_PATH = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
CS_ALPACA = tuple(np.logspace(-4, 4, 10))  # LogisticRegressionCV's default grid (Cs=10)


@dataclass(frozen=True)
class Factor:
    """Columns ``0..n-1``; row r has ``value[r]`` in column ``level[r]`` (and 0 in the others)."""

    name: str
    level: np.ndarray
    """int [rows]"""
    value: np.ndarray
    """float [rows]"""
    n: int

    @staticmethod
    def dense(name: str, value: np.ndarray) -> "Factor":
        value = np.asarray(value, dtype=float)
        return Factor(name, np.zeros(value.size, dtype=np.int64), value, 1)

    def take(self, rows: np.ndarray) -> "Factor":
        return Factor(self.name, self.level[rows], self.value[rows], self.n)


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) = 1 / (1 + e^−z), computed without overflow."""
    return np.exp(-np.logaddexp(0.0, -z))


def soft_cross_entropy(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """CE(y, σ(z)) = y·softplus(−z) + (1 − y)·softplus(z) per row (stable for any z)."""
    return y * _softplus(-z) + (1 - y) * _softplus(z)


class Design:
    """The factor blocks side by side; coefficients are one vector, split per factor by :meth:`split`."""

    def __init__(self, factors: Sequence[Factor]):
        self.factors = list(factors)
        rows = {f.level.size for f in self.factors}
        if len(rows) != 1:
            raise ValueError(f"factors have different numbers of rows: {sorted(rows)}")
        self.rows = rows.pop()
        self.offsets = np.cumsum([0] + [f.n for f in self.factors])
        self.k = int(self.offsets[-1])

    def split(self, w: np.ndarray) -> dict[str, np.ndarray]:
        return {f.name: w[self.offsets[j]:self.offsets[j + 1]] for j, f in enumerate(self.factors)}

    def take(self, rows: np.ndarray) -> "Design":
        return Design([f.take(rows) for f in self.factors])

    def matvec(self, w: np.ndarray) -> np.ndarray:
        z = np.zeros(self.rows)
        for j, f in enumerate(self.factors):
            z += w[self.offsets[j]:self.offsets[j + 1]][f.level] * f.value
        return z

    def rmatvec(self, r: np.ndarray) -> np.ndarray:
        return np.concatenate([np.bincount(f.level, r * f.value, minlength=f.n) for f in self.factors])

    def gram_block(self, i: int, j: int, d: np.ndarray) -> np.ndarray:
        """Block (i, j) of XᵀDX, D = diag(d)."""
        a, b = self.factors[i], self.factors[j]
        if i == j:
            return np.diag(np.bincount(a.level, d * a.value * a.value, minlength=a.n))
        code = a.level * b.n + b.level
        return np.bincount(code, d * a.value * b.value, minlength=a.n * b.n).reshape(a.n, b.n)


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a x = b; for an exactly collinear design (e.g. a per-model bias and a constant column over one model) the
    minimum-norm least-squares solution."""
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


def _newton_step(design: Design, d: np.ndarray, extra: np.ndarray, grad: np.ndarray, scale: float) -> np.ndarray:
    """Solve (scale·XᵀDX + diag(extra)) step = −grad, eliminating the largest factor by its Schur complement."""
    big = int(np.argmax([f.n for f in design.factors]))
    fb = design.factors[big]
    lo, hi = design.offsets[big], design.offsets[big + 1]
    if fb.n < 64 or len(design.factors) == 1:
        h = np.zeros((design.k, design.k))
        for i in range(len(design.factors)):
            for j in range(i, len(design.factors)):
                blk = scale * design.gram_block(i, j, d)
                h[design.offsets[i]:design.offsets[i + 1], design.offsets[j]:design.offsets[j + 1]] = blk
                if i != j:
                    h[design.offsets[j]:design.offsets[j + 1], design.offsets[i]:design.offsets[i + 1]] = blk.T
        h[np.diag_indices_from(h)] += extra + 1e-12
        return -_solve(h, grad)
    rest = [j for j in range(len(design.factors)) if j != big]
    idx = np.concatenate([np.arange(design.offsets[j], design.offsets[j + 1]) for j in rest])
    lam = scale * np.bincount(fb.level, d * fb.value * fb.value, minlength=fb.n) + extra[lo:hi] + 1e-12
    p = np.zeros((idx.size, idx.size))
    q = np.zeros((idx.size, fb.n))
    pos = np.cumsum([0] + [design.factors[j].n for j in rest])
    for a, i in enumerate(rest):
        q[pos[a]:pos[a + 1]] = scale * design.gram_block(i, big, d)
        for b, j in enumerate(rest[a:], start=a):
            blk = scale * design.gram_block(i, j, d)
            p[pos[a]:pos[a + 1], pos[b]:pos[b + 1]] = blk
            if b != a:
                p[pos[b]:pos[b + 1], pos[a]:pos[a + 1]] = blk.T
    p[np.diag_indices_from(p)] += extra[idx] + 1e-12
    g1, g2 = grad[idx], grad[lo:hi]
    x1 = _solve(p - (q / lam) @ q.T, -(g1 - q @ (g2 / lam)))
    x2 = -(g2 + q.T @ x1) / lam
    step = np.empty(design.k)
    step[idx], step[lo:hi] = x1, x2
    return step


def fit_logistic(design: Design, y: np.ndarray, *, C: float = 1.0, weights: np.ndarray | None = None,
                 l1: float | np.ndarray = 0.0, l2: float | np.ndarray = 0.0, w0: np.ndarray | None = None,
                 max_newton: int = 100) -> np.ndarray:
    """The minimiser w of F (module docstring). ``l1``/``l2``: one number or one per column (0 = unpenalised).

    Raises ``ValueError`` on non-finite labels, weights or design values (which would silently give NaN)."""
    y = np.asarray(y, dtype=float)
    s = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    if y.size != design.rows or s.size != design.rows:
        raise ValueError(f"{design.rows} design rows but {y.size} labels and {s.size} weights")
    if not (np.all(np.isfinite(y)) and np.all((y >= 0) & (y <= 1))):
        raise ValueError("labels must be finite probabilities in [0, 1]")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("row weights must be finite and >= 0")
    if not all(np.all(np.isfinite(f.value)) for f in design.factors):
        raise ValueError("design values must be finite")
    l1v = np.broadcast_to(np.asarray(l1, dtype=float), (design.k,)).copy()
    l2v = np.broadcast_to(np.asarray(l2, dtype=float), (design.k,)).copy()
    w = np.zeros(design.k) if w0 is None else np.array(w0, dtype=float)
    smooth = l1v.any()
    for eps in (EPS_PATH if smooth else (0.0,)):
        def objective(v: np.ndarray) -> float:
            return float(C * np.sum(s * soft_cross_entropy(y, design.matvec(v)))
                         + np.sum(l1v * np.sqrt(v * v + eps * eps)) + 0.5 * np.sum(l2v * v * v))

        f = objective(w)
        for _ in range(max_newton):
            q = sigmoid(design.matvec(w))
            root = np.sqrt(w * w + eps * eps) if smooth else np.ones_like(w)
            grad = C * design.rmatvec(s * (q - y)) + l1v * w / root + l2v * w
            extra = l2v + (l1v * eps * eps / root ** 3 if smooth else 0.0)
            step = _newton_step(design, s * q * (1 - q), extra, grad, C)
            decrement = float(grad @ step)  # < 0
            if -decrement < 1e-13 * (1.0 + abs(f)):
                break
            t = 1.0
            while True:
                fn = objective(w + t * step)
                if fn <= f + 1e-4 * t * decrement or t < 1e-10:
                    break
                t *= 0.5
            if fn > f:  # no decrease possible at this precision
                break
            w, f = w + t * step, fn
            if float(np.max(np.abs(t * step), initial=0.0)) < 1e-11:
                break
    if smooth:
        w[(l1v > 0) & (np.abs(w) < 1e-7)] = 0.0
    return w


def interleaved_folds(n: int, k: int = 5) -> np.ndarray:
    """Fold of each of n rows: ``(n − 1 − r) mod k`` — what scikit-learn's GroupKFold gives when every group
    has the same size (groups are dealt to folds in reverse order, round robin)."""
    return (n - 1 - np.arange(n)) % k


def cross_validated_logistic(design: Design, y: np.ndarray, *, weights: np.ndarray | None = None,
                             Cs: Sequence[float] = CS_ALPACA, n_splits: int = 5, l1: float | np.ndarray = 1.0,
                             l2: float | np.ndarray = 0.0) -> tuple[np.ndarray, float, np.ndarray]:
    """AlpacaEval's ``fit_LogisticRegressionCV``: for each C in ``Cs`` fit on k−1 folds (:func:`interleaved_folds`)
    and score the held-out fold by −mean_r s_r·CE(y_r, σ(z_r)); pick the C with the highest score summed over
    folds (the first on ties) and refit on all rows. Returns ``(w, C, scores per C)``."""
    y = np.asarray(y, dtype=float)
    s = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    folds = interleaved_folds(design.rows, n_splits)
    scores = np.zeros(len(Cs))
    for f in range(n_splits):
        train, test = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        d_train, d_test = design.take(train), design.take(test)
        w = None
        for c, C in enumerate(Cs):
            w = fit_logistic(d_train, y[train], C=C, weights=s[train], l1=l1, l2=l2, w0=w)
            z = d_test.matvec(w)
            scores[c] -= float(np.mean(s[test] * soft_cross_entropy(y[test], z)))
    best = int(np.argmax(scores))
    return fit_logistic(design, y, C=Cs[best], weights=s, l1=l1, l2=l2), float(Cs[best]), scores
