"""SFT throughput and memory on CPU: palate vs TRL's SFTTrainer vs a plain PyTorch loop.

    python bench/sft.py                      # 2 warm-up + 10 timed steps, batch 4, max_length 256
    python bench/sft.py --repeats 3          # 3 interleaved rounds, medians and per-round paired ratios
    python bench/sft.py --steps 5 --warmup 1 --only palate plain

Each workload runs in its own subprocess (``python bench/sft.py --worker NAME ...``) so that peak RSS
(``ru_maxrss``) belongs to that workload alone; the parent collects one JSON line from each child,
prints a table and writes ``bench/out/sft.json``.

Same data for all three: the records of ``--data`` (default ``bundled:demonstrations``) in a fixed
shuffled order (seed 0), of which the first ``(warmup + steps) * batch_size`` are used.

* ``palate``: palate's pipeline (``encode_demonstrations`` + ``epoch_batches`` with length bucketing
  within those examples) and the SFT recipe's inner loop: ``batch_loss`` (decoder -> hidden states
  of target positions only -> lm_head -> cross-entropy), backward, ``clip_grad_norm_``, palate's
  AdamW (``palate.infra.optim.adamw``) + warmup-cosine schedule, ``zero_grad(set_to_none=True)``;
  ``keep_freed_memory()`` as ``session.start`` does.
* ``plain``: the SAME palate-collated batches through ``model(input_ids, attention_mask,
  labels=labels).loss``, backward, ``clip_grad_norm_``, ``torch.optim.AdamW`` (the ceiling).
* ``trl``: ``SFTTrainer.train()`` on the same records as prompt/completion conversations, its own
  default collation (random batches padded to the batch's longest), completion-only loss,
  the run's precision (``--precision``: fp32, or bf16 = ``bf16=True``), no gradient checkpointing,
  ``max_steps = warmup + steps``.
* ``trl_best``: the same with length grouping (``train_sampling_strategy="group_by_length"``, which
  replaced ``group_by_length=True`` in transformers 5): batches of similar lengths, still padded.
* ``trl_packed``: the same with TRL's padding-free packing (``packing=True``, best-fit-decreasing into
  rows of ``max_length``, flattened into one sequence with position ids restarting per record). On this
  SDPA attention it is correct: transformers 5.23 builds a block-diagonal causal mask from the position
  ids when no attention mask is given (no cross-contamination), though attention then runs with an explicit
  mask over the whole flattened batch instead of the fused causal kernel. Plain ``padding_free=True``
  without packing is refused by TRL 1.16 unless ``max_length=None`` (it would not truncate), which would
  train other tokens than the others do. A step then holds more records (4 rows of up to 256 tokens);
  the records cycle. The TRL ratio in the table is against the fastest TRL workload of the run.

Timing is identical for all three: a timed step lasts from the end of the previous optimizer step to
the end of its own (so data fetching, collation and logging between steps count), and tokens/s is
real (non-padding) tokens of the timed steps divided by their summed wall time.

This 2-core machine is noisy (±20% between runs) and is sometimes shared: each worker records the CPU
time other processes used while it was timed, and the table flags a contended run with a WARNING.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import autocast, palate_model  # noqa: E402

RESULT_TAG = "BENCH_RESULT "
WORKLOADS = ("palate", "plain", "trl", "trl_best", "trl_packed")
TRL_CONFIGS = {"trl": "SFTTrainer defaults (random batches, padded), the run's precision, no gradient checkpointing",
               "trl_best": "+ train_sampling_strategy=group_by_length",
               "trl_packed": "+ packing=True (bfd, padding-free: flattened rows, position ids; SDPA with a "
                             "block-diagonal mask)"}
OUT = Path(__file__).resolve().parent / "out" / "sft.json"
TARGETS = {"tps_vs_plain": 0.9, "tps_vs_trl": 1.5}  # issue 27: >= 1.5x TRL's better configuration


# ----------------------------------------------------------------------------- shared helpers


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _system_cpu() -> tuple[float, float]:
    """System-wide (busy, steal) CPU seconds from /proc/stat's cpu line."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
        return (user + nice + system + irq + softirq) / hz, steal / hz
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def usage() -> tuple:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return (ru.ru_utime, ru.ru_stime, ru.ru_minflt, ru.ru_majflt, ru.ru_nivcsw, *_system_cpu(),
            time.perf_counter())


