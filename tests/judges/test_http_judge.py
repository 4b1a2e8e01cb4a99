"""The HTTP judge against a real ``palate serve`` (tiny model) on 127.0.0.1: labeling through it, the disk
cache (a rerun sends zero requests, counted on both sides), retries across a server restart mid-run, a
clear error when nothing answers, and no retries on a 401. Against a scripted endpoint (a real HTTP server
that fails its first requests in set ways, then answers [[A]]): 5xx, 429, dropped connections and a
request past the timeout are retried, Retry-After is obeyed, and none of them ever becomes a malformed
verdict; an endpoint that keeps failing stops ``palate judge`` with the endpoint and error named, writing
nothing. Failures are counted, never raced: no test here relies on how fast the machine is."""

import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from palate.judges.http import HTTPJudge, JudgeHTTPError, JudgeUnreachable, retry_delay
from palate.judges.label import Candidate, judge_pairs, label_file
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
    """A real judge with a known bias: the tiny model fine-tuned (palate sft, 100 steps) to answer
    'A is better. [[A]]' to any pairwise judge prompt — the position bias the swap must catch.

    It is trained on the judged prompts themselves (both orders) besides 16 others, at lr 5e-3: at lr 1e-2 on
    the 16 others alone its answers to CANDS hung on logit margins of ~0.1 and changed with the CPU thread
    count ('A', 'A]]': genuinely malformed answers on a 2-core machine). Here every token of every answer
    wins by > 5 logits with 1, 2 or 8 threads."""
    from palate.config import load_config
    from palate.data.records import prompt_text
    from palate.judges.templates import load_template, render
    from palate.models.load import load_model, load_tokenizer
    from palate.recipes.sft import SFTConfig, train
    from tests.conftest import write_jsonl

    root = tmp_path_factory.mktemp("always-a")
    t = load_template("pairwise")
    pairs = [(prompt_text(c.prompt), x, y) for c in CANDS for x, y in ((c.a, c.b), (c.b, c.a))]
    pairs += [(f"Question {i}?", f"answer {i}", f"other {i * 7}") for i in range(16)]
    rows = [{"prompt": render(t, question=q, answer_a=a, answer_b=b), "response": "A is better. [[A]]"}
            for q, a, b in pairs]
    data = write_jsonl(root / "data.jsonl", rows)
    final = train(load_config(SFTConfig, None, [f"run_dir={root / 'run'}", f"data.path={data}", "model.name=tiny",
                                                "train.lr=5e-3", "train.batch_size=4", "train.max_steps=100",
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
        assert summary["http"] == {"requests": 6, "retries": 0, "cache_hits": 0}
        assert "first slot preferred in 100.0% of 6" in r.output
        prefs = read_preferences(str(tmp_path / "out.jsonl"))
        assert len(prefs) == 3 and all(p.tie for p in prefs)
        served = health(srv.url)["requests"]
        r = CliRunner().invoke(cli, args)  # rerun: every answer from the cache next to OUT
        assert r.exit_code == 0 and health(srv.url)["requests"] == served
        assert list((tmp_path / ".judge-cache").rglob("*.json"))
        assert json.loads((tmp_path / "out.summary.json").read_text())["http"] == {"requests": 0, "retries": 0,
                                                                                   "cache_hits": 6}


ANSWER = "A is better. [[A]]"


class ScriptedEndpoint:
    """A real OpenAI-style chat endpoint on 127.0.0.1 (stdlib HTTP server in a thread). Request k (counted
    across threads) plays ``script[k]``, every later one ``then``:

    * ``"ok"`` — a chat completion answering ANSWER;
    * ``"500"``, ``"502"``, ... — that status with an error body; ``"503+ra"`` adds ``Retry-After: 0``,
      ``"429+ms"`` ``retry-after-ms: 0``, ``"503+date"`` a Retry-After date in the past;
    * ``"close"`` — the connection is dropped without an answer;
    * ``"hang"`` — no answer until the server stops (only a client timeout ends the request)."""

    def __init__(self, script=(), then="ok"):
        self.script, self.then, self.requests, self.paths = list(script), then, 0, []
        self.lock, self.stopped = threading.Lock(), threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with endpoint.lock:
                    endpoint.requests += 1
                    endpoint.paths.append(self.path)
                    action = endpoint.script.pop(0) if endpoint.script else endpoint.then
                if action == "close":
                    self.close_connection = True
                    return
                if action == "hang":
                    endpoint.stopped.wait(60)
                    self.close_connection = True
                    return
                if action == "ok":
                    return self.reply(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                            "choices": [{"index": 0, "finish_reason": "stop", "message":
                                                         {"role": "assistant", "content": ANSWER}}]})
                code, _, extra = action.partition("+")
                headers = {"ra": {"Retry-After": "0"}, "ms": {"retry-after-ms": "0"},
                           "date": {"Retry-After": formatdate(time.time() - 3600, usegmt=True)}}.get(extra, {})
                self.reply(int(code), {"error": {"message": f"scripted {code}", "type": "server_error"}}, headers)

            def reply(self, code, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(code)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                             **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


def pairs_file(tmp_path):
    from tests.conftest import write_jsonl

    return write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": c.prompt, "chosen": c.a, "rejected": c.b} for c in CANDS])


def test_retry_delay_obeys_the_server_within_bounds_and_backs_off_otherwise():
    assert [retry_delay(k, 0.5, 8.0) for k in (1, 2, 3, 4, 5, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert retry_delay(3, 0.5, 8.0, retry_after="0") == 0.0  # the server's wish beats the backoff
    assert retry_delay(1, 0.5, 8.0, retry_after="12") == 12.0  # ... also when longer than max_backoff
    assert retry_delay(1, 0.5, 8.0, retry_after="1.5", retry_after_ms="250") == 0.25  # ms is more precise
    now = 1_700_000_000.0
    assert retry_delay(1, 0.5, 8.0, retry_after=formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert retry_delay(1, 0.5, 8.0, retry_after=formatdate(now - 30, usegmt=True), now=now) == 0.0  # past: now
    assert retry_delay(2, 0.5, 8.0, retry_after="3600") == 1.0  # over max_retry_after (60 s): own backoff
    assert retry_delay(2, 0.5, 8.0, retry_after="soon") == 1.0  # unreadable: own backoff
    assert retry_delay(2, 0.5, 8.0, retry_after="nan") == 1.0


def test_failed_requests_are_retried_and_never_counted_as_malformed(tmp_path):
    """Five failed requests of every transient kind, then correct answers: all six verdicts read, none
    malformed, and the summary counts the five retries apart from the verdicts."""
    script = ["500", "503+ra", "429+ms", "close", "502"]
    with ScriptedEndpoint(script) as ep:
        judge = HTTPJudge(f"{ep.url}/v1", model="scripted", cache_dir=tmp_path / "cache", concurrency=2,
                          max_retries=len(script), backoff=0.01, max_backoff=0.01)
        summary = label_file(judge, str(pairs_file(tmp_path)), tmp_path / "out.jsonl")
    assert ep.requests == 6 + 5 and set(ep.paths) == {"/v1/chat/completions"}
    assert summary["malformed"] == 0 and summary["malformed_single_verdicts"] == 0
    assert summary["http"] == {"requests": 11, "retries": 5, "cache_hits": 0}
    assert summary["position_bias"] == {"first_slot_rate": 1.0, "n": 6} and summary["ties"] == 3
    assert summary["written"] == 3 and (tmp_path / "out.malformed.jsonl").read_text() == ""


def test_a_request_past_the_timeout_is_retried_not_malformed(tmp_path):
    """The first request never gets an answer (the server holds it until it stops), so only the client's
    timeout can end it — whatever the machine's speed — and the retry reads the verdict."""
    with ScriptedEndpoint(["hang"]) as ep:
        judge = HTTPJudge(f"{ep.url}/v1", model="scripted", timeout=1.0, max_retries=3, backoff=0.01)
        verdict = judge.compare("q", "a", "b")
    assert verdict.preference == "A" and not verdict.malformed and verdict.raw == ANSWER
    assert judge.retries >= 1 and ep.requests == judge.requests_made >= 2


@pytest.mark.timeout(60)
def test_retry_after_is_obeyed_instead_of_the_backoff(tmp_path, caplog):
    """With a 30 s backoff, only obeying Retry-After (0 s, as seconds, milliseconds and a past date) lets
    three retries finish; the log says which wait was chosen."""
    with ScriptedEndpoint(["503+ra", "429+ms", "503+date"]) as ep, caplog.at_level("WARNING", "palate.judges"):
        judge = HTTPJudge(f"{ep.url}/v1", model="scripted", max_retries=3, backoff=30.0, max_backoff=30.0)
        assert judge.compare("q", "a", "b").preference == "A"
    waits = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(waits) == 3 and all("retrying in 0.0 s" in w for w in waits), waits
    assert ep.requests == 4 and judge.retries == 3


def test_cli_judge_stops_with_a_clear_error_when_the_endpoint_keeps_failing(tmp_path):
    """An endpoint that answers 503 to everything: ``palate judge`` exits 2 naming the endpoint, the
    status and how many requests failed; it writes no preference, malformed or summary file; and the
    first request to give up stops the run (at most concurrency × attempts requests, not 6 × attempts)."""
    from typer.testing import CliRunner

    from palate.cli import app as cli

    src = pairs_file(tmp_path)
    with ScriptedEndpoint(then="503+ra") as ep:
        r = CliRunner().invoke(cli, ["judge", str(src), "--out", str(tmp_path / "out.jsonl"), "--judge",
                                     f"{ep.url}/v1", "--concurrency", "2", "--max-retries", "2"])
    assert r.exit_code == 2, r.output
    message = " ".join(r.output.split())
    assert f"{ep.url}/v1/chat/completions unreachable after 3 attempts" in message
    assert "HTTP 503" in message and "of 6 requests failed after every retry" in message
    assert not any((tmp_path / f"out{s}").exists() for s in (".jsonl", ".malformed.jsonl", ".summary.json"))
    assert 3 <= ep.requests <= 2 * 3
