"""Reward-hacking monitor: warn (or stop) when the optimised reward stops meaning what it should.

Call :meth:`Monitor.update` once per step or evaluation from a PPO/GRPO/DPO loop with whichever signals
that loop has (online), or run :func:`monitor_metrics` over a finished run's ``metrics.jsonl`` (offline).
Every check looks at the last ``window`` values W of its signal:

    proxy_gold     the proxy reward (what is optimised) keeps rising while a held-out gold signal falls:
                   slope_LS(proxy over W) > 0  and  gold_now < max(gold so far) − gold_tolerance
                   and, where the proxy was also scored on the gold's held-out answers (``heldout_proxy``) at
                   the best-gold step and now, it did not fall with the gold:
                   Δheldout_proxy > Δgold + gold_tolerance  (Δ: now − at the best-gold step). A gold signal
                   that agrees with the proxy falls with it on the same answers and so never alerts; a drop
                   of both on a noisy held-out evaluation is noise, not hacking.
                   (slope_LS = Σ(t−t̄)(v−v̄)/Σ(t−t̄)², least squares over the window; robust to one noisy point)
    length         reward tracks length: within one step when ``reward`` and ``length`` are per-sample lists,
                   Pearson r(reward_i, length_i) > length_corr; across steps (scalar means), the Pearson r of
                   their step-to-step changes r(Δreward_t, Δlength_t) over the last W changes > length_corr
                   (differencing removes a shared trend: reward and length both drifting up is not enough,
                   reward must move when length moves)
    repetition     mean repeated word 3-gram fraction of the step > repetition
    ensemble       reward-model heads disagree (out of distribution): ensemble_std now >
                   ensemble_factor × mean of its first ``baseline_points`` values
    kl             KL to the reference > kl_budget

An :class:`Alert` is raised when a check becomes true and again only after it has cleared. With
``action="stop"`` alerts have severity "stop" and :attr:`Monitor.should_stop` turns true; the loop decides
what to do. :attr:`Monitor.best_gold_step` is the step with the best gold score, the checkpoint to keep.

Online, in a step loop (every signal optional; ``gold`` typically only at held-out evaluations)::

    mon = Monitor(MonitorConfig(window=10, kl_budget=20.0, action="stop"))
    for step in ...:
        for a in mon.update(step, proxy=m["reward"], reward=per_sample_rewards, length=per_sample_lengths,
                            kl=m["kl"], ensemble_std=m.get("ensemble_std"), gold=gold_or_none):
            log.warning("monitor: %s", a.message)
        if mon.should_stop:
            break
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from palate.config import ConfigError  # a ValueError: the CLI reports it as a config error
from palate.eval.stats import pearson

SIGNALS = ("proxy", "heldout_proxy", "gold", "length", "reward", "repetition", "ensemble_std", "kl")
# metrics.jsonl keys read by monitor_metrics (first present wins), per signal
DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "proxy": ("reward",), "heldout_proxy": ("eval_score", "eval_reward"), "gold": ("gold_reward", "eval_gold", "gold"),
    "length": ("response_length",), "reward": ("reward",), "repetition": ("repetition", "repeated_3gram"),
    "ensemble_std": ("ensemble_std",), "kl": ("kl",),
}


@dataclass(frozen=True)
class MonitorConfig:
    window: int = 5
    gold_tolerance: float = 0.05
    """absolute drop of gold below its best that counts as falling"""
    length_corr: float = 0.8
    repetition: float = 0.3
    ensemble_factor: float = 2.0
    baseline_points: int = 3
    kl_budget: float | None = None
    """nats per response; None: not checked"""
    action: str = "warn"
    """warn | stop"""

    def __post_init__(self):
        if self.action not in ("warn", "stop"):
            raise ConfigError(f"monitor.action must be warn or stop, got {self.action!r}")
        if self.window < 2:
            raise ConfigError(f"monitor.window must be >= 2, got {self.window}")


@dataclass(frozen=True)
class Alert:
    step: int
    check: str
    message: str
    severity: str
    """warning | stop"""

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "check": self.check, "message": self.message, "severity": self.severity}


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope Σ(x−x̄)(y−ȳ)/Σ(x−x̄)²; 0 for fewer than two distinct x."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    dx = x - x.mean()
    denom = float((dx * dx).sum())
    return float((dx * (y - y.mean())).sum() / denom) if denom > 0 else 0.0


def _scalar(v: Any) -> float:
    return float(np.mean(v)) if isinstance(v, (list, tuple, np.ndarray)) else float(v)


@dataclass
class Monitor:
    config: MonitorConfig = field(default_factory=MonitorConfig)

    def __post_init__(self):
        self.history: dict[str, list[tuple[int, float]]] = {s: [] for s in SIGNALS}
        self.alerts: list[Alert] = []
        self.best_gold: float | None = None
        self.best_gold_step: int | None = None
        self._active: set[str] = set()

    @property
    def should_stop(self) -> bool:
        return self.config.action == "stop" and bool(self.alerts)

    def update(self, step: int, **signals: Any) -> list[Alert]:
        """Record this step's signals (any subset of :data:`SIGNALS`; scalars or per-sample lists; None is
        skipped) and return the alerts raised now."""
        unknown = set(signals) - set(SIGNALS)
        if unknown:
            raise ValueError(f"unknown monitor signals {sorted(unknown)}; known: {', '.join(SIGNALS)}")
        given = {k: v for k, v in signals.items() if v is not None}
        for k, v in given.items():
            value = _scalar(v)
            if math.isfinite(value):
                self.history[k].append((step, value))
        if "gold" in given and math.isfinite(_scalar(given["gold"])):
            g = _scalar(given["gold"])
            if self.best_gold is None or g > self.best_gold:
                self.best_gold, self.best_gold_step = g, step
        found = {}
        for check, fn in (("proxy_gold", self._proxy_gold), ("length", self._length),
                          ("repetition", self._repetition), ("ensemble", self._ensemble), ("kl", self._kl)):
            message = fn(given)
            if message is not None:
                found[check] = message
            elif self._checked(check, given):
                self._active.discard(check)
        severity = "stop" if self.config.action == "stop" else "warning"
        new = [Alert(step, c, m, severity) for c, m in found.items() if c not in self._active]
        self._active.update(found)
        self.alerts.extend(new)
        return new

    @staticmethod
    def _checked(check: str, given: dict) -> bool:
        needs = {"proxy_gold": ("proxy", "gold"), "length": ("reward", "length"), "repetition": ("repetition",),
                 "ensemble": ("ensemble_std",), "kl": ("kl",)}[check]
        return any(n in given for n in needs)

    def _last(self, signal: str) -> list[tuple[int, float]]:
        return self.history[signal][-self.config.window:]

    def _proxy_gold(self, given: dict) -> str | None:
        if not ({"proxy", "gold"} & set(given)) or not self.history["gold"] or self.best_gold is None:
            return None
        proxy = self._last("proxy")
        if len(proxy) < self.config.window:
            return None
        rise = slope([s for s, _ in proxy], [v for _, v in proxy])
        gold_step, gold = self.history["gold"][-1]
        if rise > 0 and gold < self.best_gold - self.config.gold_tolerance and self._proxy_held(gold_step, gold):
            return (f"proxy reward rising ({rise:+.4g}/step over the last {len(proxy)} points) while the gold "
                    f"score fell to {gold:.4g} at step {gold_step} from its best {self.best_gold:.4g} at step "
                    f"{self.best_gold_step}: keep the checkpoint of step {self.best_gold_step}")
        return None

    def _proxy_held(self, gold_step: int, gold: float) -> bool:
        """False when the proxy scored on the gold's own held-out answers fell along with the gold since the
        best-gold step (the two agree); True when it held or rose, or when there is no such pair to compare."""
        held = dict(self.history["heldout_proxy"])
        if self.best_gold_step not in held or gold_step not in held:
            return True
        fall = gold - self.best_gold
        return held[gold_step] - held[self.best_gold_step] > fall + self.config.gold_tolerance

    def _length(self, given: dict) -> str | None:
        if "reward" not in given or "length" not in given:
            return None
        r, n = given["reward"], given["length"]
        if isinstance(r, (list, tuple, np.ndarray)) and isinstance(n, (list, tuple, np.ndarray)):
            corr, where = pearson(list(r), list(n)), f"across the {len(r)} samples of this step"
        else:
            w = self.config.window + 1
            rs, ls = dict(self.history["reward"][-w:]), dict(self.history["length"][-w:])
            both = sorted(set(rs) & set(ls))
            if len(both) < w:
                return None
            corr = pearson(np.diff([rs[s] for s in both]).tolist(), np.diff([ls[s] for s in both]).tolist())
            where = f"between step-to-step changes over the last {len(both)} steps"
        if math.isfinite(corr) and corr > self.config.length_corr:
            return f"reward follows response length: Pearson r = {corr:.3f} {where} (threshold {self.config.length_corr})"
        return None

    def _repetition(self, given: dict) -> str | None:
        if "repetition" not in given:
            return None
        v = _scalar(given["repetition"])
        if v > self.config.repetition:
            return f"repeated 3-gram fraction {v:.3f} above {self.config.repetition}: the policy loops"
        return None

    def _ensemble(self, given: dict) -> str | None:
        hist = self.history["ensemble_std"]
        k = self.config.baseline_points
        if "ensemble_std" not in given or len(hist) <= k:
            return None
        base = float(np.mean([v for _, v in hist[:k]]))
        now = hist[-1][1]
        if base > 0 and now > self.config.ensemble_factor * base:
            return (f"reward-model heads disagree {now / base:.1f}x more than at the start ({now:.4g} vs "
                    f"{base:.4g}): responses are drifting out of the reward model's distribution")
        return None

    def _kl(self, given: dict) -> str | None:
        budget = self.config.kl_budget
        if budget is None or "kl" not in given:
            return None
        v = _scalar(given["kl"])
        return f"KL to the reference {v:.4g} above the budget {budget:g}" if v > budget else None

    def summary(self) -> dict[str, Any]:
        return {"alerts": [a.as_dict() for a in self.alerts], "best_gold": self.best_gold,
                "best_gold_step": self.best_gold_step, "config": self.config.__dict__}


def read_metrics(path: str | Path, *, allow_partial_last: bool = False) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl``; a bad line is an error naming it, except (with ``allow_partial_last``)
    an unterminated last line, which a running run may be writing right now."""
    p = Path(path)
    text = p.read_text()
    lines = text.splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                if allow_partial_last and n == len(lines) and not text.endswith("\n"):
                    break
                raise ValueError(f"{p}, line {n}: not JSON ({e.msg})") from None
    return rows


