"""Attention for training in bf16 on CPU: PyTorch's flash forward with a cheaper backward.

PyTorch's CPU flash-attention backward (torch 2.13) costs as much for a 100-token sequence as for a 256-token one
(it works in fixed blocks) and, in bf16, 5-15x its own forward: in a reward-model step on the bundled model it was
17% of the step. :class:`FlashForwardAttention` keeps the flash kernel's forward (output and log-sum-exp) and
computes the backward from them with matrix products: the attention probabilities are recomputed in fp32 from the
saved log-sum-exp (``exp(q·k/√d − lse)``), in blocks of at most :data:`BLOCK_ELEMENTS` scores, so nothing
``[T, T]`` is kept between forward and backward and a long sequence never materialises its whole score matrix.

:func:`use_cpu_training_attention` registers it with transformers as the attention implementation ``palate_cpu``;
every call that is not bf16 training on CPU (inference, fp32, a GPU, dropout, soft-capping, position biases, a
per-head mask) goes to transformers' own SDPA path unchanged.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger("palate.models")

NAME = "palate_cpu"
BLOCK_ELEMENTS = 1 << 22
"""most attention scores (fp32) the backward holds at once: 16 MiB"""
LONGEST = 200 * 200
"""most ``Tq × Tk`` this backward takes; beyond it PyTorch's flash backward (which skips the blocks a causal mask
hides) is as fast or faster (measured on 2 threads: 8 rows × 9 heads at 128² 13.4 vs 5.7 ms, 192² 11.2 vs 10.6 ms,
256² 19.1 vs 23.8 ms, 1024² 24.8 vs 92.7 ms)"""


class FlashForwardAttention(torch.autograd.Function):
    """``softmax(q·kᵀ·scale + mask)·v`` for ``q [B, H, Tq, D]``, ``k, v [B, Hkv, Tk, D]`` (``H`` a multiple of
    ``Hkv``: grouped-query heads share their key/value head), all bf16 on CPU.

    ``mask``: None, or ``[B or 1, 1, Tq, Tk]`` boolean (True = attend) or additive; ``causal`` (no mask, ``Tq ==
    Tk``): each query attends to keys at or before its own position."""

    @staticmethod
    def forward(ctx, q, k, v, mask, causal: bool, scale: float):
        groups = q.shape[1] // k.shape[1]
        kr, vr = (k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)) if groups > 1 else (k, v)
        if mask is not None:
            mask = (torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
                    if mask.dtype == torch.bool else mask.to(q.dtype))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, kr, vr, 0.0, causal, attn_mask=mask, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, mask = ctx.saved_tensors
        dq, dk, dv = attention_backward(dout, q, k, v, out, lse, mask, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None, None


def attention_backward(dout, q, k, v, out, lse, mask, causal: bool, scale: float, block: int = BLOCK_ELEMENTS):
    """Gradients of :class:`FlashForwardAttention` w.r.t. ``q, k, v`` from its output and log-sum-exp.

    With ``P = exp(S − lse)`` (``S = q·kᵀ·scale + mask``, recomputed in fp32): ``dv = Pᵀ·dO``,
    ``dS = P ⊙ (dO·vᵀ − rowsum(dO ⊙ O))``, ``dq = dS·k·scale``, ``dk = dSᵀ·q·scale``; a key/value head's
    gradients sum over the query heads that share it. Done in blocks of batch rows and query positions holding at
    most ``block`` scores."""
    B, H, Tq, D = q.shape
    Hk, Tk = k.shape[1], k.shape[2]
    G = H // Hk
    rows = max(1, min(B, block // (H * Tq * Tk)))  # batch rows per block
    span = Tq if rows > 1 or H * Tq * Tk <= block else max(1, block // (H * Tk))  # query positions per block
    acc = torch.promote_types(q.dtype, torch.float32)  # scores, probabilities and sums: fp32 at least
    lse = lse.to(acc).clamp_min(torch.finfo(acc).min)  # a query that sees no key: exp(-inf - finite) = 0
    dq = torch.empty_like(q)
    dk = torch.zeros(k.shape, dtype=acc)
    dv = torch.zeros(v.shape, dtype=acc)
    kf, kt, vt = k.to(acc).transpose(-1, -2), k, v.transpose(-1, -2)
    for b0 in range(0, B, rows):
        b1 = min(B, b0 + rows)
        bs = b1 - b0
        for t0 in range(0, Tq, span):
            t1 = min(Tq, t0 + span)
            n = t1 - t0

            def grouped(x, b0=b0, b1=b1, t0=t0, t1=t1, n=n, bs=bs):  # [bs, H, n, D] -> [bs, Hk, G*n, D]
                return x[b0:b1, :, t0:t1].reshape(bs, Hk, G * n, x.shape[-1])

            qg, dog = grouped(q), grouped(dout)
            s = torch.matmul(qg.to(acc) * scale, kf[b0:b1]).view(bs, Hk, G, n, Tk)
            if mask is not None:
                m = mask[b0:b1] if mask.shape[0] > 1 else mask
                s.add_(m[:, :, t0:t1].unsqueeze(1))
            elif causal:
                s.masked_fill_(torch.ones(n, Tk, dtype=torch.bool).triu_(t0 + 1), float("-inf"))
            p = s.sub_(lse[b0:b1, :, t0:t1].reshape(bs, Hk, G, n, 1)).exp_().view(bs, Hk, G * n, Tk)
            dv[b0:b1] += torch.matmul(p.to(q.dtype).transpose(-1, -2), dog)
            delta = (dog.to(acc) * grouped(out).to(acc)).sum(-1, keepdim=True)
            ds = p.mul_(torch.matmul(dog, vt[b0:b1]).to(acc).sub_(delta)).mul_(scale).to(q.dtype)
            dq[b0:b1, :, t0:t1] = torch.matmul(ds, kt[b0:b1]).view(bs, H, n, D)
            dk[b0:b1] += torch.matmul(ds.transpose(-1, -2), qg)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


def _applies(query, key, value, attention_mask, dropout, kwargs) -> bool:
    if query.device.type != "cpu" or not torch.is_grad_enabled() or dropout:
        return False
    if not (query.requires_grad or key.requires_grad or value.requires_grad):
        return False
    if any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "s_aux", "sinks")):
        return False
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
    if dtype != torch.bfloat16 or query.shape[-1] != value.shape[-1] or query.shape[1] % key.shape[1] \
            or query.shape[2] * key.shape[2] > LONGEST:
        return False
    if attention_mask is not None:
        return attention_mask.dim() == 4 and attention_mask.shape[1] == 1 \
            and attention_mask.shape[0] in (1, query.shape[0])
    return True


def cpu_training_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """A transformers attention function (``ALL_ATTENTION_FUNCTIONS`` signature): :class:`FlashForwardAttention`
    for bf16 training on CPU, transformers' SDPA for everything else."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    causal = attention_mask is None and q_len > 1 and (is_causal if is_causal is not None
                                                       else getattr(module, "is_causal", True))
    if not _applies(query, key, value, attention_mask, dropout, kwargs) or (causal and kv_len != q_len):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if torch.is_autocast_enabled("cpu"):
        query, key, value = (x.to(torch.bfloat16) for x in (query, key, value))
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    with torch.autocast("cpu", enabled=False):
        out = FlashForwardAttention.apply(query, key, value, attention_mask, causal, scale)
    return out.transpose(1, 2).contiguous(), None


def use_cpu_training_attention(model) -> bool:
    """Make ``model`` (a transformers model on SDPA attention) train with :func:`cpu_training_attention`.
    Returns whether it did: a model on another attention implementation, or one transformers cannot switch, keeps
    its own."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    AttentionInterface.register(NAME, cpu_training_attention)
    # the masks SDPA gets (padding, a prompt's cache before its continuation); without this transformers builds
    # none for an implementation it does not know
    AttentionMaskInterface.register(NAME, sdpa_mask)
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, NotImplementedError, AttributeError) as e:
        log.info("attention: keeping sdpa (%s)", e)
        return False
    return True
