"""How far to trust a reward model: held-out accuracy with a CI, calibration, length bias, per group.

:func:`evaluate_reward_model` scores every held-out pair and writes ``rm_eval.json`` plus SVG plots
(reliability diagram, reward distributions, reward against length) to a directory; :func:`format_report`
renders the same numbers for the terminal. Used at the end of ``palate rm`` and by ``palate rm-eval``.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from palate.data.batching import group_batches
from palate.data.errors import SkipLog
from palate.data.records import Preference, prompt_text
from palate.data.tokenize import encode_groups
from palate.eval.plots import histogram_svg, reliability_svg, scatter_svg
from palate.eval.stats import accuracy_ci, calibration, grouped_accuracy, pearson, spearman
from palate.models.heads import RewardModel, reward_scores

GROUP_KEYS = ("labeler_group", "group")


@torch.inference_mode()
def pair_rewards(rm: RewardModel, pairs: list[Preference], skips: SkipLog, batch_size: int = 16) -> dict[str, Any]:
    """Head rewards ``[P, K]`` of chosen and rejected, response token lengths, and which pairs were kept."""
    groups = encode_groups(rm.tokenizer, pairs, rm.max_length, skips=skips, chat_template=rm.use_template,
                           long_prompts=rm.long_prompts)
    k = rm.n_heads
    chosen, rejected = torch.zeros(len(pairs), k), torch.zeros(len(pairs), k)
    kept = torch.zeros(len(pairs), dtype=torch.bool)
    lengths = torch.zeros(len(pairs), 2)
    for g in groups:
        lengths[g[0].index] = torch.tensor([g[0].n_targets, g[1].n_targets], dtype=torch.float)
    for b in group_batches(groups, batch_size, rm.tokenizer.pad_token_id, 0, 0):
        scores = reward_scores(rm.model, b).cpu()
        idx = torch.tensor(b.indices)
        chosen[idx], rejected[idx] = scores[0::2], scores[1::2]
        kept[idx] = True
    return {"chosen": chosen[kept], "rejected": rejected[kept], "lengths": lengths[kept],
            "pairs": [p for p, keep in zip(pairs, kept.tolist()) if keep]}


def evaluate_reward_model(
    rm: RewardModel, pairs: list[Preference], out_dir: str | Path | None = None, *, seed: int = 0,
    batch_size: int = 16, n_bins: int = 10,
) -> dict[str, Any]:
    """Score held-out pairs and measure accuracy, calibration, length bias and per-group accuracy."""
    was_training = rm.model.training
    rm.model.eval()
    skips = SkipLog(seen=len(pairs))
    got = pair_rewards(rm, pairs, skips, batch_size)
    rm.model.train(was_training)
    kept: list[Preference] = got["pairs"]
    if not kept:
        raise ValueError(f"no evaluation pairs could be scored\n{skips.summary()}")
    rc_heads, rr_heads = got["chosen"], got["rejected"]
    rc, rr = rc_heads.mean(-1).numpy(), rr_heads.mean(-1).numpy()
    len_c, len_r = got["lengths"][:, 0].numpy(), got["lengths"][:, 1].numpy()
    tie = np.array([p.tie for p in kept])
    strict = ~tie
    correct = (rc > rr).astype(float)
    report: dict[str, Any] = {
        "n_pairs": int(strict.sum()),
        "n_ties": int(tie.sum()),
        "heads": int(rc_heads.shape[-1]),
        "data": skips.as_dict(),
    }
    report["accuracy"] = accuracy_ci(correct[strict], seed=seed)

    margins = [p.margin for p, s in zip(kept, strict) if s]
    if any(m is not None for m in margins):
        report["accuracy_by_label_margin"] = _keys_to_str(grouped_accuracy(
            correct[strict], ["none" if m is None else f"{m:g}" for m in margins]))
    gap = np.abs(rc - rr)[strict]
    quartile = np.searchsorted(np.quantile(gap, [0.25, 0.5, 0.75]), gap, side="right") if len(gap) else gap
    report["accuracy_by_reward_gap_quartile"] = _keys_to_str(grouped_accuracy(
        correct[strict], [f"Q{int(q) + 1}" for q in quartile]))
    for key in GROUP_KEYS:
        values = [p.meta.get(key) for p, s in zip(kept, strict) if s]
        if any(v is not None for v in values):
            report["accuracy_by_group"] = {"key": key, **_keys_to_str(grouped_accuracy(
                correct[strict], ["none" if v is None else str(v) for v in values]))}
            break

    # Calibration: orient each pair by a fixed coin flip so the diagram covers both halves of [0, 1].
    rng = random.Random(f"calibration:{seed}")
    flips = np.array([rng.random() < 0.5 for _ in kept])
    diff = np.where(flips, rr - rc, rc - rr)
    outcome = np.where(tie, 0.5, np.where(flips, 0.0, 1.0))
    probs = 1.0 / (1.0 + np.exp(-diff))
    report["calibration"] = calibration(probs.tolist(), outcome.tolist(), n_bins=n_bins)

    rewards = np.concatenate([rc, rr])
    lengths = np.concatenate([len_c, len_r])
    longer_loses = strict & (len_c < len_r)
    longer_wins = strict & (len_c > len_r)
    report["length_bias"] = {
        "pearson_reward_length": pearson(rewards.tolist(), lengths.tolist()),
        "spearman_reward_length": spearman(rewards.tolist(), lengths.tolist()),
        "share_pairs_longer_chosen": float(longer_wins.sum() / max(strict.sum(), 1)),
        "accuracy_when_longer_loses": accuracy_ci(correct[longer_loses], seed=seed) if longer_loses.any() else None,
        "accuracy_when_longer_wins": accuracy_ci(correct[longer_wins], seed=seed) if longer_wins.any() else None,
    }
    report["rewards"] = {
        "chosen_mean": float(rc.mean()), "chosen_std": float(rc.std()),
        "rejected_mean": float(rr.mean()), "rejected_std": float(rr.std()),
        "mean_gap": float((rc - rr)[strict].mean()) if strict.any() else None,
    }
    if rc_heads.shape[-1] > 1:
        std = torch.cat([rc_heads.std(-1, unbiased=False), rr_heads.std(-1, unbiased=False)])
        report["ensemble"] = {"mean_std": float(std.mean()), "max_std": float(std.max())}
    wrong = [i for i in np.argsort(-(rr - rc)) if strict[i] and rr[i] > rc[i]][:5]
    report["worst_errors"] = [{
        "prompt": prompt_text(kept[i].prompt)[:300], "chosen": kept[i].chosen[:300], "rejected": kept[i].rejected[:300],
        "reward_chosen": float(rc[i]), "reward_rejected": float(rr[i]),
        "source": kept[i].meta.get("source"), "row": kept[i].meta.get("row"),
    } for i in wrong]

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "rm_eval.json").write_text(json.dumps(_no_nan(report), indent=2, default=_json_default) + "\n")
        (out / "reliability.svg").write_text(reliability_svg(
            report["calibration"]["bins"], title=f"Reward model calibration (ECE {report['calibration']['ece']:.3f})"))
        (out / "reward_distribution.svg").write_text(histogram_svg(
            {"chosen": rc.tolist(), "rejected": rr.tolist()}, title="Rewards on held-out pairs", xlabel="reward"))
        (out / "reward_vs_length.svg").write_text(scatter_svg(
            {"chosen": list(zip(len_c.tolist(), rc.tolist())), "rejected": list(zip(len_r.tolist(), rr.tolist()))},
            title="Reward against response length", xlabel="response tokens", ylabel="reward"))
        report["files"] = sorted(p.name for p in out.iterdir())
    return report


def format_report(report: dict[str, Any]) -> str:
    """The evaluation as a few readable lines for the terminal."""
    def pct(a: dict | None) -> str:
        if not a:
            return "n/a"
        return f"{100 * a['accuracy']:.1f}% [{100 * a['ci_low']:.1f}, {100 * a['ci_high']:.1f}] (n={a['n']})"

    lines = [f"pairwise accuracy      {pct(report['accuracy'])}   (95% bootstrap CI; chance = 50%)"]
    cal = report["calibration"]
    lines.append(f"calibration            ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f}")
    lb = report["length_bias"]
    lines.append(f"length bias            reward~length Spearman {_num(lb['spearman_reward_length'])}, "
                 f"Pearson {_num(lb['pearson_reward_length'])}")
    lines.append(f"  longer answer loses  {pct(lb['accuracy_when_longer_loses'])}")
    lines.append(f"  longer answer wins   {pct(lb['accuracy_when_longer_wins'])}")
    for title, key in (("by label margin", "accuracy_by_label_margin"), ("by reward gap", "accuracy_by_reward_gap_quartile"),
                       ("by labeler group", "accuracy_by_group")):
        groups = {k: v for k, v in report.get(key, {}).items() if k != "key"}
        if groups:
            lines.append(f"{title:<22} " + "; ".join(f"{k}: {pct(v)}" for k, v in groups.items()))
    r = report["rewards"]
    lines.append(f"rewards                chosen {r['chosen_mean']:.3f}±{r['chosen_std']:.3f}, "
                 f"rejected {r['rejected_mean']:.3f}±{r['rejected_std']:.3f}")
    if "ensemble" in report:
        lines.append(f"ensemble disagreement  mean std {report['ensemble']['mean_std']:.4f} over {report['heads']} heads")
    if report.get("n_ties"):
        lines.append(f"ties                   {report['n_ties']} (in calibration as 0.5; not in accuracy)")
    data = report.get("data") or {}
    for title, key in (("skipped", "skipped_by_reason"), ("truncated", "truncated_by_reason")):
        if data.get(key):
            lines.append(f"{title:<22} " + ", ".join(f"{n} {reason}" for reason, n in data[key].items())
                         + f" (of {data['rows_seen']} pairs)")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}"


def _keys_to_str(d: dict) -> dict:
    return {str(k): v for k, v in d.items()}


def _no_nan(o: Any) -> Any:
    """NaN (e.g. a correlation with a constant) as JSON null, so the file stays strict JSON."""
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, dict):
        return {k: _no_nan(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_no_nan(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
