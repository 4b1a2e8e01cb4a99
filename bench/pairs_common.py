"""Shared parts of the preference benchmarks (bench/reward.py, bench/dpo.py): the same pairs, the same
palate batches, one timing loop for palate and plain workers, worker subprocesses and the result table."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft import RESULT_TAG, _median, _system_cpu, contended, peak_rss_gib, usage  # noqa: E402,F401

# TRL's best CPU configuration, on top of the settings every TRL workload shares (:func:`trl_common_args`):
# length grouping (transformers' ``train_sampling_strategy="group_by_length"``, which replaced
# ``group_by_length=True``). Preference datasets have no ``input_ids`` column to take lengths from, so a
# ``length`` column (the longer sequence of the pair) is added, and kept (``remove_unused_columns=False``).
TRL_BEST = {"train_sampling_strategy": "group_by_length", "remove_unused_columns": False}


def selected_pairs(source: str, n: int):
    from palate.data.readers import read_preferences

    records = read_preferences(source)
    order = list(range(len(records)))
    random.Random(0).shuffle(order)
    return [records[i] for i in order[:n]]


def setup_worker(args, num_labels: int | None = None):
    """Threads, seeds, the bundled tokenizer and model (a 1-head reward model with ``num_labels=1``, its
    tokenizer given a pad token distinct from end-of-turn, as ``palate rm`` does)."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    from palate.models.load import load_model, load_tokenizer

    tok = load_tokenizer("bundled")
    if num_labels:
        from palate.models.heads import distinct_pad_token

        distinct_pad_token(tok)
    model = load_model("bundled", dtype="fp32", device="cpu", tokenizer=tok, num_labels=num_labels)
    if num_labels:
        model.config.pad_token_id = tok.pad_token_id
    model.config.use_cache = False
    model.train()
    args.rss_after_load_gib = peak_rss_gib()
    return torch, tok, model


def palate_batches(args, tok, pairs):
    from palate.data.batching import group_batches
    from palate.data.errors import SkipLog
    from palate.data.tokenize import encode_groups

    skips = SkipLog()
    groups = encode_groups(tok, pairs, args.max_length, skips=skips)
    need = args.warmup + args.steps
    batches, epoch = [], 0
    while len(batches) < need:
        batches += group_batches(groups, args.batch_size, tok.pad_token_id, 0, epoch)
        epoch += 1
    return batches[:need], {"pairs": len(groups), "skipped": skips.as_dict()}


def train_loop(name, args, torch, model, batches, ref, step_fn, optimizer, after_step):
    """Shared timing of palate and plain: ``step_fn(batch, ref_rows) -> loss``; reference time charged by tokens."""
    secs, toks, slots, losses = [], [], [], []
    u0 = usage()
    t_prev = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    from record import autocast

    for step, b in enumerate(batches):
        with autocast(args.precision):
            loss = step_fn(b, ref[step])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        after_step()
        optimizer.zero_grad(set_to_none=True)
        now = time.perf_counter()
        secs.append(now - t_prev)
        t_prev = now
        if step + 1 == args.warmup:
            u0 = usage()
        toks.append(b.n_tokens)
        slots.append(b.n_slots)
        losses.append(float(loss.detach()))
        print(f"[{name}] step {step + 1}/{len(batches)}: {secs[-1]:.2f}s, {toks[-1]} tokens, loss {losses[-1]:.4f}",
              file=sys.stderr, flush=True)
    return secs, toks, slots, losses, u0


def credit_computed(out: dict, computed: list[int], warmup: int) -> dict:
    """A palate result whose forwards ran ``computed`` real tokens per step (a shared prompt once) instead of the
    workload's real tokens: the computed total and rate (what its FLOPs are credited with) and its padding among
    the positions it ran (``out["slots"]``)."""
    out["computed_real_tokens"] = sum(computed[warmup:])
    out["computed_tokens_per_s"] = out["tokens_per_s"] * out["computed_real_tokens"] / max(1, out["real_tokens"])
    out["padding_fraction"] = 1 - out["computed_real_tokens"] / max(1, out["slots"])
    return out


