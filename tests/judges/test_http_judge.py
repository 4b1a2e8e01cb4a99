"""The HTTP judge against a real ``palate serve`` (tiny model) on 127.0.0.1: labeling through it, the disk
cache (a rerun sends zero requests, counted on both sides), retries across a server restart mid-run, a
clear error when nothing answers, and no retries on a 401."""

import json
import threading
import time

import pytest

from palate.judges.http import HTTPJudge, JudgeHTTPError, JudgeUnreachable
from palate.judges.label import Candidate, judge_pairs
from palate.serve.app import create_app
from tests.serve.server import ServerThread, free_port, health, running, tiny_lm

CANDS = [Candidate("What is the capital of France?", "Paris.", "I think it might be Lyon or Paris."),
         Candidate("Name a primary colour.", "Red.", "Purple, which is made of red and blue."),
         Candidate("Say hello politely.", "Hello, nice to meet you!", "hey")]


@pytest.fixture(scope="module")
def app():
    model, tok = tiny_lm()
    return create_app(model, tok, model_name="tiny", max_tokens_limit=64, batch_wait_ms=20)


def make(url, tmp_path, **kw):
    return HTTPJudge(f"{url}/v1", model="tiny", cache_dir=tmp_path / "cache", max_tokens=12, **kw)


def test_labels_through_the_server_and_reruns_from_cache_with_zero_requests(app, tmp_path):
    with running(app) as srv:
        start = health(srv.url)["requests"]
        judge = make(srv.url, tmp_path, concurrency=3)
        first = judge_pairs(judge, CANDS)
        assert judge.requests_made == 6 and judge.cache_hits == 0
        assert health(srv.url)["requests"] - start == 6  # the server generated all six (both orders)
        # the tiny random model never writes [[A]]/[[B]]: every verdict is malformed and says why
        assert all(j.malformed and "no [[A]]" in j.first.rationale for j in first)
        assert all(j.first.raw for j in first)  # the raw text is kept for the malformed report
        again = make(srv.url, tmp_path, concurrency=3)
        second = judge_pairs(again, CANDS)
        assert again.requests_made == 0 and again.cache_hits == 6
        assert health(srv.url)["requests"] - start == 6  # the server saw nothing new
        assert [j.first.raw for j in second] == [j.first.raw for j in first]
        other = make(srv.url, tmp_path / "elsewhere", concurrency=1)  # another cache: asks again
        judge_pairs(other, CANDS[:1])
        assert other.requests_made == 2


def test_retries_while_the_server_is_down_and_finishes_after_it_restarts(app, tmp_path):
    port = free_port()
    srv = ServerThread(app, port).start()
    judge = make(srv.url, tmp_path, concurrency=2, backoff=0.2, max_backoff=0.5, max_retries=20)
    judge.compare(*("warm-up", "a", "b"))  # reachable
    srv.stop()
    result, errors = [], []
    worker = threading.Thread(target=lambda: _run(judge, result, errors))
    t0 = time.monotonic()
    worker.start()
    time.sleep(1.0)  # the judge is retrying against a closed port
    assert worker.is_alive()
    restarted = ServerThread(app, port).start()
    try:
        worker.join(timeout=60)
        assert not errors, errors
        assert len(result) == 3 and time.monotonic() - t0 >= 1.0
        assert judge.requests_made > 1 + 6  # warm-up, six judgments, and the refused attempts in between
    finally:
        restarted.stop()


def _run(judge, result, errors):
    try:
        result.extend(judge_pairs(judge, CANDS))
    except Exception as e:  # noqa: BLE001 - surfaced by the test
        errors.append(e)


def test_unreachable_endpoint_gives_a_clear_error_after_the_retries(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    judge = make(url, tmp_path, max_retries=2, backoff=0.01)
    with pytest.raises(JudgeUnreachable, match=r"unreachable after 3 attempts .* ConnectError"):
        judge.compare("q", "a", "b")
    assert judge.requests_made == 3
    assert not list((tmp_path / "cache").rglob("*.json"))  # failures are never cached


def test_client_errors_are_not_retried(tmp_path, monkeypatch):
    model, tok = tiny_lm()
    locked = create_app(model, tok, model_name="tiny", api_key="right-key", max_tokens_limit=64)
    with running(locked) as srv:
        monkeypatch.setenv("JUDGE_KEY", "wrong-key")
        judge = make(srv.url, tmp_path, api_key_env="JUDGE_KEY", max_retries=5, backoff=0.01)
        with pytest.raises(JudgeHTTPError, match="HTTP 401"):
            judge.compare("q", "a", "b")
        assert judge.requests_made == 1
        monkeypatch.setenv("JUDGE_KEY", "right-key")
        ok = make(srv.url, tmp_path, api_key_env="JUDGE_KEY")
        assert ok.compare("q", "a", "b").malformed and ok.requests_made == 1


@pytest.fixture(scope="module")
def always_a_app(tmp_path_factory):
    """A real judge with a known bias: the tiny model fine-tuned (palate sft, 60 steps) to answer
    'A is better. [[A]]' to any pairwise judge prompt — the position bias the swap must catch."""
    from palate.config import load_config
    from palate.judges.templates import load_template, render
    from palate.models.load import load_model, load_tokenizer
    from palate.recipes.sft import SFTConfig, train
    from tests.conftest import write_jsonl

    root = tmp_path_factory.mktemp("always-a")
    t = load_template("pairwise")
    rows = [{"prompt": render(t, question=f"Question {i}?", answer_a=f"answer {i}", answer_b=f"other {i * 7}"),
             "response": "A is better. [[A]]"} for i in range(16)]
    data = write_jsonl(root / "data.jsonl", rows)
    final = train(load_config(SFTConfig, None, [f"run_dir={root / 'run'}", f"data.path={data}", "model.name=tiny",
                                                "train.lr=1e-2", "train.batch_size=4", "train.max_steps=60",
                                                "data.eval_fraction=0", "train.warmup_ratio=0", "log.progress=false"]))
    tok = load_tokenizer(str(final))
    return create_app(load_model(str(final), tokenizer=tok), tok, model_name="always-a", max_tokens_limit=64)


def test_cli_judge_over_http_parses_verdicts_and_reports_the_position_bias(always_a_app, tmp_path):
    from typer.testing import CliRunner

    from palate.cli import app as cli
    from palate.data.readers import read_preferences
    from tests.conftest import write_jsonl

    src = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": c.prompt, "chosen": c.a, "rejected": c.b} for c in CANDS])
    with running(always_a_app) as srv:
        args = ["judge", str(src), "--out", str(tmp_path / "out.jsonl"), "--judge", f"{srv.url}/v1",
                "--model", "always-a", "--concurrency", "2", "--max-tokens", "16"]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        summary = json.loads((tmp_path / "out.summary.json").read_text())
        assert summary["malformed"] == 0 and summary["position_bias"] == {"first_slot_rate": 1.0, "n": 6}
        assert summary["inconsistency"] == {"inconsistent": 3, "n": 3, "rate": 1.0} and summary["ties"] == 3
        assert "first slot preferred in 100.0% of 6" in r.output
        prefs = read_preferences(str(tmp_path / "out.jsonl"))
        assert len(prefs) == 3 and all(p.tie for p in prefs)
        served = health(srv.url)["requests"]
        r = CliRunner().invoke(cli, args)  # rerun: every answer from the cache next to OUT
        assert r.exit_code == 0 and health(srv.url)["requests"] == served
        assert list((tmp_path / ".judge-cache").rglob("*.json"))
