"""RMSNorm and SwiGLU MLP with lean backward passes: the same outputs and gradients as transformers' modules
(gradcheck in float64; a model's loss and gradients in float64, fp32 and bf16 autocast, to rounding), fewer bytes kept for backward (counted with saved-tensor
hooks), and modules they cannot stand in for (a LoRA-wrapped projection, inference) keep their own forward."""

from __future__ import annotations

import copy

import pytest
import torch

from palate.models.lean_layers import use_lean_layers
from palate.models.load import load_model, load_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tok = load_tokenizer("tiny")
    return load_model("tiny", tokenizer=tok)


def batch(model, rows=3, length=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0
    mask[1, :4] = 0
    return {"input_ids": ids, "attention_mask": mask}


def loss_and_grads(model, b, bf16=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(**b, labels=b["input_ids"])
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def saved_bytes(model, fn) -> int:
    """Bytes of the distinct tensors autograd keeps for backward while ``fn()`` runs (each storage once), the
    model's parameters (and views of them) left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def test_the_functions_pass_gradcheck_in_float64():
    from palate.models.lean_layers import rms_norm, swiglu_down

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w, 1e-6), (x, w))
    gate, up = (torch.randn(2, 3, 7, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    for bias in (False, True):
        down = torch.nn.Linear(7, 4, bias=bias).double()
        params = (down.weight, down.bias) if bias else (down.weight,)
        assert torch.autograd.gradcheck(lambda g_, u_, *p: swiglu_down(g_, u_, down), (gate, up, *params))


def test_float64_loss_and_gradients_equal_transformers(tiny):
    """transformers' RMSNorm computes in fp32 even in a float64 model (the lean one in float64): equal to ~1e-7."""
    ref = copy.deepcopy(tiny).double()
    lean = copy.deepcopy(ref)
    counts = use_lean_layers(lean)
    layers = lean.config.num_hidden_layers
    assert counts == {"rms_norm": 2 * layers + 1, "swiglu": layers}
    b = batch(ref)
    ref_loss, ref_grads = loss_and_grads(ref, b)
    lean_loss, lean_grads = loss_and_grads(lean, b)
    assert abs(ref_loss - lean_loss) < 1e-6
    assert ref_grads.keys() == lean_grads.keys()
    for name, g in ref_grads.items():
        assert ((lean_grads[name] - g).norm() / g.norm()).item() < 1e-6, name


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_fp32_and_bf16_autocast_match_transformers_to_rounding(tiny, bf16):
    """The lean functions are as far from a float64 step as transformers' modules are, in the same precision."""
    exact_loss, exact = loss_and_grads(copy.deepcopy(tiny).double(), batch(tiny))
    ref = copy.deepcopy(tiny)
    lean = copy.deepcopy(tiny)
    use_lean_layers(lean)
    b = batch(tiny)
    ref_loss, ref_grads = loss_and_grads(ref, b, bf16)
    lean_loss, lean_grads = loss_and_grads(lean, b, bf16)
    assert abs(lean_loss.double() - exact_loss) <= 2 * abs(ref_loss.double() - exact_loss) + (1e-3 if bf16 else 1e-6)
    for name, g in exact.items():
        err_lean = ((lean_grads[name].double() - g).norm() / g.norm()).item()
        err_ref = ((ref_grads[name].double() - g).norm() / g.norm()).item()
        assert err_lean <= 2 * err_ref + (1e-3 if bf16 else 1e-6), (name, err_lean, err_ref)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_a_decoder_layer_keeps_about_a_third_less_for_backward(tiny, bf16):
    ref = copy.deepcopy(tiny)
    lean = copy.deepcopy(tiny)
    use_lean_layers(lean)
    b = batch(tiny, rows=3, length=10)

    def forward(model):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model.model(**b).last_hidden_state
        return run

    before, after = saved_bytes(ref, forward(ref)), saved_bytes(lean, forward(lean))
    # per token and layer transformers keeps gate(x), silu(gate(x)), up(x), their product and each RMSNorm's
    # normalised input (fp32: the residual stream is fp32 under autocast too); the lean backward keeps gate(x) and
    # up(x): two intermediate-wide tensors and two normalised inputs fewer per layer, and the final norm's
    cfg = tiny.config
    tokens, layers = 3 * 10, cfg.num_hidden_layers
    width = 2 if bf16 else 4
    expected = tokens * layers * (2 * cfg.intermediate_size * width + 2 * cfg.hidden_size * 4) + tokens * cfg.hidden_size * 4
    if bf16:  # and autocast's bf16 copy of each down projection's weight: the lean backward casts it again
        expected += layers * cfg.intermediate_size * cfg.hidden_size * 2
    assert before - after == expected, (before, after, expected)
    assert after < 0.8 * before


def test_inference_runs_the_modules_own_forward_bitwise(tiny):
    lean = copy.deepcopy(tiny)
    use_lean_layers(lean)
    b = batch(tiny)
    with torch.no_grad():
        assert torch.equal(lean(**b).logits, tiny(**b).logits)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(lean(**b).logits, tiny(**b).logits)


def test_a_lora_wrapped_down_projection_keeps_the_mlps_own_forward(tiny):
    """A LoRA adapter on down_proj must count: the MLP falls back to its own forward, and gradients reach it."""
    from palate.config import LoraConfig
    from palate.models.lora import apply_lora

    cfg = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=["down_proj", "q_proj"])
    ref = apply_lora(copy.deepcopy(tiny), cfg, task_type="CAUSAL_LM")
    lean_base = copy.deepcopy(tiny)
    use_lean_layers(lean_base)
    lean = apply_lora(lean_base, cfg, task_type="CAUSAL_LM")
    lean.load_state_dict(ref.state_dict())
    for m in (ref, lean):  # non-zero adapters, so that a skipped adapter would change the output
        for name, p in m.named_parameters():
            if "lora_B" in name:
                torch.nn.init.constant_(p, 0.01)
    b = batch(tiny)
    ref_loss, ref_grads = loss_and_grads(ref, b)
    lean_loss, lean_grads = loss_and_grads(lean, b)
    assert torch.allclose(lean_loss, ref_loss, atol=1e-6)
    assert any("down_proj.lora_A" in n for n in lean_grads)
    for name, g in ref_grads.items():
        assert torch.allclose(lean_grads[name], g, rtol=1e-4, atol=1e-6), name


def test_modules_of_another_shape_are_left_alone():
    class GeluMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = (torch.nn.Linear(4, 8), torch.nn.Linear(4, 8),
                                                            torch.nn.Linear(8, 4))
            self.act_fn = torch.nn.GELU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    class LayerNorm(torch.nn.LayerNorm):
        pass

    model = torch.nn.Sequential(GeluMLP(), LayerNorm(4))
    assert use_lean_layers(model) == {"rms_norm": 0, "swiglu": 0}
    assert "forward" not in vars(model[0]) and "forward" not in vars(model[1])
