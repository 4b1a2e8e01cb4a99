"""What an online-RL run shows at its end: did held-out reward improve over the starting policy, and at
what KL cost (the reward/KL trade-off)?

Every held-out evaluation of a PPO/GRPO run appends one row per prompt to ``eval_samples.jsonl``
(step, prompt index, response, reward, KL to the reference). :func:`rl_report` reads it with
``metrics.jsonl`` and writes ``report/rl_report.json`` and three SVG charts:

    reward_kl.svg   held-out reward against KL to the reference, one point per evaluation (the frontier)
    reward.svg      training and held-out reward per step
    kl.svg          KL (k1 and k3) per step

The improvement is paired per prompt: Δ_i = r̄_i(last evaluation) − r̄_i(first, before training), r̄_i the
mean reward of the prompt's answers (``prompts.eval_samples`` of them), with a 95% bootstrap CI of the mean
over prompts and the fraction of prompts whose reward rose (ties count ½).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palate.config import ConfigError
from palate.data.records import prompt_text
from palate.eval.plots import line_svg
from palate.eval.stats import bootstrap_ci

EVAL_SAMPLES = "eval_samples.jsonl"


@dataclass(frozen=True)
class RLEvalConfig:
    """``palate rl-eval``'s config."""

    run: str | None = None
    """a finished palate ppo or grpo run directory"""
    samples: int = 8
    """answers per held-out prompt, for each of the two policies"""
    policy: str | None = None
    """trained policy to compare with the start (None: RUN/final)"""
    max_new_tokens: int | None = None
    """override the run's rollout.max_new_tokens"""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""

    def __post_init__(self):
        if self.samples < 1:
            raise ConfigError(f"samples must be >= 1, got {self.samples}")


def write_eval_samples(run_path: Path, step: int, prompts: list[str], responses: list[str],
                       rewards: list[float], kls: list[float] | None, samples: int = 1,
                       scores: list[float] | None = None, truncated: list[bool] | None = None) -> None:
    """Append one held-out evaluation to ``eval_samples.jsonl``: a row per answer, ``samples`` answers per
    prompt (answer ``b`` is sample ``j = b % samples`` of prompt ``i = b // samples``). ``reward`` is what
    the policy maximises; ``score`` (when given) the reward model's or function's score alone, before the
    length / repetition / missing-EOS penalties, and ``truncated`` whether the answer hit the token limit."""
    if len(responses) != len(prompts) * samples:
        raise ValueError(f"{len(responses)} held-out answers for {len(prompts)} prompts x {samples} samples")
    for name, values in (("rewards", rewards), ("kls", kls), ("scores", scores), ("truncated", truncated)):
        if values is not None and len(values) != len(responses):
            raise ValueError(f"{len(values)} {name} for {len(responses)} held-out answers")
    with open(Path(run_path) / EVAL_SAMPLES, "a", encoding="utf-8") as f:
        for b, (r, rw) in enumerate(zip(responses, rewards)):
            i, j = divmod(b, samples)
            row = {"step": step, "i": i, "j": j, "prompt": prompts[i], "response": r, "reward": rw}
            if scores is not None:
                row["score"] = scores[b]
            if truncated is not None:
                row["truncated"] = bool(truncated[b])
            if kls is not None:
                row["kl"] = kls[b]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def record_eval(where: Path, step: int, exp) -> None:
    """Every held-out answer of one evaluation (``exp``: a :class:`palate.rollout.experience.Experience`)
    with its reward, score, KL and truncation, appended to ``where/eval_samples.jsonl``: the paired
    before/after comparison and the reward/KL trade-off of :func:`rl_report` read them."""
    kl = exp.kl_tokens("k1")
    write_eval_samples(where, step, [prompt_text(p) for p in exp.prompts], exp.rollout.texts,
                       exp.rewards.total.tolist(), kl.sum(-1).tolist() if kl is not None else None,
                       samples=exp.rollout.n, scores=exp.rewards.score.tolist(),
                       truncated=(~exp.rollout.finished).tolist())


