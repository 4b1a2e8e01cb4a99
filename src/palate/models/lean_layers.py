"""RMSNorm and the SwiGLU feed-forward with backward passes that keep fewer activations.

Autograd through transformers' RMSNorm and SwiGLU MLP (Llama, Qwen2, Mistral and their kin) keeps, per token and
layer, the normalised input of each RMSNorm (besides its input) and four ``intermediate_size``-wide tensors of the
MLP: ``gate(x)``, ``silu(gate(x))``, ``up(x)`` and their product (the down projection's input). The functions here
compute the same outputs and keep only what their backward cannot recompute cheaply: RMSNorm its input and one
reciprocal RMS per token; the MLP ``gate(x)`` and ``up(x)``, from which the backward recomputes the activation and
the product with elementwise work. That is about a third of a decoder layer's saved activations (see
``tests/models/test_lean_layers.py`` for the count), for a few extra elementwise passes in backward.

:func:`use_lean_layers` swaps the forward of every module it recognises (by structure, not by class name: an
RMSNorm is a module with a 1-D ``weight`` and ``variance_epsilon`` computing transformers' formula; a SwiGLU MLP has
``gate_proj``, ``up_proj`` and a plain ``nn.Linear`` ``down_proj`` with SiLU as ``act_fn``); anything else keeps
its own. Outputs are the same as transformers' to rounding (tested: ``torch.autograd.gradcheck`` of both functions in
float64, a model's loss and gradients against transformers' in float64, fp32 and bf16 autocast).
"""

from __future__ import annotations

import functools
import inspect
import types

import torch
import torch.nn.functional as F

__all__ = ["rms_norm", "swiglu_down", "use_lean_layers"]


class _RMSNorm(torch.autograd.Function):
    """``weight * (x / rms(x))`` as transformers computes it (in fp32, the result cast back to ``x``'s dtype
    before the weight), keeping ``x`` and the per-token ``1 / rms`` for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 as transformers' (float64 stays float64)
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        h = x.to(rstd.dtype) * rstd
        dweight = None
        if ctx.needs_input_grad[1]:
            dweight = (dy * h.to(x.dtype)).reshape(-1, dy.shape[-1]).sum(0).to(weight.dtype)
        dx = None
        if ctx.needs_input_grad[0]:
            dh = (dy * weight).to(rstd.dtype)
            dx = (rstd * (dh - h * (dh * h).mean(-1, keepdim=True))).to(x.dtype)
        return dx, dweight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _RMSNorm.apply(x, weight, eps)


class _SwiGLUDown(torch.autograd.Function):
    """``down(silu(g) * u)`` for ``g = gate(x)``, ``u = up(x)`` and a linear ``down`` (``weight``, ``bias``), in
    ``g``'s dtype (under bf16 autocast the projections' outputs are bf16 and the weight is cast as autocast
    would), keeping ``g``, ``u`` and the weight; the activation and the product are recomputed in backward."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        dtype = torch.promote_types(g.dtype, u.dtype)
        ctx.save_for_backward(g, u, weight)
        ctx.has_bias = bias is not None
        # F.linear under the caller's autocast, if any: it casts the weight as it would for the module
        return F.linear(F.silu(g.to(dtype)) * u.to(dtype), weight, bias)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        g, u, weight = ctx.saved_tensors
        dtype = torch.promote_types(g.dtype, u.dtype)
        dy = dy.to(dtype)
        w = weight.to(dtype)
        sg = torch.sigmoid(g.to(dtype))
        s = g * sg  # silu(g)
        dweight = dbias = dg = du = None
        if ctx.needs_input_grad[2]:
            p = s * u
            dweight = (dy.reshape(-1, dy.shape[-1]).t() @ p.reshape(-1, p.shape[-1])).to(weight.dtype)
            del p
        if ctx.has_bias and ctx.needs_input_grad[3]:
            dbias = dy.reshape(-1, dy.shape[-1]).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dp = dy @ w
            if ctx.needs_input_grad[1]:
                du = (dp * s).to(u.dtype)
            if ctx.needs_input_grad[0]:
                # d silu(g) / dg = sigmoid(g) * (1 + g * (1 - sigmoid(g)))
                dg = (dp * u * (sg * (1 + g * (1 - sg)))).to(g.dtype)
        return dg, du, dweight, dbias


def swiglu_down(g: torch.Tensor, u: torch.Tensor, down: torch.nn.Linear) -> torch.Tensor:
    return _SwiGLUDown.apply(g, u, down.weight, down.bias)


def _lean_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():  # inference: the module's own forward (nothing is kept anyway)
        return type(self).forward(self, hidden_states)
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _lean_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    # a down projection wrapped since (LoRA) is not the plain linear this computes: the module's own forward
    if not torch.is_grad_enabled() or type(self.down_proj) is not torch.nn.Linear:
        return type(self).forward(self, x)
    return swiglu_down(self.gate_proj(x), self.up_proj(x), self.down_proj)


def _is_rms_norm(module: torch.nn.Module) -> bool:
    """transformers' RMSNorm (Llama's formula: weight times the fp32-normalised input cast back, no offset)."""
    w = getattr(module, "weight", None)
    return (type(module).__name__.endswith("RMSNorm") and isinstance(w, torch.nn.Parameter) and w.ndim == 1
            and isinstance(getattr(module, "variance_epsilon", None), float)
            and "hidden_states.pow(2).mean(-1, keepdim=True)" in _source(type(module).forward)
            and "self.weight * hidden_states.to(input_dtype)" in _source(type(module).forward))


def _is_swiglu(module: torch.nn.Module) -> bool:
    """A gated MLP computing ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` with SiLU and a plain linear down."""
    act = getattr(module, "act_fn", None)
    return (all(hasattr(module, n) for n in ("gate_proj", "up_proj"))
            and type(getattr(module, "down_proj", None)) is torch.nn.Linear
            and _is_silu(act)
            and "self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))" in _source(type(module).forward))


def _is_silu(act) -> bool:
    """torch's SiLU, or transformers' ``SiLUActivation`` (what ``hidden_act="silu"`` gives) computing it."""
    return isinstance(act, torch.nn.SiLU) or (type(act).__name__ == "SiLUActivation"
                                              and "functional.silu(input)" in _source(type(act).forward))


@functools.cache
def _source(fn) -> str:
    """``fn``'s source ("" where there is none to read), read once per function."""
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return ""


def use_lean_layers(model: torch.nn.Module) -> dict[str, int]:
    """Give every recognised RMSNorm and SwiGLU MLP of ``model`` the lean backward (in place; the modules, their
    parameters and state-dict names are unchanged). Returns how many of each were swapped."""
    counts = {"rms_norm": 0, "swiglu": 0}
    for module in model.modules():
        if _is_rms_norm(module):
            module.forward = types.MethodType(_lean_norm_forward, module)
            counts["rms_norm"] += 1
        elif _is_swiglu(module):
            module.forward = types.MethodType(_lean_mlp_forward, module)
            counts["swiglu"] += 1
    return counts
