"""What every training recipe does around its loss: set-up, the step loop, resume, checkpoints, final save.

A recipe calls these functions; nothing here knows which loss it trains. :class:`Loop` yields
``(step, micro_batches)`` from where the run left off, owns the optimizer and schedule, and writes a
checkpoint whenever one is due, so a recipe's body is only its forward, loss and backward.

Launched on several processes (``torchrun`` / ``accelerate launch``, see :mod:`palate.infra.distributed`)
the same recipe trains data-parallel: each process gets its slice of every micro-batch, and a recipe
written against four calls runs unchanged on one process or many::

    for step, micro in loop:                              # this process's slices of the step's micro-batches
        n = loop.all_sum(sum(b.n_targets for b in micro))   # normalisers are global counts
        for b in loop.accumulate(micro):                  # no_sync on all but the last
            loss = loop.forward(batch_loss, b, n)         # batch_loss(model, b, n), inside DDP's forward
            loop.backward(loss)
        loop.optimizer_step(**loop.all_sum({"loss": ...}))  # metrics summed over processes
"""

from __future__ import annotations

import logging
import math
import random
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from palate.config import LogConfig, LoraConfig, ModelConfig, TrainConfig, to_dict
from palate.data.batching import Batch, shard
from palate.data.errors import SkipLog
from palate.infra import distributed, fsdp
from palate.infra.checkpoint import load_checkpoint, rng_state, save_checkpoint, save_sharded, temp_dir
from palate.infra.device import (
    autocast,
    keep_freed_memory,
    pick_device,
    pick_gradient_checkpointing,
    pick_precision,
    precision_reason,
)
from palate.infra.logging import Progress, attach_sinks, setup_logging
from palate.infra.optim import adamw, scheduler
from palate.infra.run import RunDir
from palate.models.training import use_training_layers
from palate.models.load import load_model, load_tokenizer
from palate.models.lora import apply_lora, is_peft, save_model

log = logging.getLogger("palate")

__all__ = ["Env", "start", "tokenizer", "policy", "report_data", "BatchStream", "Loop", "autocast", "peak_rss_gib"]


