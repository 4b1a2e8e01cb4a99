"""AlpacaEval 2's length-controlled win rate, computed from its published annotations as AlpacaEval does.

Dubois, Galambosi, Liang & Hashimoto 2024, "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic
Evaluators" (arXiv:2404.04475); the method as shipped in tatsu-lab/alpaca_eval: ``metrics/glm_winrate.py``
(``GLM_INFO["length_controlled_v1"]``) and ``notebooks/instruction_difficulty.ipynb`` (the joint fit that made
the instruction difficulty). Written from those files' formulas; no AlpacaEval code is used or needed.

**Annotations** (``results/<model>/weighted_alpaca_eval_gpt4_turbo/annotations.json``): one row per instruction,
``output_1`` is the baseline's answer (``generator_1``, gpt4_1106_preview), ``output_2`` the model's
(``generator_2``); ``preference`` ∈ [1, 2] is 1 + P(output_2 preferred), so 1 = the baseline wins, 2 = the model
wins, and 0 (or 1.5) is a draw. :func:`read_annotations` turns it into p_i = preference − 1 (0 → ½), the
probability that the *model* wins; a row without a preference (null/NaN) is kept but not fitted, as AlpacaEval does.
An instruction is identified by its **row position** in the file (AlpacaEval's ``df.reset_index()["index"]``),
also in the few files that lack some rows.

**Raw win rate** W = 100 · mean_i p_i over rows with a preference.

**Length-controlled win rate** (``length_controlled_v1``). For the model's rows i,

    logit P(model wins on i) = θ_len · tanh(Δ_i / sd(Δ)) + θ_diff · d_i + θ_m · 1,    Δ_i = len(output_1) − len(output_2)

(characters; sd with ddof 1 over the model's rows; no intercept), where d_i is the instruction difficulty
(:func:`instruction_difficulty`). The fit adds the rows of the two *length-gamed baselines*
(gpt4_1106_preview prompted to be verbose / concise, each with its own sd) with the indicator 0 — the same
quality as the baseline, only the length differs — and row weight λ/2 (λ = 0.2) against weight 1 for the model's
rows; this pulls θ_len and θ_diff toward values under which length alone cannot win. The objective is
L1-penalised soft-label cross-entropy, C·Σ_r s_r·CE(p_r, σ(z_r)) + ‖θ‖₁, with C chosen among
logspace(−4, 4, 10) by 5-fold cross-validated weighted log loss (:func:`palate.eval.glm.cross_validated_logistic`).
The LC win rate is the prediction at equal length, averaged over the model's rows:

    LC = 100 · mean_i σ(θ_diff · d_i + θ_m),     its standard error = 100 · sem_i σ(θ_diff · d_i + θ_m).

The baseline against itself is 50 by definition. Without the gamed baselines' annotations the fit is AlpacaEval's
``length_controlled_noreg`` (same formula, no extra rows); the result says which (``glm``).

**Instruction difficulty** (the notebook's joint fit over every model of the leaderboard with annotations):

    logit P(m wins on i) = a_m · tanh(Δ_mi / sd_m(Δ)) + b_m + c_i + g · 1[m is not a gamed baseline]

one slope a_m and bias b_m per model, one effect c_i per instruction (treatment coding: c_0 = 0), L1 with C by the
same cross-validation, rows with an empty model answer dropped. d_i = c_i. AlpacaEval's leaderboard uses a
difficulty fitted this way in early 2024 on the models it had then and stored on the Hugging Face hub
(``instruction_difficulty.csv``, not in the repository); refitted on the repository's annotations it differs
(the notebook reports Spearman 0.953 between the two).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from palate.data.errors import DataError
from palate.data.readers import open_data
from palate.eval.glm import Design, Factor, cross_validated_logistic, sigmoid

BASELINE = "gpt4_1106_preview"
GAMED_BASELINES = ("gpt4_1106_preview_verbose", "gpt4_1106_preview_concise")
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
LEADERBOARD = "src/alpaca_eval/leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
LENGTH_UNITS = ("characters", "words", "tokens")


@dataclass(frozen=True)
class Annotations:
    """One model's pairwise judgments against one baseline, aligned by row. ``p``: P(model wins), NaN = none."""

    model: str
    baseline: str
    p: np.ndarray
    len_model: np.ndarray
    len_baseline: np.ndarray
    instructions: tuple[str, ...]
    model_answers: tuple[str, ...]
    baseline_answers: tuple[str, ...]
    unit: str = "characters"
    source: str = ""

    @property
    def n(self) -> int:
        return int(self.p.size)


def _open_text(path: Path) -> str:
    """A (possibly compressed) text file, decompressed as palate's data readers do (.gz, .bz2, .xz, .zst)."""
    with open_data(path) as f:
        return f.read().decode("utf-8")


