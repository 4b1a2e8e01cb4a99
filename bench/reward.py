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
import tempfile
import time
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
    import datasets
    import trl
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from palate.data.records import prompt_messages

    pairs = selected_pairs(args.data, (args.warmup + args.steps) * args.batch_size)
    ds = datasets.Dataset.from_list([
        {"prompt": prompt_messages(p.prompt), "chosen": [{"role": "assistant", "content": p.chosen}],
         "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs])
    total = args.warmup + args.steps

    class Timer(TrainerCallback):
        def __init__(self):
            self.end = []

        def on_train_begin(self, a, state, control, **kw):
            self.t_begin = time.perf_counter()
            self.u0 = self.u1 = usage()

        def on_step_end(self, a, state, control, **kw):
            self.end.append(time.perf_counter())
            if len(self.end) == args.warmup:
                self.u0 = usage()
            self.u1 = usage()
            print(f"[trl] step {state.global_step}/{total}", file=sys.stderr, flush=True)

    cfg = RewardConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-rm-trl-"), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, max_steps=total, learning_rate=args.lr, weight_decay=0.0, max_grad_norm=1.0,
        max_length=args.max_length, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        report_to=[], save_strategy="no", eval_strategy="no", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0, seed=0, data_seed=0,
    )
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    timer = Timer()
    trainer.add_callback(timer)
    counts = []
    inner = trainer.data_collator

    def counting_collator(features):
        out = inner(features)
        counts.append((int(out["attention_mask"].sum()), int(out["attention_mask"].numel())))
        return out

    trainer.data_collator = counting_collator
    torch.set_num_threads(args.threads)
    trainer.train()
    ends = timer.end
    secs = [ends[0] - timer.t_begin] + [b - a for a, b in zip(ends, ends[1:])]
    toks = [c[0] for c in counts[: len(secs)]]
    slots = [c[1] for c in counts[: len(secs)]]
    return summarize("trl", args, secs, toks, slots, {
        "timed_usage": usage_delta(timer.u0, timer.u1), "records": len(ds),
        "pairs_after_trl_filtering": len(trainer.train_dataset), "trl_version": trl.__version__, "losses": [],
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
