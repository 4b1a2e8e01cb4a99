"""Win rate of a policy A over a baseline B, raw and length-controlled, with bootstrap CIs.

A judgment per prompt is the probability that A's answer is preferred: ``"win"`` → 1, ``"tie"`` → ½,
``"loss"`` → 0, or a number in [0, 1] (a judge's probability, an average over position swaps or raters).

    raw win rate   W = (1/n) Σ_i p_i                         (ties count ½)

Length control (AlpacaEval 2, Dubois et al. 2024, arXiv:2404.04475): judges favour longer answers, so a policy
can "win" by talking more. The length-controlled win rate (LC) is the win rate a fitted logistic model predicts
at equal length. What palate computes:

* **Several policies against one baseline on the same prompts** (``palate eval``, ``palate winrate``):
  :func:`compare_policies` makes **one joint fit** (:func:`joint_length_control`)

      logit P(k wins on i) = α_k + u_i + (β + b_k) · f(d_ki),   d_ki = len(k's answer on i) − len(baseline's on i)
      f(d) = tanh(d / s) ("tanh", AlpacaEval's choice) or d / s ("plain"),   s = std(d) over all judgments

  with α_k the policy's quality at equal length, u_i a per-prompt difficulty shared by all policies (L2 1.0),
  β one length slope for the judge and b_k each policy's deviation from it (L2 4.0), and reports
  LC_k = mean over k's prompts of σ(α_k + u_i). One policy fitted alone extrapolates to equal length from its own
  lengths (a policy always longer than the baseline has no judgment near d = 0, and its quality and slope are
  confounded); pooled, the slope comes from every policy's length variation, so LC interpolates wherever the
  policies' lengths straddle the baseline's. When they all lie on one side of it, LC is still an extrapolation.
* **One policy** (:func:`compare`, :func:`length_controlled_win_rate`): the same model with one policy and no
  prompt effect, LC = σ(α).
* **AlpacaEval 2's own LC** for its published annotations: :mod:`palate.eval.alpaca_eval` (its GLM with
  instruction difficulty and the gamed-baseline regularisation, cross-validated L1).

A judge that only rewards length gives LC ≈ ½ however long A talks; a policy better at equal length keeps LC ≈ W.
Every LC carries a 95% bootstrap CI (prompts resampled, every policy's judgments of a drawn prompt together, the
model refitted) and, when it is extreme next to the raw rate by AlpacaEval's rule (:func:`is_extreme_change`),
a logged warning that is also stored as ``lc_warning``.

Bad input never becomes a number: a judgment that is None, NaN, ±inf, a boolean or unknown text, or a length that
is not a finite number, raises ``ValueError`` naming its row and field; :func:`write_winrates` refuses a NaN or
infinity anywhere (naming its place) instead of writing invalid JSON.

:func:`compare` (or :func:`compare_rows` over judged rows) and :func:`compare_policies` give ``results`` entries;
:func:`write_winrates` stores them as ``eval/winrates.json`` — the file ``palate report`` shows::

    {"version": 1, "baseline": "sft", "judge": "...", "results": [
       {"policy": "dpo", "n": 200, "wins": 120, "ties": 10, "losses": 70,
        "win_rate": 0.625, "ci": [0.56, 0.69], "lc_win_rate": 0.58, "lc_ci": [0.51, 0.65],
        "lc_method": "joint", "lc_policies": ["dpo", "ppo"], "length_coef": 0.9, "length_scale": 35.2,
        "transform": "tanh", "mean_length_policy": 87.0, "mean_length_baseline": 64.2, "length_unit": "words",
        "lc_warning": "... (only when extreme)",
        "by_group": {"coding": {"n": 50, "win_rate": ..., "ci": [...]}, ...}}]}
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from palate.eval.glm import Design, Factor, fit_logistic, sigmoid
from palate.eval.stats import bootstrap_ci

log = logging.getLogger("palate.eval")

WINRATES = "winrates.json"
_LABELS = {"win": 1.0, "a": 1.0, "tie": 0.5, "draw": 0.5, "loss": 0.0, "lose": 0.0, "b": 0.0}


def preference_values(judgments: Sequence[Any], *, field: str = "judgment",
                      rows: Sequence[Any] | None = None) -> np.ndarray:
    """Judgments as probabilities that A is preferred: win/tie/loss (or "A"/"B") → 1/½/0, numbers in [0, 1] kept.

    Anything else — ``None``, NaN, ±inf, booleans, other text, numbers outside [0, 1] — raises ``ValueError``
    naming the row (``rows[i]`` when given, else the 0-based position) and the field, so a bad judgment can
    never become a NaN in a fit or in ``winrates.json``."""
    out = np.empty(len(judgments), dtype=float)
    for i, j in enumerate(judgments):
        where = f"judgment {rows[i] if rows is not None else i} (field '{field}')"
        if isinstance(j, str):
            key = j.strip().lower()
            if key not in _LABELS:
                raise ValueError(f"{where}: {j!r} is not one of win/tie/loss (or A/B) nor a probability")
            out[i] = _LABELS[key]
            continue
        if j is None or isinstance(j, bool) or not isinstance(j, (int, float, np.integer, np.floating)):
            raise ValueError(f"{where}: {j!r} is not win/tie/loss (or A/B) nor a probability in [0, 1]")
        v = float(j)
        if not math.isfinite(v):
            raise ValueError(f"{where}: {v} is not a finite probability")
        if not (0.0 <= v <= 1.0):
            raise ValueError(f"{where}: {v} is outside [0, 1]")
        out[i] = v
    return out


def length_values(lengths: Sequence[Any], *, field: str, rows: Sequence[Any] | None = None) -> np.ndarray:
    """Answer lengths as floats; ``None``, NaN, ±inf or text raise ``ValueError`` naming row and field."""
    out = np.empty(len(lengths), dtype=float)
    for i, v in enumerate(lengths):
        where = f"row {rows[i] if rows is not None else i} (field '{field}')"
        if v is None or isinstance(v, (bool, str)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{where}: length {v!r} is not a number")
        x = float(v)
        if not math.isfinite(x):
            raise ValueError(f"{where}: length {x} is not a finite number")
        out[i] = x
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


def is_extreme_change(raw: float, lc: float, abs_diff: float = 0.10, rel_diff: float = 4.0) -> bool:
    """AlpacaEval's warning rule (``get_is_extreme_changes``), on rates in [0, 1]: LC is extreme when it is below
    min(W − W/4, W − 0.10) or above max(W + (1 − W)/4, W + 0.10). E.g. W = 0.5 warns outside [0.375, 0.625]."""
    too_small = lc < min(raw - raw / rel_diff, raw - abs_diff)
    too_large = lc > max(raw + (1 - raw) / rel_diff, raw + abs_diff)
    return bool(too_small or too_large)


def _extreme_warning(policy: str, raw: float, lc: float) -> str | None:
    if not is_extreme_change(raw, lc):
        return None
    msg = (f"{policy}: length-controlled win rate {lc:.1%} is far from the raw {raw:.1%} (AlpacaEval's extreme-change "
           "rule): either the judge's length preference is that large, or the length model does not fit — e.g. this "
           "policy's answer lengths barely overlap the baseline's, so LC extrapolates; read it with care")
    log.warning(msg)
    return msg


def joint_length_control(p: np.ndarray, policy: np.ndarray, prompt: np.ndarray, len_policy: np.ndarray,
                         len_baseline: np.ndarray, *, n_policies: int | None = None, transform: str = "tanh",
                         scale: float | None = None, prompt_l2: float = 1.0, slope_l2: float = 4.0,
                         l2: float = 1e-3) -> dict[str, Any]:
    """One fit for several policies judged against the same baseline on (mostly) the same prompts.

    Rows r are judgments (policy k_r on prompt i_r, P(policy preferred) p_r ∈ [0, 1]). The model:

        logit P(k wins on i) = α_k + u_i + (β + b_k) · f(d_ki),   d_ki = len(k's answer) − len(baseline's answer)
        f(d) = tanh(d / s) or d / s,   s = std of d over all rows (one scale, so one slope means the same for all)

    α_k: policy k's quality at equal length (unpenalised: L2 1e-8 keeps it finite for a clean sweep); u_i: prompt i's difficulty for every
    policy alike (L2 ``prompt_l2``, i.e. a N(0, 1/prompt_l2) prior — only when some prompt has judgments of two or
    more policies; with one row per prompt u would soak up the length effect); β: the judge's length slope,
    shared (L2 ``l2``); b_k: policy k's deviation from it (L2 ``slope_l2``, dropped with a single policy). The fit maximises
    the penalised soft-label log-likelihood (:func:`palate.eval.glm.fit_logistic`, Newton).

        LC_k = mean over the prompts k was judged on of σ(α_k + u_i)       (predicted win rate at equal length)

    Why joint: fitted alone, a policy whose answers are almost always longer than the baseline's has its
    equal-length point outside its data, and its slope and quality are confounded; pooled, the slope is
    learnt from every policy's length variation — longer and shorter than the baseline — and prompt difficulty
    is separated from length, so LC interpolates. With one policy this is AlpacaEval's GLM without the
    instruction-difficulty term (and with an L2 instead of its cross-validated L1).

    Returns ``{"lc": [K], "alpha": [K], "slope": [K] (β + b_k), "prompt_effect": [prompts], "scale": s,
    "transform", "prompt_effects": bool}``."""
    p = np.asarray(p, dtype=float)
    policy, prompt = np.asarray(policy, dtype=np.int64), np.asarray(prompt, dtype=np.int64)
    a, b = np.asarray(len_policy, dtype=float), np.asarray(len_baseline, dtype=float)
    n = p.size
    if n == 0 or not (policy.size == prompt.size == a.size == b.size == n):
        raise ValueError(f"need equally many (>0) judgments, policies, prompts and lengths, got "
                         f"{n}, {policy.size}, {prompt.size}, {a.size}, {b.size}")
    k = int(n_policies if n_policies is not None else policy.max() + 1)
    _, prompt = np.unique(prompt, return_inverse=True)
    n_prompts = int(prompt.max() + 1)
    d = a - b
    s = float(scale) if scale is not None else (float(np.std(d)) or 1.0)
    f = _length_feature(a, b, transform, s)
    factors = [Factor("alpha", policy, np.ones(n), k), Factor.dense("beta", f)]
    pens = [np.full(k, 1e-8), np.array([l2])]  # α: only enough to stay finite when a policy wins every judgment
    if k > 1:
        factors.append(Factor("b", policy, f, k))
        pens.append(np.full(k, slope_l2))
    use_prompts = bool(np.bincount(prompt).max() > 1)
    if use_prompts:
        factors.append(Factor("u", prompt, np.ones(n), n_prompts))
        pens.append(np.full(n_prompts, prompt_l2))
    design = Design(factors)
    w = design.split(fit_logistic(design, p, l2=np.concatenate(pens)))
    u = w["u"] if use_prompts else np.zeros(n_prompts)
    lc = np.full(k, np.nan)
    for j in range(k):
        prompts_j = np.unique(prompt[policy == j])
        if prompts_j.size:
            lc[j] = float(np.mean(sigmoid(w["alpha"][j] + u[prompts_j])))
    slope = w["beta"][0] + (w["b"] if k > 1 else np.zeros(k))
    return {"lc": lc, "alpha": w["alpha"], "slope": slope, "prompt_effect": u, "scale": s, "transform": transform,
            "prompt_effects": use_prompts}


def _joint_bootstrap(p, policy, prompt, len_a, len_b, k, scale, transform, n_resamples, seed, **kw) -> np.ndarray:
    """[n_resamples, K] LC values refitted on prompts resampled with replacement (all policies' rows of a drawn
    prompt go together; a prompt drawn twice counts as two prompts). ``scale`` stays that of the full set."""
    _, prompt = np.unique(prompt, return_inverse=True)
    by_prompt = [np.flatnonzero(prompt == i) for i in range(prompt.max() + 1)]
    rng = np.random.default_rng(seed)
    out = np.full((n_resamples, k), np.nan)
    for t in range(n_resamples):
        draw = rng.integers(0, len(by_prompt), len(by_prompt))
        rows = np.concatenate([by_prompt[i] for i in draw])
        new_prompt = np.repeat(np.arange(draw.size), [by_prompt[i].size for i in draw])
        out[t] = joint_length_control(p[rows], policy[rows], new_prompt, len_a[rows], len_b[rows], n_policies=k,
                                      transform=transform, scale=scale, **kw)["lc"]
    return out


def _ci(values: np.ndarray) -> list[float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return [math.nan, math.nan]
    low, high = np.quantile(v, [0.025, 0.975])
    return [float(low), float(high)]


def length_controlled_win_rate(judgments: Sequence[Any], len_a: Sequence[float], len_b: Sequence[float], *,
                               transform: str = "tanh", l2: float = 1e-3, n_resamples: int = 1000,
                               seed: int = 0) -> dict[str, Any]:
    """One policy: LC = σ(α) of P(A preferred) = σ(α + β f(len_A − len_B)) (:func:`joint_length_control` with one
    policy, no prompt effects), with a bootstrap CI (prompts resampled, refitted; s fixed from the full set).
    Prefer :func:`compare_policies` when several policies were judged on the same prompts."""
    p = preference_values(judgments)
    a, b = length_values(len_a, field="len_a"), length_values(len_b, field="len_b")
    if not (p.size == a.size == b.size) or p.size == 0:
        raise ValueError(f"need equally many judgments and lengths, got {p.size}, {a.size} and {b.size}")
    zeros, idx = np.zeros(p.size, dtype=np.int64), np.arange(p.size)
    fit = joint_length_control(p, zeros, idx, a, b, transform=transform, l2=l2)
    boots = _joint_bootstrap(p, zeros, idx, a, b, 1, fit["scale"], transform, n_resamples, seed, l2=l2)
    return {"lc_win_rate": float(fit["lc"][0]), "lc_ci": _ci(boots[:, 0]), "length_coef": float(fit["slope"][0]),
            "length_scale": fit["scale"], "transform": transform, "lc_method": "single"}


def _by_group(judgments: Sequence[Any], groups: Sequence[Hashable], n_resamples: int, seed: int) -> dict[str, Any]:
    if len(groups) != len(judgments):
        raise ValueError(f"{len(judgments)} judgments but {len(groups)} group labels")
    by: dict[str, list] = {}
    for j, g in zip(judgments, groups):
        by.setdefault(str(g), []).append(j)
    return {g: win_rate(by[g], n_resamples=n_resamples, seed=seed) for g in sorted(by)}


def compare(judgments: Sequence[Any], len_a: Sequence[float] | None = None, len_b: Sequence[float] | None = None,
            groups: Sequence[Hashable] | None = None, *, policy: str = "A", length_unit: str = "words",
            n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """One ``results`` entry of ``winrates.json`` for one policy: raw win rate with CI, the single-policy
    length-controlled win rate with CI when lengths are given (``lc_warning`` when it is extreme, see
    :func:`is_extreme_change`), and the raw win rate per group when group labels are given."""
    out: dict[str, Any] = {"policy": policy, **win_rate(judgments, n_resamples=n_resamples, seed=seed)}
    if len_a is not None and len_b is not None:
        out.update(length_controlled_win_rate(judgments, len_a, len_b, n_resamples=n_resamples, seed=seed))
        out.update(mean_length_policy=float(np.mean(len_a)), mean_length_baseline=float(np.mean(len_b)),
                   length_unit=length_unit)
        warning = _extreme_warning(policy, out["win_rate"], out["lc_win_rate"])
        if warning:
            out["lc_warning"] = warning
    if groups is not None:
        out["by_group"] = _by_group(judgments, groups, n_resamples, seed)
    return out


def compare_policies(judgments: Mapping[str, Sequence[Any]], len_policy: Mapping[str, Sequence[float]],
                     len_baseline: Sequence[float], *, prompt_index: Mapping[str, Sequence[int]] | None = None,
                     groups: Mapping[str, Sequence[Hashable]] | None = None, length_unit: str = "words",
                     n_resamples: int = 1000, seed: int = 0, **fit_kw: Any) -> list[dict[str, Any]]:
    """``results`` entries for several policies judged against one baseline on the same prompt set, with LC from
    one :func:`joint_length_control` fit over all of them (bootstrap CI: prompts resampled, every policy's
    judgments of a prompt together, refitted).

    ``judgments[k]``, ``len_policy[k]``: policy k's judgments and answer lengths; ``len_baseline[i]``: the baseline's
    answer length on prompt i; ``prompt_index[k]``: which prompt each of k's judgments is about (default 0..n−1:
    every prompt, in order) — so a policy with unusable verdicts simply has fewer rows. Each entry also has
    ``lc_method: "joint"``, ``lc_policies`` (the policies in the fit), ``length_coef`` (k's slope β + b_k),
    ``length_scale``, ``length_unit`` and ``lc_warning`` when LC is extreme (:func:`is_extreme_change`)."""
    names = list(judgments)
    if not names:
        raise ValueError("compare_policies needs at least one policy")
    base = length_values(len_baseline, field="len_baseline")
    ps, ks, prs, la, lb = [], [], [], [], []
    for k, name in enumerate(names):
        rows = list(prompt_index[name]) if prompt_index is not None else list(range(len(judgments[name])))
        p = preference_values(judgments[name], field=f"judgment of {name}", rows=rows)
        a = length_values(len_policy[name], field=f"length of {name}", rows=rows)
        if not (p.size == a.size == len(rows)):
            raise ValueError(f"{name}: {p.size} judgments, {a.size} lengths and {len(rows)} prompt indices")
        if p.size == 0:
            raise ValueError(f"{name}: no judgments")
        idx = np.asarray(rows, dtype=np.int64)
        if idx.min() < 0 or idx.max() >= base.size:
            raise ValueError(f"{name}: prompt index outside 0..{base.size - 1}")
        ps.append(p), ks.append(np.full(p.size, k)), prs.append(idx), la.append(a), lb.append(base[idx])
    p, pol, pr, a, b = (np.concatenate(v) for v in (ps, ks, prs, la, lb))
    fit = joint_length_control(p, pol, pr, a, b, n_policies=len(names), **fit_kw)
    boots = _joint_bootstrap(p, pol, pr, a, b, len(names), fit["scale"], fit["transform"], n_resamples, seed,
                             **{k: v for k, v in fit_kw.items() if k not in ("transform", "scale")})
    out = []
    for k, name in enumerate(names):
        res: dict[str, Any] = {"policy": name, **win_rate(judgments[name], n_resamples=n_resamples, seed=seed)}
        res.update(lc_win_rate=float(fit["lc"][k]), lc_ci=_ci(boots[:, k]), length_coef=float(fit["slope"][k]),
                   length_scale=fit["scale"], transform=fit["transform"], lc_method="joint", lc_policies=names,
                   mean_length_policy=float(np.mean(la[k])), mean_length_baseline=float(np.mean(lb[k])),
                   length_unit=length_unit)
        warning = _extreme_warning(name, res["win_rate"], res["lc_win_rate"])
        if warning:
            res["lc_warning"] = warning
        if groups is not None and name in groups:
            res["by_group"] = _by_group(judgments[name], groups[name], n_resamples, seed)
        out.append(res)
    return out


def compare_rows(rows: Sequence[dict[str, Any]], *, policy: str = "A", judgment_key: str = "judgment",
                 length_unit: str = "words", n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """:func:`compare` over judged rows ``{"judgment": win|tie|loss|p, "response_a": policy's answer,
    "response_b": baseline's answer, "group": optional}``; lengths in ``length_unit`` (words or characters)."""
    if not rows:
        raise ValueError("compare_rows needs at least one judged row")
    for n, r in enumerate(rows):
        missing = [k for k in (judgment_key, "response_a", "response_b") if k not in r]
        if missing:
            raise ValueError(f"row {n}: missing field(s) {', '.join(missing)}")
    groups = [r.get("group") for r in rows]
    count = _counter(length_unit)
    return compare([r[judgment_key] for r in rows], [count(str(r["response_a"])) for r in rows],
                   [count(str(r["response_b"])) for r in rows],
                   [("none" if g is None else g) for g in groups] if any(g is not None for g in groups) else None,
                   policy=policy, length_unit=length_unit, n_resamples=n_resamples, seed=seed)


def _counter(unit: str):
    if unit == "words":
        return lambda t: len(t.split())
    if unit == "characters":
        return len
    raise ValueError(f"compare_rows counts words or characters, got {unit!r} (tokens: count them yourself)")


def _non_finite(value: Any, path: str) -> str | None:
    """The JSON path of the first NaN/±inf in ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, np.floating) and not np.isfinite(value):
        return path
    if isinstance(value, dict):
        for key, v in value.items():
            found = _non_finite(v, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _non_finite(v, f"{path}[{i}]")
            if found:
                return found
    return None


def write_winrates(path: str | Path, results: list[dict[str, Any]], *, baseline: str, judge: str | None = None,
                   **extra: Any) -> Path:
    """Write ``winrates.json`` (schema in the module docstring); ``path`` is the file or its directory.
    ``extra`` adds top-level fields (e.g. ``source``, ``length_unit``). A NaN or infinity anywhere is refused
    with ``ValueError`` naming its place (``results[1].lc_ci[0]``) — JSON has no NaN and a reader would choke or
    be misled — and nothing is written."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / WINRATES
    doc = {"version": 1, "baseline": baseline, "judge": judge, **extra, "results": results}
    bad = _non_finite(doc, "winrates")
    if bad:
        raise ValueError(f"{path}: {bad} is not a finite number; winrates.json not written")
    text = json.dumps(doc, indent=1, allow_nan=False, default=_json_default)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


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
