"""Online RL over Ray (``ray.enabled: true`` in a ``palate ppo`` / ``palate grpo`` config; ``pip install
'palate[ray]'``): the models of one RL step in separate Ray actors, which a cluster may put on other nodes.

    trainer (this process)   the policy (+ PPO's value head), the optimiser and the update, as without Ray
    rollout workers          each holds a plain copy of the policy; every step it receives the trainer's
                             current weights (LoRA merged) and samples its consecutive share of the prompts
    reward worker            the reward model or function and the penalties (``palate.rollout.rewards``)
    reference worker         the frozen starting model: log-probs of the sampled tokens for the KL term

The workers stand behind the interfaces the recipes already use — a rollout engine
(``sync(policy)``/``rollout(prompts, ...)``, the same seam as the vLLM backend), a ``Rewarder`` and a
``Reference`` — so PPO and GRPO run unchanged. The trainer recomputes the sampled tokens' log-probs
(π_old) and weights the loss by the truncated ratio π_trainer/π_sampler, which is 1 up to rounding when
the workers run the same precision (they follow the trainer's: bf16 weights and autocast in a bf16 run), and
corrects the mismatch when they do not. Held-out evaluation samples with the rollout workers too. Where each
actor ran (node, host, pid, device) is written to ``ray.json`` in the run dir.

``ray.address: null`` starts a local cluster inside the run (``ray.num_cpus`` CPUs) and stops it at the
end; ``auto`` or ``ray://HEAD:10001`` joins a running cluster, on whose every node palate must be
installed (same version) and the model and reward model paths readable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from palate.config import ConfigError

log = logging.getLogger("palate.ray")


@dataclass(frozen=True)
class RayConfig:
    enabled: bool = False
    address: str | None = None
    """null: a local cluster for this run; "auto" | "ray://HEAD:10001": join one"""
    num_cpus: int | None = None
    """the local cluster's CPUs (null: Ray's own count)"""
    rollout_workers: int = 1
    """actors sampling the step's prompts, each a consecutive share (0: the trainer)"""
    reward_worker: bool = True
    """the reward model/function in an actor"""
    reference_worker: bool = True
    """the frozen reference in an actor"""
    worker_cpus: float = 1.0
    """Ray resources each actor asks for"""
    worker_gpus: float = 0.0
    worker_threads: int | None = None
    """torch threads in each actor (null: max(1, worker_cpus))"""

    def __post_init__(self):
        if self.rollout_workers < 0:
            raise ConfigError(f"ray.rollout_workers must be >= 0, got {self.rollout_workers}")
        if self.worker_cpus <= 0 or self.worker_gpus < 0:
            raise ConfigError("ray.worker_cpus must be > 0 and ray.worker_gpus >= 0")


def check(cfg: RayConfig, rollout) -> None:
    if cfg.enabled and cfg.rollout_workers and rollout.backend != "hf":
        raise ConfigError(f"ray.rollout_workers sample with palate's own sampler, not rollout.backend="
                          f"{rollout.backend}: set ray.rollout_workers=0 or rollout.backend=hf")


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigError("ray.enabled needs Ray: pip install 'palate[ray]'") from e
    return ray


def _where() -> dict[str, Any]:
    import torch

    ray = _import_ray()
    return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid(),
            "threads": torch.get_num_threads(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _load(model: dict, threads: int, seed: int, gpu: bool):
    import torch

    from palate.models.load import load_model

    torch.set_num_threads(threads)
    device = "cuda" if gpu and torch.cuda.is_available() else "cpu"  # Ray shows the actor only the GPUs it got
    return load_model(model["name"], dtype=model["dtype"], device=device, trust_remote_code=model["trust_remote_code"],
                      revision=model["revision"], seed=seed).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- the actors (plain classes)


class RolloutWorker:
    """A plain copy of the policy that samples with palate's sampler once given the trainer's weights; in a bf16
    run its weights are bf16 (the trainer's fp32 weights cast as they load), as the in-process sampler copy's."""

    def __init__(self, model: dict, threads: int, seed: int, gpu: bool, precision: str = "fp32"):
        from palate.models.load import load_tokenizer
        from palate.rollout.sampling import generation_copy

        self.model = generation_copy(_load(model, threads, seed, gpu), precision)
        self.tok = load_tokenizer(model["name"], trust_remote_code=model["trust_remote_code"],
                                  revision=model["revision"])

    def where(self) -> dict:
        return {"role": "rollout", **_where(), "device": str(next(self.model.parameters()).device)}

    def load_weights(self, state: dict) -> None:
        device = next(self.model.parameters()).device
        missing, unexpected = self.model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"rollout worker: the trainer's weights do not fit its model: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")

    def rollout(self, prompts: list, settings: dict):
        from palate.rollout.generate import rollout

        return rollout(self.model, self.tok, prompts, **settings)


class RewardWorker:
    def __init__(self, reward: dict, threads: int, gpu: bool):
        import torch

        from palate.rollout.rewards import RewardConfig, Rewarder

        torch.set_num_threads(threads)
        self.rewarder = Rewarder(RewardConfig(**reward), device="cuda" if gpu and torch.cuda.is_available() else "cpu")

    def where(self) -> dict:
        return {"role": "reward", **_where()}

    def score(self, prompts, responses, n_tokens, finished):
        return self.rewarder(prompts, responses, n_tokens, finished)


