"""Hidden states and log-probs of target tokens, without ever building [batch, seq, vocab] tensors.

The vocabulary projection is the largest single matmul of a small model (SmolLM2: 49,152 x 576). Only
positions whose next token is trained on need it, so :func:`target_hidden` selects those rows first
and the projection runs on [N_targets, hidden] instead of [batch * seq, hidden].

Its backward does not keep the logits either: :class:`ChunkedHeadLogprobs` (used by :func:`head_logprobs`,
hence by :func:`sequence_logprobs` and :func:`response_logprobs`) saves only the hidden rows, the head's
weight, the targets and one logsumexp per row, and recomputes each chunk's float32 ``[chunk, V]`` logits in
the backward. Chunking the forward alone does not bound memory: autograd would keep every chunk's logits
(and their log-softmax) alive until the backward, ``[N_targets, V]`` floats in all (V = 49,152 for SmolLM2:
~0.8 GB per 4,096 completion tokens). The price is one more ``[chunk, H] x [H, V]`` matmul per chunk in the
backward.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from palate.data.batching import IGNORE, Batch, row_buckets
from palate.losses.policy import entropy_from_logits

CHUNK_ROWS = 256
"""rows of the vocabulary projection computed at once: its float32 ``[rows, V]`` logits and one temporary of that
size are what the head adds to a step's peak memory (SmolLM2: 50 MB each at 256 rows, 201 MB at 1,024); a
``[256, 576] x [576, 49152]`` matmul is still large enough to run at the GEMM rate"""


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


def token_logprobs(logits_fn, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """log p(target) = logit[target] - logsumexp(logits), computed ``chunk`` rows at a time: [N].

    Plain autograd: every chunk's logits stay alive until the backward. The fallback of :func:`head_logprobs`
    for heads that are not a plain linear layer (a LoRA-adapted or still-sharded head)."""
    out = []
    for s in range(0, hidden.shape[0], chunk):
        logits = logits_fn(hidden[s : s + chunk]).float()
        picked = logits.gather(-1, targets[s : s + chunk, None]).squeeze(-1)
        out.append(picked - torch.logsumexp(logits, dim=-1))
    return torch.cat(out) if out else hidden.new_zeros(0)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``lm_head(hidden)`` would run its matmul in here: autocast's, else the inputs' common one."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_logits(h, w, b, softcap, temperature, acc) -> torch.Tensor:
    """``softcap(h @ w.T + b) / temperature`` in ``acc`` (float32, or float64 for float64 inputs); ``h``, ``w``,
    ``b`` already in the matmul dtype."""
    z = F.linear(h, w, b).to(acc)
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    if temperature != 1.0:
        z = z / temperature
    return z


class ChunkedHeadLogprobs(torch.autograd.Function):
    """Per-token ``log softmax(softcap(h W^T + b) / temperature)[target]`` (and the entropy of that
    distribution), ``chunk`` rows at a time, with a backward that recomputes each chunk's logits instead of
    saving them.

    Saved for the backward: ``hidden [N, H]``, ``weight [V, H]``, ``bias``, ``targets [N]`` and the row
    logsumexps ``[N]``: nothing with ``N x V`` elements. Per chunk, with ``p = softmax(z)`` and upstream
    gradients ``g`` (log-prob) and ``e`` (entropy ``H = lse - Σ p z``)::

        dL/dz = g (onehot(target) - p) - e p (log p + H)
        dL/du = dL/dz / temperature * (1 - tanh²(u / cap))        (u: the head's output before capping)
        grad_hidden[chunk] = dL/du @ W,  grad_weight += dL/duᵀ @ hidden[chunk],  grad_bias += Σ_rows dL/du

    The matmuls run in ``dtype`` (autocast's, as ``lm_head`` would), logits and softmax in float32 (float64
    inputs stay float64); ``grad_weight`` accumulates in float32 over the chunks. Gradients are computed only
    for the inputs that need them (a frozen head under LoRA gets none).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, temperature, with_entropy, chunk, dtype):
        acc = torch.promote_types(dtype, torch.float32)
        n = hidden.shape[0]
        lp = torch.empty(n, dtype=acc, device=hidden.device)
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        ent = torch.empty(n, dtype=acc, device=hidden.device) if with_entropy else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            for s in range(0, n, chunk):
                z = _chunk_logits(hidden[s : s + chunk].to(dtype), w, b, softcap, temperature, acc)
                l = torch.logsumexp(z, dim=-1)
                lse[s : s + chunk] = l
                lp[s : s + chunk] = z.gather(-1, targets[s : s + chunk, None]).squeeze(-1) - l
                if with_entropy:
                    z.sub_(l[:, None])  # log p
                    ent[s : s + chunk] = -(z.exp() * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.consts = (softcap, temperature, with_entropy, chunk, dtype, acc)
        if with_entropy:
            return lp, ent
        return lp

    @staticmethod
    def backward(ctx, g_lp, g_ent=None):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        softcap, temperature, with_entropy, chunk, dtype, acc = ctx.consts
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            for s in range(0, hidden.shape[0], chunk):
                h = hidden[s : s + chunk].to(dtype)
                z = _chunk_logits(h, w, b, softcap, temperature, acc)
                cap_slope = 1 - (z * (temperature / softcap)) ** 2 if softcap else None  # 1 - tanh²(u / cap)
                z.sub_(lse[s : s + chunk, None])  # log p
                p = z.exp() if with_entropy else z.exp_()  # log p is needed after only for the entropy
                g = g_lp[s : s + chunk, None].to(acc)
                if with_entropy:
                    e = g_ent[s : s + chunk, None].to(acc)
                    ent = -(p * z).sum(-1, keepdim=True)
                    gz = z.add_(ent).mul_(p).mul_(-e)  # -e p (log p + H)
                    gz.sub_(p.mul_(g))  # - g p
                else:
                    gz = p.mul_(-g)
                gz.scatter_add_(-1, targets[s : s + chunk, None], g)
                if temperature != 1.0:
                    gz.div_(temperature)
                if softcap:
                    gz.mul_(cap_slope)
                gu = gz.to(dtype)
                if need_h:
                    grad_h[s : s + chunk] = (gu @ w).to(hidden.dtype)
                if need_w:
                    if gu.dtype == acc:  # accumulate in place: no [V, H] temporary per chunk
                        grad_w.addmm_(gu.t(), h)
                    else:
                        grad_w += (gu.t() @ h).to(acc)
                if need_b:
                    grad_b += gz.sum(0)
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None


def _plain_head(model) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(weight, bias)`` of the output head when it is a plain ``nn.Linear`` with ordinary local weights, else
    None: a head adapted by LoRA or wrapped (modules_to_save), one with hooks, a quantised weight, or a weight
    that is still a sharded DTensor (FSDP2 outside the root forward) is projected by calling the module."""
    _, lm_head = causal_lm_parts(model)
    if type(lm_head) is not torch.nn.Linear or lm_head._forward_hooks or lm_head._forward_pre_hooks:
        return None
    w, b = lm_head.weight, lm_head.bias
    if type(w) not in (torch.nn.Parameter, torch.Tensor) or not w.is_floating_point():
        return None
    if b is not None and type(b) not in (torch.nn.Parameter, torch.Tensor):
        return None
    return w, b


def softcap_of(model) -> float | None:
    return getattr(getattr(model, "config", None), "final_logit_softcapping", None) or None


def head_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                  with_entropy: bool = False, chunk: int = CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``targets`` under ``softmax(project(model, hidden) / temperature)``, ``[N]`` in float32,
    and the entropy of that distribution when asked: :class:`ChunkedHeadLogprobs` for a plain linear head
    (nothing ``N x V`` saved for the backward), else the module's own forward chunk by chunk."""
    plain = _plain_head(model)
    if plain is not None:
        weight, bias = plain
        out = ChunkedHeadLogprobs.apply(hidden, weight, bias, targets, softcap_of(model), float(temperature),
                                        with_entropy, chunk, _compute_dtype(hidden, weight))
        return out if with_entropy else (out, None)
    lps, ents = [], []
    for s in range(0, hidden.shape[0], chunk):
        logits = project(model, hidden[s : s + chunk]).float() / temperature
        lse = torch.logsumexp(logits, dim=-1)
        lps.append(logits.gather(-1, targets[s : s + chunk, None]).squeeze(-1) - lse)
        if with_entropy:
            ents.append(entropy_from_logits(logits))
    zero = hidden.new_zeros(0, dtype=torch.promote_types(hidden.dtype, torch.float32))
    return (torch.cat(lps) if lps else zero), ((torch.cat(ents) if ents else zero) if with_entropy else None)


def sequence_logprobs(model, batch: Batch, chunk: int = CHUNK_ROWS,
                      share_prompts: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each row's completion tokens and how many there are: ``([R], [R])``.

    Rows that share a prompt (a pair's chosen and rejected, a KTO rating and its mismatched partner) run it
    once (``share_prompts``, :func:`shared_prompts`): each distinct prompt goes through the decoder once and
    its key/value cache serves every completion of it (:func:`response_hidden`), which saves the repeated
    prompt tokens and the padding of a batch whose rows differ in prompt and completion lengths. Otherwise one
    forward over every row. The vocabulary projection runs only on completion positions, ``chunk`` rows at a
    time, in float32 for the log-softmax, and its backward recomputes the logits (:func:`head_logprobs`).
    Padding and prompt tokens contribute nothing; both ways give the same numbers to float rounding. Not
    under FSDP2 (:func:`fsdp_sharded`).
    """
    n_rows = batch.input_ids.shape[0]
    shared = shared_prompts(batch) if share_prompts and not fsdp_sharded(model) else None
    if shared is not None:
        hidden = response_hidden(model, shared.prompt_ids, shared.prompt_mask, shared.response_ids,
                                 which=shared.which, parts=shared.parts)
        mask = shared.response_mask.to(hidden.device)
        hidden, targets = hidden[mask], shared.response_ids.to(hidden.device)[mask]
        row_of = torch.arange(n_rows, device=hidden.device)[:, None].expand_as(mask)[mask]
    else:
        hidden, targets = target_hidden(model, batch)
        rows = torch.arange(n_rows)[:, None].expand(-1, batch.input_ids.shape[1] - 1)
        row_of = rows[batch.labels[:, 1:] != IGNORE].to(hidden.device)
    token_lp, _ = head_logprobs(model, hidden, targets, chunk=chunk)
    sums = torch.zeros(n_rows, device=hidden.device, dtype=token_lp.dtype).index_add(0, row_of, token_lp)
    counts = torch.bincount(row_of, minlength=n_rows)
    return sums, counts


def fsdp_sharded(model) -> bool:
    """Whether ``model`` holds FSDP2-sharded modules. Prompt sharing is off for them: the gradient reaching a
    layer's key/value projections through the shared cache can arrive before FSDP's pre-backward hook (fired by
    the layer's outputs) has gathered its weights again, and the backward fails on a freed parameter."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


@dataclass
class SharedPrompts:
    """A batch's rows as distinct prompts and completions (:func:`shared_prompts`): ``prompt_ids`` ``[P, W]``
    left-padded with ``prompt_mask``, ``response_ids`` ``[R, T]`` right-padded with ``response_mask`` (bool),
    row ``r`` completing prompt ``which[r]``; ``parts``: the rows' length buckets ``(rows, longest completion)``,
    each run as one forward on a copy of its rows' prompt caches."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    which: torch.Tensor
    parts: list[tuple[list[int], int]]

    def positions(self, predict: bool = True) -> tuple[int, int]:
        """(positions the forwards run, real tokens among them); ``predict``: a completion's last token is not
        run (it predicts nothing: log-probs), else it is (its state is read: reward models)."""
        drop = 1 if predict else 0
        run = sum(len(rows) * (width - drop) for rows, width in self.parts)
        real = int(self.response_mask.sum()) - drop * len(self.which)
        return self.prompt_ids.numel() + run, int(self.prompt_mask.sum()) + real


def shared_prompts(batch: Batch, row_parts: int = 2) -> SharedPrompts | None:
    """A right-padded batch's rows as :class:`SharedPrompts`, when running each distinct prompt once (and the
    completions in up to ``row_parts`` length buckets) costs fewer token positions than the batch itself; None
    otherwise (packed rows, no prompt shared, a row whose targets are not one contiguous completion after its
    prompt, or no saving).

    A row's prompt is its tokens before its first target (label); rows share a prompt when those tokens are
    equal, so a pair whose two rows were truncated differently simply does not share."""
    if batch.attention_mask is None or batch.position_ids is not None or batch.input_ids.shape[0] < 2:
        return None
    ids, labels = batch.input_ids.cpu(), batch.labels.cpu()
    lengths = batch.attention_mask.cpu().sum(dim=1).tolist()
    is_target = labels != IGNORE
    prompts: dict[tuple[int, ...], int] = {}
    which, spans = [], []
    for r, length in enumerate(lengths):
        targets = is_target[r].nonzero().flatten().tolist()
        if not targets or targets[0] < 1 or targets[-1] != length - 1 or len(targets) != length - targets[0]:
            return None
        start = targets[0]
        which.append(prompts.setdefault(tuple(ids[r, :start].tolist()), len(prompts)))
        spans.append((start, length))
    P, R = len(prompts), len(lengths)
    if P == R or max(end - start for start, end in spans) < 2:
        return None
    W, T = max(len(p) for p in prompts), max(end - start for start, end in spans)
    pad = int(ids[0, lengths[0]]) if lengths[0] < ids.shape[1] else 0  # the batch's own padding id
    prompt_ids = torch.full((P, W), pad, dtype=ids.dtype)
    prompt_mask = torch.zeros(P, W, dtype=torch.long)
    for prompt, p in prompts.items():  # left-padded: the last prompt token predicts the first completion token
        prompt_ids[p, W - len(prompt):] = torch.tensor(prompt, dtype=ids.dtype)
        prompt_mask[p, W - len(prompt):] = 1
    response_ids = torch.full((R, T), pad, dtype=ids.dtype)
    response_mask = torch.zeros(R, T, dtype=torch.bool)
    for r, (start, end) in enumerate(spans):
        response_ids[r, : end - start] = ids[r, start:end]
        response_mask[r, : end - start] = True
    lengths = [end - start for start, end in spans]
    parts = [(rows, max(lengths[r] for r in rows)) for rows in row_buckets(lengths, row_parts)]
    shared = SharedPrompts(prompt_ids, prompt_mask, response_ids, response_mask, torch.tensor(which), parts)
    return shared if shared.positions(predict=False)[0] < ids.numel() else None


def response_hidden(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                    n: int = 1, which: torch.Tensor | None = None,
                    parts: list[tuple[list[int], int]] | None = None) -> torch.Tensor:
    """Final hidden states that predict each response token: ``[B, T, H]`` for ``B`` responses.

    Prefix sharing (:func:`prompt_shared_forward`): each of the ``P`` left-padded prompts runs through the
    decoder once and its key/value cache serves its responses, so a group of samples pays for its prompt once
    in the forward and the backward. Row ``b`` answers prompt ``b // n`` (``B = P * n``), or prompt ``which[b]``
    when ``which`` is given; ``hidden[:, t]`` is the state after the prompt and response tokens ``< t``.
    ``parts``: row buckets run as separate forwards, ``(rows, width)`` with ``width`` counted in response
    tokens (see :func:`prompt_shared_forward`).
    """
    decoder, _ = causal_lm_parts(model)
    which = torch.arange(prompt_ids.shape[0]).repeat_interleave(n) if which is None else which
    if parts is not None:  # a response's last token predicts nothing: it is not run
        parts = [(rows, max(width - 1, 1)) for rows, width in parts]
    last, hidden = prompt_shared_forward(decoder, prompt_ids, prompt_mask, response_ids[:, :-1], which, parts)
    return torch.cat([last[:, None], hidden], dim=1)  # the last prompt position predicts token 0


def prompt_shared_forward(decoder, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, continuation_ids: torch.Tensor,
                          which: torch.Tensor, parts: list[tuple[list[int], int]] | None = None,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``P`` left-padded prompts through ``decoder`` (a transformers base model) once, then continuation ``b``
    (right-padded ``[B, C]``) after prompt ``which[b]`` on a copy of that prompt's key/value cache: the final
    hidden state at each row's last prompt token ``[B, H]`` and at each continuation token ``[B, C, H]``.
    Gradients flow back through the shared cache into the prompt's forward.

    ``parts``: ``(row positions, width)`` pairs (None: all rows together) run as separate continuation forwards,
    each on its rows' first ``width`` continuation tokens (the longest real one among them), so short
    continuations are not padded to long ones; positions past a part's width come back as zeros.

    Under gradient checkpointing, which drops a checkpointed layer's cache, each row's prompt and continuation
    run as one uncached forward instead (same states)."""
    from transformers import DynamicCache

    device = next(decoder.parameters()).device
    mask = prompt_mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    which = which.to(device)
    B, C = continuation_ids.shape
    W = prompt_ids.shape[1]
    cont_pos = positions[which, -1:] + 1 + torch.arange(C, device=device)[None, :]
    # Continuations are right-padded: under causal attention no real token sees the padding after it.
    full_mask = torch.cat([mask[which], mask.new_ones(B, C)], dim=1)
    if _checkpointing(decoder):
        hidden = decoder(input_ids=torch.cat([prompt_ids.to(device)[which], continuation_ids.to(device)], dim=1),
                         attention_mask=full_mask, position_ids=torch.cat([positions[which], cont_pos], dim=1),
                         use_cache=False).last_hidden_state
        return hidden[:, W - 1], hidden[:, W:]
    cache = DynamicCache(config=decoder.config)
    # One embedding lookup for the prompts and every continuation: its backward writes one dense
    # [vocabulary, hidden] gradient instead of one per forward (each ~60 ms to zero and add on 2 CPU threads).
    prompt_embeds, cont_embeds = _embed_together(decoder, prompt_ids.to(device), continuation_ids.to(device))
    prompt_out = decoder(inputs_embeds=prompt_embeds, attention_mask=mask, position_ids=positions,
                         use_cache=True, **kv_cache(decoder, cache)).last_hidden_state  # [P, W, H]
    groups = [(list(range(B)), C)] if not parts or len(parts) < 2 or not hasattr(cache, "layers") else parts
    outs = []
    for rows, width in groups:
        idx = torch.tensor(rows, device=device)
        part_cache = _cache_rows(cache, which[idx], copy=len(groups) > 1)
        h = decoder(inputs_embeds=cont_embeds[idx, :width], attention_mask=full_mask[idx, : W + width],
                    position_ids=cont_pos[idx, :width], use_cache=True,
                    **kv_cache(decoder, part_cache)).last_hidden_state
        outs.append(F.pad(h, (0, 0, 0, C - width)))
    hidden = outs[0] if len(groups) == 1 else torch.cat(outs)[_inverse([rows for rows, _ in groups], B, device)]
    return prompt_out[which, -1], hidden


def _embed_together(decoder, *ids: torch.Tensor) -> list[torch.Tensor]:
    """The input embeddings of each id tensor, looked up in one call of ``decoder``'s embedding layer."""
    flat = decoder.get_input_embeddings()(torch.cat([x.reshape(-1) for x in ids]))
    return [part.view(*x.shape, -1) for part, x in zip(flat.split([x.numel() for x in ids]), ids)]


def _cache_rows(cache, rows: torch.Tensor, copy: bool):
    """``cache`` with its batch rows replaced by ``rows`` (a prompt index per continuation row); with ``copy``
    the original keeps its rows (each layer is a shallow copy whose tensors are replaced, not written)."""
    import copy as copy_module

    if copy:
        cache = copy_module.copy(cache)
        cache.layers = [copy_module.copy(layer) for layer in cache.layers]
    cache.reorder_cache(rows)
    return cache


def _inverse(groups: list[list[int]], n: int, device) -> torch.Tensor:
    """Positions that put rows concatenated group by group back in their original order."""
    where = torch.empty(n, dtype=torch.long)
    where[torch.tensor([r for rows in groups for r in rows])] = torch.arange(n)
    return where.to(device)


def _checkpointing(decoder) -> bool:
    """Whether a forward of ``decoder`` now would run with transformers' gradient checkpointing, which drops the
    KV cache (``cache=None``) of a layer it checkpoints: a prompt's cache would silently not be attended."""
    return decoder.training and torch.is_grad_enabled() and \
        any(getattr(m, "gradient_checkpointing", False) for m in decoder.modules())


def response_logprobs(model, hidden: torch.Tensor, response_ids: torch.Tensor, mask: torch.Tensor,
                      temperature: float = 1.0, with_entropy: bool = False,
                      chunk: int = CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens under ``softmax(logits / temperature)`` as ``[B, T]`` (0 at
    padding), and the per-token entropy of that distribution when asked; the vocabulary projection
    runs on real response positions only, ``chunk`` rows at a time (:func:`head_logprobs`)."""
    device = hidden.device
    keep = mask.to(device).bool()
    flat, flat_e = head_logprobs(model, hidden[keep], response_ids.to(device)[keep], temperature, with_entropy, chunk)
    out = torch.zeros(keep.shape, device=device, dtype=flat.dtype).masked_scatter(keep, flat)
    ent = None
    if with_entropy:
        ent = torch.zeros(keep.shape, device=device, dtype=flat_e.dtype).masked_scatter(keep, flat_e)
    return out, ent
