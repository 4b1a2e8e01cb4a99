"""Any OpenAI-compatible chat endpoint as judge (``palate serve``, vLLM, OpenAI, ...).

* the key comes from an environment variable (``api_key_env``, default ``OPENAI_API_KEY``), never a file;
* transient failures (connection refused/reset, timeouts, 429, 5xx) are retried with exponential backoff
  ``min(backoff · 2^k, max_backoff)``; after ``max_retries`` a :class:`JudgeUnreachable` says what failed;
  other 4xx answers fail at once with the server's message;
* ``rate_limit`` caps request starts per second, ``concurrency`` the requests in flight;
* every successful answer is cached on disk under the SHA-256 of (URL, request body): a rerun of the same
  judgments sends no request. The key is not part of the hash and is never written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from palate.data.records import Prompt, prompt_text
from palate.judges.local import DEFAULT_RUBRIC
from palate.judges.templates import load_template, render
from palate.judges.verdicts import Score, Verdict, parse_grade, parse_pairwise

log = logging.getLogger("palate.judges")
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class JudgeUnreachable(RuntimeError):
    pass


class JudgeHTTPError(RuntimeError):
    pass


class RateLimiter:
    """At most ``rate`` request starts per second across threads (None = unlimited)."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        time.sleep(max(0.0, start - now))


class DiskCache:
    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None

    @staticmethod
    def key(url: str, body: dict) -> str:
        return hashlib.sha256(json.dumps({"url": url, "body": body}, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        if self.root is None:
            return None
        path = self.root / key[:2] / f"{key}.json"
        return json.loads(path.read_text())["content"] if path.exists() else None

    def put(self, key: str, body: dict, content: str) -> None:
        if self.root is None:
            return
        path = self.root / key[:2] / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"request": body, "content": content}, ensure_ascii=False))
        tmp.replace(path)


class HTTPJudge:
    def __init__(self, base_url: str, *, model: str = "default", api_key_env: str = "OPENAI_API_KEY",
                 cache_dir: str | Path | None = None, max_retries: int = 5, backoff: float = 0.5,
                 max_backoff: float = 8.0, timeout: float = 120.0, concurrency: int = 4,
                 rate_limit: float | None = None, template: str = "pairwise", single_template: str = "single",
                 max_tokens: int = 512, name: str | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.name = model, name or model
        key = os.environ.get(api_key_env)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.cache = DiskCache(cache_dir)
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.concurrency, self.limiter = concurrency, RateLimiter(rate_limit)
        self.template, self.single_template = load_template(template), load_template(single_template)
        self.max_tokens = max_tokens
        self.client = httpx.Client(timeout=timeout)
        self.requests_made = 0  # HTTP attempts, retries included
        self.cache_hits = 0
        self._lock = threading.Lock()

    def chat(self, user_text: str) -> str:
        """The endpoint's greedy answer to one user turn (cached)."""
        body = {"model": self.model, "messages": [{"role": "user", "content": user_text}], "temperature": 0,
                "max_tokens": self.max_tokens}
        key = self.cache.key(self.url, body)
        hit = self.cache.get(key)
        if hit is not None:
            with self._lock:
                self.cache_hits += 1
            return hit
        content = self._post(body)
        self.cache.put(key, body, content)
        return content

    def chat_many(self, user_texts: list[str]) -> list[str]:
        """:meth:`chat` for each text, ``concurrency`` requests at a time, answers in order."""
        return self._map(self.chat, list(user_texts))

    def _post(self, body: dict) -> str:
        last, t0 = "", time.monotonic()
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
            self.limiter.wait()
            with self._lock:
                self.requests_made += 1
            try:
                r = self.client.post(self.url, json=body, headers=self.headers)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
                log.warning("judge request to %s failed (%s); attempt %d of %d", self.url, last, attempt + 1,
                            self.max_retries + 1)
                continue
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code != 200:
                raise JudgeHTTPError(f"{self.url} answered HTTP {r.status_code}: {r.text[:500]}")
            try:
                return r.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise JudgeHTTPError(f"{self.url} gave a response that is not a chat completion: {r.text[:300]}") from e
        raise JudgeUnreachable(f"judge endpoint {self.url} unreachable after {self.max_retries + 1} attempts over "
                               f"{time.monotonic() - t0:.1f} s; last error: {last}")

    def _map(self, fn, items: list) -> list:
        if self.concurrency <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    def compare(self, prompt: Prompt, a: str, b: str, reference: str | None = None) -> Verdict:
        return self.compare_many([(prompt, a, b, reference)])[0]

    def compare_many(self, items: list[tuple]) -> list[Verdict]:
        def one(it) -> Verdict:
            extra = {"reference": it[3]} if len(it) > 3 and it[3] is not None else {}
            return parse_pairwise(self.chat(render(self.template, question=prompt_text(it[0]), answer_a=it[1],
                                                   answer_b=it[2], **extra)))
        return self._map(one, items)

    def rate(self, prompt: Prompt, response: str, rubric: str = DEFAULT_RUBRIC, scale: tuple[int, int] = (1, 10)) -> Score:
        text = render(self.single_template, question=prompt_text(prompt), answer=response, rubric=rubric,
                      low=str(scale[0]), high=str(scale[1]))
        return parse_grade(self.chat(text), scale)
