"""DPO throughput and memory on CPU: palate vs TRL's DPOTrainer vs a plain PyTorch loop.

    python bench/dpo.py                          # 2 warm-up + 10 timed steps, 4 pairs/step, max_length 256
    python bench/dpo.py --repeats 3              # interleaved rounds, medians of paired ratios
    python bench/dpo.py --only palate trl_precompute --steps 5

Each workload runs in its own subprocess (``python bench/dpo.py --worker NAME``) so that its peak RSS is
its own. All see the same preference pairs (``--data``, default ``bundled:preferences``, fixed shuffled
order, seed 0), the bundled SmolLM2-135M-Instruct (fp32 weights, compute in ``--precision``), β = 0.1, sigmoid DPO.

* ``palate``: the DPO recipe's path: ``encode_groups`` + ``group_batches`` (bucketed, chosen and rejected
  in one batch), reference log-probs precomputed once over the pairs used (``reference_logprobs``), then
  per step ``sequence_logprobs`` (each pair's prompt run once, its KV cache shared by chosen and rejected;
  projection only on completion tokens, chunked) -> ``pair_loss`` ->
  backward -> clip -> palate AdamW; ``keep_freed_memory()`` as ``session.start`` does.
* ``plain``: the SAME batches; HF forward ``model(...).logits`` -> full ``log_softmax`` over
  ``[rows, seq, vocab]`` -> gather -> DPO; the reference precomputed the same naive way;
  ``torch.optim.AdamW``. The straightforward PyTorch implementation.
* ``trl``: ``DPOTrainer`` with its defaults for the reference: a second model copy evaluated every step.
* ``trl_precompute``: ``DPOTrainer(precompute_ref_log_probs=True)``: TRL's own way to drop the copy.
* ``trl_best``: TRL's best CPU configuration: ``precompute_ref_log_probs=True`` plus length grouping
  (``pairs_common.TRL_BEST``; length = prompt + the longer response). ``DPOConfig.padding_free`` exists in
  TRL 1.16 but is disabled there ("temporarily unavailable after a refactor": it warns and pads), so it is
  not set. The table's palate/TRL ratio is against the fastest TRL DPO workload of the run.
* ``palate_kto``: the KTO recipe's path on the same pairs, split into one desirable and one undesirable rating
  each (``kto.unpaired``), each rating with its seeded mismatched partner (``encode_kto``), ``2 x batch-size``
  ratings per step (as many trained sequences as a DPO step), reference log-probs of both rows precomputed once
  (``reference_cache.reference_logprobs``, as ``kto.reference=precompute``), then per step ``kto_step`` (own rows
  with gradients, mismatched rows without) -> backward -> clip -> palate AdamW.
* ``trl_kto``: ``KTOTrainer(precompute_ref_log_probs=True)`` on the same ratings (conversational unpaired
  format), ``2 x batch-size`` per step, sequential sampling (TRL's KL term requires it), its KL completions
  cycled within the batch.
  KTO rows: tokens/s counts the real tokens of the rated (trained) rows only; the mismatched (KL) rows are
  extra forward-only work on both sides, so KTO's MFU figure undercounts its FLOPs.

The reference pass counts: for palate, plain and trl_precompute, the time spent precomputing reference
log-probs is charged to the timed steps in proportion to the tokens they cover (for TRL, the precompute
pass over the timed steps' pairs is measured the same way: the whole ``train()`` call is timed,
including TRL's precompute, and the warm-up share is removed by tokens). Tokens/s counts real
(non-padding) tokens of chosen and rejected sequences of the timed steps, for every workload alike (a pair's
prompt twice). palate runs a pair's prompt once: its padding is of the positions it runs, and its GFLOP/s and
MFU count the real tokens it ran (``computed_real_tokens``), not the ones it saved.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import autocast, palate_model, resolve_precision  # noqa: E402
from pairs_common import (  # noqa: E402
    RESULT_TAG,
    TRL_BEST,
    add_length_column,
    add_arguments,
    charge_reference,
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

WORKLOADS = ("palate", "plain", "trl", "trl_precompute", "trl_best", "palate_kto", "trl_kto")
DPO_TRL = ("trl", "trl_precompute", "trl_best")  # the TRL configurations palate's DPO is compared with
TRL_CONFIGS = {"trl": "DPOTrainer defaults (reference = second model copy, random batches), the run's precision, no checkpointing",
               "trl_precompute": "+ precompute_ref_log_probs=True",
               "trl_best": "+ precompute_ref_log_probs=True + train_sampling_strategy=group_by_length "
                           "(padding_free is disabled in TRL 1.16's DPOTrainer)",
               "trl_kto": "KTOTrainer, precompute_ref_log_probs=True, sequential sampling (required by its KL term)"}
OUT = Path(__file__).resolve().parent / "out" / "dpo.json"
TARGETS = {"tps_vs_trl": 2.0, "rss_vs_trl": 0.6}  # issue 27, against TRL's better configuration
BETA = 0.1


def worker_palate(args) -> dict:
    from palate.infra.device import keep_freed_memory

    kept = keep_freed_memory()
    torch, tok, model = setup_worker(args)
    applied = palate_model(model, args.precision)
    from palate.infra import session
    from palate.infra.optim import adamw, scheduler
    from palate.models.logprobs import sequence_logprobs
    from palate.recipes.dpo import DPOSpec, pair_loss, reference_logprobs

    pairs = selected_pairs(args.data, (args.warmup + args.steps) * args.batch_size)
    batches, info = palate_batches(args, tok, pairs)
    env = session.Env(torch.device("cpu"), args.precision, False, False)
    t0 = time.perf_counter()
    table = reference_logprobs(model, batches, len(pairs), env)  # once per dataset in the recipe
    ref_seconds = time.perf_counter() - t0
    ref = [table[torch.tensor(b.indices)] for b in batches]
    spec = DPOSpec(beta=BETA)
    optimizer = adamw(model, args.lr, 0.0, (0.9, 0.999))
    sched = scheduler(optimizer, 0, len(batches), 0.1)

    def step(b, ref_rows):
        pol, counts = sequence_logprobs(model, b)
        return pair_loss(spec, pol, counts, ref_rows).losses.mean()

    secs, toks, slots, losses, u0 = train_loop("palate", args, torch, model, batches, ref, step, optimizer, sched.step)
    batch_slots, slots, computed = slots, *map(list, zip(*(computed_positions(b) for b in batches)))
    out = summarize("palate", args, charge_reference(secs, toks, ref_seconds), toks, slots, {
        "losses": losses, "batches_fingerprint": fingerprint(batches), "reference_seconds": ref_seconds,
        "keep_freed_memory": kept, **applied, "data": info, "timed_usage": usage_delta(u0, usage()), "batch_slots": batch_slots,
    })
    out["padding_fraction_batch_tensors"] = 1 - out["real_tokens"] / max(1, sum(batch_slots[args.warmup:]))
    return credit_computed(out, computed, args.warmup)


def computed_positions(batch) -> tuple[int, int]:
    """(positions palate's forwards run, real tokens among them) for a batch: with each pair's prompt run once
    (``models.logprobs.shared_prompts``) the prompts' and the completions' buckets' padded positions (a
    completion's last token predicts nothing and is not run), else the batch's."""
    from palate.models.logprobs import shared_prompts

    shared = shared_prompts(batch)
    return (batch.n_slots, batch.n_tokens) if shared is None else shared.positions(predict=True)


def kto_ratings(args):
    """The benchmark's pairs as KTO ratings (ties dropped, as the recipe does), and the skip log."""
    from palate.data.errors import SkipLog
    from palate.recipes.kto import unpaired

    pairs = selected_pairs(args.data, (args.warmup + args.steps) * args.batch_size)
    skips = SkipLog()
    return unpaired([p for p in pairs if not p.tie], skips), skips


def worker_palate_kto(args) -> dict:
    from palate.infra.device import keep_freed_memory

    kept = keep_freed_memory()
    torch, tok, model = setup_worker(args)
    applied = palate_model(model, args.precision)
    from palate.data.batching import group_batches
    from palate.infra import session
    from palate.infra.optim import adamw, scheduler
    from palate.recipes.kto import KTOSpec, encode_kto, kto_batches, kto_step
    from palate.recipes.reference_cache import reference_logprobs

    ratings, skips = kto_ratings(args)
    groups = encode_kto(tok, ratings, args.max_length, skips, None, True, 0)
    per_step, need = 2 * args.batch_size, args.warmup + args.steps
    pairs, epoch = [], 0
    while len(pairs) < need:
        pairs += kto_batches(groups, per_step, tok.pad_token_id, 0, epoch)
        epoch += 1
    pairs = pairs[:need]
    env = session.Env(torch.device("cpu"), args.precision, False, False)
    t0 = time.perf_counter()  # the recipe's precompute: own and mismatched rows of every rating, once
    table = reference_logprobs(model, group_batches(groups, per_step, tok.pad_token_id, 0, 0), len(ratings), env)
    ref_seconds = time.perf_counter() - t0
    spec = KTOSpec(beta=BETA)
    optimizer = adamw(model, args.lr, 0.0, (0.9, 0.999))
    sched = scheduler(optimizer, 0, need, 0.1)

    def step(own, kl):
        loss, _ = kto_step(model, (own, kl), ratings, table, None, spec, env, len(own.indices))
        return loss

    own = [o for o, _ in pairs]
    secs, toks, slots, losses, u0 = train_loop("palate_kto", args, torch, model, own, [k for _, k in pairs], step,
                                               optimizer, sched.step)
    return summarize("palate_kto", args, charge_reference(secs, toks, ref_seconds), toks, slots, {
        "losses": losses, "batches_fingerprint": fingerprint(own), "reference_seconds": ref_seconds,
        "keep_freed_memory": kept, **applied, "data": {"ratings": len(groups), "skipped": skips.as_dict()},
        "kl_rows_real_tokens": sum(k.n_tokens for _, k in pairs), "timed_usage": usage_delta(u0, usage()),
    })


def worker_plain(args) -> dict:
    torch, tok, model = setup_worker(args)
    import torch.nn.functional as F

    pairs = selected_pairs(args.data, (args.warmup + args.steps) * args.batch_size)
    batches, info = palate_batches(args, tok, pairs)

    def logps(b):
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
        labels = b.labels[:, 1:]
        mask = labels != -100
        per_token = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
        return (per_token * mask).sum(-1)

    t0 = time.perf_counter()
    model.eval()
    with torch.no_grad(), autocast(args.precision):
        ref = [logps(b).view(-1, 2) for b in batches]
    model.train()
    ref_seconds = time.perf_counter() - t0
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    def step(b, ref_rows):
        pol = logps(b).view(-1, 2)
        h = (pol[:, 0] - ref_rows[:, 0]) - (pol[:, 1] - ref_rows[:, 1])
        return -F.logsigmoid(BETA * h).mean()

    secs, toks, slots, losses, u0 = train_loop("plain", args, torch, model, batches, ref, step, optimizer, lambda: None)
    return summarize("plain", args, charge_reference(secs, toks, ref_seconds), toks, slots, {
        "losses": losses, "batches_fingerprint": fingerprint(batches), "reference_seconds": ref_seconds,
        "data": info, "timed_usage": usage_delta(u0, usage()),
    })


def worker_trl(args, precompute: bool = False, best: bool = False) -> dict:
    torch, tok, model = setup_worker(args)
    import trl
    from trl import DPOConfig, DPOTrainer

    name = "trl_best" if best else "trl_precompute" if precompute else "trl"
    pairs = selected_pairs(args.data, (args.warmup + args.steps) * args.batch_size)
    ds = trl_pairs_dataset(pairs)
    cfg = DPOConfig(**trl_common_args(args, "bench-dpo-trl-"), beta=BETA, loss_type=["sigmoid"],
                    precompute_ref_log_probs=precompute, **(TRL_BEST if best else {}))
    ref_timer = timed_reference_pass(DPOTrainer)
    t_init = time.perf_counter()
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    init_seconds = time.perf_counter() - t_init
    if best:
        add_length_column(trainer, lambda e: (e["prompt_ids"] + e["chosen_ids"], e["prompt_ids"] + e["rejected_ids"]))
    secs, toks, slots, timed = train_trl_timed(trainer, args, name)
    ref_seconds = ref_timer["seconds"]
    if precompute:  # TRL's precompute ran in __init__: charge it like palate's
        secs = charge_reference(secs, toks, ref_seconds)
    return summarize(name, args, secs, toks, slots, {
        "timed_usage": timed, "records": len(ds), "train_examples_after_prepare": len(trainer.train_dataset),
        "trl_version": trl.__version__, "reference_seconds": ref_seconds, "init_seconds": init_seconds,
        "losses": [], "has_ref_model_copy": trainer.ref_model is not None, "trl_config": TRL_CONFIGS[name],
    })


def worker_trl_kto(args) -> dict:
    torch, tok, model = setup_worker(args)
    import random

    import datasets
    import trl
    from trl import KTOConfig, KTOTrainer

    from palate.data.records import prompt_messages
    from palate.recipes.kto import desirable

    ratings, _ = kto_ratings(args)
    # a pair's two ratings would be neighbours, and TRL's KL completion of each example is its neighbour's
    # (cycled within the fixed-order batch): shuffle once so that the mismatched completion answers another prompt
    random.Random(0).shuffle(ratings)
    ds = datasets.Dataset.from_list([{"prompt": prompt_messages(r.prompt),
                                      "completion": [{"role": "assistant", "content": r.response}],
                                      "label": desirable(r)} for r in ratings])
    common = {**trl_common_args(args, "bench-kto-trl-"), "per_device_train_batch_size": 2 * args.batch_size}
    cfg = KTOConfig(**common, beta=BETA, precompute_ref_log_probs=True, train_sampling_strategy="sequential")
    ref_timer = timed_reference_pass(KTOTrainer)
    t_init = time.perf_counter()
    trainer = KTOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    init_seconds = time.perf_counter() - t_init
    secs, toks, slots, timed = train_trl_timed(trainer, args, "trl_kto")
    ref_seconds = ref_timer["seconds"]
    return summarize("trl_kto", args, charge_reference(secs, toks, ref_seconds), toks, slots, {
        "timed_usage": timed, "records": len(ds), "train_examples_after_prepare": len(trainer.train_dataset),
        "trl_version": trl.__version__, "reference_seconds": ref_seconds, "init_seconds": init_seconds,
        "losses": [], "has_ref_model_copy": trainer.ref_model is not None, "trl_config": TRL_CONFIGS["trl_kto"],
    })


def timed_reference_pass(trainer_cls) -> dict:
    """Time a TRL trainer's own reference pass (``_precompute_ref_logps``, not its tokenisation): the returned
    dict's ``seconds`` grows by each call's duration."""
    ref_timer = {"seconds": 0.0}
    original = trainer_cls._precompute_ref_logps

    def timed_precompute(self, *a, **k):
        t = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            ref_timer["seconds"] += time.perf_counter() - t

    trainer_cls._precompute_ref_logps = timed_precompute
    return ref_timer


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap, WORKLOADS, data="bundled:preferences", lr=1e-6)
    args = ap.parse_args(argv)
    if args.worker:
        args.precision = resolve_precision(args.precision)
        fn = {"palate": worker_palate, "plain": worker_plain, "trl": worker_trl,
              "trl_precompute": lambda a: worker_trl(a, precompute=True),
              "trl_best": lambda a: worker_trl(a, precompute=True, best=True),
              "palate_kto": worker_palate_kto, "trl_kto": worker_trl_kto}[args.worker]
        result = fn(args)
        sys.stdout.flush()
        print(RESULT_TAG + json.dumps(result), flush=True)
    else:
        run_all(str(Path(__file__).resolve()), args, "DPO benchmark (reference passes charged to the timed steps)", OUT,
                lambda r: {} if r.get("tps_vs_trl") is None else {
                    "palate >= 2x TRL's better config tokens/s": r["tps_vs_trl"] >= TARGETS["tps_vs_trl"],
                    "palate peak RSS <= 0.6x TRL's better config": r["rss_vs_trl"] <= TARGETS["rss_vs_trl"]},
                lm_head=True, trl_configs=TRL_CONFIGS, headline_trl=DPO_TRL,
                extra_pairs=[("palate_kto", "trl_kto")])


if __name__ == "__main__":
    main()
