"""Scale-out on this machine: the SFT recipe with ``train.sharding`` none (1 process) / ddp / fsdp (2 processes),
in one run, with tokens/s, peak RSS per process, and the training state each process holds against
``palate plan``'s estimate.

    python bench/scale.py                          # bundled model, 6 steps, batch 4, max_length 128
    python bench/scale.py --model tiny --steps 8   # a quick look

Every configuration is a real ``palate sft`` run (``torchrun --nproc_per_node 2`` for ddp and fsdp) on the
same data with the same global batch, so their loss curves agree (checked here: max relative
difference printed). Training only: no held-out evaluation (``data.eval_fraction=0``), the checkpoint
after the last step and ``final/`` as usual. The processes of a run get ``cores / processes`` threads each, so all three use the
same cores. Figures per run come from its ``status.json`` summary:

* ``tokens_per_s``: real (non-padding) tokens over the run's wall time from its first step (rank 0's clock);
* ``peak_rss_gib_per_rank``: each process's ``ru_maxrss`` (Python, torch, tokenizer and data included), which
  model loading sets (every process loads the whole model before it is sharded; the bundled GGUF model's
  dequantisation is transient but large);
* ``training_peak_rss_gib_per_rank``: the peak RSS from the end of set-up (freed heap handed back to the OS
  and the kernel's count restarted) to the end of training, and ``rss_gib_at_start_per_rank`` where it started;
* ``state_mib_per_rank``: bytes of weights, gradients and AdamW moments the process holds at its first
  update (its shards under FSDP), beside ``palate plan``'s figures for the same setup (fp32: 4 + 4 + 8 bytes
  per parameter; ``zero3`` is FSDP full shard, divided by the number of processes).

Writes ``bench/results/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from palate.infra.memory import Setup, estimate, load_shape  # noqa: E402

MIB = 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(sharding: str, procs: int, args, run_dir: Path) -> dict:
    threads = max(1, (os.cpu_count() or 2) // procs)
    overrides = [f"run_dir={run_dir}", f"model.name={args.model}", f"data.path={args.data}",
                 f"data.max_length={args.max_length}", "data.eval_fraction=0", f"train.batch_size={args.batch_size}",
                 f"train.max_steps={args.steps}", "train.lr=1e-5", "train.save_every=0", "train.eval_every=0",
                 "train.warmup_ratio=0", f"train.threads={threads}", "lora.enabled=false", "log.progress=false",
                 f"train.sharding={sharding}"]
    head = [sys.executable, "-m", "palate"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "palate"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    t = time.perf_counter()
    out = subprocess.run([*head, "sft", *overrides], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"{sharding} on {procs} process(es) failed:\n{out.stderr[-3000:]}")
    summary = json.loads((run_dir / "status.json").read_text())["summary"]
    losses = [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {"sharding": sharding, "processes": procs, "threads_per_process": threads,
            "process_wall_s": round(time.perf_counter() - t, 1), "losses": losses,
            **{k: summary.get(k) for k in ("tokens_per_s", "wall_seconds", "peak_rss_gib_per_rank", "state_mib_per_rank",
                                           "param_mib_per_rank", "param_mib_unsharded", "rss_gib_at_start_per_rank",
                                           "training_peak_rss_gib_per_rank")}}


def planned(shape, devices: int, strategy: str, args) -> dict[str, float]:
    # each process's slice of the global batch; seq_len the longest a row may be (real batches are shorter)
    est = estimate(shape, Setup(method="sft", dtype="fp32", seq_len=args.max_length,
                                micro_batch=max(1, args.batch_size // devices), devices=devices, strategy=strategy))
    return {k: round(est[k] / MIB, 3) for k in ("weights", "gradients", "optimizer", "activations", "logits", "total")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bundled")
    p.add_argument("--data", default="bundled:demonstrations")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--out", default=str(ROOT / "bench/results/scale.json"))
    args = p.parse_args()

    from palate.models.load import load_model, load_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="palate-scale-"))
    # palate plan's shape for the model (from its config.json; the tiny/bundled models are built here)
    model = load_model(args.model, dtype="fp32", device="cpu", tokenizer=load_tokenizer(args.model))
    cfg = model.config.to_dict()
    del model
    from palate.infra.memory import shape_from_config

    shape = shape_from_config(cfg) if args.model in ("bundled", "tiny") else load_shape(args.model)
    rows = [run("none", 1, args, tmp / "none"), run("ddp", 2, args, tmp / "ddp"), run("fsdp", 2, args, tmp / "fsdp")]
    for r in rows:
        plan = planned(shape, r["processes"], "zero3" if r["sharding"] == "fsdp" else "ddp", args)
        r["plan_total_mib"] = plan.pop("total")  # with activations and logits at micro-batch x max_length
        r["plan_mib"] = {k: plan[k] for k in ("weights", "gradients", "optimizer")}
        r["plan_activations_logits_mib"] = {k: plan[k] for k in ("activations", "logits")}
    base = rows[0]
    print(f"model {args.model} ({shape.params() / 1e6:.1f}M parameters), SFT, {args.steps} steps, global batch "
          f"{args.batch_size}, max_length {args.max_length}, {os.cpu_count()} cores")
    print(f"{'sharding':>8} {'procs':>5} {'tok/s':>8} {'x none':>7} {'peak RSS GiB/rank':>18} "
          f"{'training peak':>14} {'(from)':>12} {'state MiB/rank (w+g+opt)':>25} {'plan MiB':>9} "
          f"{'plan total MiB':>14} {'max rel loss diff':>18}")
    for r in rows:
        state = r["state_mib_per_rank"][0] if r["state_mib_per_rank"] else {}
        diff = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], base["losses"]))
        r["max_rel_loss_diff_vs_none"] = diff
        r["tokens_per_s_ratio_vs_none"] = r["tokens_per_s"] / base["tokens_per_s"]
        print(f"{r['sharding']:>8} {r['processes']:>5} {r['tokens_per_s']:>8.0f} {r['tokens_per_s_ratio_vs_none']:>7.2f} "
              f"{', '.join(f'{x:.2f}' for x in r['peak_rss_gib_per_rank']):>18} "
              f"{', '.join(f'{x:.2f}' for x in r['training_peak_rss_gib_per_rank'] or []):>14} "
              f"{', '.join(f'{x:.2f}' for x in r['rss_gib_at_start_per_rank'] or []):>12} "
              f"{sum(state.values()):>25.1f} {sum(r['plan_mib'].values()):>9.1f} {r['plan_total_mib']:>14.1f} {diff:>18.2e}")
    fsdp, ddp = rows[2], rows[1]
    ratios = {
        "fsdp_vs_ddp_tokens_per_s": fsdp["tokens_per_s"] / ddp["tokens_per_s"],
        "fsdp_vs_ddp_state_per_rank": sum(fsdp["state_mib_per_rank"][0].values()) / sum(ddp["state_mib_per_rank"][0].values()),
        "fsdp_vs_ddp_peak_rss_rank0": fsdp["peak_rss_gib_per_rank"][0] / ddp["peak_rss_gib_per_rank"][0],
        "fsdp_vs_ddp_training_peak_rss_rank1": fsdp["training_peak_rss_gib_per_rank"][1] / ddp["training_peak_rss_gib_per_rank"][1],
    }
    print(", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "cores": os.cpu_count(), "runs": rows, "ratios": ratios},
                                         indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
