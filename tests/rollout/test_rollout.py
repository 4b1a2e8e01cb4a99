"""The RL rollout engine: determinism, sampled log-probs equal to the trainer's recomputation, prefix-shared
forward with exact gradients, stop strings, nucleus sampling, rewards."""

import math

import pytest
import torch

from palate.config import ConfigError
from palate.models.logprobs import response_hidden, response_logprobs
from palate.rollout.generate import rollout, sample
from palate.rollout.rewards import NonFiniteError, RewardConfig, Rewarder, load_function, repeated_ngram_fraction

PROMPTS = ["hello there", "what is two plus two? explain at length please"]
REWARDS = __file__.replace("test_rollout.py", "rl_rewards.py")


@pytest.fixture(scope="module")
def model(tok):
    from palate.models.load import load_model

    return load_model("tiny", tokenizer=tok).eval()


def test_same_seed_same_samples_other_seed_other_samples(model, tok):
    a = rollout(model, tok, PROMPTS, n=3, max_new_tokens=10, seed=1)
    b = rollout(model, tok, PROMPTS, n=3, max_new_tokens=10, seed=1)
    c = rollout(model, tok, PROMPTS, n=3, max_new_tokens=10, seed=2)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids)
    assert a.response_ids.shape == (6, 10) and a.stop_reason == ["length"] * 6


def test_sampled_logprobs_equal_the_trainers_and_a_plain_forward(model, tok):
    r = rollout(model, tok, PROMPTS, n=3, max_new_tokens=12, temperature=0.7, seed=3)
    hidden = response_hidden(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.n)
    lp, ent = response_logprobs(model, hidden, r.response_ids, r.response_mask, temperature=0.7, with_entropy=True)
    assert torch.allclose(lp, r.logprobs, atol=1e-5)
    assert (ent[r.response_mask] > 0).all() and (ent[r.response_mask] <= math.log(len(tok)) + 1e-4).all()
    row, prompt = 4, 1  # row 4 answers prompt 4 // 3
    p = r.prompt_ids[prompt][r.prompt_mask[prompt].bool()]
    logits = model(input_ids=torch.cat([p, r.response_ids[row]])[None]).logits[0, len(p) - 1 : -1].float() / 0.7
    naive = torch.log_softmax(logits, -1).gather(-1, r.response_ids[row][:, None]).squeeze(-1)
    assert torch.allclose(naive, lp[row], atol=1e-5)
    # gradients through the shared prompt cache equal those of the plain forward
    params = [p for p in model.parameters() if p.requires_grad]
    g_shared = torch.autograd.grad(lp[row].sum(), params, retain_graph=True, allow_unused=True)
    g_plain = torch.autograd.grad(naive.sum(), params, allow_unused=True)
    for a, b in zip(g_shared, g_plain):
        if a is None or b is None:
            assert a is None and b is None or (a if a is not None else b).abs().max() == 0
            continue
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_stop_strings_end_a_row_and_cut_the_text(model, tok):
    free = rollout(model, tok, PROMPTS, n=4, max_new_tokens=16, seed=5)
    stop = "e"  # frequent in any text
    r = rollout(model, tok, PROMPTS, n=4, max_new_tokens=16, seed=5, stop=(stop,))
    stopped = [i for i, reason in enumerate(r.stop_reason) if reason == "stop"]
    assert stopped, free.texts
    for i in stopped:
        assert stop not in r.texts[i]
        assert stop in tok.decode(r.response_ids[i, : int(r.lengths[i])])  # the stop string ended it
        assert not r.response_mask[i, int(r.lengths[i]):].any()
    assert any(reason == "length" for reason in free.stop_reason)


def test_sample_stop_when_ends_each_row_where_the_predicate_first_holds(model, tok):
    free = sample(model, tok, PROMPTS, n=2, max_new_tokens=20, temperature=1.0, seed=3, batch_size=4)
    text = free[0][0].text
    assert len(text) > 4 and not free[0][0].finished
    target = text[:4]  # holds on row 0's response after a few tokens
    cut = sample(model, tok, PROMPTS, n=2, max_new_tokens=20, temperature=1.0, seed=3, batch_size=4,
                 stop_when=lambda response: response.strip().startswith(target))
    first = cut[0][0]
    assert first.finished and first.text.startswith(target) and text.startswith(first.text)
    assert first.n_tokens < free[0][0].n_tokens
    ids = tok(first.text, add_special_tokens=False)["input_ids"]  # no token after the first one that satisfied it
    assert not tok.decode(ids[:-1], skip_special_tokens=True).strip().startswith(target)
    others = [(i, j) for i in range(2) for j in range(2) if (i, j) != (0, 0) and not free[i][j].text.startswith(target)]
    assert others and all(cut[i][j] == free[i][j] for i, j in others)  # rows it never held for run on untouched


def test_tiny_top_p_is_greedy(model, tok):
    r = rollout(model, tok, PROMPTS[:1], n=3, max_new_tokens=8, top_p=1e-6, seed=0)
    assert torch.equal(r.response_ids[0], r.response_ids[1]) and torch.equal(r.response_ids[1], r.response_ids[2])
    greedy = model.generate(input_ids=r.prompt_ids[:1], attention_mask=r.prompt_mask[:1], do_sample=False,
                            max_new_tokens=8, pad_token_id=tok.pad_token_id)[0, r.prompt_ids.shape[1]:]
    assert torch.equal(r.response_ids[0], greedy)


def test_reward_function_and_penalties():
    rw = Rewarder(RewardConfig(function=f"{REWARDS}:the_count", length_penalty=0.01, missing_eos_penalty=0.5,
                               repetition_penalty=1.0))
    out = rw(["q", "q"], ["the cat and the dog", "a a a a a a"], torch.tensor([5, 6]), torch.tensor([True, False]))
    assert out.score.tolist() == [2.0, 0.0]
    # "a a a a a a": 4 word 3-grams, 3 repeats of the first
    assert repeated_ngram_fraction("a a a a a a") == pytest.approx(0.75)
    assert out.total.tolist() == pytest.approx([2.0 - 0.05 - 0.0, 0.0 - 0.06 - 0.5 - 0.75])
    assert set(out.penalties) == {"length", "repetition", "missing_eos"}


def test_reward_configuration_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        Rewarder(RewardConfig())
    with pytest.raises(ConfigError, match="module:function"):
        load_function("no_colon")
    with pytest.raises(ConfigError, match="does not exist"):
        load_function(f"{tmp_path}/missing.py:f")
    with pytest.raises(ConfigError, match="no callable 'not_callable'"):
        load_function(f"{REWARDS}:not_callable")
    with pytest.raises(ConfigError, match="cannot import"):
        load_function("palate_no_such_module:f")
    rw = Rewarder(RewardConfig(function=f"{REWARDS}:nan_after_start"))
    with pytest.raises(NonFiniteError, match="returned nan for row 0"):
        rw(["q"], ["a"], torch.tensor([1]), torch.tensor([True]))
