"""Projects from files: clear errors for malformed candidates, active selection by ensemble disagreement."""

import pytest

from palate.data.errors import DataError
from palate.feedback.importing import (Candidate, build_items, pair_disagreement, read_candidates, read_gold,
                                       read_prompts_file)
from palate.feedback.db import Project
from tests.feedback.helpers import write_jsonl


@pytest.mark.parametrize("bad, field, message", [
    ('{"prompt": "p", "response": "a"', None, "invalid JSON"),
    ('["not", "an", "object"]', None, "expected a JSON object"),
    ({"response": "a"}, "prompt", "missing field"),
    ({"prompt": "p"}, "response", "missing field"),
    ({"prompt": "p", "response": 3}, "response", "expected text"),
    ({"prompt": "p", "response": "   "}, "response", "empty response"),
    ({"prompt": "", "response": "a"}, "prompt", "empty prompt"),
    ({"prompt": "p", "response": "a", "scores": ["high"]}, "scores", "finite numbers"),
    ({"prompt": "p", "responses": []}, "responses", "non-empty list"),
    ({"prompt": "p", "responses": ["ok", 5]}, "responses[1]", "expected text"),
    ({"prompt_id": "q1", "response": "a"}, "prompt_id", "but none was given"),
    ({"prompt": [{"role": "user"}], "response": "a"}, "prompt", "chat messages"),
])
def test_malformed_candidates_name_file_line_and_field(tmp_path, bad, field, message):
    path = write_jsonl(tmp_path / "cands.jsonl", [{"prompt": "p", "response": "fine"}, "", bad])
    with pytest.raises(DataError) as e:
        read_candidates(path)
    where = f"cands.jsonl line 3" + (f" field '{field}'" if field else "")
    assert where in str(e.value) and message in str(e.value), str(e.value)


def test_prompt_ids_refer_to_the_prompts_file(tmp_path):
    prompts = read_prompts_file(write_jsonl(tmp_path / "prompts.jsonl", [{"id": "q1", "prompt": "Hi?"},
                                                                        {"id": "q2", "prompt": [{"role": "user", "content": "Yo"}]}]))
    groups = read_candidates(write_jsonl(tmp_path / "c.jsonl", [
        {"prompt_id": "q1", "response": "a", "model": "m1"}, {"prompt_id": "q2", "responses": ["x", {"text": "y", "model": "m2"}]},
        {"prompt_id": "q1", "response": "b"}]), prompts)
    assert [(g.prompt, [c.text for c in g.candidates]) for g in groups] == [
        ("Hi?", ["a", "b"]), ([{"role": "user", "content": "Yo"}], ["x", "y"])]
    assert groups[1].candidates[1].model == "m2"
    with pytest.raises(DataError, match=r"c2.jsonl line 1 field 'prompt_id': no prompt with id 'q9'"):
        read_candidates(write_jsonl(tmp_path / "c2.jsonl", [{"prompt_id": "q9", "response": "a"}]), prompts)


def test_pair_disagreement_is_the_spread_of_head_probabilities():
    agree = pair_disagreement(Candidate("a", scores=[1.0, 1.0]), Candidate("b", scores=[0.0, 0.0]))
    assert agree == 0.0
    # heads: sigma(+2) = 0.8808, sigma(-2) = 0.1192 -> std over 2 heads = (0.8808 - 0.1192) / 2 = 0.3808
    split = pair_disagreement(Candidate("a", scores=[1.0, -1.0]), Candidate("b", scores=[-1.0, 1.0]))
    assert split == pytest.approx(0.380797, abs=1e-6)
    assert pair_disagreement(Candidate("a"), Candidate("b", scores=[1.0, 2.0])) == 0.0


def test_active_selection_picks_the_pairs_the_ensemble_disagrees_on(tmp_path):
    # four responses; the heads agree about every pair except (c, d)
    rows = [{"prompt": "p", "response": t, "scores": s} for t, s in
            [("a", [3.0, 3.0, 3.0]), ("b", [0.0, 0.0, 0.0]), ("c", [2.0, -2.0, 2.0]), ("d", [-2.0, 2.0, -2.0])]]
    items, report = build_items("pairwise", read_candidates(write_jsonl(tmp_path / "c.jsonl", rows)), pairs_per_prompt=2)
    texts = [{c["text"] for c in it["candidates"]} for it in items]
    assert texts[0] == {"c", "d"} and items[0]["priority"] > items[1]["priority"] > 0
    assert report == {"prompts": 1, "items": 2, "prompts_with_too_few_candidates": 0}
    ranking, _ = build_items("ranking", read_candidates(write_jsonl(tmp_path / "c.jsonl", rows)), k=3)
    assert len(ranking) == 1 and len(ranking[0]["candidates"]) == 3
    single, _ = build_items("thumbs", read_candidates(write_jsonl(tmp_path / "c.jsonl", rows)))
    assert len(single) == 4


def test_gold_answers_are_checked_against_the_task(tmp_path):
    p = Project(slug="x", task_type="rating", criteria=["helpfulness"], scale_low=1, scale_high=5)
    ok = read_gold(write_jsonl(tmp_path / "g.jsonl", [{"prompt": "p", "response": "r", "answer": 4}]), p)
    assert ok[0]["gold"] == {"scores": {"helpfulness": 4}} and ok[0]["is_gold"]
    with pytest.raises(DataError, match=r"g2.jsonl line 1 field 'answer': expected a score in \[1, 5\]"):
        read_gold(write_jsonl(tmp_path / "g2.jsonl", [{"prompt": "p", "response": "r", "answer": 9}]), p)
    pair = Project(slug="y", task_type="pairwise", criteria=[], scale_low=1, scale_high=7)
    with pytest.raises(DataError, match="needs 2 response"):
        read_gold(write_jsonl(tmp_path / "g3.jsonl", [{"prompt": "p", "responses": ["a"], "answer": 0}]), pair)


def test_precomputed_scores_file_drives_the_selection_too(tmp_path):
    from palate.feedback.importing import attach_scores, read_scores_file

    rows = [{"prompt": "p", "response": t} for t in "abcd"]
    groups = read_candidates(write_jsonl(tmp_path / "c.jsonl", rows))
    scores = write_jsonl(tmp_path / "s.jsonl", [
        {"prompt": "p", "response": "a", "scores": [3.0, 3.0, 3.0]}, {"prompt": "p", "response": "b", "scores": [0.0, 0.0, 0.0]},
        {"prompt": "p", "response": "c", "scores": [2.0, -2.0, 2.0]}, {"prompt": "p", "response": "d", "scores": [-2.0, 2.0, -2.0]},
        {"prompt": "other", "response": "zzz", "reward": 1.0}])
    assert attach_scores(groups, read_scores_file(scores)) == 4
    items, _ = build_items("pairwise", groups, pairs_per_prompt=1)
    assert {c["text"] for c in items[0]["candidates"]} == {"c", "d"}
    with pytest.raises(DataError, match=r"s2.jsonl line 1 field 'scores': missing field"):
        read_scores_file(write_jsonl(tmp_path / "s2.jsonl", [{"prompt": "p", "response": "a"}]))