def usage_delta(a, b) -> dict:
    """Between two :func:`usage` readings: this process's CPU seconds (user, kernel), page faults and
    involuntary context switches; the hypervisor's steal time; and ``foreign_cpu_s``, CPU time that other
    processes on this machine used meanwhile (another job running here makes the timing meaningless)."""
    own = (b[0] - a[0]) + (b[1] - a[1])
    return {"cpu_user_s": b[0] - a[0], "cpu_sys_s": b[1] - a[1], "minor_faults": b[2] - a[2],
            "major_faults": b[3] - a[3], "involuntary_switches": b[4] - a[4], "steal_s": b[6] - a[6],
            "foreign_cpu_s": max(0.0, (b[5] - a[5]) - own), "wall_s": b[7] - a[7]}


def contended(u: dict) -> bool:
    """Other processes took more than 10% of the machine's CPU while this workload was timed."""
    return u["foreign_cpu_s"] > 0.1 * u["wall_s"] * (os.cpu_count() or 1)


def selected_records(source: str, n: int):
    """The first ``n`` records of ``source`` in a fixed shuffled order (seed 0)."""
    from palate.data.readers import read_demonstrations

    records = read_demonstrations(source)
    order = list(range(len(records)))
    random.Random(0).shuffle(order)
    if len(records) < n:
        print(f"[bench] note: only {len(records)} records in {source}, fewer than the {n} asked for; "
              "batches repeat over epochs", file=sys.stderr)
    return [records[i] for i in order[:n]]


def palate_batches(args, tok, records):
    """palate's pipeline: encode + bucketed batches within the selected examples, epochs repeated as needed."""
    from palate.data.batching import epoch_batches
    from palate.data.errors import SkipLog
    from palate.data.tokenize import encode_demonstrations

    skips = SkipLog()
    examples = encode_demonstrations(tok, records, max_length=args.max_length, skips=skips)
    need = args.warmup + args.steps
    batches, epoch = [], 0
    while len(batches) < need:
        batches += epoch_batches(examples, args.batch_size, tok.pad_token_id, 0, epoch, bucket=True,
                                 max_length=args.max_length)
        epoch += 1
    return batches[:need], {"examples": len(examples), "skipped": skips.as_dict()}


def fingerprint(batches) -> str:
    h = hashlib.sha256()
    for b in batches:
        h.update(b.input_ids.numpy().tobytes())
        h.update(b.labels.numpy().tobytes())
    return h.hexdigest()[:16]


def setup_worker(args):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    from palate.models.load import load_model, load_tokenizer

    tok = load_tokenizer("bundled")
    model = load_model("bundled", dtype="fp32", device="cpu")
    model.config.use_cache = False
    model.train()
    args.rss_after_load_gib = peak_rss_gib()
    return torch, tok, model


def summarize(name: str, args, step_seconds, step_tokens, step_slots, extra) -> dict:
    timed_s = step_seconds[args.warmup:]
    timed_tok = step_tokens[args.warmup:]
    timed_slots = step_slots[args.warmup:]
    wall = sum(timed_s)
    tokens = sum(timed_tok)
    return {
        "workload": name,
        "timed_steps": len(timed_s),
        "timed_seconds": wall,
        "real_tokens": tokens,
        "slots": sum(timed_slots),
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "padding_fraction": 1 - tokens / sum(timed_slots) if sum(timed_slots) else 0.0,
        "s_per_step": wall / len(timed_s) if timed_s else 0.0,
        "median_s_per_step": statistics.median(timed_s) if timed_s else 0.0,
        "peak_rss_gib": peak_rss_gib(),
        "step_seconds": step_seconds,
        "step_tokens": step_tokens,
        "step_slots": step_slots,
        "torch_threads": __import__("torch").get_num_threads(),
        "rss_after_load_gib": getattr(args, "rss_after_load_gib", None),
        **extra,
    }


