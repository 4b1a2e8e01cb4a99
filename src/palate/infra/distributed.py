"""Multi-process training through accelerate: one process per device, launched by ``torchrun`` or
``accelerate launch``.

The launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) is read by
:class:`accelerate.PartialState`, which initialises ``torch.distributed`` (NCCL on GPUs, gloo on CPU);
the few collectives palate needs besides accelerate's (an object broadcast, a gather, one float
all-reduce per step) are ``torch.distributed`` calls on that group. A single-process run never
creates any of it, so its behaviour is exactly the unlaunched code path.

What the rest of palate does with it (see :class:`palate.infra.session.Loop`):

- every process builds the same global batches and trains on its own disjoint slice of each
  (:func:`palate.data.batching.shard`), so a step's global batch is what a one-process run uses;
- the model is prepared by accelerate (DDP; DeepSpeed ZeRO-2 from an ``accelerate launch`` config,
  untested; ZeRO-3 is refused, see :func:`check_supported`) or sharded by PyTorch FSDP2
  (``train.sharding=fsdp``, :mod:`palate.infra.fsdp`), and every training forward runs inside it
  (:class:`Forward`), so gradients synchronise;
- non-final micro-steps run under ``no_sync`` (FSDP2: ``set_requires_gradient_sync(False)``); the losses a recipe computes are normalised by
  global counts (summed over processes), and multiplied by the number of processes before backward
  because DDP averages gradients;
- only the main process writes the run directory (metrics, checkpoints, final model), with a barrier
  around each checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["world_size", "launched", "state", "rank", "is_main", "barrier", "broadcast", "all_sum",
           "gather", "check_supported", "sharding", "SHARDING", "Forward"]


def world_size() -> int:
    """Processes in this run, from the launcher's environment (1 when not launched)."""
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 1


def launched() -> bool:
    """True when a launcher started several processes, or asked for FSDP / DeepSpeed (even on one)."""
    sharded = any(os.environ.get(k, "").lower() == "true" for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))
    return world_size() > 1 or sharded


_STATE = None


def state():
    """accelerate's process state (initialises the process group on first use); None when not launched."""
    global _STATE
    if _STATE is None and launched():
        from accelerate import PartialState

        _STATE = PartialState(cpu=not torch.cuda.is_available())
    return _STATE


def rank() -> int:
    s = state()
    return s.process_index if s is not None else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    s = state()
    if s is not None and s.num_processes > 1:
        s.wait_for_everyone()


def broadcast(obj: Any) -> Any:
    """The main process's ``obj`` on every process (any picklable object)."""
    s = state()
    if s is None or s.num_processes == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    s = state()
    if s is None or s.num_processes == 1:
        return [obj]
    out: list[Any] = [None] * s.num_processes
    torch.distributed.all_gather_object(out, obj)
    return out


def all_sum(values: float | int | dict[str, float | int]) -> Any:
    """Sum numbers (or a dict of numbers) over processes, in one all-reduce; single-process: unchanged.

    Integers come back as integers. The sum runs in float64, so counts and sums of float32 losses add
    up without rounding that a one-process run would not have."""
    s = state()
    if s is None or s.num_processes == 1:
        return values
    single = not isinstance(values, dict)
    d = {"_": values} if single else values
    keys = list(d)
    # on the process's device: NCCL reduces only GPU tensors (gloo: the CPU)
    t = torch.tensor([float(d[k]) for k in keys], dtype=torch.float64, device=s.device)
    torch.distributed.all_reduce(t)
    out = {k: (int(round(v)) if isinstance(d[k], int) else v) for k, v in zip(keys, t.cpu().tolist())}
    return out["_"] if single else out


def check_supported() -> str:
    """The launcher's engine (``ddp``, ``fsdp``, ``deepspeed-zero2``, ...), or a clear error for one palate cannot
    yet checkpoint. ``accelerate launch`` with an FSDP config selects palate's own FSDP2 path
    (:mod:`palate.infra.fsdp`; accelerate's plugin refuses CPU processes); DeepSpeed ZeRO-3 is refused: its
    rank 0 module holds one partition of the weights, and palate writes checkpoints and ``final/`` from it."""
    env = os.environ
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
        if stage == "3":
            raise RuntimeError("DeepSpeed ZeRO-3 is not supported yet: palate would save one partition of the "
                               "weights as the checkpoint; use train.sharding=fsdp (PyTorch FSDP2, sharded "
                               "checkpoints) or ZeRO-2 (examples/accelerate/deepspeed_zero2.yaml)")
        return f"deepspeed-zero{stage or '?'}"
    return "ddp"


SHARDING = ("none", "ddp", "fsdp")


def sharding(requested: str | None) -> str:
    """What a run trains with: ``none`` (one process), ``ddp``, ``fsdp`` (PyTorch FSDP2) or ``deepspeed-zero2``.

    ``requested`` is ``train.sharding``; ``None`` follows the launcher: ``none`` on one process, else the
    engine its config asks for (``ddp`` for a plain ``torchrun``)."""
    if requested is not None and requested not in SHARDING:
        raise ValueError(f"train.sharding must be one of {', '.join(SHARDING)}, got {requested!r}")
    engine = check_supported() if launched() else "none"
    if requested is None:
        return engine
    if requested == "none" and world_size() > 1:
        raise ValueError(f"train.sharding=none, but the run was launched on {world_size()} processes; "
                         "use ddp or fsdp, or launch one process")
    if requested != "none" and engine.startswith("deepspeed"):
        raise ValueError(f"train.sharding={requested}, but the launcher's config asks for {engine}")
    if requested == "ddp" and engine == "fsdp":
        raise ValueError("train.sharding=ddp, but the launcher's config asks for FSDP")
    return requested if launched() or requested == "none" else "none"


class Forward(torch.nn.Module):
    """What accelerate prepares (wraps in DDP / FSDP / a DeepSpeed engine): a module whose forward runs
    a recipe's function on the model, ``engine(fn, *args) == fn(model, *args)``.

    palate's forwards read hidden states and project only selected rows (see
    :mod:`palate.models.logprobs`), so they are functions of the model rather than ``model(**batch)``;
    running them inside the wrapper's forward is what lets DDP arm its gradient hooks."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)
