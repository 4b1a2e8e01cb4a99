"""What an online-RL run shows at its end: did held-out reward improve over the starting policy, and at
what KL cost (the reward/KL trade-off)?

Every held-out evaluation of a PPO/GRPO run appends one row per prompt to ``eval_samples.jsonl``
(step, prompt index, response, reward, KL to the reference). :func:`rl_report` reads it with
``metrics.jsonl`` and writes ``report/rl_report.json`` and three SVG charts:

    reward_kl.svg   held-out reward against KL to the reference, one point per evaluation (the frontier)
    reward.svg      training and held-out reward per step
    kl.svg          KL (k1 and k3) per step

The improvement is paired per prompt: Δ_i = r_i(last evaluation) − r_i(first, before training), with a
95% bootstrap CI of the mean and the fraction of prompts whose reward rose (ties count ½).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from palate.eval.plots import line_svg
from palate.eval.stats import bootstrap_ci

EVAL_SAMPLES = "eval_samples.jsonl"


def write_eval_samples(run_path: Path, step: int, prompts: list[str], responses: list[str],
                       rewards: list[float], kls: list[float] | None) -> None:
    """Append one held-out evaluation (one row per prompt) to ``eval_samples.jsonl``."""
    with open(Path(run_path) / EVAL_SAMPLES, "a", encoding="utf-8") as f:
        for i, (p, r, rw) in enumerate(zip(prompts, responses, rewards)):
            row = {"step": step, "i": i, "prompt": p, "response": r, "reward": rw}
            if kls is not None:
                row["kl"] = kls[i]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_eval_samples(run_path: Path, up_to_step: int | None = None) -> dict[int, dict[int, dict]]:
    """``{step: {prompt index: row}}``; a row rewritten by a resumed run replaces the earlier one."""
    path = Path(run_path) / EVAL_SAMPLES
    out: dict[int, dict[int, dict]] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if up_to_step is None or row["step"] <= up_to_step:
                out.setdefault(row["step"], {})[row["i"]] = row
    return out


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
        point = {"step": step, "reward": sum(r["reward"] for r in rows) / len(rows)}
        if all("kl" in r for r in rows):
            point["kl"] = sum(r["kl"] for r in rows) / len(rows)
        curve.append(point)
    summary["eval_curve"] = curve
    if len(evals) >= 2:
        first, last = min(evals), max(evals)
        common = sorted(set(evals[first]) & set(evals[last]))
        summary["improvement"] = {"from_step": first, "to_step": last, **paired_improvement(
            [evals[first][i]["reward"] for i in common], [evals[last][i]["reward"] for i in common])}
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


def format_rl_report(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = []
    imp = summary.get("improvement")
    if imp:
        lines.append(f"held-out reward (n={imp['n']} prompts): {imp['before']:.4f} at step {imp['from_step']} -> "
                     f"{imp['after']:.4f} at step {imp['to_step']}; change {imp['delta']:+.4f} "
                     f"[95% CI {imp['delta_ci'][0]:+.4f}, {imp['delta_ci'][1]:+.4f}]; "
                     f"improved on {imp['improved_fraction']:.0%} of prompts "
                     f"[{imp['improved_ci'][0]:.0%}, {imp['improved_ci'][1]:.0%}]")
    kl = summary.get("final_kl")
    if kl is not None and math.isfinite(kl):
        lines.append(f"KL to the reference at the end: {kl:.4f} nats per response")
    for p in summary.get("eval_curve", []):
        lines.append(f"  step {p['step']:>5}: held-out reward {p['reward']:.4f}" +
                     (f", KL {p['kl']:.4f}" if "kl" in p else ""))
    return "\n".join(lines)
