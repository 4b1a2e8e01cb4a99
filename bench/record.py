"""Shared by every benchmark: write its figures to ``bench/results/<name>.json`` in one shape that
``bench/table.py`` turns into ``docs/benchmarks.md``.

The file is the benchmark's own result dict plus a ``bench`` entry:

    {"name", "metric", "unit", "higher_is_better", "palate", "trl", "plain", "ratios": {"palate_vs_trl",
     "palate_vs_plain"}, "note", "command", "commit", "machine": {cpu, cores, gpu, torch, python, platform,
     load_avg_1m}, "run": {threads, load during the run, measured GEMM peak, ...}, "date"}

``trl`` is TRL's better configuration where a benchmark runs several (its defaults and its best CPU settings),
with the others in ``trl_configs``. Helpers every benchmark shares: :func:`gemm_peak` (the fp32 GEMM peak
measured on this machine, in this run: the MFU denominator), :func:`flops_per_token` (model FLOPs per real
token from the bundled model's config) and :class:`LoadWatch` (the load average during the run).

``palate`` / ``trl`` / ``plain`` are the headline figure of each side (``None`` where a benchmark has no such
side); ratios are palate ÷ other, computed here from those figures unless the benchmark passes its own
(e.g. medians of per-round paired ratios).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """The hardware and software a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    if "torch" in sys.modules:  # only when the benchmark already imported torch
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    try:  # how busy the machine was when the figures were written (other processes skew CPU timings)
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch_version,
            "python": platform.python_version(), "platform": platform.platform(), "load_avg_1m": load}


def commit() -> str | None:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


# The GEMMs a training step of the bundled model (hidden 576, MLP 1536, vocabulary 49152) spends its time in,
# for ``m`` rows (tokens) of a batch: (m x k) @ (k x n).
GEMM_SHAPES = {"attn 576x576": (576, 576), "mlp up 576x1536": (576, 1536), "mlp down 1536x576": (1536, 576),
               "vocab 576x49152": (576, 49152)}


def gemm_peak(threads: int, m: int = 512, seconds: float = 0.6, precision: str = "fp32") -> dict[str, Any]:
    """The GEMM rate this machine reaches now in ``precision`` (fp32, or bf16: the matmuls bf16 autocast runs),
    with ``threads`` threads: ``torch.matmul`` of ``m`` token rows
    at each of :data:`GEMM_SHAPES` (one warm-up, then repeated for about ``seconds``); ``peak_gflops`` is the best.
    Measured in the benchmark's own run so that MFU means utilisation of this machine, not of another one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[str, float] = {}
    try:
        with torch.no_grad():
            for name, (k, n) in GEMM_SHAPES.items():
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
                torch.matmul(a, b)
                reps, t0 = 0, time.perf_counter()
                while True:
                    torch.matmul(a, b)
                    reps += 1
                    dt = time.perf_counter() - t0
                    if dt >= seconds and reps >= 3:
                        break
                out[name] = 2 * m * k * n * reps / dt / 1e9
    finally:
        torch.set_num_threads(before)
    return {"peak_gflops": max(out.values()), "gflops": out, "rows": m, "threads": threads,
            "dtype": "bfloat16" if precision == "bf16" else "float32"}


def bundled_config() -> dict[str, Any]:
    from palate.models.load import bundled_model_dir

    return json.loads((bundled_model_dir() / "config.json").read_text())


def flops_per_token(lm_head: bool, cfg: dict[str, Any] | None = None) -> dict[str, float]:
    """Training FLOPs per real token of the bundled model: ``6 x`` the parameters a token's forward multiplies
    by (its decoder layers; the vocabulary projection only when the workload has one: LM losses yes, a reward
    head no; the embedding lookup is no GEMM). Attention's ``T^2`` terms are left out (~2% at these lengths)."""
    cfg = cfg or bundled_config()
    h, i, L, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = h // heads
    layers = L * (h * h * 2 + 2 * h * kv * hd + 3 * h * i)
    matmul_params = layers + (v * h if lm_head else 0)
    return {"flops_per_token": 6.0 * matmul_params, "matmul_params": matmul_params, "lm_head": lm_head}


