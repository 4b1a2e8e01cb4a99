"""Atomic checkpoints with everything an exact resume needs.

A checkpoint is a directory ``checkpoints/step-00000042/`` holding the trainable weights
(safetensors), optimizer and scheduler states, every RNG state, the data position and the step. It is
written into a hidden temporary directory and renamed into place, so a run killed at any instant
leaves either the previous complete checkpoint or the new complete one, never a half-written one.

A sharded (FSDP) run writes the model and optimizer through ``torch.distributed.checkpoint`` (DCP) instead:
every process writes its own shards into ``dcp/`` of the same temporary directory, then the main process
adds the rest and renames it. DCP reshards on load, so such a checkpoint resumes on any number of
processes, a single unsharded one included.
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


def temp_dir(root: Path, step: int) -> Path:
    """A new hidden directory beside the checkpoints, where step ``step``'s checkpoint is assembled."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{PREFIX}{step:08d}-", dir=root))


def save_sharded(tmp: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every process writes its shards of the model and optimizer into ``tmp/dcp`` (a collective: each
    process calls it with the same ``tmp``). Keys are parameter names, so any layout can load them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / "dcp"))


def load_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a DCP checkpoint's model and optimizer into this process's layout (sharded over any number of
    processes, or one plain model); a collective when the run is distributed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(path / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


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
    tmp: Path | None = None,
) -> Path:
    """Write ``root/step-{step}`` atomically, then delete all but the newest ``keep_last``.

    ``rng``: the RNG states of every process of a multi-process run, in rank order (each process
    resumes its own); default: this process's. ``tmp``: a :func:`temp_dir` into which every process
    has already written the sharded model and optimizer (:func:`save_sharded`); the rest is added here."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    sharded = tmp is not None
    tmp = tmp if sharded else temp_dir(root, step)
    try:
        if not sharded:
            save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(
            {**({} if sharded else {"optimizer": optimizer.state_dict()}), "scheduler": scheduler.state_dict(),
             **({"rng": rng_state()} if rng is None else {"rng": rng[0], "rng_per_rank": rng})},
            tmp / "state.pt",
        )
        (tmp / "progress.json").write_text(json.dumps({"step": step, "data": data_state, **(extra or {})}))
        for f in (f for f in tmp.rglob("*") if f.is_file()):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if sharded:
            _fsync_dir(tmp / "dcp")
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
    process); return the progress record (step, data position). A sharded (DCP) checkpoint loads into any
    layout; every process of a distributed run must call this."""
    if (path / "dcp").is_dir():
        load_sharded(path, model, optimizer)
        state = torch.load(path / "state.pt", weights_only=False)
        scheduler.load_state_dict(state["scheduler"])
        per_rank = state.get("rng_per_rank")
        set_rng_state(per_rank[rank] if per_rank and rank < len(per_rank) else state["rng"])
        return json.loads((path / "progress.json").read_text())
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise RuntimeError(f"checkpoint {path} was written by an unsharded (none/ddp) run; resume it with "
                           "train.sharding=ddp (or on one process), not fsdp")
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
