"""Reward-model training throughput and memory on CPU: palate vs TRL's RewardTrainer vs a plain PyTorch loop.

    python bench/reward.py                       # 2 warm-up + 10 timed steps, 4 pairs/step, max_length 256
    python bench/reward.py --repeats 3           # interleaved rounds, medians of paired ratios

Each workload runs in its own subprocess (``python bench/reward.py --worker NAME``) so that its peak RSS is
its own. All see the same preference pairs (``--data``, default ``bundled:preferences``, fixed shuffled
order, seed 0) and the bundled SmolLM2-135M-Instruct with a 1-output score head, fp32.

* ``palate``: the ``palate rm`` path: ``encode_groups`` + ``group_batches`` (bucketed, chosen and
  rejected of a pair in one batch), ``reward_scores`` (backbone, then the head only at each row's last
  token), ``comparison_loss`` (Bradley–Terry), backward, clip, palate AdamW; ``keep_freed_memory()``.
* ``plain``: the SAME batches through HF's forward (``model(...).logits``, the head on every position)
  -> ``-logsigmoid(r_c - r_r).mean()`` -> backward, clip, ``torch.optim.AdamW``.
* ``trl``: ``RewardTrainer`` on the same pairs as conversational prompt/chosen/rejected, fp32, no
  gradient checkpointing (TRL's defaults would turn on bf16 and checkpointing, see BASELINE.md).

Tokens/s counts real (non-padding) tokens of chosen and rejected sequences of the timed steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pairs_common import (  # noqa: E402
    RESULT_TAG,
    add_arguments,
    palate_batches,
    run_all,
    selected_pairs,
    setup_worker,
    train_loop,
    train_trl_timed,
    trl_common_args,
    trl_pairs_dataset,
)
from sft import fingerprint, summarize, usage, usage_delta  # noqa: E402

WORKLOADS = ("palate", "plain", "trl")
OUT = Path(__file__).resolve().parent / "out" / "reward.json"
TARGETS = {"tps_vs_trl": 1.2, "rss_vs_trl": 1.0}


def worker_palate(args) -> dict:
    from palate.infra.device import keep_freed_memory

    kept = keep_freed_memory()
    torch, tok, model = setup_worker(args, num_labels=1)
    from palate.infra.optim import adamw, scheduler
    from palate.models.heads import init_heads, reward_scores
    from palate.recipes.reward import RewardSpec, comparison_loss

    init_heads(model, 0)
    pairs = selected_pairs(args.data, (args.warmup + args.steps) * args.batch_size)
    batches, info = palate_batches(args, tok, pairs)
    spec = RewardSpec()
    optimizer = adamw(model, args.lr, 0.0, (0.9, 0.999))
    sched = scheduler(optimizer, 0, len(batches), 0.1)

    def step(b, _):
        return comparison_loss(reward_scores(model, b), b, pairs, spec).mean()

    secs, toks, slots, losses, u0 = train_loop("palate", args, torch, model, batches, [None] * len(batches), step,
                                               optimizer, sched.step)
    return summarize("palate", args, secs, toks, slots, {
        "losses": losses, "batches_fingerprint": fingerprint(batches), "keep_freed_memory": kept, "data": info,
        "timed_usage": usage_delta(u0, usage()),
    })


def worker_plain(args) -> dict:
    torch, tok, model = setup_worker(args, num_labels=1)
    import torch.nn.functional as F

    pairs = selected_pairs(args.data, (args.warmup + args.steps) * args.batch_size)
    batches, info = palate_batches(args, tok, pairs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    def step(b, _):
        r = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.squeeze(-1)
        return -F.logsigmoid(r[0::2] - r[1::2]).mean()

    secs, toks, slots, losses, u0 = train_loop("plain", args, torch, model, batches, [None] * len(batches), step,
                                               optimizer, lambda: None)
    return summarize("plain", args, secs, toks, slots, {
        "losses": losses, "batches_fingerprint": fingerprint(batches), "data": info,
        "timed_usage": usage_delta(u0, usage()),
    })


def worker_trl(args) -> dict:
    torch, tok, model = setup_worker(args, num_labels=1)
    import trl
    from trl import RewardConfig, RewardTrainer

    pairs = selected_pairs(args.data, (args.warmup + args.steps) * args.batch_size)
    ds = trl_pairs_dataset(pairs)
    cfg = RewardConfig(**trl_common_args(args, "bench-rm-trl-"))
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    secs, toks, slots, timed = train_trl_timed(trainer, args, "trl")
    return summarize("trl", args, secs, toks, slots, {
        "timed_usage": timed, "records": len(ds), "pairs_after_trl_filtering": len(trainer.train_dataset),
        "trl_version": trl.__version__, "losses": [],
    })


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap, WORKLOADS, data="bundled:preferences", lr=1e-5)
    args = ap.parse_args(argv)
    if args.worker:
        result = {"palate": worker_palate, "plain": worker_plain, "trl": worker_trl}[args.worker](args)
        sys.stdout.flush()
        print(RESULT_TAG + json.dumps(result), flush=True)
    else:
        run_all(str(Path(__file__).resolve()), args, "Reward-model benchmark", OUT,
                lambda r: {} if r.get("tps_vs_trl") is None else {
                    "palate >= 1.2x TRL tokens/s": r["tps_vs_trl"] >= TARGETS["tps_vs_trl"],
                    "palate peak RSS <= TRL's": r["rss_vs_trl"] <= TARGETS["rss_vs_trl"]})


if __name__ == "__main__":
    main()
