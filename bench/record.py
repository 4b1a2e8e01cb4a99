"""Shared by every benchmark: write its figures to ``bench/results/<name>.json`` in one shape that
``bench/table.py`` turns into ``docs/benchmarks.md``.

The file is the benchmark's own result dict plus a ``bench`` entry:

    {"name", "metric", "unit", "higher_is_better", "palate", "trl", "plain", "ratios": {"palate_vs_trl",
     "palate_vs_plain"}, "note", "command", "machine": {cpu, cores, gpu, torch, python, platform,
     load_avg_1m}, "date"}

``palate`` / ``trl`` / ``plain`` are the headline figure of each side (``None`` where a benchmark has no such
side); ratios are palate ÷ other, computed here from those figures unless the benchmark passes its own
(e.g. medians of per-round paired ratios).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
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


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def write_result(name: str, result: dict[str, Any], *, metric: str, unit: str, palate: float | None,
                 trl: float | None = None, plain: float | None = None, higher_is_better: bool = True,
                 ratios: dict[str, float | None] | None = None, note: str | None = None,
                 path: str | Path | None = None, argv: list[str] | None = None) -> Path:
    """Write ``result`` with its ``bench`` headline to ``path`` (default ``bench/results/NAME.json``)."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).name if argv else f"{name}.py"
    auto = {"palate_vs_trl": _ratio(palate, trl), "palate_vs_plain": _ratio(palate, plain)}
    head = {"name": name, "metric": metric, "unit": unit, "higher_is_better": higher_is_better,
            "palate": palate, "trl": trl, "plain": plain, "ratios": {**auto, **(ratios or {})}, "note": note,
            "command": shlex.join(["python", f"bench/{script}", *argv[1:]]), "machine": machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "bench": head}, indent=2) + "\n")
    return out
