"""The chunked log-prob head (``ChunkedHeadLogprobs``, behind ``sequence_logprobs`` / ``response_logprobs``):
values and gradients equal the plain ``log_softmax(hidden @ W.T)`` gather, and nothing with ``N x V``
elements is saved for the backward (counted with ``saved_tensors_hooks``, not timed).

Measured at the commit that added these tests: float64 values and gradients agree to ~2e-15 relative
(max |difference| / max |reference|), float32 to ~7e-7; the bound used is 1e-5 (float32) and 1e-12 (float64).
"""

import pytest
import torch

from palate.data.batching import IGNORE, group_batches
from palate.data.errors import SkipLog
from palate.data.records import Preference
from palate.data.tokenize import encode_groups
from palate.losses.policy import entropy_from_logits
from palate.models.load import tiny_model
from palate.models.logprobs import (
    ChunkedHeadLogprobs,
    head_logprobs,
    project,
    response_logprobs,
    sequence_logprobs,
    target_hidden,
    token_logprobs,
)

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 for two empty tensors)."""
    if b.numel() == 0:
        return 0.0
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def plain(hidden, weight, bias, targets, softcap=None, temperature=1.0):
    z = torch.nn.functional.linear(hidden, weight, bias)
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    z = z / temperature
    return torch.log_softmax(z, -1).gather(-1, targets[:, None]).squeeze(-1), entropy_from_logits(z)


def inputs(dtype, n=23, h=16, v=50, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, dtype=dtype, generator=g).requires_grad_()
    weight = (torch.randn(v, h, dtype=dtype, generator=g) * 0.5).requires_grad_()
    b = torch.randn(v, dtype=dtype, generator=g).requires_grad_() if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, targets, torch.randn(n, dtype=dtype, generator=g), torch.randn(n, dtype=dtype, generator=g)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [1, 4, 7, 23, 1024])  # 23 rows: chunks that divide it, that do not, one chunk
@pytest.mark.parametrize("softcap,temperature,with_entropy,bias", [
    (None, 1.0, False, False), (None, 0.7, True, True), (30.0, 1.3, True, False), (5.0, 1.0, False, True)])
def test_values_and_gradients_equal_the_plain_log_softmax(dtype, chunk, softcap, temperature, with_entropy, bias):
    hidden, weight, b, targets, g_lp, g_ent = inputs(dtype, bias=bias)
    out = ChunkedHeadLogprobs.apply(hidden, weight, b, targets, softcap, temperature, with_entropy, chunk, dtype)
    lp, ent = out if with_entropy else (out, None)
    params = [hidden, weight] + ([b] if bias else [])
    loss = (lp * g_lp).sum() + ((ent * g_ent).sum() if with_entropy else 0)
    grads = torch.autograd.grad(loss, params)

    lp_ref, ent_ref = plain(hidden, weight, b, targets, softcap, temperature)
    loss_ref = (lp_ref * g_lp).sum() + ((ent_ref * g_ent).sum() if with_entropy else 0)
    grads_ref = torch.autograd.grad(loss_ref, params)
    assert lp.dtype == dtype and lp.shape == (23,)
    assert rel(lp, lp_ref) < TOL[dtype]
    if with_entropy:
        assert rel(ent, ent_ref) < TOL[dtype]
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == dtype and rel(g, g_ref) < TOL[dtype]


def test_gradcheck_float64():
    hidden, weight, b, targets, _, _ = inputs(torch.float64, n=5, h=3, v=7, bias=True)
    for softcap, temperature, with_entropy in [(None, 1.0, False), (2.0, 0.5, True)]:
        fn = lambda h, w, bb: ChunkedHeadLogprobs.apply(h, w, bb, targets, softcap, temperature, with_entropy, 2,
                                                        torch.float64)
        assert torch.autograd.gradcheck(fn, (hidden, weight, b))


def test_no_rows_gives_empty_log_probs_and_zero_gradients():
    hidden, weight, _, targets, _, _ = inputs(torch.float32, n=0)
    lp, ent = ChunkedHeadLogprobs.apply(hidden, weight, None, targets, None, 1.0, True, 4, torch.float32)
    assert lp.shape == (0,) and ent.shape == (0,)
    gh, gw = torch.autograd.grad(lp.sum() + ent.sum(), [hidden, weight])
    assert gh.shape == (0, 16) and torch.equal(gw, torch.zeros_like(weight))


def test_frozen_weight_gets_no_gradient_and_hidden_gets_the_same():
    hidden, weight, _, targets, g_lp, _ = inputs(torch.float32)
    weight.requires_grad_(False)
    lp = ChunkedHeadLogprobs.apply(hidden, weight, None, targets, None, 1.0, False, 5, torch.float32)
    (gh,) = torch.autograd.grad((lp * g_lp).sum(), [hidden])
    (gh_ref,) = torch.autograd.grad((plain(hidden, weight, None, targets)[0] * g_lp).sum(), [hidden])
    assert weight.grad is None and rel(gh, gh_ref) < 1e-5


def pairs_batch(tok):
    prefs = [Preference("Hi there", "hello friend, how are you today?", "go away"),
             Preference("What is 2+2?", "4", "It is five, I think, or maybe six."),
             Preference("Name a color.", "Blue.", "I would rather not say what colour I like.")]
    groups = encode_groups(tok, prefs, 64, skips=SkipLog())
    (batch,) = group_batches(groups, 3, tok.pad_token_id, 0, 0)
    return batch


def naive_sums(model, batch):
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    labels = batch.labels[:, 1:]
    mask = labels != IGNORE
    per_token = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
    return (per_token * mask).sum(1)


@pytest.mark.parametrize("chunk", [5, 1024])
def test_sequence_logprobs_gradients_with_the_tied_head(tok, chunk):
    """SmolLM2 ties lm_head to the embeddings (so does the tiny model): the tied weight's gradient is the sum of
    the head's (from the custom backward) and the embedding's, as with the full logits."""
    model = tiny_model(tok, seed=3)
    emb = model.model.embed_tokens.weight
    assert model.lm_head.weight is emb
    batch = pairs_batch(tok)
    sums, _ = sequence_logprobs(model, batch, chunk=chunk)
    naive = naive_sums(model, batch)
    assert rel(sums, naive) < 1e-5
    w = torch.tensor([0.3, -1.2, 0.7, 2.0, -0.4, 1.1])
    params = [emb] + [p for n, p in model.named_parameters() if "layers.1." in n]
    grads = torch.autograd.grad((sums * w).sum(), params)
    grads_ref = torch.autograd.grad((naive_sums(model, batch) * w).sum(), params)
    for g, g_ref in zip(grads, grads_ref):
        assert rel(g, g_ref) < 1e-5


def saved_tensors(fn):
    """Shapes and bytes of every tensor autograd saves for the backward while ``fn()`` runs."""
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.numel() * t.element_size(), t.untyped_storage().data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def test_sequence_logprobs_saves_nothing_vocabulary_sized_for_the_backward(tok):
    model = tiny_model(tok, seed=3)
    batch = pairs_batch(tok)
    V = model.config.vocab_size
    head = model.lm_head.weight.untyped_storage().data_ptr()
    n = int((batch.labels[:, 1:] != IGNORE).sum())
    (sums, _), saved = saved_tensors(lambda: sequence_logprobs(model, batch, chunk=8))
    vocab_sized = [(shape, b) for shape, b, ptr in saved if V in shape and ptr != head]
    assert vocab_sized == []  # only the head's own weight [V, H] has a V axis
    _, saved_decoder = saved_tensors(lambda: target_hidden(model, batch))  # the decoder's own activations
    head_bytes = sum(b for _, b, ptr in saved if ptr != head) - sum(b for _, b, ptr in saved_decoder if ptr != head)
    H = model.config.hidden_size
    # hidden rows + a few per-target indices and scalars (targets, logsumexps, row of each target): measured
    # 11,200 bytes for these 40 targets (280 per target, 256 of them the hidden row), against 7.9 MB of logits
    assert head_bytes <= n * (H * 4 + 32)
    assert head_bytes < n * V * 4 / 100  # the old path kept ≥ n × V float32 (the logits) alive
    sums.sum().backward()  # and the backward runs from what was saved

    # the detector does see the logits the plain chunked autograd path keeps (so the assertion above means something)
    model.zero_grad()
    hidden, targets = target_hidden(model, batch)
    _, saved = saved_tensors(lambda: token_logprobs(lambda h: project(model, h), hidden, targets, chunk=8))
    kept = sum(b for shape, b, ptr in saved if V in shape and ptr != head)
    assert kept >= n * V * 4


def test_response_logprobs_with_entropy_and_temperature_equal_the_full_logits(tok):
    model = tiny_model(tok, seed=1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    hidden = model.model(input_ids=ids).last_hidden_state  # hidden[:, t] scores ids[:, t] here (any pairing works)
    lp, ent = response_logprobs(model, hidden, ids, mask, temperature=0.8, with_entropy=True, chunk=4)
    logits = model.lm_head(hidden).float() / 0.8
    lp_ref = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1) * mask
    ent_ref = entropy_from_logits(logits) * mask
    assert rel(lp, lp_ref) < 1e-5 and rel(ent, ent_ref) < 1e-5
    assert torch.equal(lp[mask == 0], torch.zeros(int((mask == 0).sum())))
    w = torch.randn(3, 9, generator=g)
    params = [model.lm_head.weight, model.model.layers[0].mlp.up_proj.weight]
    grads = torch.autograd.grad((lp * w).sum() + (ent * w).sum(), params, retain_graph=True)  # shared decoder graph
    grads_ref = torch.autograd.grad((lp_ref * w).sum() + (ent_ref * w).sum(), params)
    for a, b in zip(grads, grads_ref):
        assert rel(a, b) < 1e-5


def test_softcapped_model_uses_its_cap(tok):
    model = tiny_model(tok, seed=2)
    model.config.final_logit_softcapping = 3.0
    hidden = model.model(input_ids=torch.randint(5, 200, (1, 7))).last_hidden_state[0]
    targets = torch.randint(5, 200, (7,))
    lp, _ = head_logprobs(model, hidden, targets, chunk=3)
    fallback = token_logprobs(lambda h: project(model, h), hidden, targets, 3)  # project() applies the cap
    assert rel(lp, fallback) < 1e-5


@pytest.mark.parametrize("targets_head", [False, True])
def test_lora_policy(tok, targets_head):
    """Under LoRA the (tied, frozen) head gets no gradient and the adapters get the full-logits gradient; a head
    that is itself LoRA-adapted is projected through its module (the fallback), with the same numbers."""
    from palate.config import LoraConfig
    from palate.models.lora import apply_lora

    targets = ["q_proj", "v_proj"] + (["lm_head"] if targets_head else [])
    model = apply_lora(tiny_model(tok, seed=4), LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0,
                                                           target_modules=targets))
    for n, p in model.named_parameters():  # non-zero adapters, so that they matter
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    batch = pairs_batch(tok)
    sums, _ = sequence_logprobs(model, batch, chunk=6)
    naive = naive_sums(model, batch)
    assert rel(sums, naive) < 1e-5
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(sums.sum(), trainable)
    grads_ref = torch.autograd.grad(naive_sums(model, batch).sum(), trainable)
    for a, b in zip(grads, grads_ref):
        assert rel(a, b) < 1e-5
    base = model.get_base_model()
    assert all(not p.requires_grad for n, p in base.named_parameters() if "lora_" not in n)


def test_bf16_autocast_matches_the_module_path(tok):
    """Under autocast the head's matmul runs in bf16 as ``lm_head`` would, the log-softmax in float32."""
    model = tiny_model(tok, seed=5)
    hidden0 = model.model(input_ids=torch.randint(5, 200, (2, 11))).last_hidden_state.reshape(22, -1).detach()
    targets = torch.randint(5, 200, (22,))
    results = []
    for fused in (True, False):
        hidden = hidden0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                lp, _ = head_logprobs(model, hidden, targets, chunk=5)
            else:
                lp = token_logprobs(lambda h: project(model, h), hidden, targets, 5)
        assert lp.dtype == torch.float32
        gh, gw = torch.autograd.grad(lp.sum(), [hidden, model.lm_head.weight])
        assert gw.dtype == torch.float32
        results.append((lp, gh, gw))
    (a, ga, gwa), (b, gb, gwb) = results
    assert rel(a, b) < 1e-5  # the same bf16 logits, then float32
    assert rel(ga, gb) < 2e-2 and rel(gwa, gwb) < 2e-2  # bf16 matmuls of the backward in another order