class ReferenceWorker:
    """The frozen starting model; its log-probs in the trainer's precision (bf16 autocast in a bf16 run), as the
    in-process reference computes them."""

    def __init__(self, model: dict, threads: int, seed: int, gpu: bool, precision: str = "fp32"):
        self.model = _load(model, threads, seed, gpu)
        self.precision = precision

    def where(self) -> dict:
        return {"role": "reference", **_where(), "device": str(next(self.model.parameters()).device)}

    def response_logprobs(self, r, temperature: float):
        from palate.infra.device import autocast
        from palate.models.reference import rollout_logprobs

        with autocast(self.precision, next(self.model.parameters()).device):
            return rollout_logprobs(self.model, r, temperature)


# ----------------------------------------------------------------------------- the trainer's side


class RayRollout:
    """Rollout engine over the rollout workers: weights synced every step, prompts split in order."""

    def __init__(self, ray, workers: list, pad: int):
        self.ray, self.workers, self.pad = ray, workers, pad

    def sync(self, policy) -> None:
        from palate.models.lora import merged_weights

        with merged_weights(policy) as state:
            ref = self.ray.put({k: v.detach().cpu() for k, v in state.items()})
        self.ray.get([w.load_weights.remote(ref) for w in self.workers])

    def rollout(self, prompts: list, *, seed: int = 0, **settings):
        from palate.rollout.generate import concat_rollouts

        k = min(len(self.workers), len(prompts))
        bounds = [len(prompts) * i // k for i in range(k + 1)]
        # worker i samples prompts [bounds[i], bounds[i+1]) with its own seed (worker 0: the step's seed)
        futures = [w.rollout.remote(prompts[bounds[i]:bounds[i + 1]], {**settings, "seed": seed + 7919 * i})
                   for i, w in enumerate(self.workers[:k])]
        return concat_rollouts(self.ray.get(futures), self.pad)


class RemoteRewarder:
    def __init__(self, ray, actor):
        self.ray, self.actor = ray, actor

    def __call__(self, prompts, responses, n_tokens, finished):
        return self.ray.get(self.actor.score.remote(prompts, responses, n_tokens, finished))


class RemoteReference:
    def __init__(self, ray, actor):
        self.ray, self.actor = ray, actor

    def response_logprobs(self, r, temperature: float):
        return self.ray.get(self.actor.response_logprobs.remote(r, temperature))


@dataclass
class Placement:
    """What the recipe uses: ``engine`` (None: sample in the trainer), a rewarder and a reference (None:
    the recipe builds its in-process one)."""

    engine: Any = None
    rewarder: Any = None
    reference: Any = None


def _absolute(spec: str | None) -> str | None:
    """A local path (or the file of ``file.py:function``) made absolute, for actors whose cwd may differ."""
    if not spec:
        return spec
    where, sep, name = spec.rpartition(":") if ".py:" in spec else (spec, "", "")
    return f"{Path(where).resolve()}{sep}{name}" if Path(where).exists() else spec


@contextlib.contextmanager
def place(cfg: RayConfig, run, model_cfg, reward_cfg, tok, seed: int, reference: bool, precision: str = "fp32"):
    """Start (or join) the cluster and the configured actors; yields a :class:`Placement` (empty when Ray is
    off). A cluster started here is shut down at the end, also on error. ``precision``: the trainer's, which the
    rollout and reference workers follow."""
    if not cfg.enabled:
        yield Placement()
        return
    from palate.infra import distributed

    if distributed.world_size() > 1:
        raise ConfigError("ray.enabled: launch the trainer as one process; Ray places the other workers")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a training run does not phone home
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"address": cfg.address} if cfg.address else {"num_cpus": cfg.num_cpus}
        ray.init(include_dashboard=False, log_to_driver=True, **kw)
        started = cfg.address is None
    actors: list = []
    try:
        model = {**asdict(model_cfg), "name": _absolute(model_cfg.name)}
        reward = {**asdict(reward_cfg), "model": _absolute(reward_cfg.model), "function": _absolute(reward_cfg.function)}
        threads = cfg.worker_threads or max(1, int(cfg.worker_cpus))
        opts = {"num_cpus": cfg.worker_cpus, "num_gpus": cfg.worker_gpus}
        gpu = cfg.worker_gpus > 0
        p = Placement()
        if cfg.rollout_workers:
            workers = [ray.remote(RolloutWorker).options(**opts).remote(model, threads, seed, gpu, precision)
                       for _ in range(cfg.rollout_workers)]
            actors += workers
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            p.engine = RayRollout(ray, workers, pad)
        if cfg.reward_worker:
            actor = ray.remote(RewardWorker).options(**opts).remote(reward, threads, gpu)
            actors.append(actor)
            p.rewarder = RemoteRewarder(ray, actor)
        if cfg.reference_worker and reference:
            actor = ray.remote(ReferenceWorker).options(**opts).remote(model, threads, seed, gpu, precision)
            actors.append(actor)
            p.reference = RemoteReference(ray, actor)
        where = ray.get([a.where.remote() for a in actors])  # waits until every actor has loaded
        run.write_json("ray.json", {"config": asdict(cfg), "trainer": {"host": socket.gethostname(), "pid": os.getpid()},
                                    "actors": where, "cluster": ray.cluster_resources()})
        log.info("ray: %s", ", ".join(f"{w['role']} on {w['host']} (node {w['node'][:8]}, pid {w['pid']})"
                                      for w in where))
        yield p
    finally:
        if started:
            ray.shutdown()
        else:  # a cluster that outlives the run: free the run's actors now
            for a in actors:
                ray.kill(a)


__all__ = ["RayConfig", "check", "place", "Placement", "RolloutWorker", "RewardWorker", "ReferenceWorker"]
