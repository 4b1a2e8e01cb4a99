"""Hidden states and log-probs of target tokens, without ever building [batch, seq, vocab] tensors.

The vocabulary projection is the largest single matmul of a small model (SmolLM2: 49,152 x 576). Only
positions whose next token is trained on need it, so :func:`target_hidden` selects those rows first
and the projection runs on [N_targets, hidden] instead of [batch * seq, hidden].
"""

from __future__ import annotations

import functools
import inspect

import torch

from palate.data.batching import IGNORE, Batch
from palate.losses.policy import entropy_from_logits


def causal_lm_parts(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(decoder, lm_head)`` of a causal LM, a PEFT-wrapped one included (LoRA layers stay active)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


@functools.lru_cache(maxsize=None)
def _cache_keyword(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def kv_cache(module, cache) -> dict:
    """``{keyword: cache}`` for a model's or decoder's forward: transformers renamed ``past_key_values`` to
    ``cache`` (5.2x; the old name still works there but warns). PEFT and DDP wrappers are looked through."""
    base = getattr(module, "module", module)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return {_cache_keyword(type(base)): cache}


def target_hidden(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states at positions predicting a target token, and those targets: ([N, H], [N])."""
    decoder, _ = causal_lm_parts(model)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.causal_inputs().items()}
    hidden = decoder(**inputs, use_cache=False).last_hidden_state  # [B, T, H]
    targets = batch.labels[:, 1:].to(device)
    keep = targets != IGNORE
    return hidden[:, :-1][keep], targets[keep]


def project(model, hidden: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits for selected hidden rows, with the model's logit soft-capping if it has one."""
    _, lm_head = causal_lm_parts(model)
    logits = lm_head(hidden)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def token_logprobs(logits_fn, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """log p(target) = logit[target] - logsumexp(logits), computed ``chunk`` rows at a time: [N]."""
    out = []
    for s in range(0, hidden.shape[0], chunk):
        logits = logits_fn(hidden[s : s + chunk]).float()
        picked = logits.gather(-1, targets[s : s + chunk, None]).squeeze(-1)
        out.append(picked - torch.logsumexp(logits, dim=-1))
    return torch.cat(out) if out else hidden.new_zeros(0)


def sequence_logprobs(model, batch: Batch, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each row's completion tokens and how many there are: ``([R], [R])``.

    One forward over every row (chosen and rejected together when the batch holds pairs); the
    vocabulary projection runs only on completion positions, ``chunk`` rows at a time, in float32
    for the log-softmax. Padding and prompt tokens contribute nothing.
    """
    _, lm_head = causal_lm_parts(model)
    hidden, targets = target_hidden(model, batch)
    rows = torch.arange(batch.input_ids.shape[0])[:, None].expand(-1, batch.input_ids.shape[1] - 1)
    row_of = rows[batch.labels[:, 1:] != IGNORE].to(hidden.device)
    token_lp = token_logprobs(lambda h: project(model, h), hidden, targets, chunk)
    n_rows = batch.input_ids.shape[0]
    sums = torch.zeros(n_rows, device=hidden.device, dtype=token_lp.dtype).index_add(0, row_of, token_lp)
    counts = torch.bincount(row_of, minlength=n_rows)
    return sums, counts


def response_hidden(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                    n: int) -> torch.Tensor:
    """Final hidden states that predict each response token: ``[B, T, H]`` for ``B = P * n`` responses.

    Prefix sharing: each of the ``P`` left-padded prompts runs through the decoder once and its key/value
    cache is repeated for its ``n`` responses, so a group of samples pays for its prompt once in the
    forward and the backward (gradients flow through the shared cache). Row ``b`` answers prompt
    ``b // n``; ``hidden[:, t]`` is the state after the prompt and response tokens ``< t``.
    """
    from transformers import DynamicCache

    decoder, _ = causal_lm_parts(model)
    device = next(model.parameters()).device
    mask = prompt_mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    prompt_out = decoder(input_ids=prompt_ids.to(device), attention_mask=mask, position_ids=positions,
                         use_cache=True, **kv_cache(decoder, cache)).last_hidden_state  # [P, W, H]
    cache.batch_repeat_interleave(n)
    B, T = response_ids.shape
    # Responses are right-padded: under causal attention no real token sees the padding after it.
    full_mask = torch.cat([mask.repeat_interleave(n, 0), mask.new_ones(B, T)], dim=1)
    pos = positions[:, -1:].repeat_interleave(n, 0) + 1 + torch.arange(T, device=device)[None, :]
    resp = decoder(input_ids=response_ids[:, :-1].to(device), attention_mask=full_mask[:, :-1],
                   position_ids=pos[:, :-1], use_cache=True, **kv_cache(decoder, cache)).last_hidden_state
    first = prompt_out[:, -1:].repeat_interleave(n, 0)  # the last prompt position predicts token 0
    return torch.cat([first, resp], dim=1)


def response_logprobs(model, hidden: torch.Tensor, response_ids: torch.Tensor, mask: torch.Tensor,
                      temperature: float = 1.0, with_entropy: bool = False,
                      chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens under ``softmax(logits / temperature)`` as ``[B, T]`` (0 at
    padding), and the per-token entropy of that distribution when asked; the vocabulary projection
    runs on real response positions only, ``chunk`` rows at a time."""
    device = hidden.device
    keep = mask.to(device).bool()
    h, targets = hidden[keep], response_ids.to(device)[keep]
    lps, ents = [], []
    for s in range(0, h.shape[0], chunk):
        logits = project(model, h[s : s + chunk]).float() / temperature
        lse = torch.logsumexp(logits, dim=-1)
        lps.append(logits.gather(-1, targets[s : s + chunk, None]).squeeze(-1) - lse)
        if with_entropy:
            ents.append(entropy_from_logits(logits))
    flat = torch.cat(lps) if lps else h.new_zeros(0)
    out = torch.zeros(keep.shape, device=device, dtype=flat.dtype).masked_scatter(keep, flat)
    ent = None
    if with_entropy:
        flat_e = torch.cat(ents) if ents else h.new_zeros(0)
        ent = torch.zeros(keep.shape, device=device, dtype=flat_e.dtype).masked_scatter(keep, flat_e)
    return out, ent
