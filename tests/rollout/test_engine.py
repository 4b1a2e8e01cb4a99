"""The decoding engine (palate.rollout.generate.decode) that reply(), sample() and rollout() share: greedy tokens
equal transformers' generate (tiny random model and the bundled model), static and dynamic caches agree, the
inversion sampler draws from softmax(logits / T) restricted by top-k / top-p, log-probs without a full
log-softmax, streaming, per-row determinism."""

import pytest
import torch

from palate.rollout.generate import (
    _pick,
    _stop_candidates,
    decode,
    eos_ids,
    left_pad,
    reply,
    rollout,
    sample,
)

PROMPTS = ["hello there", "what is two plus two? explain at length please", "name a colour"]


@pytest.fixture(scope="module")
def model(tok):
    from palate.models.load import load_model

    return load_model("tiny", tokenizer=tok).eval()


def _encode(tok, prompts):
    from palate.data.tokenize import encode_prompt, uses_chat_template

    return [encode_prompt(tok, p, uses_chat_template(tok)) for p in prompts]


def _hf_greedy(model, tok, ids: list[int], max_new_tokens: int, repetition_penalty: float = 1.0) -> list[int]:
    x = torch.tensor([ids])
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
                         temperature=None, top_p=None, top_k=None, repetition_penalty=repetition_penalty,
                         eos_token_id=sorted(eos_ids(model, tok)), pad_token_id=tok.pad_token_id, use_cache=True)
    return out[0, len(ids):].tolist()


def _engine_greedy(model, tok, encoded, max_new_tokens, cache, repetition_penalty=1.0) -> list[list[int]]:
    pad = tok.pad_token_id
    ids, mask = left_pad(encoded, pad)
    d = decode(model, ids, mask, max_new_tokens=max_new_tokens, temperature=0.0, eos=eos_ids(model, tok), pad=pad,
               repetition_penalty=repetition_penalty, cache=cache)
    return [d.tokens[r, : d.length[r]].tolist() for r in range(len(encoded))]


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_tokens_equal_transformers_generate_on_a_tiny_model(model, tok, cache):
    encoded = _encode(tok, PROMPTS)
    batched = _engine_greedy(model, tok, encoded, 24, cache)  # left-padded together
    for ids, got in zip(encoded, batched):
        want = _hf_greedy(model, tok, ids, 24)
        assert got == want[: len(got)] and (len(got) == len(want) or got[-1] in eos_ids(model, tok))
    # with the repetition penalty (transformers penalises the prompt's tokens too, as the engine does)
    for ids in encoded[:2]:
        assert _engine_greedy(model, tok, [ids], 24, cache, 1.3)[0] == _hf_greedy(model, tok, ids, 24, 1.3)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_tokens_equal_transformers_generate_on_the_bundled_model(cache):
    from palate.models.load import load_model, load_tokenizer

    tok = load_tokenizer("bundled")
    lm = load_model("bundled", tokenizer=tok).eval()
    encoded = _encode(tok, ["What is the capital of France?", "Give me two tips for sleeping well."])
    batched = _engine_greedy(lm, tok, encoded, 20, cache)
    for ids, got in zip(encoded, batched):
        assert got == _hf_greedy(lm, tok, ids, 20)
    assert _engine_greedy(lm, tok, encoded[:1], 20, cache, 1.2)[0] == _hf_greedy(lm, tok, encoded[0], 20, 1.2)


def test_static_and_dynamic_caches_sample_the_same_tokens(model, tok):
    kw = {"n": 3, "max_new_tokens": 14, "temperature": 0.8, "seed": 4, "stop": ("e",)}
    a, b = rollout(model, tok, PROMPTS, cache="dynamic", **kw), rollout(model, tok, PROMPTS, cache="static", **kw)
    assert torch.equal(a.response_ids, b.response_ids) and a.stop_reason == b.stop_reason and a.texts == b.texts
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
    assert sample(model, tok, PROMPTS, n=2, max_new_tokens=8, seed=2, cache="static") == \
        sample(model, tok, PROMPTS, n=2, max_new_tokens=8, seed=2)


