"""π_ref, the reference policy of the KL term (PPO, GRPO, RLOO, REINFORCE++) and of the DPO family's
implicit reward, evaluated while the policy trains.

One abstraction for both: the policy itself with its LoRA adapter disabled (no extra memory), or a frozen
copy of the starting weights for a full fine-tune (one more model in memory, optionally on another device).
Online RL asks for the log-probs of sampled response tokens (:meth:`Reference.response_logprobs`), the
preference recipes for each sequence's summed log-prob (:meth:`Reference.sequence_logprobs`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch

from palate.data.batching import Batch
from palate.models.logprobs import response_hidden, response_logprobs, sequence_logprobs
from palate.models.lora import adapter_disabled, is_peft


class Reference:
    """π_ref next to a policy being trained.

    ``copy_weights=False``: ``policy`` is a model nobody trains; it is frozen in place instead of copied.
    ``device``: where a frozen copy lives (``same``: beside the policy). ``autocast``: a context manager
    factory every reference forward runs under (the trainer's mixed precision)."""

    def __init__(self, policy, device: str = "same", copy_weights: bool = True,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.adapter = is_peft(policy)
        self.autocast = autocast
        if self.adapter:
            self.model = policy
        else:
            self.model = (copy.deepcopy(policy) if copy_weights else policy).eval().requires_grad_(False)
            if device != "same":
                self.model.to(device)

    @property
    def copies_weights(self) -> bool:
        """True when the reference holds its own frozen weights (a full fine-tune), False for a disabled adapter."""
        return not self.adapter

    def _evaluating(self):
        return frozen_forward(self.model, self.adapter, self.autocast)

    def response_logprobs(self, r, temperature: float) -> torch.Tensor:
        """Log-probs of a rollout's sampled tokens under ``softmax(logits / temperature)``: [B, T] float32 on
        the CPU, 0 at padding. ``r``: a :class:`palate.rollout.generate.Rollout` (or anything with its fields)."""
        with self._evaluating() as model:
            return rollout_logprobs(model, r, temperature)

    def sequence_logprobs(self, batch: Batch) -> torch.Tensor:
        """Summed log-prob of each row's target tokens: [R] float32."""
        with self._evaluating() as model:
            sums, _ = sequence_logprobs(model, batch)
        return sums.float().clone()


@contextlib.contextmanager
def frozen_forward(model, adapter_off: bool = True,
                   autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
    """``model`` as the reference: eval mode, no gradients, its LoRA adapter disabled (``adapter_off``; a no-op
    for a plain model), under ``autocast``; its train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), adapter_disabled(model, adapter_off), autocast():
            yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def rollout_logprobs(model, r, temperature: float) -> torch.Tensor:
    """``model``'s log-probs of the rollout's sampled tokens under ``softmax(logits / temperature)``:
    [B, T] float32 on the CPU, 0 at padding (the model is evaluated in eval mode, then put back)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        hidden = response_hidden(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.n)
        lp, _ = response_logprobs(model, hidden, r.response_ids, r.response_mask, temperature)
    model.train(was_training)
    return lp.float().cpu() * r.response_mask
