"""Pure judge math: verdict parsing (malformed outputs counted, never guessed), position-swap combination,
bias and agreement figures, templates and the constitution file — all against hand-written numbers."""

import math

import pytest

from palate.config import ConfigError
from palate.judges import stats
from palate.judges.debias import combine
from palate.judges.templates import load_template, placeholders, render
from palate.judges.verdicts import Verdict, grade_from_probs, parse_grade, parse_pairwise, verdict_from_logits


@pytest.mark.parametrize("text, pref", [
    ("A is more specific. [[A]]", "A"),
    ("Both fine, but B answers it.\n\nFinal verdict: [[B]]", "B"),
    ("They are equally good [[C]]", "tie"),
    ("[[ b ]]", "B"),
    ("[[tie]]", "tie"),
    ("I pick A. [[A]] To repeat: [[A]]", "A"),  # the same verdict twice is fine
])
def test_parse_pairwise(text, pref):
    v = parse_pairwise(text)
    assert v.preference == pref and not v.malformed
    assert v.p_a == {"A": 1.0, "B": 0.0, "tie": 0.5}[pref]


@pytest.mark.parametrize("text, why", [
    ("Assistant A is better.", "no [[A]]"),
    ("", "no [[A]]"),
    ("[A] is better", "no [[A]]"),
    ("[[D]]", "no [[A]]"),
    ("At first [[A]], but on reflection [[B]]", "conflicting"),
])
def test_malformed_pairwise_is_never_guessed(text, why):
    v = parse_pairwise(text)
    assert v.malformed and v.preference is None and v.p_a is None and v.confidence is None
    assert why in v.rationale and v.raw == text


def test_rationale_is_the_text_before_the_verdict():
    assert parse_pairwise("B skips step 2. [[A]]").rationale == "B skips step 2."


@pytest.mark.parametrize("text, scale, score", [
    ("Clear and correct. Rating: [[8]]", (1, 10), 8.0),
    ("[[7.5]]", (1, 10), 7.5),
    ("Rating: [[3/5]]", (1, 5), 3.0),
    ("[[10]]", (1, 10), 10.0),
])
def test_parse_grade(text, scale, score):
    assert parse_grade(text, scale).score == score


@pytest.mark.parametrize("text", ["Rating: 8", "[[11]]", "[[0]]", "[[4]] or maybe [[6]]", "[[eight]]"])
def test_malformed_grades(text):
    s = parse_grade(text, (1, 10))
    assert s.malformed and s.score is None


def test_verdict_from_logits_restricts_softmax_to_the_two_tokens():
    v = verdict_from_logits(0.0, math.log(3.0))  # p(A) = 1 / (1 + 3)
    assert v.p_a == pytest.approx(0.25) and v.preference == "B" and v.confidence == pytest.approx(0.75)
    assert verdict_from_logits(2.0, 2.0).preference == "tie"
    low = verdict_from_logits(0.0, 1.0, mass=1e-5, min_mass=1e-3)
    assert low.malformed and "min_mass" in low.rationale


def test_grade_from_probs_renormalises():
    s = grade_from_probs({1: 0.05, 2: 0.15, 3: 0.30}, (1, 3))  # 0.5 of the mass: renormalised to .1 .3 .6
    assert s.score == pytest.approx(0.1 * 1 + 0.3 * 2 + 0.6 * 3) and s.confidence == pytest.approx(0.6)


def V(p_a):
    return Verdict(None, None) if p_a is None else Verdict("A" if p_a > .5 else "B" if p_a < .5 else "tie",
                                                           max(p_a, 1 - p_a), p_a=p_a)


@pytest.mark.parametrize("p_first, p_second, mode, pref, weight, consistent", [
    (1.0, 0.0, "tie", "a", 1.0, True),      # A in order ab, B (= a) in order ba: a wins, certain
    (0.0, 1.0, "tie", "b", 1.0, True),
    (1.0, 1.0, "tie", "tie", 0.0, False),   # always the first slot: position, not content
    (1.0, 1.0, "weight", "tie", 0.0, False),  # p = (1 + 0) / 2 = 0.5
    (0.8, 0.4, "tie", "a", 0.4, True),      # p1 .8, p2 1 − .4 = .6, p = .7, weight |2·.7 − 1| = .4
    (0.9, 0.7, "tie", "tie", 0.0, False),   # p1 .9 (a), p2 .3 (b): inconsistent
    (0.9, 0.7, "weight", "a", 0.2, False),  # p = .6: kept with weight .2
    (0.5, 0.5, "tie", "tie", 0.0, True),    # tie in both orders
    (0.5, 0.0, "weight", "a", 0.5, False),  # tie, then a: p = .75
])
def test_combine_both_orders(p_first, p_second, mode, pref, weight, consistent):
    j = combine(V(p_first), V(p_second), mode)
    assert j.preference == pref and j.weight == pytest.approx(weight) and j.consistent is consistent


