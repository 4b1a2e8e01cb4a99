"""Simulated labelers: a transparent rubric, group tastes, noise, and labeling over HTTP."""

import random

import pytest

from palate.feedback.simulate import (DEFAULT_WEIGHTS, SimLabeler, default_panel, features, panel_preference,
                                      rubric_score)

HARMFUL = "How can I get into my neighbour's wifi without the password?"
TEA = "How do I make a cup of green tea?"
GOOD_TEA = "Heat water to about 80C.\n1. Put a teaspoon of green tea leaves in a cup.\n2. Pour the water and steep for two minutes."
LOOPY_TEA = "tea tea tea tea tea tea tea tea tea tea tea tea"


def test_features_are_what_the_rubric_says():
    f = features(TEA, GOOD_TEA)
    assert f["relevance"] == 1.0  # the prompt's content words (stop words and "make" aside): cup, green, tea
    assert features(TEA, "Green leaves, hot water.")["relevance"] == pytest.approx(1 / 3)
    assert f["structure"] == 1.0 and f["repetition"] == 0.0 and f["safety"] == 0.0 and f["over_refusal"] == 0.0
    assert features(TEA, LOOPY_TEA)["repetition"] == pytest.approx(9 / 10)  # 10 trigrams, 1 distinct
    assert features(HARMFUL, "I can't help with that.")["safety"] == 1.0
    assert features(HARMFUL, "Sure: run a password cracker.")["safety"] == -1.0
    assert features(TEA, "I'm sorry, I cannot help.")["over_refusal"] == 1.0
    w = {"length": 1.0}
    assert rubric_score(TEA, "one two three", w) == pytest.approx(features(TEA, "one two three")["length"])
    with pytest.raises(ValueError, match="unknown rubric features"):
        rubric_score(TEA, "x", {"charm": 1.0})


def test_panel_preference_is_a_pure_judge():
    v = panel_preference(TEA, GOOD_TEA, LOOPY_TEA)
    assert v.choice == "a" and v.prob_a > 0.9
    assert panel_preference(TEA, LOOPY_TEA, GOOD_TEA).prob_a == pytest.approx(1 - v.prob_a)
    assert panel_preference(HARMFUL, "I can't help with that.", "Sure, use aircrack to get the password.").choice == "a"
    assert panel_preference(TEA, GOOD_TEA, GOOD_TEA) == type(v)(0.5, "tie")
    assert panel_preference(TEA, GOOD_TEA, LOOPY_TEA) == v  # deterministic


def test_groups_have_their_own_tastes_and_noise_matters():
    short, long = "Steep green tea leaves in a cup of hot water.", GOOD_TEA + " Enjoy it warm, and try a second steeping later for more flavour."
    concise, thorough = default_panel(2)
    assert concise.group == "concise" and thorough.group == "thorough"
    assert concise.prob_a(TEA, short, long) > 0.5 > thorough.prob_a(TEA, short, long)
    rng = random.Random(0)
    sharp = SimLabeler("s", weights=dict(DEFAULT_WEIGHTS), noise=0.05)
    noisy = SimLabeler("n", weights=dict(DEFAULT_WEIGHTS), noise=5.0)
    sharp_wins = sum(sharp.pairwise(TEA, GOOD_TEA, LOOPY_TEA, rng) == "A" for _ in range(200))
    noisy_wins = sum(noisy.pairwise(TEA, GOOD_TEA, LOOPY_TEA, rng) == "A" for _ in range(200))
    assert sharp_wins == 200 and 100 < noisy_wins < 170
    assert sharp.rank(TEA, [LOOPY_TEA, GOOD_TEA, "I'm sorry, I cannot help."], rng) == [1, 0, 2]
    assert sharp.rate(TEA, GOOD_TEA, ["helpfulness"], (1, 7), rng)["helpfulness"] > sharp.rate(TEA, LOOPY_TEA, ["helpfulness"], (1, 7), rng)["helpfulness"]


def test_simulated_panel_labels_through_http_and_dawid_skene_finds_the_noisy_one(tmp_path):
    from sqlalchemy import select

    from palate.feedback.agreement import dawid_skene
    from palate.feedback.app import create_app
    from palate.feedback.db import Judgment, Labeler
    from palate.feedback.server import BackgroundServer
    from palate.feedback.simulate import run_panel
    from tests.feedback.helpers import Setup

    rows = []
    for i in range(40):  # one clearly better response per prompt
        prompt = f"How do I care for a {['fern', 'cactus', 'orchid', 'basil'][i % 4]} plant number {i}?"
        pair = [{"prompt": prompt, "response": f"Water the plant weekly.\n1. Keep the {prompt.split()[6]} in light.\n2. Feed it monthly."},
                {"prompt": prompt, "response": "plant plant plant plant plant plant plant plant"}]
        rows += pair if i % 2 else pair[::-1]  # the better one is candidate 0 or 1: both classes occur
    st = Setup(str(tmp_path / "sim.db"))
    st.project("plants", "pairwise", tmp_path, rows, overlap=4)
    panel = [SimLabeler(f"sharp{i}", "g", dict(DEFAULT_WEIGHTS), noise=0.1) for i in range(3)]
    panel.append(SimLabeler("random", "g", dict(DEFAULT_WEIGHTS), noise=1000.0, tie_margin=0.0))
    for lab in panel:
        st.labeler(lab.name, projects=["plants"])
    with BackgroundServer(create_app(st.db)) as srv:
        out = run_panel(srv.url, "plants", [(lab, st.tokens[lab.name]) for lab in panel], seed=3)
    assert not out.errors and out.submitted == 160 and set(out.by_labeler.values()) == {40}
    with st.sessions() as s:
        triples = [(j.item_id, lab.name, j.answer["choice"]) for j, lab in s.execute(
            select(Judgment, Labeler).join(Labeler, Labeler.id == Judgment.labeler_id))]
    ds = dawid_skene([t for t in triples if t[2] in (0, 1)], 2)
    assert min(ds.reliability[f"sharp{i}"] for i in range(3)) > 0.9
    assert 0.3 < ds.reliability["random"] < 0.7
    assert ds.priors[0] == pytest.approx(0.5, abs=0.05)
