"""GRPO: palate vs TRL's GRPOTrainer on the same prompts, settings and reward function.

    python bench/rl.py                          # 2 warm-up + 10 timed steps each, 4 prompts x 4 samples, 32 new tokens
    python bench/rl.py --steps 2 --warmup 1     # quicker
    python bench/rl.py --before /tmp/before/src # also palate as of another checkout (PYTHONPATH=that src)

With ``--precision bf16`` (``auto`` on a CPU with AMX bf16 units) palate trains under bf16 autocast and samples
with a bf16 copy of the policy; its trainer then recomputes the samples' log-probs (``seconds_recompute``, part of
the step, not of sampling: TRL with one iteration per generation computes no old log-probs at all); TRL runs with
``bf16=True`` (its default) and again in fp32 (``trl_fp32``), and the ratios are against the faster of the two.

Sampling alone is measured twice: inside the GRPO steps (palate's ``seconds_generate``; TRL's ``_generate``,
which calls transformers' ``generate``, timed per step), and by a sampling micro-benchmark, each engine in its
own process: palate's engine (``rollout.generate._rollout``, with the sampled tokens' log-probs, as GRPO uses
it) against transformers' ``generate`` (how TRL samples) on the same prompts (``--prompts-per-step`` per round,
a new slice each round), the same ``--n`` samples per prompt, ``--max-new-tokens`` and temperature, top-p 1,
no top-k; generated tokens count up to and including EOS.

Each workload runs in its own process (peak RSS is its own). Both: the bundled SmolLM2-135M-Instruct in fp32,
prompts from bundled:preferences, reward ``rl_trl.target_reward``, β = 0.04 with the reference as a frozen
copy, lr 1e-6, one generation round and one optimizer update per step. A step is everything: sampling,
reward, reference log-probs, forward, backward, AdamW. Prints generated tokens/s, s/step, peak RSS, ratios.

TRL runs once here, with the settings above: GRPOConfig 1.16 has neither a padding-free option nor a use for
length grouping (its sampler repeats each prompt ``num_generations`` times to form the groups, and the
sequences are generated inside the step, so there is nothing to group by length beforehand), so its
defaults (with fp32 and no checkpointing) are its best CPU configuration for this benchmark. The roofline
line counts model FLOPs per step as 8N per trained token (policy forward + backward, reference forward)
plus 2N per generated token (sampling), N = the decoder's and vocabulary projection's matmul parameters,
against the fp32 GEMM peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def run_palate(args) -> dict:
    import torch
    from sft import contended, peak_rss_gib, usage, usage_delta

    from palate.config import ConfigError, load_config
    from palate.recipes.grpo import GRPOConfig, train

    torch.set_num_threads(args.threads)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-grpo-palate-")) / "run"
    overrides = [
        f"run_dir={run_dir}", "model.name=bundled", "prompts.path=bundled:preferences", "prompts.eval_fraction=0",
        f"reward.function={HERE / 'rl_trl.py'}:target_reward", f"rollout.n={args.n}",
        f"rollout.max_new_tokens={args.max_new_tokens}", f"rollout.temperature={args.temperature}",
        f"rollout.top_p={args.top_p}", f"grpo.prompts_per_step={args.prompts_per_step}", f"grpo.kl_coef={args.beta}",
        f"train.lr={args.lr}", f"train.max_steps={args.warmup + args.steps}", "train.save_every=0",
        "train.eval_every=0", f"train.threads={args.threads}", f"train.seed={args.seed}", "log.progress=false",
        "grpo.sample_every=0", f"train.precision={args.precision}"]
    try:
        cfg = load_config(GRPOConfig, None, overrides)
    except ConfigError:  # an older palate (--before): the KL weight was grpo.beta
        cfg = load_config(GRPOConfig, None, [o.replace("grpo.kl_coef=", "grpo.beta=") for o in overrides])
    before = usage()
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    timed = [r for r in rows if r["step"] > args.warmup]
    secs = [r["step_seconds"] for r in timed]
    gen = [r["generated_tokens"] for r in timed]
    gen_secs = [r["seconds_generate"] for r in timed]
    use = usage_delta(before, usage())
    return {"s_per_step": statistics.median(secs), "generated_tokens_per_s": sum(gen) / sum(secs),
            "generation_s_per_step": statistics.median(gen_secs),
            "sampling_tokens_per_s": sum(gen) / sum(gen_secs), "generation_seconds": gen_secs,
            "train_tokens_per_s": sum(r["tokens"] for r in timed) / sum(secs), "peak_rss_gib": peak_rss_gib(),
            "mean_reward_first": rows[0]["reward"], "mean_reward_last": rows[-1]["reward"], "steps": args.steps,
            "wall_s_including_load_and_save": wall, "contended": contended(use), "step_seconds": secs,
            "generated_tokens": gen}


def run_sampling(args, engine: str) -> dict:
    """The sampling micro-benchmark in this process: ``engine`` "palate" (its rollout engine) or "hf"
    (transformers' ``generate``); one warm-up round, then ``--sampling-rounds`` timed ones."""
    import torch
    from sft import contended, peak_rss_gib, usage, usage_delta

    from palate.data.readers import read_prompts
    from palate.data.tokenize import encode_prompt, uses_chat_template
    from palate.models.load import load_model, load_tokenizer
    from palate.rollout import generate

    torch.set_num_threads(args.threads)
    tok = load_tokenizer("bundled")
    model = load_model("bundled", tokenizer=tok).eval()
    if engine == "palate" and args.precision == "bf16":  # what palate's GRPO samples with (its bf16 copy)
        model = model.to(torch.bfloat16)
    P, rounds = args.prompts_per_step, args.sampling_rounds
    prompts = read_prompts("bundled:preferences", limit=P * (rounds + 1))
    pad, eos = tok.pad_token_id, tok.eos_token_id
    kw = {} if args.cache is None else {"cache": args.cache, "compile": args.compile}

    def palate_round(ps, seed) -> int:
        return int(generate._rollout(model, tok, ps, n=args.n, max_new_tokens=args.max_new_tokens,
                                     temperature=args.temperature, top_p=1.0, seed=seed, **kw).lengths.sum())

    @torch.inference_mode()
    def hf_round(ps, seed) -> int:
        ids, mask = generate.left_pad([encode_prompt(tok, p, uses_chat_template(tok)) for p in ps], pad)
        ids, mask = ids.repeat_interleave(args.n, 0), mask.repeat_interleave(args.n, 0)
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens, do_sample=True,
                             temperature=args.temperature, top_p=1.0, top_k=0, pad_token_id=pad, eos_token_id=eos)
        g = out[:, ids.shape[1]:]
        ended = (g == eos).cumsum(-1)
        return int(((ended == 0) | ((ended == 1) & (g == eos))).sum())  # tokens up to and including the first EOS

    one = palate_round if engine == "palate" else hf_round
    t0 = time.perf_counter()
    one(prompts[:P], 10_000)
    first = time.perf_counter() - t0  # warm-up, including a compile when asked
    secs, toks = [], []
    before = usage()
    for r in range(rounds):
        t = time.perf_counter()
        toks.append(one(prompts[P * (r + 1): P * (r + 2)], r))
        secs.append(time.perf_counter() - t)
    use = usage_delta(before, usage())
    own_cpu = use["cpu_user_s"] + use["cpu_sys_s"]
    return {"engine": engine, "dtype": str(next(model.parameters()).dtype), "tokens_per_s": sum(toks) / sum(secs), "round_seconds": secs, "round_tokens": toks,
            "warmup_seconds": first, "best_round_tokens_per_s": max(t / s for t, s in zip(toks, secs)),
            "tokens_per_cpu_s_x_threads": sum(toks) / own_cpu * args.threads if own_cpu else None,
            "peak_rss_gib": peak_rss_gib(), "timed_usage": use, "contended": contended(use), **kw}


