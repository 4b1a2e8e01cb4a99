"""Position-swap debiasing: every pair is judged in both orders and the two verdicts combined.

Pure functions. For a pair (a, b) the judge gives ``first`` on (A=a, B=b) and ``second`` on (A=b, B=a).
In the frame of the original pair,

    p1 = first.p_a            (probability a is better, order ab)
    p2 = 1 − second.p_a       (probability a is better, order ba)
    p  = (p1 + p2) / 2

The two orders are *consistent* when they name the same winner (or both a tie). Then the pair gets the
winner of ``p`` and weight ``|2p − 1|`` (0 = coin flip, 1 = certain in both orders). Inconsistent
verdicts — the judge followed the slot, not the answer — become a tie (``mode="tie"``) or keep the
winner of ``p`` with its (necessarily low) weight ``|2p − 1|`` (``mode="weight"``). A malformed verdict
in either order leaves the pair unjudged (counted, never guessed).
"""

from __future__ import annotations

from dataclasses import dataclass

from palate.judges.verdicts import Verdict


@dataclass(frozen=True)
class PairJudgment:
    """The combined judgment of a pair in its original order: ``preference`` is ``"a"``, ``"b"``, ``"tie"``
    or ``None`` (malformed); ``p_a`` the order-averaged probability that a is better."""

    preference: str | None
    p_a: float | None
    weight: float
    consistent: bool | None
    first: Verdict
    second: Verdict

    @property
    def malformed(self) -> bool:
        return self.preference is None


def winner(p_a: float, eps: float = 1e-9) -> str:
    return "a" if p_a > 0.5 + eps else "b" if p_a < 0.5 - eps else "tie"


def combine(first: Verdict, second: Verdict, mode: str = "tie") -> PairJudgment:
    """Combine the verdicts of order ab (``first``) and order ba (``second``); see the module docstring."""
    if mode not in ("tie", "weight"):
        raise ValueError(f"mode must be 'tie' or 'weight', got {mode!r}")
    if first.p_a is None or second.p_a is None:
        return PairJudgment(None, None, 0.0, None, first, second)
    p1, p2 = first.p_a, 1.0 - second.p_a
    p = (p1 + p2) / 2
    consistent = winner(p1) == winner(p2)
    if not consistent and mode == "tie":
        return PairJudgment("tie", p, 0.0, False, first, second)
    pref = winner(p)
    return PairJudgment(pref, p, 0.0 if pref == "tie" else abs(2 * p - 1), consistent, first, second)