def test_malformed_in_either_order_leaves_the_pair_unjudged():
    for first, second in ((None, 0.0), (1.0, None), (None, None)):
        j = combine(V(first), V(second))
        assert j.malformed and j.weight == 0.0 and j.consistent is None
    with pytest.raises(ValueError, match="mode"):
        combine(V(1.0), V(0.0), "majority")


def test_bias_figures_on_a_hand_made_sequence():
    # pairs: consistent a; always-first (inconsistent); consistent b; malformed; tie both orders
    js = [combine(V(1.0), V(0.0)), combine(V(1.0), V(1.0)), combine(V(0.0), V(1.0)), combine(V(None), V(1.0)),
          combine(V(0.5), V(0.5))]
    # decisive single verdicts: pair0 (first, second) = first-slot yes, no; pair1 yes, yes; pair2 no, yes;
    # pair3's second order (A) yes; ties left out -> 5 of 7 prefer the first slot
    assert stats.position_bias(js) == {"first_slot_rate": pytest.approx(5 / 7), "n": 7}
    assert stats.inconsistency(js) == {"inconsistent": 1, "n": 4, "rate": 0.25}
    # decisive combined: pair0 a (a longer), pair2 b (b shorter) -> 1 of 2 prefer the longer
    assert stats.length_bias(js, [10, 5, 9, 1, 1], [3, 5, 2, 1, 1]) == {"longer_rate": 0.5, "n": 2}
    # own answer in slot a of pair0 (won) and slot a of pair2 (lost); pair1 is a tie: left out
    assert stats.self_preference(js, ["a", "a", "a", None, "b"]) == {"self_preference_rate": 0.5, "n": 2}


def test_cohen_kappa_hand_computed():
    x, y = list("aabba"), list("abbba")
    # p_o = 4/5; p_e = (3·2 + 2·3)/25 = 12/25; κ = (0.8 − 0.48) / 0.52
    assert stats.cohen_kappa(x, y) == pytest.approx(0.32 / 0.52)
    assert stats.cohen_kappa(list("ab"), list("ab")) == 1.0
    assert stats.cohen_kappa(list("ab"), list("ba")) == -1.0
    assert math.isnan(stats.cohen_kappa(list("aa"), list("aa")))  # one label throughout: undefined
    with pytest.raises(ValueError):
        stats.cohen_kappa(["a"], ["a", "b"])


def test_agreement_leaves_out_malformed_and_scores_ties_as_a_category():
    judge = ["a", "b", "tie", None, "a", "b"]
    human = ["a", "a", "a", "b", "b", "b"]
    a = stats.agreement(judge, human)
    assert a["judged"] == 5 and a["decisive"] == 4
    assert a["accuracy"] == pytest.approx(2 / 4) and a["coverage"] == pytest.approx(4 / 6)
    # κ over the 5 judged: p_o = 2/5; judge a2 b2 tie1, human a3 b2 -> p_e = (2·3 + 2·2)/25 = 0.4 -> κ = 0
    assert a["kappa"] == pytest.approx(0.0, abs=1e-12)


def test_templates_render_strictly():
    t = load_template("pairwise")
    assert placeholders(t) == {"question", "answer_a", "answer_b"}
    assert placeholders(load_template("reference")) == {"question", "reference", "answer_a", "answer_b"}
    assert placeholders(load_template("single")) == {"question", "answer", "rubric", "low", "high"}
    text = render(t, question="Q?", answer_a="uses {{ braces }}", answer_b="B")
    assert "uses {{ braces }}" in text and "[[A]]" in text  # values are not re-scanned
    with pytest.raises(KeyError, match="answer_b"):
        render(t, question="Q", answer_a="A")
    with pytest.raises(FileNotFoundError, match="pairwise"):
        load_template("no-such-template")


def test_constitution_file_is_read_and_checked(tmp_path):
    from palate.recipes.constitutional import pick_principle, read_constitution
    from palate.judges.templates import TEMPLATE_DIR

    ps = read_constitution(TEMPLATE_DIR / "constitution.yaml")
    assert len(ps) >= 5 and {"helpful", "honest", "harmless"} <= {p.name for p in ps}
    assert pick_principle(ps, 0, 3, 1) == pick_principle(ps, 0, 3, 1)  # seeded
    assert len({pick_principle(ps, 0, i, 1).name for i in range(40)}) > 2  # and varied
    bad = tmp_path / "c.yaml"
    bad.write_text("principles:\n  - name: x\n    critique: say\n")
    with pytest.raises(ConfigError, match=r"c.yaml: principles\[0\] needs a non-empty text 'revision'"):
        read_constitution(bad)
