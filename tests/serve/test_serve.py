"""``palate serve`` on 127.0.0.1 with the tiny model, answered through the official openai client and raw
HTTP: chat, streaming (SSE + [DONE]), stop strings, seeds, batching of concurrent requests (same output as
alone), API key (401), size limit (413), malformed requests (400)."""

import json
import threading

import httpx
import openai
import pytest
from openai import OpenAI

from palate.serve.app import create_app
from tests.serve.server import health, running, tiny_lm

KEY = "sk-test-key"
MSG = [{"role": "user", "content": "Tell me about rivers."}]


@pytest.fixture(scope="module")
def server():
    model, tok = tiny_lm()
    app = create_app(model, tok, model_name="tiny", api_key=KEY, max_request_bytes=4096, max_tokens_limit=64,
                     batch_wait_ms=150)
    with running(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def test_models_and_chat_through_the_openai_client(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5, temperature=1.0, seed=1)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens > 5 and r.usage.total_tokens == r.usage.prompt_tokens + 5
    assert r.choices[0].message.content  # five sampled tokens of a random model: some text


def test_seeded_sampling_is_reproducible_and_seeds_differ(client):
    texts = [client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=1.0, seed=s)
             .choices[0].message.content for s in (7, 7, 8)]
    assert texts[0] == texts[1] != texts[2]


def test_streaming_gives_the_same_text_as_a_plain_call(client, server):
    kw = dict(model="tiny", messages=MSG, max_tokens=10, temperature=1.0, seed=3)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain
    assert chunks[-1].choices[0].finish_reason == "length" and len(chunks) >= 4
    raw = httpx.post(f"{server.url}/v1/chat/completions", json={**kw, "stream": True},
                     headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [x for x in raw.text.split("\n\n") if x]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[1][6:])["object"] == "chat.completion.chunk"


def test_stop_string_cuts_the_reply(client):
    kw = dict(model="tiny", messages=MSG, max_tokens=16, temperature=1.0, seed=5)
    full = client.chat.completions.create(**kw).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    r = client.chat.completions.create(stop=[stop], **kw).choices[0]
    assert r.finish_reason == "stop" and r.message.content == full[: full.index(stop)]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stop=stop, stream=True, **kw))
    assert streamed == r.message.content  # text held back while a stop string might be starting


def test_concurrent_requests_are_batched_and_match_their_solo_outputs(client, server):
    prompts = [f"Question number {i}: {'why ' * i}is the sky blue?" for i in range(4)]  # different lengths: left padding

    def ask(i):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompts[i]}],
                                              max_tokens=4 + 3 * i, temperature=1.0, seed=i).choices[0].message.content

    solo = [ask(i) for i in range(4)]
    before = health(server.url)
    out = [None] * 4
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, ask(i))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = health(server.url)
    assert out == solo
    assert after["requests"] - before["requests"] == 4
    assert after["batches"] - before["batches"] < 4 and after["max_batch_seen"] >= 2, after


def test_api_key_required(server):
    bad = OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
    r = httpx.get(f"{server.url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/health").status_code == 200  # health stays open


def test_size_limit_and_malformed_requests(server, client):
    h = {"Authorization": f"Bearer {KEY}"}
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=big, headers=h)
    assert r.status_code == 413 and "exceeds the limit of 4096" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b'{"messages": [', headers=h)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="exceeds this server's limit of 64"):
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=100)
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\].role"):
        client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "hi"}])


@pytest.mark.slow
def test_palate_serve_command_in_a_subprocess(tmp_path):
    """The real CLI entry point: ``palate serve tiny`` as its own process, key from the environment."""
    import os
    import subprocess
    import sys
    import time

    from tests.serve.server import free_port

    port = free_port()
    env = {**os.environ, "PALATE_API_KEY": "sk-env", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "palate", "serve", "tiny", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.3)
        c = OpenAI(base_url=f"{url}/v1", api_key="sk-env", max_retries=0)
        r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=3, temperature=0)
        assert r.usage.completion_tokens == 3 or r.choices[0].finish_reason == "stop"
        assert httpx.get(f"{url}/v1/models").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=20)