def read_eval_samples(run_path: Path, up_to_step: int | None = None) -> dict[int, dict[int, dict]]:
    """``{step: {prompt index: row}}``: the row of the prompt's first answer, with ``rewards`` (and ``kls``,
    ``scores`` where recorded) of all its answers; a row rewritten by a resumed run replaces the earlier one.
    Files written before several samples per prompt existed (no ``j``) read as one sample each."""
    path = Path(run_path) / EVAL_SAMPLES
    answers: dict[int, dict[int, dict[int, dict]]] = {}
    if not path.exists():
        return {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if up_to_step is None or row["step"] <= up_to_step:
                answers.setdefault(row["step"], {}).setdefault(row["i"], {})[row.get("j", 0)] = row
    out: dict[int, dict[int, dict]] = {}
    for step, prompts in answers.items():
        for i, by_j in prompts.items():
            rows = [by_j[j] for j in sorted(by_j)]
            first = dict(rows[0])
            first["rewards"] = [r["reward"] for r in rows]
            for key, many in (("kl", "kls"), ("score", "scores")):
                if all(key in r for r in rows):
                    first[many] = [r[key] for r in rows]
            out.setdefault(step, {})[i] = first
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def paired_improvement(before: list[float], after: list[float], seed: int = 0) -> dict[str, Any]:
    """Mean per-prompt reward change ``after − before`` with its 95% bootstrap CI, and the fraction of
    prompts that improved (a tie counts ½) with its CI."""
    if len(before) != len(after) or not before:
        raise ValueError(f"paired_improvement needs two equal, non-empty lists (got {len(before)} and {len(after)})")
    delta = [a - b for a, b in zip(after, before)]
    mean, low, high = bootstrap_ci(delta, seed=seed)
    wins = [1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in delta]
    rate, rlow, rhigh = bootstrap_ci(wins, seed=seed)
    return {"n": len(delta), "before": sum(before) / len(before), "after": sum(after) / len(after),
            "delta": mean, "delta_ci": [low, high], "improved_fraction": rate, "improved_ci": [rlow, rhigh]}


def compare_evaluations(before: dict[int, dict], after: dict[int, dict]) -> dict[str, Any]:
    """:func:`paired_improvement` of two evaluations (``{prompt index: row}`` from :func:`read_eval_samples`)
    over the prompts both answered, by per-prompt mean reward; with ``score``: the same for the reward
    model's (or function's) score alone when both recorded it, so a gain that only comes from avoiding a
    penalty (answers that now stop before the token limit) shows as such."""
    common = sorted(set(before) & set(after))
    if not common:
        raise ValueError("the two evaluations share no held-out prompt")
    def paired(key: str) -> dict[str, Any]:
        return paired_improvement([_mean(before[i][key]) for i in common], [_mean(after[i][key]) for i in common])

    out = paired("rewards")
    out["samples_per_prompt"] = min(len(ev[i]["rewards"]) for ev in (before, after) for i in common)
    if all("scores" in ev[i] for ev in (before, after) for i in common):
        out["score"] = paired("scores")
    return out


def _series(metrics: list[dict], key: str) -> list[tuple[float, float]]:
    return [(m["step"], float(m[key])) for m in metrics if key in m and isinstance(m[key], (int, float))]


def rl_report(run_path: str | Path) -> dict[str, Any]:
    """Summarise an RL run dir into ``report/rl_report.json`` + SVG charts; returns the summary."""
    run_path = Path(run_path)
    metrics = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last_step = max((m["step"] for m in metrics), default=0)
    evals = read_eval_samples(run_path, up_to_step=last_step)
    out_dir = run_path / "report"
    out_dir.mkdir(exist_ok=True)
    summary: dict[str, Any] = {"steps": last_step}
    curve = []
    for step in sorted(evals):
        rows = list(evals[step].values())
        point = {"step": step, "reward": _mean([_mean(r["rewards"]) for r in rows]),
                 "samples_per_prompt": min(len(r["rewards"]) for r in rows)}
        if all("kls" in r for r in rows):
            point["kl"] = _mean([_mean(r["kls"]) for r in rows])
        curve.append(point)
    summary["eval_curve"] = curve
    if len(evals) >= 2:
        first, last = min(evals), max(evals)
        summary["improvement"] = {"from_step": first, "to_step": last,
                                  **compare_evaluations(evals[first], evals[last])}
        summary["final_kl"] = curve[-1].get("kl")
    (out_dir / "reward_kl.svg").write_text(line_svg(
        {"held-out reward vs KL": [(p["kl"], p["reward"]) for p in curve if "kl" in p]},
        title="Reward / KL trade-off (one point per evaluation)", xlabel="KL to reference (nats per response)",
        ylabel="held-out reward"))
    (out_dir / "reward.svg").write_text(line_svg(
        {"train reward": _series(metrics, "reward"), "held-out reward": _series(metrics, "eval_reward")},
        title="Reward", ylabel="reward"))
    (out_dir / "kl.svg").write_text(line_svg(
        {"KL k1": _series(metrics, "kl"), "KL k3": _series(metrics, "kl_k3")}, title="KL to the reference",
        ylabel="nats per response"))
    (out_dir / "rl_report.json").write_text(json.dumps(summary, indent=1))
    return summary


REEVAL = "rl_reeval.json"


def format_reevaluation(s: dict[str, Any]) -> str:
    kl = f"; KL to the start {s['kl']:.3f} nats per answer" if s.get("kl") is not None else ""
    return (f"held-out reward, {s['n']} prompts x {s['samples_per_prompt']} samples ({s['max_new_tokens']} tokens, "
            f"T={s['temperature']:g}): start {s['before']:.4f} -> trained {s['after']:.4f}; change "
            f"{s['delta']:+.4f} [95% CI {s['delta_ci'][0]:+.4f}, {s['delta_ci'][1]:+.4f}]; improved on "
            f"{s['improved_fraction']:.0%} of prompts [{s['improved_ci'][0]:.0%}, {s['improved_ci'][1]:.0%}]{kl}; "
            f"hit the token limit: start {s['truncated_fraction']['start']:.0%}, "
            f"trained {s['truncated_fraction']['trained']:.0%}" + _score_line(s.get("score")))


def _score_line(score: dict[str, Any] | None) -> str:
    if not score:
        return ""
    return (f"\n  the reward model's (or function's) score alone, without penalties: {score['before']:.4f} -> "
            f"{score['after']:.4f}, change {score['delta']:+.4f} [95% CI {score['delta_ci'][0]:+.4f}, "
            f"{score['delta_ci'][1]:+.4f}]")


def format_rl_report(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = []
    imp = summary.get("improvement")
    if imp:
        per = imp.get("samples_per_prompt", 1)
        lines.append(f"held-out reward (n={imp['n']} prompts" + (f" x {per} samples" if per > 1 else "") +
                     f"): {imp['before']:.4f} at step {imp['from_step']} -> "
                     f"{imp['after']:.4f} at step {imp['to_step']}; change {imp['delta']:+.4f} "
                     f"[95% CI {imp['delta_ci'][0]:+.4f}, {imp['delta_ci'][1]:+.4f}]; "
                     f"improved on {imp['improved_fraction']:.0%} of prompts "
                     f"[{imp['improved_ci'][0]:.0%}, {imp['improved_ci'][1]:.0%}]" + _score_line(imp.get("score")))
    kl = summary.get("final_kl")
    if kl is not None and math.isfinite(kl):
        lines.append(f"KL to the reference at the end: {kl:.4f} nats per response")
    for p in summary.get("eval_curve", []):
        lines.append(f"  step {p['step']:>5}: held-out reward {p['reward']:.4f}" +
                     (f", KL {p['kl']:.4f}" if "kl" in p else ""))
    return "\n".join(lines)
