"""The few records every reader produces and every recipe accepts.

A ``prompt`` is either plain text or a list of chat messages (``{"role": ..., "content": ...}``);
a response is plain text (the assistant's reply). ``meta`` carries provenance (source file and
line, labeler ids, groups, timestamps) so downstream analysis can group by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]


@dataclass(frozen=True)
class Demonstration:
    """A prompt and a good response to imitate (SFT)."""

    prompt: Prompt
    response: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Preference:
    """A pairwise judgment: ``chosen`` is preferred to ``rejected`` for ``prompt``.

    ``tie=True`` records that neither was preferred (the names then carry no order); recipes drop ties
    with a count or train on them with a tie-aware loss, never silently as a preference.
    """

    prompt: Prompt
    chosen: str
    rejected: str
    weight: float = 1.0
    margin: float | None = None
    tie: bool = False
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Ranking:
    """A K-way ranking. ``order`` lists indices into ``responses`` from best to worst."""

    prompt: Prompt
    responses: list[str]
    order: list[int]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if sorted(self.order) != list(range(len(self.responses))):
            raise ValueError(
                f"Ranking.order must be a permutation of 0..{len(self.responses) - 1}, got {self.order}"
            )


@dataclass(frozen=True)
class Rating:
    """A single response scored on a scale, e.g. Likert 1-7 or thumbs (0/1)."""

    prompt: Prompt
    response: str
    score: float
    scale: tuple[float, float] = (0.0, 1.0)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def ranking_pairs(ranking: Ranking) -> list[Preference]:
    """All K(K-1)/2 pairs implied by a ranking, each better-ranked response as ``chosen``."""
    best_first = [ranking.responses[i] for i in ranking.order]
    return [
        Preference(ranking.prompt, best_first[i], best_first[j], meta={**ranking.meta, "rank_pair": (i, j)})
        for i in range(len(best_first))
        for j in range(i + 1, len(best_first))
    ]


def prompt_messages(prompt: Prompt) -> list[Message]:
    """A prompt as chat messages: plain text becomes one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


def prompt_text(prompt: Prompt) -> str:
    """A readable one-string form of a prompt (for logs and reports, not for tokenisation)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
