"""Rollouts from vLLM (``rollout.backend: vllm``): the same :class:`~palate.rollout.generate.Rollout` as the
built-in sampler, from a vLLM engine colocated with the trainer on the same GPU.

UNTESTED. This module has never run: palate's test machines have no GPU and vLLM is not installed
there (``pip install palate[vllm]`` on a CUDA machine). What is tested is everything around it: the
importance-weight correction of the sampler/trainer mismatch (:func:`palate.losses.policy.sampler_correction`,
hand-computed), the trainer-side recomputation of the sampled tokens' log-probs and the dispatch in
:func:`palate.rollout.experience.collect` (with a test double standing in for the engine). Expect to
fix attribute paths here against the vLLM version you install; the weight-sync path especially
differs between vLLM releases.

The flow each RL step:

1. :meth:`VLLMSampler.sync` copies the policy's current weights into the engine (LoRA merged into the
   base weights on the fly, then unmerged), so samples come from the policy being trained;
2. :meth:`VLLMSampler.rollout` samples ``n`` responses per prompt with vLLM's paged KV cache and
   returns the sampled tokens' log-probs as vLLM computed them;
3. :func:`palate.rollout.experience.collect` recomputes those log-probs with the trainer (π_old of the
   PPO ratio) and keeps vLLM's as ``Rollout.sampler_logprobs``; the recipes weight each token's loss by
   the truncated ratio π_trainer / π_sampler.
"""

from __future__ import annotations

import logging
import os
import tempfile

import torch

from palate.data.tokenize import encode_prompt, uses_chat_template
from palate.models.lora import merged_weights
from palate.rollout.generate import Rollout, left_pad

log = logging.getLogger("palate.vllm")


def _import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError("rollout.backend=vllm needs vLLM on a CUDA machine: pip install 'palate[vllm]'") from e
    return vllm


class VLLMSampler:
    """A vLLM engine holding a copy of the policy (UNTESTED: see the module docstring)."""

    def __init__(self, policy, tokenizer, gpu_memory_utilization: float = 0.3, seed: int = 0):
        vllm = _import_vllm()
        self.tokenizer = tokenizer
        # The engine starts from the policy as it is now, written once to a temporary directory.
        self._dir = tempfile.mkdtemp(prefix="palate-vllm-")
        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        base.save_pretrained(self._dir, safe_serialization=True)
        tokenizer.save_pretrained(self._dir)
        # In-process engine, so that the weights can be reached for a sync (vLLM's V1 engine otherwise
        # runs the model in a separate process).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs = dict(model=self._dir, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                      dtype="bfloat16" if torch.cuda.is_bf16_supported() else "float16", enable_prefix_caching=True)
        try:  # log-probs after temperature scaling, which is what palate's trainer recomputes
            self.llm = vllm.LLM(**kwargs, logprobs_mode="processed_logprobs")
        except TypeError:
            log.warning("this vLLM has no logprobs_mode: its log-probs may be of the unscaled logits, which "
                        "inflates the sampler/trainer mismatch unless rollout.temperature is 1")
            self.llm = vllm.LLM(**kwargs)
        self._SamplingParams = vllm.SamplingParams

    def _engine_model(self):
        """The engine's torch module (in-process engines only)."""
        engine = self.llm.llm_engine
        for path in ("model_executor.driver_worker.worker.model_runner.model",
                     "model_executor.driver_worker.model_runner.model"):
            obj = engine
            try:
                for part in path.split("."):
                    obj = getattr(obj, part)
                return obj
            except AttributeError:
                continue
        raise RuntimeError("cannot reach the vLLM engine's model for a weight sync in this vLLM version")

    @torch.no_grad()
    def sync(self, policy) -> None:
        """Copy the policy's current weights (LoRA merged) into the engine."""
        with merged_weights(policy) as state:
            self._engine_model().load_weights(weights=list(state.items()))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def rollout(self, prompts: list, *, n: int = 1, max_new_tokens: int = 128, temperature: float = 1.0,
                top_p: float = 1.0, top_k: int = 0, stop: tuple[str, ...] = (), seed: int = 0) -> Rollout:
        """``n`` samples per prompt; the same layout as :func:`palate.rollout.generate.rollout` (row ``b``
        answers prompt ``b // n``), with vLLM's log-probs of the sampled tokens in ``logprobs``."""
        if temperature <= 0:
            raise ValueError("rollout samples: temperature must be > 0")
        tok = self.tokenizer
        use_template = uses_chat_template(tok)
        encoded = [encode_prompt(tok, p, use_template) for p in prompts]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        prompt_ids, prompt_mask = left_pad(encoded, pad)
        params = self._SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k if top_k else -1,
                                      max_tokens=max_new_tokens, stop=list(stop) or None, seed=seed, logprobs=0)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        rows, lps, reasons, texts = [], [], [], []
        for req in outputs:
            for c in sorted(req.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                rows.append(ids)
                lps.append([next(iter(d.values())).logprob if len(d) == 1 else d[t].logprob
                            for d, t in zip(c.logprobs, ids)])
                reasons.append("length" if c.finish_reason == "length"
                               else ("stop" if isinstance(c.stop_reason, str) else "eos"))
                texts.append(c.text.strip())
        width = max(1, max(len(r) for r in rows))
        B = len(rows)
        response_ids = torch.full((B, width), pad, dtype=torch.long)
        logprobs = torch.zeros((B, width), dtype=torch.float32)
        for b, (ids, lp) in enumerate(zip(rows, lps)):
            response_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            logprobs[b, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        lengths = torch.tensor([len(r) for r in rows])
        response_mask = torch.arange(width)[None, :] < lengths[:, None]
        return Rollout(prompt_ids, prompt_mask, n, response_ids, response_mask, logprobs, reasons, texts)


_SAMPLER: VLLMSampler | None = None


def sampler_for(policy, tokenizer, gpu_memory_utilization: float, seed: int) -> VLLMSampler:
    """One engine per process, started on first use."""
    global _SAMPLER
    if _SAMPLER is None:
        _SAMPLER = VLLMSampler(policy, tokenizer, gpu_memory_utilization, seed)
    return _SAMPLER
