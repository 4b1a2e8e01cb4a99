"""Sampling the responses of online RL with the configured backend: palate's sampler on the trainer's own
model (``hf``), or a rollout engine (a colocated vLLM engine, Ray workers) whose samples the trainer then
re-scores, with truncated importance weights correcting the loss for the engine's mismatch."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from palate.config import ConfigError
from palate.losses.policy import SamplerCorrection, sampler_correction
from palate.models.reference import rollout_logprobs
from palate.rollout.generate import Rollout, concat_rollouts, rollout


@dataclass(frozen=True)
class RolloutConfig:
    n: int = 4
    """responses per prompt"""
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    """stop strings (EOS always stops)"""
    backend: str = "hf"
    """hf: palate's sampler on the trainer's own model. vllm: a colocated vLLM engine, weights synced every step, each
    token's loss weighted by the truncated ratio π_trainer/π_sampler (UNTESTED: needs a GPU and pip install
    'palate[vllm]'; see palate/rollout/vllm.py)"""
    vllm_gpu_memory_utilization: float = 0.3
    correction_cap: float = 2.0
    """vllm: cap C of the truncated importance weights"""
    correction_level: str = "token"
    """vllm: token | sequence importance ratios"""
    cache: str = "dynamic"
    """hf: the decoding engine's KV cache. dynamic: grows by one position per token and drops finished rows (the
    faster of the two on CPU, measured in bench/rl.py); static: preallocated for prompt + max_new_tokens, written in
    place (the shape torch.compile needs)"""
    compile: bool = False
    """hf: torch.compile the decode step (best with cache=static). Off by default: on the bundled model on a 2-core CPU it
    took ~73 s to compile for ~5% faster decoding, about 470 rollouts to break even; try it on a GPU"""
    seed_block: int = 0
    """prompts sampled per seed: the step's prompts are cut into blocks of this many, block k sampled with a seed of
    its own (the step's seed for block 0). 0: one block per process (its whole share of the step). Equal values give
    equal samples on any number of processes: set it to prompts_per_step / processes to compare a multi-process run
    with a 1-process one, or to 1 for samples that depend on neither the batch nor the processes (slower: no batching
    across prompts)"""

    def __post_init__(self):
        if self.backend not in ("hf", "vllm"):
            raise ConfigError(f"rollout.backend must be hf or vllm, got {self.backend!r}")
        if self.correction_level not in ("token", "sequence"):
            raise ConfigError(f"rollout.correction_level must be token or sequence, got {self.correction_level!r}")
        if self.cache not in ("dynamic", "static"):
            raise ConfigError(f"rollout.cache must be dynamic or static, got {self.cache!r}")
        if self.seed_block < 0:
            raise ConfigError(f"rollout.seed_block must be >= 0, got {self.seed_block}")
        if self.correction_cap <= 0:
            raise ConfigError(f"rollout.correction_cap must be > 0, got {self.correction_cap}")
        if self.backend == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ConfigError("rollout.backend=vllm needs vLLM on a CUDA machine: pip install 'palate[vllm]'")


class CastSampler:
    """palate's sampler on a copy of the policy in a lower precision (bf16), refreshed from the policy before
    every step: decoding reads the weights once per token, so on CPUs with AMX bf16 units (and on GPUs) a bf16
    copy decodes faster than an fp32 policy under autocast, which would cast every weight again at every token.
    It is a rollout engine (``sync`` + ``rollout``, which also takes the step's seed blocks): the trainer recomputes the sampled tokens' log-probs in its
    own precision (π_old of the PPO ratio) and the truncated importance weights correct for the copy's
    rounding (:func:`sampler_correction`), as for vLLM. One process or DDP (whole weights); not FSDP."""

    def __init__(self, policy, tok, dtype, cache: str = "dynamic", compile: bool = False):
        self.tok, self.cache, self.compile = tok, cache, compile
        self.model = cast_copy(policy, dtype)
        self._pairs = None

    def sync(self, policy) -> None:
        """Copy the policy's current weights (cast) and buffers into the copy."""
        if self._pairs is None:
            mine = dict(self.model.named_parameters())
            mine.update(dict(self.model.named_buffers()))
            theirs = list(policy.named_parameters()) + list(policy.named_buffers())
            missing = [n for n, _ in theirs if n not in mine]
            if missing:
                raise ValueError(f"CastSampler: the policy has tensors the sampler copy lacks: {missing[:3]}")
            self._pairs = [(mine[n], t) for n, t in theirs]
        with torch.no_grad():
            for dst, src in self._pairs:
                dst.copy_(src.detach())

    def rollout(self, prompts: list, first: int = 0, block: int = 0, **settings) -> Rollout:
        """Sample as the policy's own sampler would (its seed blocks, :func:`sample_blocks`), outside autocast:
        the copy is bf16 already, and autocast's per-op dispatch cost ~15% per token."""
        with torch.autocast(next(self.model.parameters()).device.type, enabled=False):
            return sample_blocks(self.model, self.tok, prompts,
                                 {**settings, "cache": self.cache, "compile": self.compile}, first, block)


def cast_copy(model, dtype: torch.dtype):
    """A frozen copy of ``model`` in eval mode for generation, its weights cast to ``dtype``; buffers (rotary
    frequencies) keep their precision."""
    out = copy.deepcopy(model).eval()
    for p in out.parameters():
        p.requires_grad_(False)
        p.data = p.data.to(dtype)
    return out


def generation_copy(model, precision: str):
    """What generation outside the rollout engine runs on in a run of ``precision``: a bf16 copy
    (:func:`cast_copy`) of an fp32 model in a bf16 run, else ``model`` itself."""
    if precision == "bf16" and next(model.parameters()).dtype == torch.float32:
        return cast_copy(model, torch.bfloat16)
    return model


def cast_sampler(policy, tok, cfg: RolloutConfig, precision: str, sharding: str = "none"):
    """The bf16 sampler copy (:class:`CastSampler`) when the trainer runs bf16 autocast on fp32 weights with
    palate's own sampler on whole weights; else None (the policy samples itself)."""
    if precision != "bf16" or cfg.backend != "hf" or sharding == "fsdp":
        return None
    if next(policy.parameters()).dtype != torch.float32:
        return None
    return CastSampler(policy, tok, torch.bfloat16, cfg.cache, cfg.compile)


def block_seed(seed: int, block: int) -> int:
    """The sampling seed of seed block ``block`` (global index) of a step whose seed is ``seed``: ``seed`` itself
    for block 0, so a run that samples its step in one block draws what it always drew."""
    return seed if block == 0 else (seed + block * 1_000_000_007) % 2**63


def sample_blocks(policy, tok, prompts: list, settings: dict, first: int, block: int) -> Rollout:
    """palate's sampler over ``prompts`` (global indices ``first`` .. in the step), one call per seed block of
    ``block`` prompts (0: all of them), block k (global: ``(first + offset) // block``) drawn with
    :func:`block_seed`; the parts concatenated in order. A block's samples depend only on its prompts, the
    weights and its seed, so equal blocks give equal samples whichever process draws them."""
    settings = dict(settings)
    seed = settings.pop("seed")
    block = block if block > 0 else max(len(prompts), 1)
    if first % block:
        raise ValueError(f"sample_blocks: a share starting at prompt {first} cuts a seed block of {block} prompts")
    parts = [rollout(policy, tok, prompts[s : s + block], **settings, seed=block_seed(seed, (first + s) // block))
             for s in range(0, len(prompts), block)]
    if len(parts) == 1:
        return parts[0]
    return concat_rollouts(parts, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def sample_rollout(policy, tok, prompts: list, cfg: RolloutConfig, seed: int, engine=None, first: int = 0,
                   block: int | None = None, seconds: dict | None = None) -> tuple[Rollout, SamplerCorrection | None]:
    """Sample with the configured backend. ``hf``: the trainer's own model, whose sampled log-probs are π_old.
    ``vllm`` (or any ``engine`` with ``sync(policy)`` and ``rollout(prompts, **settings)``): the engine gets
    the policy's current weights and samples; the trainer then recomputes the sampled tokens' log-probs
    (π_old of the PPO ratio, in ``logprobs``; the engine's stay in ``sampler_logprobs``) and the truncated
    importance weights correct the loss for the engine's mismatch (:func:`sampler_correction`).

    ``first``: the global index of ``prompts[0]`` in the step (a process's share starts there); ``block``: prompts
    per seed block (None: ``cfg.seed_block``), see :func:`sample_blocks` (``hf`` only). ``seconds``: filled with
    ``generate`` (sampling) and, with an engine, ``recompute`` (the trainer's log-probs of the samples)."""
    t0 = time.perf_counter()
    seconds = {} if seconds is None else seconds
    settings = dict(n=cfg.n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                    top_k=cfg.top_k, stop=tuple(cfg.stop), seed=seed)
    if engine is None and cfg.backend == "hf":
        was_training = policy.training
        policy.eval()
        r = sample_blocks(policy, tok, prompts, {**settings, "cache": cfg.cache, "compile": cfg.compile}, first,
                          cfg.seed_block if block is None else block)
        policy.train(was_training)
        seconds["generate"] = time.perf_counter() - t0
        return r, None
    if engine is None:
        if cfg.backend != "vllm":
            raise ValueError(f"rollout.backend must be hf or vllm, got {cfg.backend!r}")
        from palate.rollout.vllm import sampler_for

        engine = sampler_for(policy, tok, cfg.vllm_gpu_memory_utilization, seed=0)
    engine.sync(policy)
    if isinstance(engine, CastSampler):  # in process: the step's seed blocks, as the policy itself would draw
        r = engine.rollout(prompts, first=first, block=cfg.seed_block if block is None else block, **settings)
    else:
        r = engine.rollout(prompts, **settings)
    t1 = time.perf_counter()
    r.sampler_logprobs = r.logprobs * r.response_mask
    r.logprobs = rollout_logprobs(policy, r, cfg.temperature)
    seconds.update(generate=t1 - t0, recompute=time.perf_counter() - t1)
    return r, sampler_correction(r.logprobs, r.sampler_logprobs, r.response_mask, cfg.correction_cap,
                                 cfg.correction_level)