def charge_reference(secs, toks, ref_seconds):
    """Add each step's share of a one-off reference pass (by tokens) to its time."""
    total = sum(toks)
    return [s + ref_seconds * t / total for s, t in zip(secs, toks)]


def run_worker(script: str, name: str, args) -> dict:
    cmd = [sys.executable, script, "--worker", name, "--data", args.data,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length), "--lr", str(args.lr), "--threads", str(args.threads),
           "--precision", args.precision]
    print(f"[bench] running {name}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"[bench] worker {name} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(RESULT_TAG):])


def is_trl(name: str) -> bool:
    return name.startswith("trl")


def run_all(script: str, args, title: str, out: Path, checks_of, lm_head: bool, trl_configs: dict[str, str],
            headline_trl: tuple[str, ...] | None = None, extra_pairs: list[tuple[str, str]] = ()) -> None:
    """Run every workload (interleaved rounds), print the table with ratios to palate, write ``out``.

    ``checks_of(ratios) -> {description: passed}`` states the issue's targets; ``ratios["tps_vs_trl"]`` is
    palate against TRL's better configuration (the TRL workload with the most tokens/s in this run).
    ``lm_head``: whether the workload's FLOPs include the vocabulary projection (for MFU);
    ``trl_configs``: each TRL workload's configuration in words; ``headline_trl``: the TRL workloads the
    ``palate`` workload is compared with (default: every TRL workload); ``extra_pairs``: further
    ``(palate workload, TRL workload)`` comparisons reported alongside (e.g. KTO next to DPO).
    """
    from record import LoadWatch, flops_per_token, gemm_peak, resolve_precision, roofline_line

    args.precision = resolve_precision(args.precision)

    b0 = _system_cpu()[0]
    time.sleep(2)
    if (_system_cpu()[0] - b0) / 2 > 0.2:
        print("[bench] WARNING: the machine is already busy; timings will be contended", file=sys.stderr)
    runs: dict[str, list[dict]] = {n: [] for n in args.only}
    with LoadWatch() as load:
        peaks = [gemm_peak(args.threads, precision=args.precision)]
        for _ in range(args.repeats):
            for n in args.only:
                runs[n].append(run_worker(script, n, args))
        peaks.append(gemm_peak(args.threads, precision=args.precision))
    peak = max(peaks, key=lambda p: p["peak_gflops"])
    flops = flops_per_token(lm_head)
    for rs in runs.values():
        for r in rs:
            # a workload that runs some real tokens once for two rows (palate DPO: a pair's shared prompt) is
            # credited with the FLOPs it ran, not with the tokens it saved
            r["achieved_gflops"] = flops["flops_per_token"] * r.get("computed_tokens_per_s", r["tokens_per_s"]) / 1e9
            r["mfu_real_tokens"] = r["achieved_gflops"] / peak["peak_gflops"]
    keys = ("tokens_per_s", "padding_fraction", "peak_rss_gib", "s_per_step", "mfu_real_tokens", "achieved_gflops",
            "reference_seconds", "computed_tokens_per_s")
    med = {n: {k: _median([r.get(k) for r in rs]) for k in keys} for n, rs in runs.items()}
    trls = [n for n in args.only if is_trl(n)]
    headline = [n for n in trls if headline_trl is None or n in headline_trl]
    best_trl = max(headline, key=lambda n: med[n]["tokens_per_s"] or 0.0) if headline else None

    def paired(a, b, key):
        if a not in runs or b not in runs:
            return None
        return _median([ra[key] / rb[key] for ra, rb in zip(runs[a], runs[b]) if rb[key]])

    ratios = {f"{k}_vs_{o}": paired("palate", o, key) for o in args.only if o != "palate"
              and (headline_trl is None or not is_trl(o) or o in headline_trl) and not o.startswith("palate")
              for k, key in (("tps", "tokens_per_s"), ("rss", "peak_rss_gib"))}
    for ours, theirs in extra_pairs:
        for k, key in (("tps", "tokens_per_s"), ("rss", "peak_rss_gib")):
            ratios[f"{ours}_{k}_vs_{theirs}"] = paired(ours, theirs, key)
    if best_trl:  # against TRL's better configuration in this run
        ratios["tps_vs_trl_default"] = ratios.get("tps_vs_trl")
        ratios["rss_vs_trl_default"] = ratios.get("rss_vs_trl")
        ratios["tps_vs_trl"] = paired("palate", best_trl, "tokens_per_s")
        ratios["rss_vs_trl"] = paired("palate", best_trl, "peak_rss_gib")
    checks = checks_of(ratios)
    lines = [f"{title}: bundled SmolLM2-135M-Instruct {args.precision}, {args.batch_size} pairs/step, max_length "
             f"{args.max_length}, {args.warmup} warm-up + {args.steps} timed steps, {args.threads} threads, data "
             f"{args.data}" + (f"; median of {args.repeats} rounds" if args.repeats > 1 else "")]
    hdr = f"{'workload':<15} {'real tok/s':>10} {'padding':>8} {'peak RSS GiB':>12} {'s/step':>7} {'GFLOP/s':>7} " \
          f"{'MFU':>6} {'ref pass s':>10} {'palate/this':>11} {'RSS/palate':>10}"
    lines += [hdr, "-" * len(hdr)]

    def cell(v, spec, scale=1.0, suffix=""):
        return format("-", ">" + spec.split(".")[0]) if v is None else format(v * scale, spec) + suffix

    base = {n: ours for ours, theirs in extra_pairs for n in (ours, theirs)}  # the palate row each row is set against
    for n in args.only:
        m = med[n]
        ours = base.get(n, "palate")
        lines.append(f"{n:<15} {cell(m['tokens_per_s'], '10.1f')} {cell(m['padding_fraction'], '7.1f', 100, '%')} "
                     f"{cell(m['peak_rss_gib'], '12.2f')} {cell(m['s_per_step'], '7.2f')} "
                     f"{cell(m['achieved_gflops'], '7.1f')} {cell(m['mfu_real_tokens'], '5.1f', 100, '%')} "
                     f"{cell(m['reference_seconds'] or 0, '10.1f')} "
                     f"{cell(paired(ours, n, 'tokens_per_s'), '10.2f', suffix='x')} "
                     f"{cell(paired(n, ours, 'peak_rss_gib'), '9.2f', suffix='x')}")
    for ours, theirs in extra_pairs:
        if ours in runs:
            lines.append(f"  {ours}, {theirs}: palate/this and RSS/palate set against {ours}, not palate")
    for n in trls:
        lines.append(f"  {n}: {trl_configs.get(n, '')}")
    lines.append(roofline_line(peak, {n: med[n]["computed_tokens_per_s"] or med[n]["tokens_per_s"] for n in args.only},
                               flops))
    if best_trl and ratios.get("tps_vs_trl") is not None:
        lines.append(f"palate vs TRL's better configuration here ({best_trl}): tokens/s "
                     f"{ratios['tps_vs_trl']:.2f}x, peak RSS {ratios['rss_vs_trl']:.2f}x")
    lines.append("palate vs others: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if v is not None))
    lw = load.summary()
    if lw:
        lines.append(f"load average during the run: mean {lw['load_1m_mean']}, max {lw['load_1m_max']} on "
                     f"{lw['cores']} cores" + (" (SHARED MACHINE: other work ran alongside)"
                                               if lw["load_1m_mean"] > 1.1 * args.threads else ""))
    noisy = [n for n in args.only for r in runs[n] if contended(r["timed_usage"])]
    if noisy:
        lines.append(f"WARNING: other processes used >10% of the CPU while timing {', '.join(noisy)}")
    if checks:
        lines.append(("PASS" if all(checks.values()) else "FAIL") + ": " + "; ".join(
            f"{k} {'ok' if v else 'MISSED'}" for k, v in checks.items()))
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_info = {"threads": args.threads, "load_during_run": lw, "gemm_peak": peak, "gemm_probes": peaks,
                "flops": flops, "mfu_real_tokens": {n: med[n]["mfu_real_tokens"] for n in args.only},
                "padding_fraction": {n: med[n]["padding_fraction"] for n in args.only},
                "tokens_per_s": {n: med[n]["tokens_per_s"] for n in args.only},
                "trl_configs": {n: trl_configs.get(n) for n in trls}, "trl_best_of_run": best_trl}
    payload = {"settings": vars(args), "summary": med, "ratios": ratios, "checks": checks, "contended": noisy,
               "run": run_info, "runs": runs, "table": text}
    out.write_text(json.dumps(payload, indent=2))
    from record import write_result

    tps = {n: med.get(n, {}).get("tokens_per_s") for n in ("palate", "plain")}
    res = write_result(out.stem, payload, metric=f"{title.split(' benchmark')[0]} training throughput",
                       unit="real tokens/s", palate=tps["palate"], trl=med[best_trl]["tokens_per_s"] if best_trl else None,
                       plain=tps["plain"],
                       ratios={"palate_vs_trl": ratios.get("tps_vs_trl"), "palate_vs_plain": ratios.get("tps_vs_plain"),
                               "palate_vs_trl_default": ratios.get("tps_vs_trl_default")},
                       note="CONTENDED: " + ", ".join(noisy) if noisy else None, run=run_info)
    print(f"\nwritten {out} and {res}", file=sys.stderr)


def add_length_column(trainer, sequences) -> None:
    """TRL_BEST's lengths: ``length`` = the longest of ``sequences(example)`` (token id lists) per example."""
    trainer.train_dataset = trainer.train_dataset.map(lambda e: {"length": max(len(x) for x in sequences(e))})


def add_arguments(ap, workloads, data: str, lr: float) -> None:
    ap.add_argument("--worker", choices=workloads, help="(internal) run one workload and print its JSON")
    ap.add_argument("--only", nargs="+", choices=workloads, default=list(workloads))
    ap.add_argument("--data", default=data)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="every workload's precision (auto: palate's choice on this CPU; TRL gets bf16=True for bf16)")


