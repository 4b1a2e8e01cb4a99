"""Guardrails for ``palate serve``: a safety filter on the way in and out, and best-of-N with a reward model.

    input filter    P(unsafe) of the last user message (:func:`palate.eval.safety.load_safety_classifier`)
                    ≥ ``input_threshold`` → nothing is generated, the reply is the refusal message
    best-of-N       N answers are sampled together (one batch; greedy requests sample at
                    ``best_of_temperature``), the reward model scores them, the highest reward is served
    output filter   P(unsafe) of (question, answer) ≥ ``output_threshold`` → that answer is not served: the next
                    best candidate that passes is, and if none does, the refusal message
                    (``finish_reason: "content_filter"``)

Every blocked input, blocked output and best-of-N replacement (the served answer is not the first sample)
is counted (``GET /v1/guardrails``) and written as one JSON line to ``log_path`` with its reason. With an
output filter or best-of-N, a streamed reply arrives as one chunk once the answer is vetted (an answer
cannot be withdrawn after its first tokens are sent).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("palate.serve")
DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."


@dataclass(frozen=True)
class Choice:
    text: str
    index: int | None
    """the served candidate, None when every candidate was blocked"""
    blocked: bool
    rewards: list[float] | None = None
    unsafe_probs: list[float] | None = None


def last_user_text(messages: list[dict[str, str]]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else messages[-1]["content"]


class Guardrails:
    def __init__(self, classifier=None, *, input_threshold: float | None = None, output_threshold: float | None = None,
                 refusal: str = DEFAULT_REFUSAL, best_of: int = 1, reward_model=None,
                 best_of_temperature: float = 0.8, log_path: str | Path | None = None, classifier_name: str = "",
                 reward_model_name: str = ""):
        for name, t in (("input_threshold", input_threshold), ("output_threshold", output_threshold)):
            if t is not None and not 0.0 <= t <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {t}")
        if (input_threshold is not None or output_threshold is not None) and classifier is None:
            raise ValueError("a safety threshold needs a safety classifier (--safety-classifier)")
        if best_of < 1:
            raise ValueError(f"best_of must be >= 1, got {best_of}")
        if best_of > 1 and reward_model is None:
            raise ValueError("best-of-N needs a reward model (--reward-model DIR)")
        if reward_model is not None and best_of == 1:
            raise ValueError("a reward model is only used with --best-of N > 1")
        if not 0 < best_of_temperature <= 2:
            raise ValueError(f"best_of_temperature must be in (0, 2], got {best_of_temperature}")
        if not refusal.strip():
            raise ValueError("the refusal message must not be empty")
        self.classifier, self.rm = classifier, reward_model
        self.input_threshold, self.output_threshold = input_threshold, output_threshold
        self.refusal, self.best_of, self.best_of_temperature = refusal, best_of, best_of_temperature
        self.log_path = Path(log_path) if log_path else None
        self.names = {"safety_classifier": classifier_name or None, "reward_model": reward_model_name or None}
        self.counters = {"requests": 0, "input_blocked": 0, "output_blocked": 0, "best_of_replaced": 0,
                         "candidates_generated": 0, "candidates_unsafe": 0}
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.input_threshold is not None or self.output_threshold is not None or self.best_of > 1

    @property
    def vets_output(self) -> bool:
        """Whether the whole answer must exist before anything is sent."""
        return self.output_threshold is not None or self.best_of > 1

    def _count(self, key: str, by: int = 1) -> None:
        with self._lock:
            self.counters[key] += by

    def _log(self, request_id: str, stage: str, action: str, reason: str, **extra: Any) -> None:
        row = {"time": round(time.time(), 3), "request_id": request_id, "stage": stage, "action": action,
               "reason": reason, **extra}
        log.info("guardrail %s %s (%s): %s", stage, action, request_id, reason)
        if self.log_path:
            with self._lock:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def check_input(self, messages: list[dict[str, str]], request_id: str) -> float | None:
        """P(unsafe) of the last user message when it is blocked, else None (also None with no input filter)."""
        self._count("requests")
        if self.input_threshold is None:
            return None
        text = last_user_text(messages)
        p = float(self.classifier.unsafe_prob([text])[0])
        if p < self.input_threshold:
            return None
        self._count("input_blocked")
        self._log(request_id, "input", "blocked", f"P(unsafe) of the user message {p:.3f} >= {self.input_threshold}",
                  unsafe_prob=p, text=text[:500])
        return p

    def choose(self, messages: list[dict[str, str]], candidates: list[str], request_id: str) -> Choice:
        """The answer to serve from ``candidates`` (sampled in this order): highest reward first, skipping
        unsafe ones; the refusal when every candidate is unsafe."""
        from palate.eval.safety import safety_text

        self._count("candidates_generated", len(candidates))
        rewards = None
        order = list(range(len(candidates)))
        if self.rm is not None and len(candidates) > 1:
            rewards = [float(r) for r in self.rm.score([messages] * len(candidates), candidates).mean.tolist()]
            # stable: equal rewards keep the sampling order; NaN (a prompt the reward model skips) ranks last
            order.sort(key=lambda i: -rewards[i] if rewards[i] == rewards[i] else float("inf"))
        probs = None
        if self.output_threshold is not None:
            question = last_user_text(messages)
            probs = [float(p) for p in self.classifier.unsafe_prob([safety_text(question, c) for c in candidates])]
            self._count("candidates_unsafe", sum(p >= self.output_threshold for p in probs))
        picked = next((i for i in order if probs is None or probs[i] < self.output_threshold), None)
        if picked is None:
            self._count("output_blocked")
            self._log(request_id, "output", "blocked", f"all {len(candidates)} answer(s) have P(unsafe) >= "
                      f"{self.output_threshold} (lowest {min(probs):.3f})", unsafe_probs=probs, rewards=rewards,
                      text=candidates[order[0]][:500])
            return Choice(self.refusal, None, True, rewards, probs)
        if picked != 0:
            self._count("best_of_replaced")
            skipped = [i for i in order[: order.index(picked)]]
            why = (f"served candidate {picked + 1} of {len(candidates)}"
                   + (f" (reward {rewards[picked]:.3f} vs first sample {rewards[0]:.3f})" if rewards else ""))
            if skipped:
                why += f"; {len(skipped)} higher-reward candidate(s) blocked as unsafe"
            self._log(request_id, "best_of", "replaced", why, rewards=rewards, unsafe_probs=probs,
                      text=candidates[0][:500])
        return Choice(candidates[picked], picked, False, rewards, probs)

    def metrics(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
        return {"input_threshold": self.input_threshold, "output_threshold": self.output_threshold,
                "best_of": self.best_of, **self.names, "refusal": self.refusal,
                "log": str(self.log_path) if self.log_path else None, **counters}