def text_length(text: str, unit: str, tokenizer: Any = None) -> int:
    """Length of an answer: ``characters`` (Unicode code points, AlpacaEval's ``str.len()``), ``words``
    (whitespace-separated) or ``tokens`` (``len(tokenizer.encode(text, add_special_tokens=False))``)."""
    if unit == "characters":
        return len(text)
    if unit == "words":
        return len(text.split())
    if unit == "tokens":
        if tokenizer is None:
            raise ValueError("length unit 'tokens' needs a tokenizer")
        return len(tokenizer.encode(text, add_special_tokens=False))
    raise ValueError(f"length unit must be one of {', '.join(LENGTH_UNITS)}, got {unit!r}")


def alpaca_preference(value: Any, source: str, row: int, fieldname: str = "preference") -> float:
    """AlpacaEval's ``preference`` as P(output_2 wins): 1 → 0, 2 → 1, 0 or 1.5 → ½; null/NaN → NaN (no judgment).
    Anything else (text, booleans, ±inf, numbers outside {0} ∪ [1, 2]) is a :class:`DataError` naming row and field."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(source, row, fieldname, f"expected a number in [1, 2] (or 0 for a draw), got {value!r}")
    v = float(value)
    if math.isnan(v):
        return math.nan
    if math.isinf(v) or not (v == 0.0 or 1.0 <= v <= 2.0):
        raise DataError(source, row, fieldname, f"{v} is not in [1, 2] (1 = output_1 wins, 2 = output_2 wins, "
                        "0 = draw)")
    return 0.5 if v == 0.0 else v - 1.0


def annotations_from_rows(rows: Sequence[Any], source: str, *, unit: str = "characters", tokenizer: Any = None,
                          model: str | None = None) -> Annotations:
    """Check and convert AlpacaEval annotation rows (module docstring). Errors name the source, the 1-based row
    and the field: a missing/non-text output, a bad preference, or rows of more than one model or baseline."""
    if not isinstance(rows, list) or not rows:
        raise DataError(source, None, None, "expected a non-empty JSON list of annotation objects")
    ps, lm, lb, instr, ans_m, ans_b = [], [], [], [], [], []
    g1s, g2s = set(), set()
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(source, n, None, f"expected an object, got {type(row).__name__}")
        for f in ("output_1", "output_2", "preference"):
            if f not in row:
                raise DataError(source, n, f, "missing")
        texts = []
        for f in ("output_1", "output_2"):
            v = row[f]
            if v is None:
                v = ""
            if not isinstance(v, str):
                raise DataError(source, n, f, f"expected text, got {type(v).__name__}")
            texts.append(v)
        ps.append(alpaca_preference(row["preference"], source, n))
        lb.append(text_length(texts[0], unit, tokenizer))
        lm.append(text_length(texts[1], unit, tokenizer))
        ans_b.append(texts[0])
        ans_m.append(texts[1])
        instr.append(str(row.get("instruction", "")))
        g1s.add(row.get("generator_1"))
        g2s.add(row.get("generator_2"))
    if len(g1s) > 1 or len(g2s) > 1:
        which = "generator_1" if len(g1s) > 1 else "generator_2"
        raise DataError(source, None, which, f"one model and one baseline per file, found {sorted(map(str, g1s | g2s))}")
    baseline = str(g1s.pop() or "baseline")
    name = model or str(g2s.pop() or "model")
    return Annotations(name, baseline, np.array(ps, dtype=float), np.array(lm, dtype=float), np.array(lb, dtype=float),
                       tuple(instr), tuple(ans_m), tuple(ans_b), unit, source)


def read_annotations(path: str | Path, *, unit: str = "characters", tokenizer: Any = None,
                     model: str | None = None) -> Annotations:
    """Read an ``annotations.json`` (``.json``, ``.json.gz`` or ``.json.xz``). ``model`` overrides
    ``generator_2`` (some files name their model differently from their folder, e.g. NullModel's "example")."""
    path = Path(path)
    try:
        rows = json.loads(_open_text(path))
    except json.JSONDecodeError as e:
        raise DataError(str(path), None, None, f"not JSON: {e}") from None
    return annotations_from_rows(rows, str(path), unit=unit, tokenizer=tokenizer, model=model)


def raw_win_rate(ann: Annotations) -> float:
    """W = 100 · mean p_i over the rows with a preference (AlpacaEval's ``win_rate``)."""
    p = ann.p[~np.isnan(ann.p)]
    if p.size == 0:
        raise ValueError(f"{ann.source or ann.model}: no row has a preference")
    return float(p.mean() * 100)


def _std_ddof1(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(np.std(x, ddof=1)) if x.size > 1 else 0.0


def standardised_length_feature(ann: Annotations) -> np.ndarray:
    """tanh(Δ_i / sd(Δ)), Δ_i = len(baseline answer) − len(model answer); 0 everywhere when sd = 0."""
    delta = ann.len_baseline - ann.len_model
    sd = _std_ddof1(delta)
    return np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)


def is_gamed_baseline(model: str, baseline: str = BASELINE) -> bool:
    """The notebook's test: the baseline's name plus "verbose" or "concise"."""
    return baseline in model and ("verbose" in model or "concise" in model)


def instruction_difficulty(annotations: Sequence[Annotations], *, baseline: str = BASELINE) -> np.ndarray:
    """d_i per row position from the joint fit (module docstring) over ``annotations`` (one per model)."""
    if not annotations:
        raise ValueError("instruction_difficulty needs the annotations of at least one model")
    models, xs, ms, idx, ys, ng = [], [], [], [], [], []
    for k, ann in enumerate(annotations):
        keep = (ann.len_model != 0) & ~np.isnan(ann.p)
        delta = (ann.len_baseline - ann.len_model)[keep]
        sd = _std_ddof1(delta)
        xs.append(np.tanh(delta / sd) if sd > 0 else np.zeros(delta.size))
        ms.append(np.full(delta.size, k))
        idx.append(np.flatnonzero(keep))
        ys.append(ann.p[keep])
        ng.append(np.full(delta.size, 0.0 if is_gamed_baseline(ann.model, baseline) else 1.0))
        models.append(ann.model)
    m, x, i, y = (np.concatenate(v) for v in (ms, xs, idx, ys))
    n_instr = int(max(a.n for a in annotations))
    design = Design([Factor("slope", m, x, len(models)), Factor("bias", m, np.ones_like(x), len(models)),
                     Factor("instruction", np.maximum(i - 1, 0), (i > 0).astype(float), n_instr - 1),
                     Factor.dense("not_gamed_baseline", np.concatenate(ng))])
    w, _, _ = cross_validated_logistic(design, y)
    return np.concatenate([[0.0], design.split(w)["instruction"]])


def _gamed_rows(gamed: Sequence[Annotations], difficulty: np.ndarray) -> tuple[np.ndarray, ...]:
    xs, ds, ys = [], [], []
    for g in gamed:
        keep = ~np.isnan(g.p)
        xs.append(standardised_length_feature(g)[keep])
        ds.append(difficulty[np.flatnonzero(keep)])
        ys.append(g.p[keep])
    return np.concatenate(xs), np.concatenate(ds), np.concatenate(ys)


def length_controlled_winrate(ann: Annotations, difficulty: np.ndarray, *, gamed: Sequence[Annotations] = (),
                              regularize_to_baseline_lambda: float = 0.2) -> dict[str, Any]:
    """AlpacaEval 2's LC win rate of one model (module docstring). ``difficulty``: d per row position
    (:func:`instruction_difficulty`); ``gamed``: the annotations of the length-gamed baselines
    (``length_controlled_v1``), or none (``length_controlled_noreg``).

    Returns ``{"length_controlled_winrate", "lc_standard_error", "win_rate", "glm", "C", "weights":
    {"length": θ_len, "instruction_difficulty": θ_diff, "not_gamed_baseline": θ_m}}``, percentages 0–100."""
    difficulty = np.asarray(difficulty, dtype=float)
    if ann.n > difficulty.size:
        raise ValueError(f"{ann.source or ann.model}: {ann.n} rows but a difficulty for {difficulty.size} instructions")
    glm = "length_controlled_v1" if gamed else "length_controlled_noreg"
    out: dict[str, Any] = {"model": ann.model, "win_rate": raw_win_rate(ann), "glm": glm}
    d = difficulty[:ann.n]
    if ann.model == ann.baseline:
        return {**out, "length_controlled_winrate": 50.0, "lc_standard_error": 0.0, "C": None,
                "weights": {"length": 0.0, "instruction_difficulty": 0.0, "not_gamed_baseline": 0.0}}
    x = standardised_length_feature(ann)
    keep = ~np.isnan(ann.p)
    if not np.all(np.isfinite(x[keep])):
        raise ValueError(f"{ann.source or ann.model}: non-finite answer lengths")
    xs, ds, ys, ng = [x[keep]], [d[keep]], [ann.p[keep]], [np.ones(int(keep.sum()))]
    s = [np.ones(int(keep.sum()))]
    if gamed:
        gx, gd, gy = _gamed_rows(gamed, difficulty)
        xs.insert(0, gx), ds.insert(0, gd), ys.insert(0, gy), ng.insert(0, np.zeros(gx.size))
        s.insert(0, np.full(gx.size, regularize_to_baseline_lambda / 2))
    design = Design([Factor.dense("length", np.concatenate(xs)), Factor.dense("instruction_difficulty", np.concatenate(ds)),
                     Factor.dense("not_gamed_baseline", np.concatenate(ng))])
    w, C, _ = cross_validated_logistic(design, np.concatenate(ys), weights=np.concatenate(s))
    pred = sigmoid(w[1] * d + w[2])  # every row of the model, at equal length
    return {**out, "length_controlled_winrate": float(pred.mean() * 100),
            "lc_standard_error": float(np.std(pred, ddof=1) / math.sqrt(pred.size) * 100) if pred.size > 1 else 0.0,
            "C": C, "weights": {"length": float(w[0]), "instruction_difficulty": float(w[1]),
                                "not_gamed_baseline": float(w[2])}}


def read_leaderboard(path_or_text: str | Path) -> dict[str, dict[str, Any]]:
    """AlpacaEval's leaderboard CSV as ``{model: {column: float | str | None}}`` (numbers parsed, blanks None)."""
    text = str(path_or_text)
    if "\n" not in text:
        text = _open_text(Path(text))
    out: dict[str, dict[str, Any]] = {}
    for row in csv.DictReader(text.splitlines()):
        name = row.pop("") if "" in row else row.pop("name")
        vals: dict[str, Any] = {}
        for k, v in row.items():
            try:
                vals[k] = float(v) if v not in ("", None) else None
            except ValueError:
                vals[k] = v
        out[name] = vals
    return out


class Repository:
    """Files of an alpaca_eval repository: a checkout (a folder with ``results/``) or a bare git directory such
    as a mirror (read with ``git show HEAD:path``). Missing files (absent blobs included) read as ``None``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if (self.path / "results").is_dir():
            self.git = False
        elif (self.path / "HEAD").is_file() or (self.path / ".git").exists():
            self.git = True
            if (self.path / ".git").exists():
                self.path = self.path / ".git"
        else:
            raise FileNotFoundError(f"{path}: neither an alpaca_eval checkout (no results/) nor a git directory")

    def _git(self, *args: str) -> bytes | None:
        import subprocess

        r = subprocess.run(["git", "--git-dir", str(self.path), *args], capture_output=True)
        return r.stdout if r.returncode == 0 else None

    def read(self, rel: str) -> bytes | None:
        if not self.git:
            p = self.path / rel
            return p.read_bytes() if p.is_file() else None
        return self._git("show", f"HEAD:{rel}")

    def annotation_path(self, model: str, annotator: str = ANNOTATOR) -> str:
        return f"results/{model}/{annotator}/annotations.json"

    def annotations(self, model: str, *, annotator: str = ANNOTATOR, unit: str = "characters",
                    tokenizer: Any = None) -> Annotations | None:
        rel = self.annotation_path(model, annotator)
        raw = self.read(rel)
        if raw is None:
            return None
        try:
            rows = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(rel, None, None, f"not JSON: {e}") from None
        return annotations_from_rows(rows, rel, unit=unit, tokenizer=tokenizer, model=model)

    def leaderboard(self, rel: str = LEADERBOARD) -> dict[str, dict[str, Any]]:
        raw = self.read(rel)
        if raw is None:
            raise FileNotFoundError(f"{self.path}: no {rel}")
        return read_leaderboard(raw.decode("utf-8"))


def reproduce_leaderboard(repo: Repository, models: Sequence[str] | None = None, *, progress: Any = None) -> dict[str, Any]:
    """Every leaderboard model with annotations in ``repo``: the difficulty refitted jointly on all of them, then
    each model's raw and LC win rate (v1 when both gamed baselines' annotations are present, else noreg).
    ``models`` limits the per-model fits (the joint fit still uses every model). Returns
    ``{"difficulty", "glm", "models_in_fit", "missing", "results": [{model, leaderboard_*, win_rate, ...}]}``."""
    lb = repo.leaderboard()
    anns: dict[str, Annotations] = {}
    missing = []
    for m in lb:
        a = repo.annotations(m)
        if a is None:
            missing.append(m)
        else:
            anns[m] = a
    difficulty = instruction_difficulty(list(anns.values()))
    gamed = [anns[g] for g in GAMED_BASELINES if g in anns]
    gamed = gamed if len(gamed) == len(GAMED_BASELINES) else []
    results = []
    for m in (models or list(anns)):
        if m not in anns:
            continue
        res = length_controlled_winrate(anns[m], difficulty, gamed=gamed)
        res.update(leaderboard_win_rate=lb[m].get("win_rate"),
                   leaderboard_length_controlled_winrate=lb[m].get("length_controlled_winrate"))
        results.append(res)
        if progress:
            progress(res)
    return {"difficulty": difficulty.tolist(), "glm": "length_controlled_v1" if gamed else "length_controlled_noreg",
            "models_in_fit": list(anns), "missing": missing, "results": results}