def worker(name: str, args) -> dict:
    script = "rl_trl.py" if name.startswith("trl") else "rl.py"
    precision = "fp32" if name == "trl_fp32" else args.precision
    cmd = [sys.executable, str(HERE / script), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--prompts-per-step", str(args.prompts_per_step), "--n", str(args.n),
           "--max-new-tokens", str(args.max_new_tokens), "--lr", str(args.lr), "--beta", str(args.beta),
           "--threads", str(args.threads), "--seed", str(args.seed), "--precision", precision]
    env = None
    if name.endswith("_before"):  # palate of another checkout: its src first on the path
        env = {**os.environ, "PYTHONPATH": args.before + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if name.startswith("palate"):
        cmd.append("--worker")
    if name.startswith("sample_"):
        cmd += ["--sampling-worker", name.split("_")[1], "--sampling-rounds", str(args.sampling_rounds)]
        cache = name.split("_")[2] if name.count("_") == 2 and not name.endswith("_before") else args.cache
        if cache is not None and not name.endswith("_before"):  # sample_palate_dynamic: that cache
            cmd += ["--cache", cache] + (["--compile"] if args.compile else [])
    print(f"[bench] running {name}", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"[bench] {name} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampling-rounds", type=int, default=5, help="timed rounds of the sampling micro-benchmark")
    ap.add_argument("--cache", choices=["dynamic", "static"], default=None,
                    help="palate's KV cache in the sampling micro-benchmark (default: the engine's default)")
    ap.add_argument("--compile", action="store_true", help="torch.compile palate's decode step (micro-benchmark)")
    ap.add_argument("--before", default=None, help="a src dir of palate to measure too (workers *_before)")
    ap.add_argument("--before-sampling-only", action="store_true", help="--before: the sampling micro-benchmark only")
    ap.add_argument("--also", nargs="*", default=[], help="more workers, e.g. sample_palate_dynamic sample_palate_static")
    ap.add_argument("--only", nargs="+", default=["palate", "trl", "sample_palate", "sample_hf"])
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="palate's train.precision and TRL's (bf16=True); auto: palate's choice on this CPU. With bf16, "
                         "TRL also runs in fp32 (trl_fp32) and the ratios are against the faster of the two")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sampling-worker", choices=["palate", "hf"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from record import resolve_precision

    args.precision = resolve_precision(args.precision)
    if args.worker:
        print(json.dumps(run_palate(args)))
        return
    if args.sampling_worker:
        print(json.dumps(run_sampling(args, args.sampling_worker)))
        return
    args.only += [x for x in args.also if x not in args.only]
    if args.precision == "bf16" and "trl" in args.only and "trl_fp32" not in args.only:
        args.only.insert(args.only.index("trl") + 1, "trl_fp32")  # TRL at its better precision too
    if args.before:  # GRPO too unless --before-sampling-only
        args.only += [x for x in ("palate_before", "sample_palate_before") if x not in args.only
                      and not (args.before_sampling_only and x == "palate_before")]
    from record import LoadWatch, flops_per_token, gemm_peak

    with LoadWatch() as load:
        peaks = [gemm_peak(args.threads, precision=args.precision)]
        res = {name: worker(name, args) for name in args.only}
        peaks.append(gemm_peak(args.threads, precision=args.precision))
    peak = max(peaks, key=lambda p: p["peak_gflops"])
    n = flops_per_token(True)["flops_per_token"] / 6  # matmul parameters
    grpo = {k: m for k, m in res.items() if not k.startswith("sample_")}
    micro = {k: m for k, m in res.items() if k.startswith("sample_")}
    for m in grpo.values():
        if m.get("train_tokens_per_s"):
            m["achieved_gflops"] = (8 * n * m["train_tokens_per_s"] + 2 * n * m["generated_tokens_per_s"]) / 1e9
            m["mfu"] = m["achieved_gflops"] / peak["peak_gflops"]
    lines = [f"GRPO benchmark: bundled SmolLM2-135M-Instruct {args.precision}, {args.prompts_per_step} prompts x {args.n} samples, "
             f"{args.max_new_tokens} new tokens, beta {args.beta}, {args.warmup} warm-up + {args.steps} timed steps, "
             f"{args.threads} threads",
             f"{'workload':<14} {'gen tok/s':>9} {'sampling tok/s':>14} {'train tok/s':>11} {'s/step':>7} "
             f"{'gen s/step':>10} {'update s/step':>13} {'peak RSS GiB':>12}"]
    for name, m in grpo.items():
        lines.append(f"{name:<14} {m['generated_tokens_per_s']:>9.2f} {m.get('sampling_tokens_per_s') or 0:>14.1f} "
                     f"{m['train_tokens_per_s'] or 0:>11.1f} {m['s_per_step']:>7.2f} {m['generation_s_per_step']:>10.2f} "
                     f"{m['s_per_step'] - m['generation_s_per_step']:>13.2f} {m['peak_rss_gib']:>12.2f}"
                     + ("  (CPU contended)" if m.get("contended") else ""))
    trls = [k for k in grpo if k.startswith("trl")]
    best_trl = max(trls, key=lambda k: res[k]["generated_tokens_per_s"]) if trls else None
    best_sampling = max(trls, key=lambda k: res[k]["sampling_tokens_per_s"]) if trls else None
    if "palate" in res and best_trl:
        p, t = res["palate"], res[best_trl]
        tps = p["generated_tokens_per_s"] / t["generated_tokens_per_s"]
        sps = p["sampling_tokens_per_s"] / res[best_sampling]["sampling_tokens_per_s"]
        lines.append(f"  trl: GRPOTrainer defaults in {args.precision}" + (", trl_fp32: the same in fp32" if "trl_fp32" in res
                     else "") + f", no checkpointing; TRL's better here: {best_trl} (steps), {best_sampling} (sampling)")
        lines.append(f"palate vs TRL's better: generated tokens/s {tps:.2f}x, sampling tokens/s {sps:.2f}x, "
                     f"s/step {p['s_per_step'] / t['s_per_step']:.2f}x, peak RSS {p['peak_rss_gib'] / t['peak_rss_gib']:.2f}x")
        lines.append(("PASS" if tps >= 2.5 else "FAIL") + f": GRPO generated tokens/s >= 2.5x TRL ({tps:.2f}x); "
                     + ("PASS" if sps >= 2.0 else "FAIL") + f": sampling tokens/s >= 2x TRL's ({sps:.2f}x)")
    if "palate" in res and "palate_before" in res:
        p, b = res["palate"], res["palate_before"]
        lines.append(f"palate vs palate_before: generated tokens/s {p['generated_tokens_per_s'] / b['generated_tokens_per_s']:.2f}x, "
                     f"sampling tokens/s {p['sampling_tokens_per_s'] / b['sampling_tokens_per_s']:.2f}x")
    if micro:
        lines.append(f"sampling micro-benchmark ({args.prompts_per_step} prompts x {args.n} samples, {args.max_new_tokens} "
                     f"new tokens, temperature {args.temperature}, 1 warm-up + {args.sampling_rounds} rounds, one process each):")
        for name, m in micro.items():
            lines.append(f"  {name:<22} {m['tokens_per_s']:>7.1f} tok/s (best round {m['best_round_tokens_per_s']:.1f}; "
                         f"per own CPU-second x threads {m['tokens_per_cpu_s_x_threads'] or 0:.1f}; warm-up "
                         f"{m['warmup_seconds']:.1f} s)" + ("  (CPU contended)" if m.get("contended") else ""))
        if "sample_palate" in micro and "sample_hf" in micro:
            lines.append(f"  palate engine vs transformers generate: "
                         f"{micro['sample_palate']['tokens_per_s'] / micro['sample_hf']['tokens_per_s']:.2f}x")
        if "sample_palate" in micro and "sample_palate_before" in micro:
            lines.append(f"  palate engine vs palate_before: "
                         f"{micro['sample_palate']['tokens_per_s'] / micro['sample_palate_before']['tokens_per_s']:.2f}x")
    lines.append(f"roofline: measured {args.precision} GEMM peak {peak['peak_gflops']:.0f} GFLOP/s ({args.threads} threads); "
                 + "; ".join(f"{name} {m['achieved_gflops']:.0f} GFLOP/s = {100 * m['mfu']:.1f}% MFU"
                             for name, m in grpo.items() if m.get("achieved_gflops")))
    lw = load.summary()
    if lw:
        lines.append(f"load average during the run: mean {lw['load_1m_mean']}, max {lw['load_1m_max']} on {lw['cores']} cores")
    text = "\n".join(lines)
    print(text)
    out = HERE / "out" / "rl.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    run_info = {"threads": args.threads, "load_during_run": lw, "gemm_peak": peak, "gemm_probes": peaks,
                "tokens_per_s": {k: m["generated_tokens_per_s"] for k, m in grpo.items()},
                "sampling_tokens_per_s": {**{k: m.get("sampling_tokens_per_s") for k, m in grpo.items()},
                                          **{k: m["tokens_per_s"] for k, m in micro.items()}},
                "mfu_real_tokens": {k: m.get("mfu") for k, m in grpo.items()},
                "trl_configs": {"trl": f"GRPOTrainer defaults in {args.precision}, no checkpointing",
                                "trl_fp32": "GRPOTrainer defaults in fp32, no checkpointing"}, "trl_best_of_run": best_trl,
                "precision": args.precision}
    payload = {"settings": vars(args), "results": res, "run": run_info, "table": text}
    out.write_text(json.dumps(payload, indent=2))
    from record import write_result

    gen = {n: res[k]["generated_tokens_per_s"] if k in res else None for n, k in (("palate", "palate"), ("trl", best_trl))}
    busy = [n for n, m in res.items() if m.get("contended")]
    samp = {n: res[k]["sampling_tokens_per_s"] if k in res else None
            for n, k in (("palate", "palate"), ("trl", best_sampling))}
    ratios = {"sampling_palate_vs_trl": samp["palate"] / samp["trl"] if samp["palate"] and samp["trl"] else None}
    if "sample_palate" in micro and "sample_hf" in micro:
        ratios["micro_sampling_palate_vs_hf_generate"] = (micro["sample_palate"]["tokens_per_s"]
                                                          / micro["sample_hf"]["tokens_per_s"])
    write_result("rl", payload, metric="GRPO rollout generation throughput", unit="generated tokens/s",
                 palate=gen["palate"], trl=gen["trl"], ratios=ratios,
                 note="CONTENDED: " + ", ".join(busy) if busy else None, run=run_info)


if __name__ == "__main__":
    main()
