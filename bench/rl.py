"""GRPO: palate vs TRL's GRPOTrainer on the same prompts, settings and reward function.

    python bench/rl.py                          # 2 warm-up + 10 timed steps each, 4 prompts x 4 samples, 32 new tokens
    python bench/rl.py --steps 2 --warmup 1     # quicker

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

    from palate.config import load_config
    from palate.recipes.grpo import GRPOConfig, train

    torch.set_num_threads(args.threads)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-grpo-palate-")) / "run"
    cfg = load_config(GRPOConfig, None, [
        f"run_dir={run_dir}", "model.name=bundled", "prompts.path=bundled:preferences", "prompts.eval_fraction=0",
        f"reward.function={HERE / 'rl_trl.py'}:target_reward", f"rollout.n={args.n}",
        f"rollout.max_new_tokens={args.max_new_tokens}", f"rollout.temperature={args.temperature}",
        f"rollout.top_p={args.top_p}", f"grpo.prompts_per_step={args.prompts_per_step}", f"grpo.beta={args.beta}",
        f"train.lr={args.lr}", f"train.max_steps={args.warmup + args.steps}", "train.save_every=0",
        "train.eval_every=0", f"train.threads={args.threads}", f"train.seed={args.seed}", "log.progress=false",
        "grpo.sample_every=0"])
    before = usage()
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    timed = [r for r in rows if r["step"] > args.warmup]
    secs = [r["step_seconds"] for r in timed]
    gen = [r["generated_tokens"] for r in timed]
    use = usage_delta(before, usage())
    return {"s_per_step": statistics.median(secs), "generated_tokens_per_s": sum(gen) / sum(secs),
            "generation_s_per_step": statistics.median(r["seconds_generate"] for r in timed),
            "train_tokens_per_s": sum(r["tokens"] for r in timed) / sum(secs), "peak_rss_gib": peak_rss_gib(),
            "mean_reward_first": rows[0]["reward"], "mean_reward_last": rows[-1]["reward"], "steps": args.steps,
            "wall_s_including_load_and_save": wall, "contended": contended(use), "step_seconds": secs,
            "generated_tokens": gen}


def worker(name: str, args) -> dict:
    cmd = [sys.executable, str(HERE / ("rl_trl.py" if name == "trl" else "rl.py")), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--prompts-per-step", str(args.prompts_per_step), "--n", str(args.n),
           "--max-new-tokens", str(args.max_new_tokens), "--lr", str(args.lr), "--beta", str(args.beta),
           "--threads", str(args.threads), "--seed", str(args.seed)]
    if name == "palate":
        cmd.append("--worker")
    print(f"[bench] running {name}", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
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
    ap.add_argument("--only", nargs="+", default=["palate", "trl"])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_palate(args)))
        return
    from record import LoadWatch, flops_per_token, gemm_peak

    with LoadWatch() as load:
        peaks = [gemm_peak(args.threads)]
        res = {name: worker(name, args) for name in args.only}
        peaks.append(gemm_peak(args.threads))
    peak = max(peaks, key=lambda p: p["peak_gflops"])
    n = flops_per_token(True)["flops_per_token"] / 6  # matmul parameters
    for m in res.values():
        if m.get("train_tokens_per_s"):
            m["achieved_gflops"] = (8 * n * m["train_tokens_per_s"] + 2 * n * m["generated_tokens_per_s"]) / 1e9
            m["mfu"] = m["achieved_gflops"] / peak["peak_gflops"]
    lines = [f"GRPO benchmark: bundled SmolLM2-135M-Instruct fp32, {args.prompts_per_step} prompts x {args.n} samples, "
             f"{args.max_new_tokens} new tokens, beta {args.beta}, {args.warmup} warm-up + {args.steps} timed steps, "
             f"{args.threads} threads",
             f"{'workload':<8} {'gen tok/s':>9} {'train tok/s':>11} {'s/step':>7} {'gen s/step':>10} {'peak RSS GiB':>12}"]
    for name, m in res.items():
        lines.append(f"{name:<8} {m['generated_tokens_per_s']:>9.2f} {m['train_tokens_per_s'] or 0:>11.1f} "
                     f"{m['s_per_step']:>7.2f} {m['generation_s_per_step']:>10.2f} {m['peak_rss_gib']:>12.2f}"
                     + ("  (CPU contended)" if m.get("contended") else ""))
    if "palate" in res and "trl" in res:
        p, t = res["palate"], res["trl"]
        tps = p["generated_tokens_per_s"] / t["generated_tokens_per_s"]
        lines.append(f"palate vs TRL: generated tokens/s {tps:.2f}x, s/step {p['s_per_step'] / t['s_per_step']:.2f}x, "
                     f"peak RSS {p['peak_rss_gib'] / t['peak_rss_gib']:.2f}x")
        lines.append(("PASS" if tps >= 1.5 else "FAIL") + f": generated tokens/s >= 1.5x TRL ({tps:.2f}x)")
    lines.append(f"roofline: measured fp32 GEMM peak {peak['peak_gflops']:.0f} GFLOP/s ({args.threads} threads); "
                 + "; ".join(f"{name} {m['achieved_gflops']:.0f} GFLOP/s = {100 * m['mfu']:.1f}% MFU"
                             for name, m in res.items() if m.get("achieved_gflops")))
    lw = load.summary()
    if lw:
        lines.append(f"load average during the run: mean {lw['load_1m_mean']}, max {lw['load_1m_max']} on {lw['cores']} cores")
    text = "\n".join(lines)
    print(text)
    out = HERE / "out" / "rl.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    run_info = {"threads": args.threads, "load_during_run": lw, "gemm_peak": peak, "gemm_probes": peaks,
                "tokens_per_s": {k: m["generated_tokens_per_s"] for k, m in res.items()},
                "mfu_real_tokens": {k: m.get("mfu") for k, m in res.items()},
                "trl_configs": {"trl": "GRPOTrainer defaults with fp32, no checkpointing (its best CPU settings here)"}}
    payload = {"settings": vars(args), "results": res, "run": run_info, "table": text}
    out.write_text(json.dumps(payload, indent=2))
    from record import write_result

    gen = {n: res[n]["generated_tokens_per_s"] if n in res else None for n in ("palate", "trl")}
    busy = [n for n, m in res.items() if m.get("contended")]
    write_result("rl", payload, metric="GRPO rollout generation throughput", unit="generated tokens/s",
                 palate=gen["palate"], trl=gen["trl"], note="CONTENDED: " + ", ".join(busy) if busy else None,
                 run=run_info)


if __name__ == "__main__":
    main()