@dataclass(frozen=True)
class Env:
    device: torch.device
    precision: str
    gradient_checkpointing: bool
    progress: bool = True


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def restart_peak_rss() -> float | None:
    """Hand freed heap memory back to the OS and restart the kernel's peak-RSS count (Linux), so that
    :func:`rss_since_restart_gib` measures what follows (training) rather than model loading, whose
    transient buffers set :func:`peak_rss_gib`. Returns the current RSS in GiB, None where unsupported."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    return _proc_status_gib("VmRSS")


def rss_since_restart_gib() -> float | None:
    """Peak RSS since :func:`restart_peak_rss`, in GiB."""
    return _proc_status_gib("VmHWM")


def _proc_status_gib(key: str) -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


def start(train: TrainConfig, model: ModelConfig, run: RunDir, log_cfg: LogConfig, full_config: Any) -> Env:
    """Logging, threads, seeds, allocator and device choices for a run, each choice logged."""
    setup_logging()
    if not distributed.is_main():  # one process speaks for a multi-process run
        logging.getLogger("palate").setLevel(logging.WARNING)
    if train.threads:
        torch.set_num_threads(train.threads)
    seed = train.seed + distributed.rank()  # each process its own dropout noise (weights: broadcast from rank 0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    kept = keep_freed_memory()
    device = pick_device(model.device)
    if distributed.launched() and device.type == "cuda" and device.index is None:
        device = distributed.state().device  # this process's GPU (cuda:LOCAL_RANK)
    precision, reason = pick_precision(train.precision, device), precision_reason(train.precision, device)
    if train.precision == "auto" and device.type == "cpu" and precision == "bf16" \
            and distributed.sharding(train.sharding) not in ("none", "ddp"):
        precision, reason = "fp32", " (auto: sharded training on CPU runs fp32; bf16 sharding is for GPUs)"
    env = Env(
        device, precision,
        pick_gradient_checkpointing(train.gradient_checkpointing, device), progress=log_cfg.progress,
    )
    if distributed.launched():
        log.info("distributed: %d processes (%s), this is rank %d", distributed.world_size(),
                 distributed.state().distributed_type, distributed.rank())
    log.info(
        "run %s | device %s, %d threads | precision %s%s | gradient checkpointing %s%s | allocator keeps freed memory: %s",
        run.path, device, torch.get_num_threads(), env.precision, reason,
        "on" if env.gradient_checkpointing else "off",
        " (auto)" if train.gradient_checkpointing is None else "",
        "yes" if kept else "no",
    )
    if run.writes:
        attach_sinks(run, log_cfg, to_dict(full_config))
    return env


def tokenizer(model: ModelConfig):
    return load_tokenizer(model.name, trust_remote_code=model.trust_remote_code, revision=model.revision)


def policy(model_cfg: ModelConfig, lora: LoraConfig, train: TrainConfig, env: Env, tok,
           num_labels: int | None = None, init: Callable[[torch.nn.Module], None] | None = None) -> torch.nn.Module:
    """The model to train: loaded, optionally wrapped in LoRA, in train mode.

    ``num_labels`` loads a sequence-classification model (reward model heads) on the same backbone;
    ``init`` runs on the loaded model before LoRA wraps it (e.g. seeding new heads).
    """
    model = load_model(
        model_cfg.name, dtype=model_cfg.dtype, device=str(env.device), trust_remote_code=model_cfg.trust_remote_code,
        revision=model_cfg.revision, tokenizer=tok, seed=train.seed, num_labels=num_labels,
    )
    if init is not None:
        init(model)
    applied = use_training_layers(model, env.device, env.precision)
    if applied["cpu_training_attention"]:
        log.info("attention: flash forward, palate's blockwise backward for sequences up to ~200 tokens "
                 "(PyTorch's CPU flash backward beyond)")
    if any(applied["lean_layers"].values()):
        log.info("lean backward (fewer saved activations): %(rms_norm)d RMSNorm, %(swiglu)d SwiGLU MLP modules",
                 applied["lean_layers"])
    if lora.enabled:
        # The adapter's random initialisation from train.seed, not from this process's stream (seeded with
        # seed + rank): every process starts from the same adapter, as FSDP needs (each process keeps its
        # own slice of its own weights), and so does a 1-process run with the same seed.
        with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []):
            torch.manual_seed(train.seed)
            model = apply_lora(model, lora, task_type="CAUSAL_LM" if num_labels is None else "SEQ_CLS")
    if env.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.1fM parameters, %.2fM trainable%s", model_cfg.name, n_all / 1e6, n_train / 1e6,
             " (LoRA)" if lora.enabled else "")
    return model


def _zero_loss(model: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """A zero loss through the whole model (one token's forward), for a process with no data this micro-step."""
    out = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    return out.logits.float().sum() * 0.0


def report_data(run: RunDir, skips: SkipLog, **counts: int) -> None:
    """Say what was skipped or truncated, prominently, and save it in the run dir."""
    skips.report()
    run.write_json("data_report.json", {**counts, **skips.as_dict()})
    log.info("data: %s", ", ".join(f"{v} {k.removeprefix('n_').replace('_', ' ')}" for k, v in counts.items()))


class BatchStream:
    """Micro-batches of an endless sequence of epochs; step ``s`` gets micro-batches ``(s-1)*k .. s*k-1``.

    The position in the data is a function of the step alone, so resuming at a step replays nothing
    and skips nothing.
    """

    def __init__(self, batches_of_epoch: Callable[[int], list[Batch]], grad_accum: int):
        self._make = batches_of_epoch
        self.grad_accum = grad_accum
        self._cache: tuple[int, list[Batch]] | None = None
        self.batches_per_epoch = len(self.epoch(0))
        if self.batches_per_epoch == 0:
            raise ValueError("no training batches: the dataset is empty after skipping")

    def epoch(self, e: int) -> list[Batch]:
        if self._cache is None or self._cache[0] != e:
            self._cache = (e, self._make(e))
        return self._cache[1]

    def micro_batches(self, step: int) -> list[Batch]:
        out = []
        for k in range((step - 1) * self.grad_accum, step * self.grad_accum):
            out.append(self.epoch(k // self.batches_per_epoch)[k % self.batches_per_epoch])
        return out

    def steps_for_epochs(self, epochs: int) -> int:
        return math.ceil(epochs * self.batches_per_epoch / self.grad_accum)

    def records_seen(self, steps: int) -> set[int]:
        """Indices of the records that steps ``1..steps`` train on (of a paired batch, its first half's)."""
        def indices(b):
            return (b[0] if isinstance(b, tuple) else b).indices

        every = {i for b in self.epoch(0) for i in indices(b)}
        seen: set[int] = set()
        for step in range(1, steps + 1):
            seen.update(i for b in self.micro_batches(step) for i in indices(b))
            if len(seen) == len(every):  # every record reached: later steps add none
                break
        return seen


class Loop:
    """The optimizer-step loop: resume, lr schedule, clipping, logging, checkpoints, final save.

    Multi-process: ``model`` is prepared by accelerate (``self.engine``: DDP or DeepSpeed) or sharded in place by
    FSDP2 (``train.sharding=fsdp``: ``self.engine`` is the FSDP root around it); ``self.model`` keeps the
    parameter names the checkpoints use. Under FSDP, code that runs the model outside :meth:`forward`
    (evaluation, scoring, generation) takes a plain copy from :meth:`whole`, or runs inside :meth:`unsharded`.

    ``split_batches=False``: every process gets each step's whole batch (any object) and takes its share itself,
    as online RL does (each process samples its share of the step's prompts, whole groups, then the update
    splits each minibatch; see :mod:`palate.recipes.online`)."""

    def __init__(self, run: RunDir, model: torch.nn.Module, train: TrainConfig, env: Env, stream: BatchStream,
                 lr_scale: dict[str, float] | None = None, split_batches: bool = True):
        self.run, self.model, self.cfg, self.env, self.stream = run, model, train, env, stream
        self.split_batches = split_batches
        self.total = train.max_steps or stream.steps_for_epochs(train.epochs)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.sharding = distributed.sharding(train.sharding)
        self.accelerator, self.engine = None, model
        self._backwards = 0  # multi-process: backward passes through :meth:`backward` since the last update
        self._micro_steps = 0  # FSDP: micro-batches in the current step (over all processes)
        self._state_bytes: dict[str, int] | None = None  # weights/gradients/optimizer held here, at the first update
        if self.sharding != "none" and split_batches:
            first = stream.epoch(0)[0]
            if not all(isinstance(x, Batch) for x in (first if isinstance(first, tuple) else (first,))):
                raise RuntimeError("this recipe does not train on several processes yet (only sft, rm, dpo, ppo and "
                                   "grpo do); run it on one process")
        if self.sharding == "fsdp":
            distributed.state()  # initialises the process group
            self.engine = fsdp.shard(model, env.device, self.world, env.precision, train.cpu_offload)
        elif train.cpu_offload:
            raise RuntimeError("train.cpu_offload needs train.sharding=fsdp")
        self.optimizer = adamw(model, train.lr, train.weight_decay, train.adam_betas, lr_scale)
        self.scheduler = scheduler(self.optimizer, round(train.warmup_ratio * self.total), self.total, train.min_lr_ratio)
        if self.sharding not in ("none", "fsdp"):
            from accelerate import Accelerator

            engine = self.sharding
            if engine != "ddp":
                log.warning("%s: untested with palate (no DeepSpeed where its tests run); each checkpoint holds "
                            "rank 0's optimizer partition only, so a resume is not exact", engine)
            # DeepSpeed owns accumulation (its engine steps once per grad_accum backward calls); for DDP
            # palate accumulates itself and accelerate's count stays 1.
            ds = engine.startswith("deepspeed")
            self.accelerator = Accelerator(cpu=env.device.type == "cpu",
                                           gradient_accumulation_steps=train.grad_accum if ds else 1)
            self.engine, self.optimizer = self.accelerator.prepare(distributed.Forward(model), self.optimizer)
        self.start_step = 0
        self.resumed: dict[str, Any] = {}  # the checkpoint's progress record (its ``extra`` keys included)
        self.extra_state: Callable[[], dict[str, Any]] | None = None  # recipe state saved with each checkpoint
        ckpt = run.latest_checkpoint()
        if ckpt is not None:
            progress = load_checkpoint(ckpt, model=model, optimizer=self.optimizer, scheduler=self.scheduler,
                                       rank=self.rank)
            self.resumed = progress
            self.start_step = progress["step"]
            log.info("resuming from %s (step %d of %d)", ckpt.name, self.start_step, self.total)
        run.rewind_metrics(self.start_step)
        self.step = self.start_step
        self.progress = Progress(self.total, self.start_step, enabled=env.progress and run.writes)
        self._t_step = time.perf_counter()
        self._t_start = time.perf_counter()
        self._tokens = 0
        self._rss_at_start = restart_peak_rss()  # the model, its shards and optimizer are set up; loading is over
        self._rss_training: float | None = None  # peak RSS since then, read at the end of each step

    def __iter__(self) -> Iterator[tuple[int, list[Batch]]]:
        for step in range(self.start_step + 1, self.total + 1):
            self.step = step
            micro = self.stream.micro_batches(step)
            self._micro_steps = len(micro)
            yield step, self.shards(micro)
            if self.cfg.save_every >= 0 and self.due(self.cfg.save_every):  # the last step too: a rerun after a failure past it only finishes
                self.checkpoint()

    def shards(self, micro: list) -> list:
        """This process's slices of the step's micro-batches (all of them on one process); a KTO micro-batch is
        a pair of batches sliced alike. Slices that come out empty (fewer rows than processes) are left out."""
        if self.world == 1 or not self.split_batches:
            return micro
        out = []
        for b in micro:
            part = tuple(shard(x, self.rank, self.world) for x in b) if isinstance(b, tuple) else shard(b, self.rank, self.world)
            if part is not None and not (isinstance(part, tuple) and part[0] is None):
                out.append(part)
        return out

    def all_sum(self, values):
        """A number, or a dict of numbers, summed over processes (unchanged on one process)."""
        return distributed.all_sum(values)

    def accumulate(self, micro: list) -> Iterator:
        """Iterate a step's micro-batches for forward + backward; gradients synchronise only on the last.

        Multi-process, every micro-step but the last runs under ``no_sync``. A process left without any
        slice this step (a batch smaller than the number of processes) still takes part in the
        synchronising backward, with a zero loss that touches every trainable parameter. Under FSDP every
        forward is a collective (it all-gathers weights), so each process runs one forward per micro-batch
        of the step: those it has no slice of are dummy forwards with a zero loss."""
        if self.sharding == "fsdp":
            yield from self._accumulate_sharded(micro)
            return
        if self.accelerator is None:
            yield from micro
            return
        if not micro:
            zero = self.forward(lambda m: sum(p.sum() for p in m.parameters() if p.requires_grad) * 0.0)
            self.backward(zero)
            return
        for i, b in enumerate(micro):
            with self.accelerator.no_sync(self.engine) if i < len(micro) - 1 else nullcontext():
                yield b

    def _accumulate_sharded(self, micro: list) -> Iterator:
        n = max(self._micro_steps, len(micro))
        for i in range(n):
            self.engine.set_requires_gradient_sync(i == n - 1)
            if i < len(micro):
                yield micro[i]
            else:  # no slice of this micro-batch here: the same collectives, no gradient
                self.backward(self.forward(_zero_loss, self.env.device))
        self.engine.set_requires_gradient_sync(True)

    def forward(self, fn: Callable[..., Any], *args, **kwargs):
        """``fn(model, *args, **kwargs)`` under the run's precision (bf16 autocast or none); multi-process, run
        inside the prepared (DDP/FSDP/DeepSpeed) module."""
        with autocast(self.env.precision, self.env.device):
            if self.accelerator is None and self.sharding != "fsdp":
                return fn(self.model, *args, **kwargs)
            return self.engine(fn, *args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of this process's share of a loss normalised by global counts. DDP and FSDP average
        gradients over processes, so the share is scaled by their number (the sum is the one-process gradient)."""
        if self.sharding == "fsdp":
            (loss * self.world).backward()
            self._backwards += 1
            return
        if self.accelerator is None:
            loss.backward()
            return
        scale = self.world * (self.accelerator.gradient_accumulation_steps)  # accelerate divides by the latter
        self.accelerator.backward(loss * scale)
        self._backwards += 1

    def due(self, every: int) -> bool:
        """True on every ``every``-th step and on the last step (``every=0``: only the last)."""
        return self.step == self.total or (every > 0 and self.step % every == 0)

    def optimizer_step(self, **measured: float) -> dict[str, float]:
        """Clip, step, schedule; returns the step's metrics (the caller's ``measured`` values included)."""
        grad_norm = self.apply_gradients()
        return self.end_step(grad_norm=grad_norm, **measured)

    def apply_gradients(self) -> float:
        """Clip and apply the accumulated gradients (one optimizer update); returns the gradient norm.

        RL recipes make several updates per step (PPO epochs over minibatches), then call :meth:`end_step`."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.sharding != "none" and self._backwards == 0:
            raise RuntimeError("this recipe does not train on several processes yet (its gradients would not be "
                               "synchronised); run it on one process")
        self._backwards = 0
        if self.accelerator is None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor, reduced over the shards
                grad_norm = grad_norm.full_tensor()
        else:  # FSDP / DeepSpeed compute the norm over their shards
            grad_norm = self.accelerator.clip_grad_norm_(params, self.cfg.max_grad_norm)
            grad_norm = float("nan") if grad_norm is None else grad_norm
        self.optimizer.step()
        if self._state_bytes is None:  # gradients and optimizer states all allocated: what palate plan estimates
            self._state_bytes = fsdp.state_bytes(self.model, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def end_step(self, **measured: float) -> dict[str, float]:
        """Advance the learning-rate schedule and time the step; returns its metrics."""
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        now = time.perf_counter()
        seconds, self._t_step = now - self._t_step, now
        tokens = measured.get("tokens", 0)
        self._tokens += tokens
        if self._rss_at_start is not None:
            self._rss_training = rss_since_restart_gib()
        return {
            **measured,
            "lr": lr,
            "epoch": self.step * self.stream.grad_accum / self.stream.batches_per_epoch,
            "step_seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        }

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.due(self.cfg.log_every) or "eval_loss" in metrics:
            self.run.log(step, metrics)
        shown = {k: metrics[k] for k in ("loss", "eval_loss") if k in metrics}
        self.progress.update(step, int(metrics.get("tokens", 0)), **shown)

    def checkpoint(self) -> Path:
        """Save a checkpoint (multi-process: the main process writes it, holding every process's RNG state;
        the others wait until it is complete)."""
        path = self.run.checkpoints / f"step-{self.step:08d}"
        rng = distributed.gather(rng_state()) if self.world > 1 else None
        tmp = None
        if self.sharding == "fsdp":  # every process writes its shards into the main process's temporary dir
            tmp = distributed.broadcast(temp_dir(self.run.checkpoints, self.step) if self.run.writes else None)
            save_sharded(tmp, self.model, self.optimizer)
        distributed.barrier()
        if self.run.writes:
            path = save_checkpoint(
                self.run.checkpoints, self.step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                data_state={"micro_batches_consumed": self.step * self.stream.grad_accum},
                extra=self.extra_state() if self.extra_state else None, keep_last=self.cfg.keep_last, rng=rng,
                tmp=tmp,
            )
        distributed.barrier()
        return path

    def unsharded(self):
        """A context in which the trained model is whole on every process and runs without collectives
        (:func:`palate.infra.fsdp.unsharded`): sampling, where processes decode different numbers of tokens.
        Entering and leaving are collectives under FSDP; a no-op otherwise (DDP keeps whole weights)."""
        return fsdp.unsharded(self.engine) if self.sharding == "fsdp" else nullcontext()

    def whole(self) -> torch.nn.Module:
        """The trained model, whole, for code that runs it outside :meth:`forward` (evaluation, scoring,
        generation): the model itself, or under FSDP a plain copy gathered on every process (a collective:
        every process calls it; what each then runs on its copy may differ). The copy holds a whole model
        per process until dropped."""
        return fsdp.replica(self.model) if self.sharding == "fsdp" else self.model

    def finish(self, tokenizer, merge: bool = True, extra_json: dict[str, Any] | None = None,
               model: torch.nn.Module | None = None, **summary: Any) -> Path:
        """Save ``final/`` (HF-loadable, with ``extra_json`` files beside the weights), mark the run finished
        and return the final model's path. ``model``: what to save when the trained module is a wrapper
        (e.g. a policy with its value head: only the policy is saved)."""
        self.progress.close()
        wall = time.perf_counter() - self._t_start
        distributed.barrier()
        weights = None
        mib = lambda b: round(b / 2**20, 3)  # noqa: E731
        rss = distributed.gather((self._rss_at_start, self._rss_training))
        if all(a is not None and b is not None for a, b in rss):  # RSS after set-up; peak up to the last step's end
            summary = {"rss_gib_at_start_per_rank": [round(a, 3) for a, _ in rss],
                       "training_peak_rss_gib_per_rank": [round(b, 3) for _, b in rss], **summary}
        measured = distributed.gather((self._state_bytes, round(peak_rss_gib(), 3)))
        if self.env.device.type == "cuda":
            summary = {"peak_gpu_gib": round(torch.cuda.max_memory_allocated(self.env.device) / 2**30, 3), **summary}
        summary = {"sharding": self.sharding, "peak_rss_gib_per_rank": [r for _, r in measured],
                   **({"state_mib_per_rank": [{k: mib(v) for k, v in s.items()} for s, _ in measured]}
                      if measured[0][0] is not None else {}), **summary}
        if self.sharding == "fsdp":  # gathered on the main process (a collective)
            part = self.model if model is None else model  # e.g. PPO's policy inside its actor-critic
            memory = distributed.gather((fsdp.local_param_bytes(self.model), fsdp.full_param_bytes(self.model)))
            if is_peft(part):  # a plain PEFT copy on the main process, saved like an unsharded LoRA run's
                model = fsdp.gathered(self.model, part)
            else:
                weights = fsdp.part_state_dict(self.model, part)
            summary = {"param_mib_per_rank": [mib(m) for m, _ in memory], "param_mib_unsharded": mib(memory[0][1]),
                       **summary}
        if not self.run.writes:  # the main process saves; the others wait for final/ to exist
            distributed.barrier()
            return self.run.final
        save_model(model if model is not None else self.model, tokenizer, self.run.final, merge=merge,
                   extra_json=extra_json, state_dict=weights)
        summary = {
            "steps": self.total,
            "resumed_from_step": self.start_step,
            "wall_seconds": round(wall, 2),
            "tokens_per_s": round(self._tokens / wall, 2) if wall > 0 else None,
            "peak_rss_gib": round(peak_rss_gib(), 3),
            **summary,
        }
        logged = self.run.read_metrics()
        for key in ("loss", "eval_loss"):  # the last value of each (eval always runs on the last step)
            values = [m[key] for m in logged if key in m]
            if values:
                summary[f"final_{key}"] = values[-1]
        self.run.mark_finished(summary=summary)
        self.run.close()
        distributed.barrier()
        log.info("finished: %s", ", ".join(f"{k}={v}" for k, v in summary.items()))
        log.info("model saved to %s", self.run.final)
        return self.run.final