# ----------------------------------------------------------------------------- workers


def worker_palate(args) -> dict:
    from palate.infra.device import keep_freed_memory

    kept = keep_freed_memory()  # as session.start does, before any big allocation
    torch, tok, model = setup_worker(args)
    applied = palate_model(model, args.precision)
    from palate.infra.optim import adamw, scheduler
    from palate.recipes.sft import batch_loss

    records = selected_records(args.data, (args.warmup + args.steps) * args.batch_size)
    batches, data_info = palate_batches(args, tok, records)
    total = len(batches)
    optimizer = adamw(model, args.lr, 0.0, (0.9, 0.999))
    sched = scheduler(optimizer, 0, total, 0.1)  # constant-ish; the schedule does not change the cost
    params = [p for p in model.parameters() if p.requires_grad]

    secs, toks, slots, losses, phases = [], [], [], [], []
    u0 = usage()
    t_prev = time.perf_counter()
    for step in range(total):
        micro = [batches[step]]  # grad_accum = 1, as the recipe's BatchStream yields
        n_targets = sum(b.n_targets for b in micro)
        loss_sum = 0.0
        t0 = time.perf_counter()
        t_fwd = t_bwd = 0.0
        for b in micro:
            ta = time.perf_counter()
            with autocast(args.precision):
                loss = batch_loss(model, b, normalizer=n_targets)
            tb = time.perf_counter()
            loss.backward()
            tc = time.perf_counter()
            t_fwd += tb - ta
            t_bwd += tc - tb
            loss_sum += float(loss.detach())
        td = time.perf_counter()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        sched.step()
        optimizer.zero_grad(set_to_none=True)
        now = time.perf_counter()
        secs.append(now - t_prev)
        t_prev = now
        if step + 1 == args.warmup:
            u0 = usage()
        toks.append(sum(b.n_tokens for b in micro))
        slots.append(sum(b.n_slots for b in micro))
        losses.append(loss_sum)
        phases.append({"prep": t0 - (now - secs[-1]), "fwd": t_fwd, "bwd": t_bwd, "opt": now - td,
                       "grad_norm": float(grad_norm)})
        print(f"[palate] step {step + 1}/{total}: {secs[-1]:.2f}s, {toks[-1]} tokens, loss {loss_sum:.4f}",
              file=sys.stderr, flush=True)
    return summarize("palate", args, secs, toks, slots, {
        "losses": losses, "phases": phases, "batches_fingerprint": fingerprint(batches),
        "keep_freed_memory": kept, **applied, "data": data_info, "timed_usage": usage_delta(u0, usage()),
    })


def worker_plain(args) -> dict:
    torch, tok, model = setup_worker(args)
    records = selected_records(args.data, (args.warmup + args.steps) * args.batch_size)
    batches, data_info = palate_batches(args, tok, records)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    secs, toks, slots, losses, phases = [], [], [], [], []
    u0 = usage()
    t_prev = time.perf_counter()
    for step, b in enumerate(batches):
        t0 = time.perf_counter()
        with autocast(args.precision):
            loss = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
        tb = time.perf_counter()
        loss.backward()
        tc = time.perf_counter()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        now = time.perf_counter()
        secs.append(now - t_prev)
        t_prev = now
        if step + 1 == args.warmup:
            u0 = usage()
        toks.append(b.n_tokens)
        slots.append(b.n_slots)
        losses.append(float(loss.detach()))
        phases.append({"prep": t0 - (now - secs[-1]), "fwd": tb - t0, "bwd": tc - tb, "opt": now - tc,
                       "grad_norm": float(grad_norm)})
        print(f"[plain] step {step + 1}/{len(batches)}: {secs[-1]:.2f}s, {toks[-1]} tokens, loss {losses[-1]:.4f}",
              file=sys.stderr, flush=True)
    return summarize("plain", args, secs, toks, slots, {
        "losses": losses, "phases": phases, "batches_fingerprint": fingerprint(batches), "data": data_info,
        "timed_usage": usage_delta(u0, usage()),
    })


