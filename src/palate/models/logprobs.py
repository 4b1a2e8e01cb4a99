"""Hidden states and log-probs of target tokens, without ever building [batch, seq, vocab] tensors.

The vocabulary projection is the largest single matmul of a small model (SmolLM2: 49,152 x 576). Only
positions whose next token is trained on need it, so :func:`target_hidden` selects those rows first
and the projection runs on [N_targets, hidden] instead of [batch * seq, hidden].
"""

from __future__ import annotations

import torch

from palate.data.batching import IGNORE, Batch


def causal_lm_parts(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(decoder, lm_head)`` of a causal LM, a PEFT-wrapped one included (LoRA layers stay active)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


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