class LoadWatch:
    """The 1-minute load average sampled every ``every`` seconds while a benchmark runs (a background thread):
    ``summary()`` gives first, mean, max and last. On a 2-core machine a load above ~2.2 during the run means
    other work shared the CPUs with the benchmark."""

    def __init__(self, every: float = 5.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while True:
            try:
                self.samples.append(round(os.getloadavg()[0], 2))
            except OSError:
                return
            if self._stop.wait(every):
                return

    def __enter__(self) -> LoadWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.samples.append(round(os.getloadavg()[0], 2))
        except OSError:
            pass

    def summary(self) -> dict[str, Any]:
        s = self.samples
        if not s:
            return {}
        return {"load_1m_first": s[0], "load_1m_mean": round(sum(s) / len(s), 2), "load_1m_max": max(s),
                "load_1m_last": s[-1], "samples": len(s), "cores": os.cpu_count()}


def roofline_line(peak: dict[str, Any], rows: dict[str, float | None], flops: dict[str, float]) -> str:
    """One table line: the measured GEMM peak and each workload's achieved real-token FLOP/s and MFU against it."""
    parts = [f"{name} {flops['flops_per_token'] * tps / 1e9:.0f} GFLOP/s = "
             f"{100 * flops['flops_per_token'] * tps / (peak['peak_gflops'] * 1e9):.1f}% MFU"
             for name, tps in rows.items() if tps]
    shapes = ", ".join(f"{k} {v:.0f}" for k, v in peak["gflops"].items())
    dtype = "bf16" if peak.get("dtype") == "bfloat16" else "fp32"
    return (f"roofline: measured {dtype} GEMM peak {peak['peak_gflops']:.0f} GFLOP/s ({peak['threads']} threads, "
            f"{peak['rows']} rows: {shapes}); real-token FLOP/s at {flops['flops_per_token'] / 1e9:.2f} GFLOP/token "
            f"(6 x {flops['matmul_params'] / 1e6:.1f}M matmul params): " + "; ".join(parts))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def write_result(name: str, result: dict[str, Any], *, metric: str, unit: str, palate: float | None,
                 trl: float | None = None, plain: float | None = None, higher_is_better: bool = True,
                 ratios: dict[str, float | None] | None = None, note: str | None = None,
                 path: str | Path | None = None, argv: list[str] | None = None,
                 run: dict[str, Any] | None = None) -> Path:
    """Write ``result`` with its ``bench`` headline to ``path`` (default ``bench/results/NAME.json``).

    ``run``: how the figures were taken (threads, :class:`LoadWatch` summary, :func:`gemm_peak`, MFU, the TRL
    configurations compared), kept in the headline."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).name if argv else f"{name}.py"
    auto = {"palate_vs_trl": _ratio(palate, trl), "palate_vs_plain": _ratio(palate, plain)}
    head = {"name": name, "metric": metric, "unit": unit, "higher_is_better": higher_is_better,
            "palate": palate, "trl": trl, "plain": plain, "ratios": {**auto, **(ratios or {})}, "note": note,
            "command": shlex.join(["python", f"bench/{script}", *argv[1:]]), "commit": commit(), "machine": machine(),
            "run": run or {},
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "bench": head}, indent=2) + "\n")
    return out


def resolve_precision(requested: str) -> str:
    """The precision every workload of a benchmark runs in: ``auto`` is what palate picks on this CPU
    (``palate.infra.device.pick_precision``: bf16 autocast where the CPU has AMX bf16 units, else fp32); TRL gets
    the same (``bf16=True`` for bf16, which is also TRL's own default)."""
    import torch

    from palate.infra.device import pick_precision

    return pick_precision(requested, torch.device("cpu"))


def autocast(precision: str):
    """The context a palate or plain-loop step runs in for ``precision`` (as ``palate.infra.device.autocast``)."""
    import torch

    from palate.infra.device import autocast as palate_autocast

    return palate_autocast(precision, torch.device("cpu"))


def palate_model(model, precision: str) -> dict:
    """What ``session.policy`` does to a model palate trains on this CPU
    (:func:`palate.models.training.use_training_layers`: the lean RMSNorm/SwiGLU backward; in bf16, palate's
    attention backward). Returns what applied, for the result."""
    import torch

    from palate.models.training import use_training_layers

    return use_training_layers(model, torch.device("cpu"), precision)
