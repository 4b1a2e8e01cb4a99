"""Any OpenAI-compatible chat endpoint as judge (``palate serve``, vLLM, OpenAI, ...).

* the key comes from an environment variable (``api_key_env``, default ``OPENAI_API_KEY``), never a file;
* transient failures (connection refused/reset/closed, timeouts, 408/409/429, 5xx) are retried with exponential
  backoff ``min(backoff · 2^k, max_backoff)``, or after the server's ``Retry-After`` (seconds or an HTTP date;
  ``retry-after-ms`` too) when it sends one of at most ``max_retry_after`` seconds; other 4xx answers fail at
  once with the server's message. ``timeout`` (seconds, default 120) bounds connecting and each read;
* a request that still fails after ``max_retries`` stops the whole run: no new request starts, and a
  :class:`JudgeUnreachable` names the endpoint, the last error and how many requests failed or were never
  sent. A failed request never becomes a verdict: *malformed* is reserved for answers whose text cannot be
  read (:mod:`palate.judges.verdicts`), and answers already received stay cached, so a rerun resumes;
* ``rate_limit`` caps request starts per second, ``concurrency`` the requests in flight;
* every successful answer is cached on disk under the SHA-256 of (URL, request body): a rerun of the same
  judgments sends no request. The key is not part of the hash and is never written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx

from palate.data.records import Prompt, prompt_text
from palate.errors import PalateError
from palate.judges.local import DEFAULT_RUBRIC
from palate.judges.templates import load_template, render
from palate.judges.verdicts import Score, Verdict, parse_grade, parse_pairwise

log = logging.getLogger("palate.judges")
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
_NOT_SENT = object()  # a request skipped because an earlier one failed for good


class JudgeUnreachable(PalateError, RuntimeError):
    """A request still failed (transport error, timeout, 408/409/429, 5xx) after every retry."""


class JudgeHTTPError(PalateError, RuntimeError):
    pass


def retry_delay(attempt: int, backoff: float, max_backoff: float, retry_after: str | None = None,
                retry_after_ms: str | None = None, max_retry_after: float = 60.0, now: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry).

    The server's wish wins when it states one of at most ``max_retry_after`` seconds: ``retry-after-ms``
    (milliseconds, as OpenAI sends), else ``Retry-After`` as delta-seconds or an HTTP date (RFC 9110 §10.2.3;
    a date in the past means now). Otherwise — no header, an unreadable one, or a longer wait than
    ``max_retry_after`` — exponential backoff ``min(backoff · 2^(attempt−1), max_backoff)``."""
    wish = _stated_wait(retry_after, retry_after_ms, time.time() if now is None else now)
    if wish is not None and math.isfinite(wish) and wish <= max_retry_after:
        return max(0.0, wish)
    return min(backoff * 2 ** (attempt - 1), max_backoff)


