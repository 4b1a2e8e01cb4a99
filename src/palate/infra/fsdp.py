"""Fully sharded data parallel on PyTorch's own FSDP2 (``torch.distributed.fsdp.fully_shard``).

``train.sharding=fsdp``: each process holds 1/N of every weight, gradient and optimizer state. The
model is sharded per decoder layer (each layer's weights are all-gathered just before its forward and
freed after it, again in backward) and at the root, which holds the rest (embeddings, final norm,
LM / reward head). The root is :class:`palate.infra.distributed.Forward`, the wrapper every recipe's
training forward already runs in, so the root's weights are gathered for exactly the span of a
recipe's function on the model, whatever parts of the model it calls.

palate uses its own ``fully_shard`` path rather than accelerate's FSDP plugin: accelerate enables FSDP
only for GPU process types, while ``fully_shard`` runs on CPU over gloo too, so the same code is tested
here and runs on GPUs. Precision: fp32 on CPU; on GPUs with ``train.precision=bf16`` (auto there)
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` — bf16 compute copies of the weights,
fp32 gradient reduction, fp32 master weights and optimizer states. ``train.cpu_offload=true`` keeps the
sharded weights, gradients and optimizer states in CPU memory (``CPUOffloadPolicy``); per-layer activation
checkpointing is ``train.gradient_checkpointing=true``.

LoRA: the PEFT adapter is applied before sharding, so each FSDP group (a decoder layer, the root) holds
frozen base weights and trainable adapter weights side by side; FSDP2 allows mixed ``requires_grad`` in
a group and reduce-scatters gradients of the trainable ones only, and the optimizer is built over those
alone. Every process still holds 1/N of the frozen base weights. ``final/`` is a plain PEFT copy gathered
on the main process (:func:`gathered`), saved like an unsharded LoRA run's (merged or the adapter alone).

Every process must take part in every forward (each one all-gathers weights), so a process without
data for a micro-step runs a dummy forward with zero loss (see :meth:`palate.infra.session.Loop.accumulate`).

Sampling (online RL) is the exception: processes decode different numbers of tokens, so a forward that
all-gathers would pair with another process's different forward and hang or mix up weights. :func:`unsharded`
gathers every group's weights once, keeps them whole while the processes sample, score and take reference
log-probs independently (no collective at all), and frees them after.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from palate.infra.distributed import Forward

log = logging.getLogger("palate")

__all__ = ["shard", "decoder_layers", "local_param_bytes", "full_param_bytes", "state_bytes", "full_state_dict",
           "replica", "gathered", "is_sharded", "unsharded", "part_state_dict"]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of decoder layers (the unit each FSDP group shards): the ``ModuleList`` holding
    ``config.num_hidden_layers`` modules."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and (n is None or len(module) == n):
            return module
    raise RuntimeError(f"FSDP: found no list of {n} decoder layers in {type(model).__name__}")


def shard(model: torch.nn.Module, device: torch.device, world: int, precision: str,
          cpu_offload: bool = False) -> torch.nn.Module:
    """Shard ``model`` in place over ``world`` processes (one FSDP group per decoder layer, the rest in
    the root); returns the root, a :class:`Forward` around the model: ``engine(fn, *args) == fn(model, *args)``.

    The default process group (gloo on CPU, NCCL on GPUs) must be initialised; weights must be
    identical on every process (each keeps its own shard of them)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if not any(p.requires_grad for p in model.parameters()):
        raise RuntimeError("FSDP: the model has no trainable parameters")
    if cpu_offload and device.type != "cuda":
        raise RuntimeError("train.cpu_offload moves each GPU's shards to CPU memory; this run is on "
                           f"{device.type}, where they already are: drop train.cpu_offload")
    _check_identical(model, device)
    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy()  # fp32: no casts
    if device.type == "cuda" and precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    kwargs = dict(mesh=mesh, mp_policy=mp, offload_policy=offload)
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, **kwargs)
    engine = fully_shard(Forward(model), **kwargs)
    frozen = any(not p.requires_grad for p in model.parameters())
    log.info("FSDP2: %d decoder layers + root sharded over %d processes (%s%s%s); parameters on this process "
             "%.1f MiB of %.1f MiB", len(layers), world, "bf16 params, fp32 reduce" if mp.param_dtype else "fp32",
             ", CPU offload" if cpu_offload else "", ", frozen base weights + trainable adapter" if frozen else "",
             local_param_bytes(model) / 2**20, full_param_bytes(model) / 2**20)
    return engine


def _check_identical(model: torch.nn.Module, device: torch.device) -> None:
    """Refuse to shard weights that differ between processes (each would keep its slice of its own weights:
    a silently different model), e.g. a randomly initialised adapter or head seeded per process. Compares
    each parameter's sum with process 0's (one broadcast of a number per parameter), to a relative 1e-9:
    summation order may differ between processes, a different initialisation differs far more."""
    import torch.distributed as dist

    with torch.no_grad():  # float64 accumulation
        mine = torch.stack([p.sum(dtype=torch.float64).to(device) for p in model.parameters()])
    theirs = mine.clone()
    dist.broadcast(theirs, src=0)
    close = torch.isclose(mine, theirs, rtol=1e-9, atol=0.0).tolist()
    differ = [n for (n, _), ok in zip(model.named_parameters(), close) if not ok]
    count = torch.tensor([len(differ)], device=device)
    dist.all_reduce(count)  # every process refuses, not only those that differ
    if count.item():
        raise RuntimeError(f"FSDP: the weights differ between processes ({count.item()} parameters in all"
                           f"{'; here: ' + ', '.join(differ[:3]) if differ else ''}); every process must start from the "
                           "same weights (seed random initialisations alike on every process)")