def worker_trl(args, variant: str = "trl") -> dict:
    torch, tok, model = setup_worker(args)
    import datasets
    import trl
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from palate.data.records import prompt_messages

    records = selected_records(args.data, (args.warmup + args.steps) * args.batch_size)
    ds = datasets.Dataset.from_list([
        {"prompt": prompt_messages(r.prompt), "completion": [{"role": "assistant", "content": r.response}]}
        for r in records
    ])
    total = args.warmup + args.steps

    class Timer(TrainerCallback):
        def __init__(self):
            self.begin, self.end, self.losses = [], [], []

        def on_train_begin(self, a, state, control, **kw):
            self.t_train_begin = time.perf_counter()
            self.u0 = usage()

        def on_step_begin(self, a, state, control, **kw):
            self.begin.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            self.end.append(time.perf_counter())
            if len(self.end) == args.warmup:
                self.u0 = usage()
            self.u1 = usage()
            print(f"[trl] step {state.global_step}/{total}: "
                  f"{self.end[-1] - (self.end[-2] if len(self.end) > 1 else self.t_train_begin):.2f}s",
                  file=sys.stderr, flush=True)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    out_dir = tempfile.mkdtemp(prefix="bench-sft-trl-")
    cfg = SFTConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=total,
        learning_rate=args.lr,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=args.max_length,
        completion_only_loss=True,
        packing=variant == "trl_packed",
        padding_free=False,
        **({"train_sampling_strategy": "group_by_length"} if variant == "trl_best" else {}),
        bf16=args.precision == "bf16",
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        data_seed=0,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    timer = Timer()
    trainer.add_callback(timer)

    # Count real tokens as they are collated (accelerate may fetch a batch ahead, order is preserved).
    counts = []
    inner = trainer.data_collator

    def counting_collator(features):
        out = inner(features)
        mask = out.get("attention_mask")
        n = int(mask.sum()) if mask is not None else int(out["input_ids"].numel())  # padding-free: no mask
        counts.append((n, int(mask.numel()) if mask is not None else n, int((out["labels"] != -100).sum())))
        return out

    trainer.data_collator = counting_collator
    # The train dataloader is built inside train(); make sure it picks the wrapper up.
    torch.set_num_threads(args.threads)
    trainer.train()
    torch_threads_after = torch.get_num_threads()

    ends = timer.end
    secs = [ends[0] - timer.t_train_begin] + [b - a for a, b in zip(ends, ends[1:])]
    toks = [c[0] for c in counts[: len(secs)]]
    slots = [c[1] for c in counts[: len(secs)]]
    in_step = [e - b for b, e in zip(timer.begin, timer.end)]
    return summarize(variant, args, secs, toks, slots, {
        "trl_config": TRL_CONFIGS[variant], "losses": timer.losses, "in_step_seconds": in_step, "timed_usage": usage_delta(timer.u0, timer.u1),
        "batches_collated": len(counts),
        "label_tokens": [c[2] for c in counts[: len(secs)]], "records": len(ds),
        "train_examples_after_prepare": len(trainer.train_dataset),
        "trl_version": trl.__version__, "torch_threads_after_train": torch_threads_after,
        "trl_args": {"bf16": cfg.bf16, "fp16": cfg.fp16, "gradient_checkpointing": cfg.gradient_checkpointing,
                     "completion_only_loss": trainer.completion_only_loss, "optim": str(cfg.optim),
                     "padding_free": trainer.padding_free, "max_length": cfg.max_length, "packing": cfg.packing,
                     "train_sampling_strategy": cfg.train_sampling_strategy},
    })


