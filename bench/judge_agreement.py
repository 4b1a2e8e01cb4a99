"""Agreement of a local judge with the bundled human preference labels, with its biases and speed.

    python bench/judge_agreement.py                      # bundled model, 60 pairs, both orders
    python bench/judge_agreement.py --pairs 260 --judge runs/my-sft

Takes ``--pairs`` pairs of ``bundled:preferences`` (a seeded sample), puts each pair's human-chosen answer
in slot A or B by a seeded coin, and asks the judge both orders (``palate.judges.label``, the path
``palate judge`` runs). Prints and writes (``--out``, default ``bench/results/judge_agreement.json``):
accuracy and Cohen's kappa against the human labels for both debiasing modes (inconsistent -> tie, and
inconsistent -> low weight), the accuracy of the first order alone (no swap), position bias,
inconsistency rate, length bias next to the humans' own, and seconds per judgment.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from palate.judges import stats
from palate.judges.debias import combine, winner
from palate.judges.label import read_candidates, summarize
from palate.judges.local import LocalJudge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", default="bundled")
    ap.add_argument("--data", default="bundled:preferences")
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is much faster on a shared, "
                    "oversubscribed machine)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "judge_agreement.json"))
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    cands = read_candidates(args.data, seed=args.seed)
    random.Random(args.seed).shuffle(cands)
    cands = cands[: args.pairs]
    t0 = time.perf_counter()
    judge = LocalJudge.load(args.judge, batch_size=args.batch_size)
    load_s = time.perf_counter() - t0
    items = [(c.prompt, c.a, c.b) for c in cands] + [(c.prompt, c.b, c.a) for c in cands]
    t0 = time.perf_counter()
    verdicts = judge.compare_many(items)
    seconds = time.perf_counter() - t0
    n = len(cands)
    by_mode = {m: [combine(verdicts[i], verdicts[n + i], m) for i in range(n)] for m in ("tie", "weight")}
    summary = summarize(cands, by_mode["tie"], seconds)
    human = [c.human for c in cands]
    first_only = [None if v.p_a is None else winner(v.p_a) for v in verdicts[:n]]
    result = {
        "judge": args.judge, "data": args.data, "pairs": n, "seed": args.seed, "load_seconds": load_s,
        "threads": args.threads, "batch_size": args.batch_size,
        "seconds": seconds, "seconds_per_judgment": seconds / (2 * n),
        "agreement_swap_tie": stats.agreement([j.preference for j in by_mode["tie"]], human),
        "agreement_swap_weight": stats.agreement([j.preference for j in by_mode["weight"]], human),
        "agreement_first_order_only": stats.agreement(first_only, human),
        "position_bias": summary["position_bias"], "inconsistency": summary["inconsistency"],
        "length_bias": summary["length_bias"], "malformed": summary["malformed"],
        "length_bias_swap_weight": stats.length_bias(by_mode["weight"], [len(c.a) for c in cands],
                                                     [len(c.b) for c in cands]),
        "mean_first_slot_probability": sum(v.p_a for v in verdicts if v.p_a is not None) / max(1, sum(v.p_a is not None for v in verdicts)),
    }
    result["per_pair"] = [{"row": c.meta.get("row"), "human": c.human, "len_a": len(c.a), "len_b": len(c.b),
                           "p_a_order_ab": verdicts[i].p_a, "p_a_order_ba": verdicts[n + i].p_a}
                          for i, c in enumerate(cands)]
    from record import write_result

    w = result["agreement_swap_weight"]
    write_result("judge_agreement", result, path=args.out, metric="judge agreement with the human labels "
                 "(both orders, inconsistent -> weight)", unit="accuracy", palate=w["accuracy"],
                 note=f"kappa {w['kappa']:.3f}, coverage {w['coverage']:.2f}, {2 * n} judgments")
    a, b, f = result["agreement_swap_tie"], result["agreement_swap_weight"], result["agreement_first_order_only"]
    print(f"judge {args.judge} on {n} pairs of {args.data} (both orders, {2 * n} judgments)")
    print(f"  swap, inconsistent -> tie:    accuracy {a['accuracy']}, kappa {a['kappa']:.3f}, coverage {a['coverage']:.2f}")
    print(f"  swap, inconsistent -> weight: accuracy {b['accuracy']}, kappa {b['kappa']:.3f}, coverage {b['coverage']:.2f}")
    print(f"  first order only (no swap):   accuracy {f['accuracy']}, kappa {f['kappa']:.3f}")
    print(f"  position bias {result['position_bias']}, mean p(first slot) {result['mean_first_slot_probability']:.3f}")
    print(f"  inconsistency {result['inconsistency']}, length bias {result['length_bias']} "
          f"(weight mode: {result['length_bias_swap_weight']})")
    print(f"  {result['seconds_per_judgment']:.3f} s/judgment ({seconds:.1f} s; model load {load_s:.1f} s) -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
