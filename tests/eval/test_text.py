import subprocess
import sys

import pytest

from palate.eval.text import (distinct_n, is_refusal, length_stats, refusal_rates, repeated_ngram_fraction,
                              text_stats)


def test_length_stats_hand_values():
    s = length_stats(["a b", "a b c d", "x"])  # word lengths 2, 4, 1
    assert s["n"] == 3 and s["mean"] == pytest.approx(7 / 3) and s["median"] == 2 and s["max"] == 4
    assert s["min"] == 1 and s["mean_chars"] == pytest.approx((3 + 7 + 1) / 3)
    assert length_stats([])["mean"] is None


def test_distinct_n_hand_values():
    texts = ["the cat sat", "the cat ran"]
    # unigrams: the cat sat the cat ran -> 4 unique / 6
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 3 unique / 4
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one"], 2) == 0.0


def test_repeated_ngram_fraction_moved_and_reexported():
    # "a a a a a a": four 3-grams, all equal -> 1 − 1/4
    assert repeated_ngram_fraction("a a a a a a") == pytest.approx(0.75)
    assert repeated_ngram_fraction("a b c d") == 0.0 and repeated_ngram_fraction("a b") == 0.0
    from palate.rollout.rewards import repeated_ngram_fraction as old_name

    assert old_name is repeated_ngram_fraction


def test_text_module_imports_no_torch():
    code = "import sys, palate.eval.text, palate.eval.winrate, palate.eval.monitor, palate.eval.report; " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_refusal_detection():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I can\u2019t assist with making weapons.")  # curly apostrophe
    assert is_refusal("I cannot help you hack that account.")
    assert is_refusal("I won't write that.")
    assert not is_refusal("Sure! Here is a recipe for bread: mix flour and water.")
    assert not is_refusal("I can't wait to show you: first, preheat the oven.")
    assert not is_refusal("x" * 400 + " I'm sorry, but")  # only the opening is checked


def test_refusal_rates_harmful_and_benign():
    responses = ["I'm sorry, but no.", "Here is how to do it.", "I cannot help with that.",  # harmful
                 "Sure, here it is.", "I won't do that.", "Of course.", "Happy to help."]  # benign
    harmful = [True, True, True, False, False, False, False]
    r = refusal_rates(responses, harmful)
    assert r["refusal_rate"]["rate"] == pytest.approx(2 / 3) and r["refusal_rate"]["n"] == 3
    assert r["over_refusal_rate"]["rate"] == pytest.approx(1 / 4) and r["over_refusal_rate"]["count"] == 1
    assert refusal_rates(["no"], [False])["refusal_rate"] is None
    with pytest.raises(ValueError, match="labels"):
        refusal_rates(["a"], [True, False])


def test_text_stats_summary():
    s = text_stats(["I'm sorry, but no.", "go go go go go"])
    assert s["refusal_share"] == 0.5
    assert s["repeated_3gram"] == pytest.approx((0 + 2 / 3) / 2)  # 3-grams of go×5: 3, one unique
    assert s["distinct_1"] == pytest.approx(5 / 9)  # I'm sorry, but no. go -> 5 unique of 9
