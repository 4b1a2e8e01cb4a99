"""Chunked completion log-probs equal the naive full log-softmax."""

import pytest
import torch

from palate.data.batching import IGNORE, group_batches
from palate.data.errors import SkipLog
from palate.data.records import Preference
from palate.data.tokenize import encode_groups
from palate.models.load import tiny_model
from palate.models.logprobs import project, sequence_logprobs, target_hidden, token_logprobs


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_sequence_logprobs_equal_naive_log_softmax(tok, chunk):
    model = tiny_model(tok, seed=3)
    prefs = [Preference("Hi there", "hello friend, how are you today?", "go away"),
             Preference("What is 2+2?", "4", "It is five, I think, or maybe six."),
             Preference([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}],
                        "Blue.", "I would rather not say what colour I like.")]
    groups = encode_groups(tok, prefs, 64, skips=SkipLog())
    (batch,) = group_batches(groups, 3, tok.pad_token_id, 0, 0)
    sums, counts = sequence_logprobs(model, batch, chunk=chunk)

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # the naive [B, T, V] tensor palate never builds
    labels = batch.labels[:, 1:]
    mask = labels != IGNORE
    per_token = logp.gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
    naive = (per_token * mask).sum(1)
    assert torch.equal(counts, mask.sum(1))
    hidden, targets = target_hidden(model, batch)  # per token, the chunked path against the naive one
    chunked = token_logprobs(lambda h: project(model, h), hidden, targets, chunk)
    assert torch.allclose(chunked, per_token[mask], atol=1e-5, rtol=0)
    assert torch.allclose(sums, naive, atol=1e-5, rtol=1e-6)  # sums of ~100 float32 terms
    # gradients agree too
    g1 = torch.autograd.grad(sums.sum(), model.model.embed_tokens.weight)[0]
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    per_token = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
    g2 = torch.autograd.grad((per_token * mask).sum(), model.model.embed_tokens.weight)[0]
    assert torch.allclose(g1, g2, atol=1e-4 * float(g2.abs().max()), rtol=0)  # float32 sum order differs by chunk


def test_pairs_run_their_prompt_once_with_the_same_logprobs(tok):
    """A pair's chosen and rejected share their prompt: it runs once (fewer positions than the padded batch) and
    the log-probs and gradients equal one forward over every row; rows with different prompts, packed rows and a
    single row are not shared."""
    from palate.models.logprobs import shared_prompts

    model = tiny_model(tok, seed=3)
    prefs = [Preference("Tell me a long story about a cat please", "Once upon a time a cat sat.", "No."),
             Preference("Hi", "hello friend, how are you today? I am well.", "go away")]
    (batch,) = group_batches(encode_groups(tok, prefs, 64, skips=SkipLog()), 2, tok.pad_token_id, 0, 0)
    shared = shared_prompts(batch)
    assert shared.which.tolist() == [0, 0, 1, 1] and shared.positions()[0] < batch.input_ids.numel()
    assert int(shared.response_mask.sum()) == batch.n_targets  # every completion token, nothing else
    assert sorted(r for rows, _ in shared.parts for r in rows) == [0, 1, 2, 3] and len(shared.parts) == 2
    shared, counts = sequence_logprobs(model, batch)
    plain, plain_counts = sequence_logprobs(model, batch, share_prompts=False)
    assert torch.equal(counts, plain_counts) and torch.allclose(shared, plain, atol=1e-4, rtol=1e-6)
    w = model.model.layers[0].self_attn.q_proj.weight
    g1, g2 = (torch.autograd.grad(sequence_logprobs(model, batch, share_prompts=s)[0].sum(), w)[0] for s in (1, 0))
    assert torch.allclose(g1, g2, atol=1e-4 * float(g2.abs().max()), rtol=0)
    lone = [Preference(f"question {i}", "an answer", "another answer entirely") for i in range(2)]
    (rows,) = group_batches(encode_groups(tok, lone, 64, skips=SkipLog()), 2, tok.pad_token_id, 0, 0)
    rows.labels[1::2] = IGNORE  # no targets: not a completion after a prompt
    assert shared_prompts(rows) is None


def test_response_hidden_under_gradient_checkpointing_equals_the_cached_forward(tok):
    """transformers' gradient checkpointing drops a layer's KV cache in training (cache=None), so the prefix-shared
    forward would not attend to the prompt at all (measured: hidden states off by ~3). response_hidden then runs
    prompt and response as one uncached forward: same hidden states and the same gradients as without
    checkpointing."""
    from palate.models.logprobs import response_hidden

    model = tiny_model(tok).train()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, 100, (2, 5), generator=g)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    resp = torch.randint(5, 100, (4, 4), generator=g)

    def run():
        model.zero_grad(set_to_none=True)
        h = response_hidden(model, prompt, mask, resp, 2)
        (h * torch.linspace(-1, 1, h.shape[-1])).sum().backward()
        return h.detach(), model.model.layers[0].mlp.up_proj.weight.grad.clone()

    plain_h, plain_g = run()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt_h, ckpt_g = run()
    assert torch.allclose(ckpt_h, plain_h, atol=1e-5) and torch.allclose(ckpt_g, plain_g, atol=1e-5)
