"""The lm-evaluation-harness adapter on the tiny model: log-likelihoods equal a direct full-softmax
computation (batched, padded, greedy flag), rolling log-likelihood of a text, stop strings in generate_until,
and lm-eval's own ``simple_evaluate`` on a small local multiple-choice task giving the accuracy the
adapter's log-likelihoods imply."""

import json
import math

import pytest
import torch

pytest.importorskip("lm_eval")

from palate.eval.lmeval import PalateLM  # noqa: E402


class Req:
    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def lm():
    from palate.models.load import load_model, load_tokenizer

    tok = load_tokenizer("tiny")
    return PalateLM(model=load_model("tiny", tokenizer=tok), tokenizer=tok, batch_size=2)


def direct(lm, ctx, cont):
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = lm.model(input_ids=ids).logits.float().log_softmax(-1)[0]
    return sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


def test_loglikelihood_equals_the_full_softmax(lm):
    pairs = [("The river flows", " to the sea"), ("A", " b c d e f"), ("Once upon a time there was", " a king")]
    got = lm.loglikelihood([Req(c, x) for c, x in pairs])  # 3 requests, batch size 2: padding in both batches
    for (c, x), (ll, _) in zip(pairs, got):
        ctx, cont = lm._split(c, x)
        assert ctx + cont == lm._encode(c + x) and ll == pytest.approx(direct(lm, ctx, cont), abs=1e-4)
    trailing = lm.loglikelihood([Req("The river flows ", "to the sea")])[0][0]
    assert trailing == pytest.approx(got[0][0], abs=1e-5)  # the context's trailing space moves to the continuation


def test_greedy_flag(lm):
    ctx = lm._encode("The river flows")
    with torch.no_grad():
        best = int(lm.model(input_ids=torch.tensor([ctx])).logits[0, -1].argmax())
    other = (best + 1) % lm.model.config.vocab_size
    assert [g for _, g in lm._score([(ctx, [best]), (ctx, [other])])] == [True, False]


def test_rolling_loglikelihood_scores_every_token_after_the_prefix(lm):
    text = "Rivers carry water from the hills down to the sea."
    toks = lm._encode(text)
    (ll,) = lm.loglikelihood_rolling([Req(text)])
    assert ll == pytest.approx(direct(lm, [lm.prefix], toks), abs=1e-4)
    small = PalateLM(model=lm.model, tokenizer=lm.tok, max_length=4)
    windows_ll = small.loglikelihood_rolling([Req(text)])[0]
    assert math.isfinite(windows_ll) and windows_ll != pytest.approx(ll, abs=1e-3)  # shorter contexts, other value


def test_generate_until_cuts_at_the_stop_string(lm):
    (full,) = lm.generate_until([Req("The river", {"max_gen_toks": 12})])
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip()
    (cut,) = lm.generate_until([Req("The river", {"until": [stop], "max_gen_toks": 12})])
    assert cut == full[: full.index(stop)]


@pytest.mark.slow
def test_simple_evaluate_on_a_local_task(lm, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    docs = [{"question": "The sky is", "choices": ["blue", "green", "loud"], "label": 0},
            {"question": "Two plus two is", "choices": ["four", "five"], "label": 0},
            {"question": "Fish live in", "choices": ["trees", "water"], "label": 1},
            {"question": "Ice is", "choices": ["hot", "cold", "sour"], "label": 1}]
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "toy.yaml").write_text(
        "task: palate_toy\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'toy.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n")
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)  # indexing lm-eval's own tasks takes 25 s
    res = simple_evaluate(model=lm, tasks=["palate_toy"], task_manager=tm)
    acc = res["results"]["palate_toy"]["acc,none"]
    expected = []
    for d in docs:  # lm-eval joins question and choice with a space and picks the highest log-likelihood
        lls = [ll for ll, _ in lm.loglikelihood([Req(d["question"], " " + c) for c in d["choices"]])]
        expected.append(float(max(range(len(lls)), key=lls.__getitem__) == d["label"]))
    assert acc == pytest.approx(sum(expected) / len(docs))