@contextlib.contextmanager
def unsharded(root: torch.nn.Module) -> Iterator[None]:
    """The sharded model whole on every process for the span of the block: its weights are plain tensors and
    running its modules (outside the root's forward) makes no collective, so each process can decode as many
    tokens as its own samples need. Entering and leaving are collectives (every process enters together).

    Why not decode in lockstep (every process runs the sharded forward until all are done): each decode step
    would all-gather every layer's weights again (tokens x layers collectives per rollout) and a process
    whose rows had finished would keep running dummy forwards. Unsharding costs one all-gather per FSDP group
    and holds the whole model (in the compute dtype) on each process while sampling, as a plain
    :func:`replica` would, without copying it. On entry a no-op forward through the root makes it FSDP's root
    (a decoder layer run first would otherwise claim that role); each group is then all-gathered
    (``FSDPModule.unshard``) and kept whole after its forwards (``set_reshard_after_forward(False)``);
    on exit each is resharded and the layers again free their weights after each forward."""
    from torch.distributed.fsdp import FSDPModule

    with torch.no_grad():
        root(lambda model: None)  # FSDP's lazy initialisation: this module is the root
    layers = [m for m in root.modules() if isinstance(m, FSDPModule) and m is not root]
    groups = [root, *layers]
    for m in groups:
        m.unshard()
    for m in layers:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in layers:
            m.set_reshard_after_forward(True, recurse=False)
        for m in groups:
            m.reshard()


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def local_param_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters this process holds (its shards, for a sharded model)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for p in model.parameters():
        t = p.to_local() if isinstance(p, DTensor) else p
        total += t.numel() * t.element_size()
    return total


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of training state this process holds: weights, gradients (call it before they are freed)
    and optimizer states (AdamW's moments) — what ``palate plan`` estimates as weights, gradients and
    optimizer per device."""
    params = list(model.parameters())
    size = lambda t: _local(t).numel() * _local(t).element_size()  # noqa: E731
    return {
        "weights": sum(size(p) for p in params),
        "gradients": sum(size(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(size(v) for st in optimizer.state.values() for v in st.values()
                         if isinstance(v, torch.Tensor) and v.dim() > 0),
    }


def full_param_bytes(model: torch.nn.Module) -> int:
    """Bytes of the whole (unsharded) model's parameters."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def full_state_dict(model: torch.nn.Module, everywhere: bool = False) -> dict[str, torch.Tensor]:
    """The whole model's weights gathered (a collective: every process calls it). Default: on the main
    process only, in CPU memory (the others get an empty dict); ``everywhere``: on every process, on
    the model's device."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))


def part_state_dict(model: torch.nn.Module, part: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of submodule ``part`` of a sharded ``model``, gathered on the main process in CPU memory
    with ``part``'s own names (the others get an empty dict); a collective. E.g. PPO's policy inside its
    actor-critic."""
    prefix = next((name for name, m in model.named_modules() if m is part), None)
    if prefix is None:
        raise RuntimeError("FSDP: the module to save is not part of the trained one")
    full = full_state_dict(model)
    if not prefix:
        return full
    return {k[len(prefix) + 1:]: v for k, v in full.items() if k.startswith(prefix + ".")}


def replica(model: torch.nn.Module) -> torch.nn.Module:
    """A plain (unsharded) copy of a sharded model on every process, for evaluation, generation and
    scoring that runs outside the training forward (on one process or unevenly across them). A
    collective; holds a whole model per process until dropped (built on the meta device and given the
    gathered tensors, so no second, randomly initialised copy is ever allocated). A PEFT (LoRA) model's
    copy is a PEFT model with the same adapter."""
    return _plain_copy(model, full_state_dict(model, everywhere=True))


def gathered(model: torch.nn.Module, part: torch.nn.Module | None = None) -> torch.nn.Module | None:
    """A plain copy of a sharded model (or of its submodule ``part``) in CPU memory on the main process (None
    on the others), e.g. to save it; a collective."""
    import torch.distributed as dist

    part = model if part is None else part
    full = part_state_dict(model, part)
    return _plain_copy(part, full, torch.device("cpu")) if dist.get_rank() == 0 else None


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def _plain_copy(model: torch.nn.Module, full: dict[str, torch.Tensor],
                buffers_to: torch.device | None = None) -> torch.nn.Module:
    peft = _is_peft(model)
    base = model.get_base_model() if peft else model
    with torch.device("meta"):
        copy = type(base)(base.config)
        if peft:  # the same PEFT class (causal LM, sequence classification) with the same adapter config
            name = model.active_adapter
            copy = type(model)(copy, model.peft_config[name], adapter_name=name)
    copy.load_state_dict(full, assign=True, strict=False)
    for name, buf in model.named_buffers():  # FSDP leaves buffers (e.g. rotary frequencies) unsharded
        owner, _, attr = name.rpartition(".")
        copy.get_submodule(owner)._buffers[attr] = buf if buffers_to is None else buf.to(buffers_to)
    copy.tie_weights()
    missing = [n for n, t in list(copy.named_parameters()) + list(copy.named_buffers()) if t.is_meta]
    if missing:
        raise RuntimeError(f"FSDP: the gathered copy lacks {missing[:5]}")
    for n, p in copy.named_parameters():  # trainable as in the model (PEFT: the adapter and saved modules)
        p.requires_grad_(model.get_parameter(n).requires_grad)
    if getattr(base, "generation_config", None) is not None:
        copy.generation_config = base.generation_config
        if peft:
            copy.get_base_model().generation_config = base.generation_config
    copy.train(model.training)
    return copy