def _stated_wait(retry_after: str | None, retry_after_ms: str | None, now: float) -> float | None:
    if retry_after_ms is not None:
        try:
            return float(retry_after_ms) / 1000
        except ValueError:
            pass
    if retry_after is None:
        return None
    try:
        return float(retry_after)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(retry_after).timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


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
                 max_tokens: int = 512, name: str | None = None, max_retry_after: float = 60.0):
        if max_retries < 0 or timeout <= 0 or concurrency < 1:
            raise ValueError(f"HTTP judge needs max_retries >= 0, timeout > 0 and concurrency >= 1; got "
                             f"max_retries={max_retries}, timeout={timeout}, concurrency={concurrency}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.name = model, name or model
        key = os.environ.get(api_key_env)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.cache = DiskCache(cache_dir)
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.max_retry_after, self.timeout = max_retry_after, timeout
        self.concurrency, self.limiter = concurrency, RateLimiter(rate_limit)
        self.template, self.single_template = load_template(template), load_template(single_template)
        self.max_tokens = max_tokens
        self.client = httpx.Client(timeout=timeout)
        self.requests_made = 0  # HTTP attempts, retries included
        self.retries = 0  # attempts after a transient failure (also in requests_made)
        self.cache_hits = 0
        self._lock = threading.Lock()

    def chat(self, user_text: str, system: str | None = None) -> str:
        """The endpoint's greedy answer to one user turn, after ``system`` as the system message if given (cached)."""
        messages = ([{"role": "system", "content": system}] if system is not None else []) + \
            [{"role": "user", "content": user_text}]
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
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
        last, t0, wait_s = "", time.monotonic(), 0.0
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(wait_s)
            self.limiter.wait()
            with self._lock:
                self.requests_made += 1
                self.retries += bool(attempt)
            try:
                r = self.client.post(self.url, json=body, headers=self.headers)
            except httpx.TransportError as e:  # refused, reset, closed mid-answer, timed out
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                wait_s = retry_delay(attempt + 1, self.backoff, self.max_backoff)
            else:
                if r.status_code == 200:
                    try:
                        return r.json()["choices"][0]["message"]["content"] or ""
                    except (ValueError, KeyError, IndexError, TypeError) as e:
                        raise JudgeHTTPError(f"{self.url} gave a response that is not a chat completion: "
                                             f"{r.text[:300]}") from e
                if r.status_code not in RETRY_STATUS:
                    raise JudgeHTTPError(f"{self.url} answered HTTP {r.status_code}: {r.text[:500]}")
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                wait_s = retry_delay(attempt + 1, self.backoff, self.max_backoff, r.headers.get("retry-after"),
                                     r.headers.get("retry-after-ms"), self.max_retry_after)
            if attempt < self.max_retries:
                log.warning("judge request to %s failed (%s); attempt %d of %d, retrying in %.1f s", self.url, last,
                            attempt + 1, self.max_retries + 1, wait_s)
        raise JudgeUnreachable(f"judge endpoint {self.url} unreachable after {self.max_retries + 1} attempts over "
                               f"{time.monotonic() - t0:.1f} s (timeout {self.timeout:g} s each); last error: {last}")

    def _map(self, fn, items: list) -> list:
        """``fn`` over ``items``, ``concurrency`` at a time, results in order. The first failure stops the run:
        nothing new starts, the requests in flight finish, and the error is raised — a
        :class:`JudgeUnreachable` with how many requests failed and how many were never sent."""
        if not items:
            return []
        stop = threading.Event()

        def guarded(x):
            if stop.is_set():
                return _NOT_SENT
            try:
                return fn(x)
            except BaseException:
                stop.set()
                raise

        with ThreadPoolExecutor(min(self.concurrency, len(items))) as pool:
            futures = [pool.submit(guarded, x) for x in items]
            wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                f.cancel()
            wait(futures)
        errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
        if not errors:
            return [f.result() for f in futures]
        first = next((e for e in errors if not isinstance(e, JudgeUnreachable)), errors[0])
        if not isinstance(first, JudgeUnreachable):
            raise first
        not_sent = sum(f.cancelled() or (f.exception() is None and f.result() is _NOT_SENT) for f in futures)
        cached = " (the answers received are cached: a rerun resumes)" if self.cache.root else ""
        raise JudgeUnreachable(f"{len(errors)} of {len(items)} requests failed after every retry and {not_sent} were "
                               f"not sent{cached}; {first}") from first

    def compare(self, prompt: Prompt, a: str, b: str, reference: str | None = None) -> Verdict:
        return self.compare_many([(prompt, a, b, reference)])[0]

    def compare_many(self, items: list[tuple]) -> list[Verdict]:
        def one(it) -> Verdict:
            extra = {"reference": it[3]} if len(it) > 3 and it[3] is not None else {}
            return parse_pairwise(self.chat(render(self.template, question=prompt_text(it[0]), answer_a=it[1],
                                                   answer_b=it[2], **extra)))
        return self._map(one, items)

    def compare_prompts(self, prompts: list[tuple[str | None, str]]) -> list[Verdict]:
        """Pairwise verdicts for judge prompts already written out as ``(system, user)`` (e.g. MT-Bench's)."""
        return self._map(lambda p: parse_pairwise(self.chat(p[1], system=p[0])), list(prompts))

    def rate_prompts(self, prompts: list[tuple[str | None, str]], scale: tuple[int, int] = (1, 10)) -> list[Score]:
        """Grades on ``scale`` for judge prompts already written out as ``(system, user)``."""
        return self._map(lambda p: parse_grade(self.chat(p[1], system=p[0]), scale), list(prompts))

    def rate(self, prompt: Prompt, response: str, rubric: str = DEFAULT_RUBRIC, scale: tuple[int, int] = (1, 10)) -> Score:
        text = render(self.single_template, question=prompt_text(prompt), answer=response, rubric=rubric,
                      low=str(scale[0]), high=str(scale[1]))
        return parse_grade(self.chat(text), scale)
