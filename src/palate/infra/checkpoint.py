"""Atomic checkpoints with everything an exact resume needs.

A checkpoint is a directory ``checkpoints/step-00000042/`` holding the trainable weights
(safetensors), optimizer and scheduler states, every RNG state, the data position and the step. It is
written into a hidden temporary directory and renamed into place, so a run killed at any instant
leaves either the previous complete checkpoint or the new complete one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters only (the LoRA adapter for a LoRA run; everything for full fine-tuning)."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data_state: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep_last: int = 2,
    rng: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``root/step-{step}`` atomically, then delete all but the newest ``keep_last``.

    ``rng``: the RNG states of every process of a multi-process run, in rank order (each process
    resumes its own); default: this process's."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             **({"rng": rng_state()} if rng is None else {"rng": rng[0], "rng_per_rank": rng})},
            tmp / "state.pt",
        )
        (tmp / "progress.json").write_text(json.dumps({"step": step, "data": data_state, **(extra or {})}))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a stale checkpoint of the same step from an earlier attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "progress.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def load_checkpoint(
    path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int = 0
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG (process ``rank``'s, when the checkpoint holds one per
    process); return the progress record (step, data position)."""
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks trainable parameters {missing[:5]}; was the config changed?")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    state = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    per_rank = state.get("rng_per_rank")
    set_rng_state(per_rank[rank] if per_rank and rank < len(per_rank) else state["rng"])
    return json.loads((path / "progress.json").read_text())
