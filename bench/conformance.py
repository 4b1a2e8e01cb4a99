"""AlpacaEval 2 conformance: palate's length-controlled win rates against the published leaderboard.

    python bench/conformance.py --repo PATH_TO_ALPACA_EVAL      # a checkout, or a bare git dir / mirror
    ALPACA_EVAL_REPO=PATH python bench/conformance.py

Reads the repository's own files only (offline): the leaderboard CSV of weighted_alpaca_eval_gpt4_turbo and
every ``results/<model>/weighted_alpaca_eval_gpt4_turbo/annotations.json`` it has. Refits the instruction
difficulty jointly on all of them (``palate.eval.alpaca_eval.instruction_difficulty``), then each model's raw
and AlpacaEval-compatible LC win rate (``length_controlled_v1`` when the two gamed baselines' annotations are
there, else ``length_controlled_noreg``), and palate's own joint LC (``palate.eval.winrate.joint_length_control``,
all models against the baseline on the same instructions, one fit). Prints the table and the summary (max and
mean |palate − leaderboard|, Spearman) and writes ``bench/results/alpaca_eval_conformance.json`` plus the
refitted difficulty (``--difficulty-out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # small dense solves: threads only contend on a shared machine

import numpy as np  # noqa: E402

from palate.eval.alpaca_eval import Repository, reproduce_leaderboard  # noqa: E402
from palate.eval.stats import spearman  # noqa: E402
from palate.eval.winrate import compare_policies  # noqa: E402


def palate_joint(repo: Repository, models: list[str], n_resamples: int) -> dict[str, float]:
    """palate's own LC (one joint fit, characters, prompts matched by row position) for the non-baseline models."""
    anns = [a for a in (repo.annotations(m) for m in models) if a is not None and a.model != a.baseline]
    base = {}
    for a in anns:
        for i, b in enumerate(a.len_baseline):
            base.setdefault(i, b)
    keep = {a.model: [i for i in range(a.n) if a.p[i] == a.p[i]] for a in anns}
    res = compare_policies({a.model: [float(a.p[i]) for i in keep[a.model]] for a in anns},
                           {a.model: [float(a.len_model[i]) for i in keep[a.model]] for a in anns},
                           [base[i] for i in range(len(base))], prompt_index=keep, length_unit="characters",
                           n_resamples=n_resamples)
    return {r["policy"]: 100 * r["lc_win_rate"] for r in res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=os.environ.get("ALPACA_EVAL_REPO"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "alpaca_eval_conformance.json"))
    ap.add_argument("--difficulty-out", default=None, help="also write the refitted difficulty (JSON list)")
    ap.add_argument("--joint-resamples", type=int, default=0, help="bootstrap resamples of palate's joint LC CIs")
    args = ap.parse_args()
    if not args.repo:
        sys.exit("give --repo or ALPACA_EVAL_REPO (an alpaca_eval checkout or git dir)")
    repo = Repository(args.repo)
    t0 = time.time()
    rep = reproduce_leaderboard(repo, progress=lambda r: print(f"  {r['model']}", file=sys.stderr, flush=True))
    print(f"{len(rep['models_in_fit'])} leaderboard models with annotations (joint difficulty fit over all), "
          f"{len(rep['missing'])} without; GLM {rep['glm']}; {time.time() - t0:.0f} s")
    rows = [r for r in rep["results"] if r["leaderboard_length_controlled_winrate"] is not None]
    joint = palate_joint(repo, rep["models_in_fit"], max(args.joint_resamples, 1))
    for r in rows:
        r["palate_joint_lc"] = joint.get(r["model"], 50.0)
    print("raw = win rate; LC ae = AlpacaEval-compatible LC (palate.eval.alpaca_eval); joint = palate's own joint LC")
    print(f"{'model':42s} {'raw lb':>7s} {'palate':>7s} {'LC lb':>7s} {'LC ae':>7s} {'diff':>6s} {'joint':>7s}")
    for r in sorted(rows, key=lambda r: -r["leaderboard_length_controlled_winrate"]):
        print(f"{r['model']:42s} {r['leaderboard_win_rate']:7.2f} {r['win_rate']:7.2f} "
              f"{r['leaderboard_length_controlled_winrate']:7.2f} {r['length_controlled_winrate']:7.2f} "
              f"{r['length_controlled_winrate'] - r['leaderboard_length_controlled_winrate']:+6.2f} "
              f"{r['palate_joint_lc']:7.2f}")
    lc = np.array([r["length_controlled_winrate"] for r in rows])
    lc_lb = np.array([r["leaderboard_length_controlled_winrate"] for r in rows])
    raw_diff = np.abs([r["win_rate"] - r["leaderboard_win_rate"] for r in rows])
    diff = np.abs(lc - lc_lb)
    summary = {"n_models": len(rows), "glm": rep["glm"], "raw_max_abs_diff": float(raw_diff.max()),
               "lc_max_abs_diff": float(diff.max()), "lc_mean_abs_diff": float(diff.mean()),
               "lc_within_1_point": int((diff <= 1.0).sum()), "lc_spearman": spearman(lc, lc_lb),
               "lc_pearson": float(np.corrcoef(lc, lc_lb)[0, 1]),
               "raw_spearman_with_lc_leaderboard": spearman([r["win_rate"] for r in rows], lc_lb),
               "joint_spearman_with_lc_leaderboard": spearman([r["palate_joint_lc"] for r in rows], lc_lb),
               "joint_mean_abs_diff": float(np.mean(np.abs([r["palate_joint_lc"] for r in rows] - lc_lb))),
               "seconds": time.time() - t0}
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, **{k: v for k, v in rep.items() if k != "difficulty"}},
                                         indent=1))
    if args.difficulty_out:
        Path(args.difficulty_out).write_text(json.dumps(rep["difficulty"]))


if __name__ == "__main__":
    main()