# ----------------------------------------------------------------------------- parent


def run_worker(name: str, args, data: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--data", data,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length), "--lr", str(args.lr), "--threads", str(args.threads),
           "--precision", args.precision]
    print(f"[bench] running {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        raise SystemExit(f"[bench] worker {name} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["process_seconds"] = time.perf_counter() - t0
    return result


def n_params() -> int:
    import json as _json

    from palate.models.load import bundled_model_dir

    cfg = _json.loads((bundled_model_dir() / "config.json").read_text())
    h, i, L, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = h // heads
    per_layer = h * h * 2 + 2 * h * kv * hd + 3 * h * i + 2 * h
    return L * per_layer + v * h * (1 if cfg.get("tie_word_embeddings", True) else 2) + h


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main_parent(args) -> None:
    data = args.data
    b0 = _system_cpu()[0]
    time.sleep(2)
    busy = (_system_cpu()[0] - b0) / 2
    if busy > 0.2:
        print(f"[bench] WARNING: the machine is already busy ({busy:.1f} CPUs in use before the benchmark "
              "starts); timings will be contended", file=sys.stderr)
    # Rounds interleave the workloads (palate, plain, trl, palate, ...) so that slow phases of this noisy
    # machine hit them alike; ratios are taken within a round, then the median over rounds is reported.
    from record import LoadWatch, flops_per_token, gemm_peak, roofline_line

    runs: dict[str, list[dict]] = {name: [] for name in args.only}
    with LoadWatch() as load:
        # the MFU denominator, measured on this machine in this run, in the precision the workloads run in
        peaks = [gemm_peak(args.threads, precision=args.precision)]
        for rnd in range(args.repeats):
            for name in args.only:
                if args.repeats > 1:
                    print(f"[bench] round {rnd + 1}/{args.repeats}", file=sys.stderr)
                runs[name].append(run_worker(name, args, data))
        peaks.append(gemm_peak(args.threads, precision=args.precision))
    peak = max(peaks, key=lambda p: p["peak_gflops"])
    flops = flops_per_token(lm_head=True)
    params = n_params()
    for rs in runs.values():
        for r in rs:
            r["achieved_gflops"] = flops["flops_per_token"] * r["tokens_per_s"] / 1e9
            r["mfu_real_tokens"] = r["achieved_gflops"] / peak["peak_gflops"]
    summary_keys = ("tokens_per_s", "padding_fraction", "peak_rss_gib", "s_per_step", "median_s_per_step",
                    "mfu_real_tokens", "achieved_gflops", "timed_seconds", "real_tokens", "rss_after_load_gib")
    med = {name: {k: _median([r.get(k) for r in rs]) for k in summary_keys} for name, rs in runs.items()}
    trls = [n for n in args.only if n.startswith("trl")]
    best_trl = max(trls, key=lambda n: med[n]["tokens_per_s"] or 0.0) if trls else None

    def paired(a: str, b: str, key: str):
        if a not in runs or b not in runs:
            return None
        return _median([ra[key] / rb[key] for ra, rb in zip(runs[a], runs[b]) if rb[key]])

    ratios = {}
    if "palate" in runs:
        for other in ("plain", *trls):
            ratios[f"tps_vs_{other}"] = paired("palate", other, "tokens_per_s")
            ratios[f"rss_vs_{other}"] = paired("palate", other, "peak_rss_gib")
        if best_trl:  # "vs TRL" is against TRL's better configuration in this run
            ratios["tps_vs_trl_default"] = ratios.get("tps_vs_trl")
            ratios["rss_vs_trl_default"] = ratios.get("rss_vs_trl")
            ratios["tps_vs_trl"] = paired("palate", best_trl, "tokens_per_s")
            ratios["rss_vs_trl"] = paired("palate", best_trl, "peak_rss_gib")

    checks = {}
    if ratios.get("tps_vs_plain") is not None:
        checks["palate >= 0.9x plain tokens/s"] = ratios["tps_vs_plain"] >= TARGETS["tps_vs_plain"]
    if ratios.get("tps_vs_trl") is not None:
        checks["palate >= 1.5x TRL's better config tokens/s"] = ratios["tps_vs_trl"] >= TARGETS["tps_vs_trl"]
    if ratios.get("rss_vs_trl") is not None:
        checks["palate peak RSS <= TRL's"] = ratios["rss_vs_trl"] <= 1.0
    same = None
    if "palate" in runs and "plain" in runs:
        same = all(a["batches_fingerprint"] == b["batches_fingerprint"] for a, b in zip(runs["palate"], runs["plain"]))

    # ---- table
    lines = []
    lines.append(f"SFT benchmark: bundled SmolLM2-135M-Instruct {args.precision}, batch {args.batch_size}, max_length "
                 f"{args.max_length}, {args.warmup} warm-up + {args.steps} timed steps, {args.threads} threads, "
                 f"data {data}" + (f", median of {args.repeats} interleaved rounds" if args.repeats > 1 else ""))
    hdr = f"{'workload':<10} {'real tok/s':>10} {'padding':>8} {'peak RSS GiB':>12} {'s/step':>7} {'GFLOP/s':>7} " \
          f"{'MFU':>6} {'tps/plain':>9} {'tps/bestTRL':>11} {'RSS/plain':>9} {'RSS/bestTRL':>11}"
    lines.append(hdr)
    lines.append("-" * len(hdr))

    def fmt(x):
        return f"{x:.2f}x" if x is not None else "-"

    for name in args.only:
        m = med[name]
        lines.append(
            f"{name:<10} {m['tokens_per_s']:>10.1f} {100 * m['padding_fraction']:>7.1f}% "
            f"{m['peak_rss_gib']:>12.2f} {m['s_per_step']:>7.2f} {m['achieved_gflops']:>7.1f} "
            f"{100 * m['mfu_real_tokens']:>5.1f}% "
            f"{fmt(paired(name, 'plain', 'tokens_per_s')):>9} {fmt(paired(name, best_trl, 'tokens_per_s')):>11} "
            f"{fmt(paired(name, 'plain', 'peak_rss_gib')):>9} {fmt(paired(name, best_trl, 'peak_rss_gib')):>11}"
        )
    for name in trls:
        lines.append(f"  {name}: {TRL_CONFIGS[name]}" + ("  <- TRL's better configuration here" if name == best_trl else ""))
    lines.append(roofline_line(peak, {n: med[n]["tokens_per_s"] for n in args.only}, flops))
    lw = load.summary()
    if lw:
        lines.append(f"load average during the run: mean {lw['load_1m_mean']}, max {lw['load_1m_max']} on "
                     f"{lw['cores']} cores" + (" (SHARED MACHINE: other work ran alongside)"
                                               if lw["load_1m_mean"] > 1.1 * args.threads else ""))
    lines.append("")
    for name in args.only:
        for i, r in enumerate(runs[name]):
            extra = ""
            if "phases" in r:
                ph = r["phases"][args.warmup:]
                if ph:
                    extra = ", mean fwd {:.2f}s bwd {:.2f}s opt {:.2f}s".format(
                        *(statistics.mean(x[k] for x in ph) for k in ("fwd", "bwd", "opt")))
            u = r["timed_usage"]
            tag = f"{name}" + (f" round {i + 1}" if args.repeats > 1 else "")
            lines.append(f"{tag}: {r['tokens_per_s']:.1f} tok/s, {r['real_tokens']} real tokens in "
                         f"{r['timed_seconds']:.1f}s over {r['timed_steps']} timed steps (median "
                         f"{r['median_s_per_step']:.2f} s/step){extra}; CPU user {u['cpu_user_s']:.0f}s sys "
                         f"{u['cpu_sys_s']:.0f}s, {u['minor_faults'] / 1e6:.2f}M minor faults, steal "
                         f"{u['steal_s']:.0f}s, other processes {u['foreign_cpu_s']:.0f} CPU-s"
                         f"{' (CONTENDED)' if contended(u) else ''}; RSS after model load {r['rss_after_load_gib']:.2f} GiB; "
                         f"first losses {[round(x, 4) for x in r['losses'][:3]]}")
    if same is not None:
        p0, q0 = runs["palate"][0], runs["plain"][0]
        lines.append(f"palate and plain ran identical batches: {'yes' if same else 'NO'}"
                     + (f"; step-1 loss palate {p0['losses'][0]:.5f} vs plain {q0['losses'][0]:.5f}" if same else ""))
    noisy = [f"{name}" + (f" round {i + 1}" if args.repeats > 1 else "")
             for name in args.only for i, r in enumerate(runs[name]) if contended(r["timed_usage"])]
    if noisy:
        lines.append(f"WARNING: other processes used >10% of the CPU while timing {', '.join(noisy)}: "
                     "those numbers are not trustworthy; rerun on an idle machine (see `top`)")
    if checks:
        ok = all(checks.values())
        lines.append(("PASS" if ok else "FAIL") + ": " + "; ".join(
            f"{k} {'ok' if v else 'MISSED'}" for k, v in checks.items()))
    text = "\n".join(lines)
    print(text)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "settings": {"data": data, "batch_size": args.batch_size, "max_length": args.max_length,
                     "warmup": args.warmup, "steps": args.steps, "lr": args.lr, "threads": args.threads,
                     "repeats": args.repeats, "model": "bundled (SmolLM2-135M-Instruct)", "precision": args.precision, "params": params,
                     "gemm_peak_gflops": peak["peak_gflops"]},
        "summary": med, "ratios": ratios, "targets": TARGETS, "checks": checks,
        "passed": all(checks.values()) if checks else None, "same_batches_palate_plain": same,
        "contended_runs": noisy,
        "runs": runs, "table": text,
    }
    OUT.write_text(json.dumps(payload, indent=2))
    from record import write_result

    run_info = {"threads": args.threads, "load_during_run": lw, "gemm_peak": peak, "gemm_probes": peaks,
                "flops": flops, "mfu_real_tokens": {n: med[n]["mfu_real_tokens"] for n in args.only},
                "padding_fraction": {n: med[n]["padding_fraction"] for n in args.only},
                "tokens_per_s": {n: med[n]["tokens_per_s"] for n in args.only},
                "trl_configs": {n: TRL_CONFIGS[n] for n in trls}, "trl_best_of_run": best_trl}
    payload["run"] = run_info
    OUT.write_text(json.dumps(payload, indent=2))
    res = write_result("sft", payload, metric="SFT training throughput", unit="real tokens/s",
                       palate=med.get("palate", {}).get("tokens_per_s"),
                       trl=med[best_trl]["tokens_per_s"] if best_trl else None,
                       plain=med.get("plain", {}).get("tokens_per_s"),
                       ratios={"palate_vs_trl": ratios.get("tps_vs_trl"), "palate_vs_plain": ratios.get("tps_vs_plain"),
                               "palate_vs_trl_default": ratios.get("tps_vs_trl_default")},
                       note="CONTENDED: " + ", ".join(noisy) if noisy else None, run=run_info)
    print(f"\nwritten {OUT} and {res}", file=sys.stderr)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    ap.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS), help="workloads to run")
    ap.add_argument("--data", default="bundled:demonstrations")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds; medians are reported")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="every workload's precision (auto: palate's choice on this CPU; TRL gets bf16=True for bf16)")
    args = ap.parse_args(argv)
    from record import resolve_precision

    args.precision = resolve_precision(args.precision)
    if args.worker:
        result = {"palate": worker_palate, "plain": worker_plain, "trl": worker_trl,
                  "trl_best": lambda a: worker_trl(a, "trl_best"),
                  "trl_packed": lambda a: worker_trl(a, "trl_packed")}[args.worker](args)
        sys.stdout.flush()
        print(RESULT_TAG + json.dumps(result), flush=True)
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
