"""Reward-model training throughput and memory on CPU: palate vs TRL's RewardTrainer vs a plain PyTorch loop.

    python bench/reward.py                       # 2 warm-up + 10 timed steps, 4 pairs/step, max_length 256
    python bench/reward.py --repeats 3           # interleaved rounds, medians of paired ratios

Each workload runs in its own subprocess (``python bench/reward.py --worker NAME``) so that its peak RSS is
its own. All see the same preference pairs (``--data``, default ``bundled:preferences``, fixed shuffled
order, seed 0) and the bundled SmolLM2-135M-Instruct with a 1-output score head, weights fp32, compute in the run's ``--precision`` (auto: palate's choice on this CPU;
bf16 autocast for every workload, TRL's ``bf16=True``).

* ``palate``: the ``palate rm`` path: ``encode_groups`` + ``group_batches`` (bucketed, chosen and
  rejected of a pair in one batch), ``batch_scores`` (each pair's prompt runs once and its KV cache serves
  both responses, or the rows run in length buckets, whichever runs fewer positions; backbone hidden states,
  then the head only at each row's last token), ``comparison_loss`` (Bradley–Terry), backward, clip, palate
  AdamW; ``keep_freed_memory()``.
* ``plain``: the SAME batches through HF's forward (``model(...).logits``, the head on every position)
  -> ``-logsigmoid(r_c - r_r).mean()`` -> backward, clip, ``torch.optim.AdamW``.
* ``trl``: ``RewardTrainer`` with its defaults on the same pairs as conversational prompt/chosen/rejected,
  except the run's precision and no gradient checkpointing (TRL's defaults would turn on checkpointing, which is
  far slower on CPU, see BASELINE.md).
* ``trl_best``: the same plus TRL's best CPU setting: length grouping (``pairs_common.TRL_BEST``, lengths
  the longer of chosen and rejected). ``RewardConfig`` 1.16 has no padding-free or packing option (its
  collator always pads chosen and rejected into one tensor), so there is nothing more to turn on.

Tokens/s counts real (non-padding) tokens of chosen and rejected sequences of the timed steps, for every
workload alike (a pair's prompt twice); padding is that of the positions the forwards run (palate: a shared
prompt once, or its length buckets), and palate's GFLOP/s and MFU count the real tokens it ran
(``computed_real_tokens``), not the ones it saved. MFU is against the GEMM peak (in the run's precision)
measured in the same run (``record.gemm_peak``), counting 6 x the decoder's matmul parameters per real token.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import palate_model, resolve_precision  # noqa: E402
from pairs_common import (  # noqa: E402
    RESULT_TAG,
    TRL_BEST,
    add_length_column,
    add_arguments,
    credit_computed,
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

WORKLOADS = ("palate", "plain", "trl", "trl_best")
TRL_CONFIGS = {"trl": "RewardTrainer defaults (random batches) in the run's precision, no gradient checkpointing",
               "trl_best": "+ train_sampling_strategy=group_by_length (length = longer of chosen/rejected); "
                           "no padding-free/packing option exists for RewardTrainer in TRL 1.16"}
OUT = Path(__file__).resolve().parent / "out" / "reward.json"
TARGETS = {"tps_vs_trl": 1.5, "rss_vs_trl": 1.0}  # issue 27: >= 1.5x TRL at its best


def worker_palate(args) -> dict:
    from palate.infra.device import keep_freed_memory

    kept = keep_freed_memory()
    torch, tok, model = setup_worker(args, num_labels=1)
    applied = palate_model(model, args.precision)
    from palate.infra.optim import adamw, scheduler
    from palate.models.heads import init_heads, plan_positions, reward_plan
    from palate.recipes.reward import ROW_PARTS, RewardSpec, batch_scores, comparison_loss

    init_heads(model, 0)
    pairs = selected_pairs(args.data, (args.warmup + args.steps) * args.batch_size)
    batches, info = palate_batches(args, tok, pairs)
    spec = RewardSpec()
    optimizer = adamw(model, args.lr, 0.0, (0.9, 0.999))
    sched = scheduler(optimizer, 0, len(batches), 0.1)

    def step(b, _):
        return comparison_loss(batch_scores(model, b), b, pairs, spec).mean()

    secs, toks, slots, losses, u0 = train_loop("palate", args, torch, model, batches, [None] * len(batches), step,
                                               optimizer, sched.step)
    # the positions palate's forwards run (each pair's prompt once, or the length buckets; the batch tensors'
    # are in "batch_slots") and the real tokens among them
    plans = [reward_plan(b, ROW_PARTS) for b in batches]
    batch_slots, (slots, computed) = slots, map(list, zip(*(plan_positions(p) for p in plans)))
    out = summarize("palate", args, secs, toks, slots, {
        "losses": losses, "batches_fingerprint": fingerprint(batches), "keep_freed_memory": kept, **applied, "data": info,
        "timed_usage": usage_delta(u0, usage()), "row_parts": ROW_PARTS, "batch_slots": batch_slots,
        "padding_fraction_batch_tensors": 1 - sum(toks[args.warmup:]) / max(1, sum(batch_slots[args.warmup:])),
        "forwards": {how: sum(1 for h, _ in plans[args.warmup:] if h == how) for how in ("shared", "buckets", "one")},
    })
    return credit_computed(out, computed, args.warmup)


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


def worker_trl(args, best: bool = False) -> dict:
    torch, tok, model = setup_worker(args, num_labels=1)
    import trl
    from trl import RewardConfig, RewardTrainer

    name = "trl_best" if best else "trl"
    pairs = selected_pairs(args.data, (args.warmup + args.steps) * args.batch_size)
    ds = trl_pairs_dataset(pairs)
    cfg = RewardConfig(**trl_common_args(args, "bench-rm-trl-"), **(TRL_BEST if best else {}))
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    if best:
        add_length_column(trainer, lambda e: (e["chosen_ids"], e["rejected_ids"]))
    secs, toks, slots, timed = train_trl_timed(trainer, args, name)
    return summarize(name, args, secs, toks, slots, {
        "timed_usage": timed, "records": len(ds), "pairs_after_trl_filtering": len(trainer.train_dataset),
        "trl_version": trl.__version__, "losses": [], "trl_config": TRL_CONFIGS[name],
        "train_sampling_strategy": cfg.train_sampling_strategy,
    })


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap, WORKLOADS, data="bundled:preferences", lr=1e-5)
    args = ap.parse_args(argv)
    if args.worker:
        args.precision = resolve_precision(args.precision)
        result = {"palate": worker_palate, "plain": worker_plain, "trl": worker_trl,
                  "trl_best": lambda a: worker_trl(a, best=True)}[args.worker](args)
        sys.stdout.flush()
        print(RESULT_TAG + json.dumps(result), flush=True)
    else:
        run_all(str(Path(__file__).resolve()), args, "Reward-model benchmark", OUT,
                lambda r: {} if r.get("tps_vs_trl") is None else {
                    "palate >= 1.5x TRL's better config tokens/s": r["tps_vs_trl"] >= TARGETS["tps_vs_trl"],
                    "palate peak RSS <= TRL's": r["rss_vs_trl"] <= TARGETS["rss_vs_trl"]},
                lm_head=False, trl_configs=TRL_CONFIGS)


if __name__ == "__main__":
    main()