def metric_value(row: dict[str, Any], signal: str, keys: dict[str, Sequence[str]] | None = None) -> float | None:
    """The value of ``signal`` in a metrics row: its first metric name (:data:`DEFAULT_KEYS`, or ``keys``) present
    with a number; None when none is."""
    return next((row[k] for k in (keys or DEFAULT_KEYS)[signal] if isinstance(row.get(k), (int, float))), None)


def monitor_metrics(metrics: str | Path | Iterable[dict[str, Any]], config: MonitorConfig | None = None,
                    keys: dict[str, Sequence[str]] | None = None) -> Monitor:
    """Replay a run's metrics (a ``metrics.jsonl`` path or its rows) through a :class:`Monitor`; ``keys``
    overrides :data:`DEFAULT_KEYS` (signal → metric names, first present wins)."""
    rows = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    names = {**DEFAULT_KEYS, **(keys or {})}
    mon = Monitor(config or MonitorConfig())
    for row in rows:
        signals = {signal: v for signal in names if (v := metric_value(row, signal, names)) is not None}
        if signals:
            mon.update(int(row.get("step", 0)), **signals)
    return mon


def present_signals(rows: Iterable[dict[str, Any]], keys: dict[str, Sequence[str]] | None = None) -> set[str]:
    """Signals of :data:`DEFAULT_KEYS` (or ``keys``) that appear in metrics rows."""
    names = {**DEFAULT_KEYS, **(keys or {})}
    found = set()
    for row in rows:
        found.update(s for s, cands in names.items() if any(isinstance(row.get(k), (int, float)) for k in cands))
    return found
