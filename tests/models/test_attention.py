"""palate's CPU training attention: flash forward, blockwise backward from the saved log-sum-exp.

The backward is checked in float64 against autograd through PyTorch's math attention (same formula, so agreement
to 1e-10), in bf16 against PyTorch's own bf16 flash backward (both against a float64 truth), blockwise against
whole, and in a model: transformers' SDPA and palate's attention give the same loss and gradients, and every call
that is not bf16 training (no gradient, fp32) goes to SDPA unchanged.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from palate.models.attention import (
    FlashForwardAttention,
    attention_backward,
    use_cpu_training_attention,
)


def reference(q, k, v, mask, causal):
    """PyTorch's attention with the key/value heads repeated for grouped-query heads (math kernel in float64)."""
    groups = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                          attn_mask=mask, is_causal=causal)


def palate(q, k, v, mask, causal):
    return FlashForwardAttention.apply(q, k, v, mask, causal, 1.0 / math.sqrt(q.shape[-1]))


def inputs(kind: str, dtype, B=3, H=6, Hk=2, Tq=11, Tk=11, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, t, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
               for h, t in ((H, Tq), (Hk, Tk), (Hk, Tk)))
    mask = None
    if kind == "padded":  # boolean, right-padded rows: row 0 has 3 padding keys at the end, row 1 one
        mask = torch.ones(B, 1, Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
        mask[0, :, :, Tk - 3:] = False
        mask[1, :, :, Tk - 1] = False
        mask[:, :, :, 0] = True
    elif kind == "additive":  # a float mask shared by the batch (first dimension 1), keys before the queries
        allowed = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
        mask = torch.zeros(1, 1, Tq, Tk, dtype=dtype).masked_fill(~allowed, float("-inf"))
    return q, k, v, mask, kind == "causal"


def gradients(fn, q, k, v, mask, causal, grad_out):
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v, mask, causal)
    out.backward(grad_out)
    return [out.detach()] + [t.grad.clone() for t in (q, k, v)]


CASES = [("causal", {}), ("padded", {"Tk": 17}), ("additive", {"Tk": 15}), ("causal", {"Hk": 6}),
         ("padded", {"Hk": 1, "Tk": 13})]


@pytest.mark.parametrize("kind,shape", CASES)
def test_float64_gradients_equal_autograd_through_the_math_attention(kind, shape):
    q, k, v, mask, causal = inputs(kind, torch.float64, **shape)
    grad_out = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mine = gradients(palate, q, k, v, mask, causal, grad_out)
    truth = gradients(reference, q, k, v, mask, causal, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), mine, truth):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9), (name, (a - b).abs().max().item())


@pytest.mark.parametrize("kind,shape", CASES)
def test_bf16_gradients_are_as_close_to_the_truth_as_pytorchs_own_flash_backward(kind, shape):
    q, k, v, mask, causal = inputs(kind, torch.bfloat16, **shape)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    mine = gradients(palate, q, k, v, mask, causal, grad_out)
    flash = gradients(reference, q, k, v, mask, causal, grad_out)
    exact = [x.detach().double().requires_grad_() for x in (q, k, v)]
    m64 = mask if mask is None or mask.dtype == torch.bool else mask.double()
    truth = gradients(reference, *exact, m64, causal, grad_out.double())
    for name, a, b, t in zip(("out", "dq", "dk", "dv"), mine, flash, truth):
        err_mine = ((a.double() - t).abs().max() / t.abs().max()).item()
        err_flash = ((b.double() - t).abs().max() / t.abs().max()).item()
        assert err_mine <= max(2 * err_flash, 1e-2), (name, err_mine, err_flash)


def test_blocks_of_rows_and_of_query_positions_give_the_whole_backward():
    q, k, v, mask, _ = inputs("padded", torch.float64, B=4, Tq=9, Tk=12)
    grad_out = torch.randn(q.shape, dtype=torch.float64)
    scale = 1.0 / math.sqrt(q.shape[-1])
    additive = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
    groups = q.shape[1] // k.shape[1]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), 0.0, False, attn_mask=additive, scale=scale)
    whole = attention_backward(grad_out, q, k, v, out, lse, additive, False, scale)
    per_row = attention_backward(grad_out, q, k, v, out, lse, additive, False, scale,
                                 block=q.shape[1] * 9 * 12)  # one batch row per block
    per_span = attention_backward(grad_out, q, k, v, out, lse, additive, False, scale,
                                  block=q.shape[1] * 4 * 12)  # 4 query positions per block
    for a, b, c in zip(whole, per_row, per_span):
        assert torch.allclose(a, b, atol=1e-12) and torch.allclose(a, c, atol=1e-12)
    # causal, blockwise over query positions: each block masks from its own first position
    q, k, v, _, _ = inputs("causal", torch.float64, B=2, Tq=10, Tk=10)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), 0.0, True, scale=scale)
    grad_out = torch.randn(q.shape, dtype=torch.float64)
    whole = attention_backward(grad_out, q, k, v, out, lse, None, True, scale)
    spans = attention_backward(grad_out, q, k, v, out, lse, None, True, scale, block=q.shape[1] * 3 * 10)
    for a, b in zip(whole, spans):
        assert torch.allclose(a, b, atol=1e-12)


def _model_loss_and_grads(model, batch, precision_bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision_bf16):
        out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_model_trains_the_same_on_palates_attention_and_calls_outside_training_go_to_sdpa():
    """In bf16 palate's attention is as far from an fp32 step as transformers' SDPA in bf16 is (both round)."""
    from palate.models.load import load_model, load_tokenizer

    tok = load_tokenizer("tiny")
    model = load_model("tiny", tokenizer=tok)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 14), generator=g)
    attention_mask = torch.ones_like(ids)
    attention_mask[0, 10:] = 0  # a right-padded row
    attention_mask[1, :4] = 0  # a left-padded one: its real tokens must not see the padding before them
    batch = {"input_ids": ids, "attention_mask": attention_mask}
    fp32_loss, fp32_grads = _model_loss_and_grads(model, batch, False)
    sdpa_loss, sdpa_grads = _model_loss_and_grads(model, batch, True)
    with torch.no_grad():
        sdpa_logits = model(**batch).logits
    assert use_cpu_training_attention(model)
    assert model.config._attn_implementation == "palate_cpu"
    mine_loss, mine_grads = _model_loss_and_grads(model, batch, True)
    assert abs(mine_loss - fp32_loss) <= 2 * abs(sdpa_loss - fp32_loss) + 1e-3
    for name, exact in fp32_grads.items():
        err_mine = ((mine_grads[name] - exact).norm() / exact.norm()).item()
        err_sdpa = ((sdpa_grads[name] - exact).norm() / exact.norm()).item()
        assert err_mine <= 2 * err_sdpa + 1e-3, (name, err_mine, err_sdpa)
    # no gradient, or fp32: transformers' SDPA path, bitwise
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, sdpa_logits)
    mine_fp32_loss, mine_fp32_grads = _model_loss_and_grads(model, batch, False)
    assert torch.equal(mine_fp32_loss, fp32_loss)
    assert all(torch.equal(mine_fp32_grads[n], g) for n, g in fp32_grads.items())


def test_a_model_on_another_attention_keeps_it():
    from palate.models.load import load_model, load_tokenizer

    model = load_model("tiny", tokenizer=load_tokenizer("tiny"))
    model.set_attn_implementation("eager")
    assert not use_cpu_training_attention(model)
    assert model.config._attn_implementation == "eager"