def trl_pairs_dataset(pairs):
    """The pairs in TRL's conversational preference format (TRL applies the chat template itself)."""
    import datasets

    from palate.data.records import prompt_messages

    return datasets.Dataset.from_list([
        {"prompt": prompt_messages(p.prompt), "chosen": [{"role": "assistant", "content": p.chosen}],
         "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs])


def trl_common_args(args, prefix: str) -> dict:
    """Identical TRL settings for every TRL workload: the run's precision (bf16 autocast is TRL's own default), no
    checkpointing, no saving, no workers."""
    import tempfile

    return dict(
        output_dir=tempfile.mkdtemp(prefix=prefix), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, max_steps=args.warmup + args.steps, learning_rate=args.lr, weight_decay=0.0,
        max_grad_norm=1.0, max_length=args.max_length, bf16=args.precision == "bf16", fp16=False, gradient_checkpointing=False,
        use_cpu=True, report_to=[], save_strategy="no", eval_strategy="no", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0, seed=0, data_seed=0,
    )


def train_trl_timed(trainer, args, name: str):
    """Run ``trainer.train()`` timing each step end to end and counting the real tokens it collated.

    Returns ``(step_seconds, step_tokens, step_slots, usage_delta_of_timed_steps)``.
    """
    import torch
    from transformers import TrainerCallback

    from sft import usage_delta

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
            print(f"[{name}] step {state.global_step}/{total}", file=sys.stderr, flush=True)

    timer = Timer()
    trainer.add_callback(timer)
    counts = []
    inner = trainer.data_collator

    def counting_collator(features):
        out = inner(features)
        mask = out.get("attention_mask")
        n = int(mask.sum()) if mask is not None else int(out["input_ids"].numel())  # padding-free: no mask
        counts.append((n, int(mask.numel()) if mask is not None else n))
        return out

    trainer.data_collator = counting_collator
    torch.set_num_threads(args.threads)
    trainer.train()
    ends = timer.end
    secs = [ends[0] - timer.t_begin] + [b - a for a, b in zip(ends, ends[1:])]
    return secs, [c[0] for c in counts[: len(secs)]], [c[1] for c in counts[: len(secs)]], usage_delta(timer.u0, timer.u1)