def test_inversion_sampler_draws_from_the_softmax_and_respects_top_k_and_top_p():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0, 0.5]])
    N, T = 40000, 0.7
    rows = logits.expand(N, -1).contiguous()
    tok, lp = _pick(rows, T, 1.0, 0, torch.rand(N, 1, generator=g), True)
    freq = torch.bincount(tok, minlength=6).float() / N
    p = torch.softmax(logits[0] / T, -1)
    assert (freq - p).abs().max() < 0.01
    assert torch.allclose(lp, torch.log_softmax(logits[0] / T, -1)[tok], atol=1e-6)  # log-prob without log_softmax
    tok, lp = _pick(rows, T, 1.0, 2, torch.rand(N, 1, generator=g), True)  # top-k 2: only ids 0 and 1
    assert set(tok.tolist()) == {0, 1}
    assert abs((tok == 0).float().mean() - p[0] / (p[0] + p[1])) < 0.01
    assert torch.allclose(lp, torch.log_softmax(logits[0] / T, -1)[tok], atol=1e-6)  # unfiltered, as the trainer's
    tok, _ = _pick(rows, 1.0, 0.5, 0, torch.rand(N, 1, generator=g), False)  # top-p 0.5: the top token reaches it
    assert set(tok.tolist()) == {0}
    tok, _ = _pick(rows, 1.0, 1.0, 0, torch.full((N, 1), 1.0 - 2**-24), False)  # u at the top never leaves the vocab
    assert (tok < 6).all()
    tok, lp = _pick(rows[:3], 0.0, 1.0, 0, None, True)  # greedy
    assert tok.tolist() == [0, 0, 0] and torch.allclose(lp, torch.log_softmax(logits[0], -1)[0].expand(3))


def test_sample_greedy_decodes_once_and_copies_and_seeds_leave_the_global_rng_alone(model, tok):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    got = sample(model, tok, PROMPTS, n=3, max_new_tokens=10, temperature=0)
    assert torch.equal(torch.rand(1), before)
    assert all(len(s) == 3 and s[0] == s[1] == s[2] for s in got)
    # more samples than a batch: pieces of one prompt in several batches, still deterministic
    a = sample(model, tok, PROMPTS[:2], n=5, max_new_tokens=6, seed=1, batch_size=2)
    assert [len(s) for s in a] == [5, 5] and a == sample(model, tok, PROMPTS[:2], n=5, max_new_tokens=6, seed=1,
                                                          batch_size=2)


def test_reply_streams_the_tokens_it_returns(model, tok):
    class Collect:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.reshape(-1).tolist())

        def end(self):
            self.ended = True

    s = Collect()
    text = reply(model, tok, "hello there", max_new_tokens=12, streamer=s, repetition_penalty=1.2)
    assert s.ended and len(s.puts) >= 2
    assert s.puts[0] == _encode(tok, ["hello there"])[0]  # the prompt first, as generate does
    streamed = [t for p in s.puts[1:] for t in p]
    assert tok.decode(streamed, skip_special_tokens=True).strip() == text
    assert text == reply(model, tok, "hello there", max_new_tokens=12, repetition_penalty=1.2, cache="static")


def test_stop_candidates_include_every_token_that_can_end_a_stop_string(tok):
    mask = _stop_candidates(tok, ("\n\n", "END"), len(tok))
    for text in ["\n", "D", "END", "hello\n\n"]:
        for i in tok(text, add_special_tokens=False)["input_ids"][-1:]:
            assert mask[i]
    assert not mask[tok("hello", add_special_tokens=False)["input_ids"][0]]


def test_rollout_config_cache_and_compile_reach_the_engine(model, tok, monkeypatch):
    """rollout.cache / rollout.compile are passed to the decoding engine (a spy records the real call's arguments);
    both caches sample the same tokens; an unknown cache is refused naming the key."""
    import palate.rollout.generate as generate
    from palate.config import ConfigError
    from palate.rollout.sampling import RolloutConfig, sample_rollout

    seen, real = [], generate.decode

    def spy(*args, **kw):
        seen.append((kw["cache"], kw["compile"]))
        return real(*args, **kw)

    monkeypatch.setattr(generate, "decode", spy)
    out = {c: sample_rollout(model, tok, PROMPTS, RolloutConfig(n=2, max_new_tokens=6, cache=c), seed=3)[0]
           for c in ("dynamic", "static")}
    assert seen == [("dynamic", False), ("static", False)]
    assert torch.equal(out["dynamic"].response_ids, out["static"].response_ids)
    with pytest.raises(ConfigError, match="rollout.cache"):
        RolloutConfig(cache="paged")
