"""Verdicts and their parsing. Pure functions: text (or verdict-token probabilities) in, verdict out.

A judge's text answer must state its verdict in double brackets, as MT-Bench judges do: ``[[A]]``,
``[[B]]`` or ``[[C]]`` (tie) for a pair, ``[[7]]`` for a grade. Anything else — no bracketed verdict,
two different ones, a grade off the scale — is *malformed*: it is counted and reported, never guessed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

PAIRWISE = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
GRADE = re.compile(r"\[\[\s*([+-]?\d+(?:\.\d+)?)\s*(?:/\s*\d+\s*)?\]\]")


@dataclass(frozen=True)
class Verdict:
    """One pairwise judgment with the answers in the order the judge saw them.

    ``preference`` is ``"A"`` (first slot), ``"B"``, ``"tie"``, or ``None`` when the judge's output was
    malformed. ``p_a`` is the probability that A is better (1/0/0.5 for a parsed text verdict; the
    judge's own distribution for a local model); ``confidence`` is the probability of the stated
    preference, ``max(p_a, 1 − p_a)``. ``raw`` keeps the judge's output for inspection.
    """

    preference: str | None
    confidence: float | None
    rationale: str = ""
    p_a: float | None = None
    raw: str = ""

    @property
    def malformed(self) -> bool:
        return self.preference is None


@dataclass(frozen=True)
class Score:
    """A single-answer grade on ``scale``; ``score`` is ``None`` when the output was malformed.
    ``confidence`` is the probability mass of the most likely grade (1.0 for a parsed text grade)."""

    score: float | None
    confidence: float | None
    scale: tuple[int, int]
    rationale: str = ""
    raw: str = ""

    @property
    def malformed(self) -> bool:
        return self.score is None


def malformed(raw: str, why: str) -> Verdict:
    return Verdict(None, None, rationale=why, raw=raw)


def parse_pairwise(text: str) -> Verdict:
    """``[[A]]``/``[[B]]``/``[[C]]`` (or ``[[tie]]``) anywhere in ``text``; repeats of one verdict are fine,
    two different verdicts or none are malformed. The text before the verdict is the rationale."""
    found = PAIRWISE.findall(text or "")
    labels = {"a": "A", "b": "B", "c": "tie", "tie": "tie"}
    distinct = {labels[f.lower()] for f in found}
    if not distinct:
        return malformed(text, "no [[A]], [[B]] or [[C]] verdict in the judge's output")
    if len(distinct) > 1:
        return malformed(text, f"conflicting verdicts {sorted(distinct)} in the judge's output")
    pref = distinct.pop()
    p_a = {"A": 1.0, "B": 0.0, "tie": 0.5}[pref]
    rationale = text[: PAIRWISE.search(text).start()].strip()
    return Verdict(pref, 1.0, rationale=rationale, p_a=p_a, raw=text)


def parse_grade(text: str, scale: tuple[int, int] = (1, 10)) -> Score:
    """A grade ``[[n]]`` (also ``[[n/10]]``) within ``scale``; none, several different, or off-scale is malformed."""
    found = {float(g) for g in GRADE.findall(text or "")}
    lo, hi = scale
    if not found:
        return Score(None, None, scale, rationale="no [[grade]] in the judge's output", raw=text)
    if len(found) > 1:
        return Score(None, None, scale, rationale=f"conflicting grades {sorted(found)}", raw=text)
    g = found.pop()
    if not lo <= g <= hi:
        return Score(None, None, scale, rationale=f"grade {g:g} outside the scale {lo}-{hi}", raw=text)
    return Score(g, 1.0, scale, rationale=text[: GRADE.search(text).start()].strip(), raw=text)


def verdict_from_logits(logit_a: float, logit_b: float, mass: float | None = None, min_mass: float = 0.0) -> Verdict:
    """A local judge's verdict from the next-token logits of ``A`` and ``B``.

    ``p_a = softmax([logit_a, logit_b])[0] = 1 / (1 + exp(logit_b − logit_a))``: the judge's distribution
    restricted to the two verdict tokens. ``mass`` (their total probability in the full distribution)
    below ``min_mass`` means the model was not answering the question: malformed."""
    if mass is not None and mass < min_mass:
        return malformed("", f"verdict tokens hold {mass:.2e} of the next-token probability (< min_mass {min_mass:g})")
    p_a = 1.0 / (1.0 + math.exp(logit_b - logit_a))
    pref = "A" if p_a > 0.5 else "B" if p_a < 0.5 else "tie"
    return Verdict(pref, max(p_a, 1 - p_a), rationale="", p_a=p_a, raw=f"p(A)={p_a:.4f} mass={mass}")


def grade_from_probs(probs: dict[int, float], scale: tuple[int, int], mass: float | None = None,
                     min_mass: float = 0.0) -> Score:
    """Expected grade ``Σ g·p(g) / Σ p(g)`` over the grades of ``scale`` (the judge's distribution restricted to
    them); confidence is the renormalised probability of the most likely grade."""
    total = sum(probs.values())
    if total <= 0 or (mass is not None and mass < min_mass):
        return Score(None, None, scale, rationale=f"grade tokens hold {mass or total:.2e} of the probability")
    expected = sum(g * p for g, p in probs.items()) / total
    return Score(expected, max(probs.values()) / total, scale, raw=" ".join(f"{g}:{p / total:.3f}" for g, p in probs.items()))
