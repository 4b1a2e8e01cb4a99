"""Validation of ``/v1/chat/completions`` bodies: pure, so every 400 message is tested without a server.

Fields follow the OpenAI API: ``messages`` (required), ``temperature`` (0–2, default 1), ``top_p``
(0–1], ``max_tokens`` / ``max_completion_tokens``, ``stop`` (a string or up to 4), ``stream``, ``seed``,
``n`` (only 1). Unknown fields are ignored, as OpenAI-compatible servers commonly do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class RequestError(ValueError):
    """A request the server refuses: HTTP ``status`` with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        self.status, self.message, self.param, self.code = status, message, param, code
        super().__init__(message)

    def body(self) -> dict:
        kind = {401: "authentication_error", 413: "invalid_request_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatParams:
    messages: list[dict[str, str]]
    model: str | None
    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]
    stream: bool
    seed: int | None


ROLES = ("system", "user", "assistant")


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"'{name}' must be a number, got {type(value).__name__}", name)
    if value < lo or value > hi or (lo_open and value == lo):
        raise RequestError(400, f"'{name}' must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value}", name)
    return float(value)


def _content(m: dict, i: int) -> str:
    content = m.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        if all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
        raise RequestError(400, f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
    raise RequestError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")


def parse_chat_request(raw: bytes, *, max_tokens_limit: int, default_max_tokens: int = 256) -> ChatParams:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(body).__name__}")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RequestError(400, f"messages[{i}] must be an object", f"messages[{i}]")
        if m.get("role") not in ROLES:
            raise RequestError(400, f"messages[{i}].role must be one of {list(ROLES)}, got {m.get('role')!r}",
                               f"messages[{i}].role")
        messages.append({"role": m["role"], "content": _content(m, i)})
    n = body.get("n", 1)
    if n != 1:
        raise RequestError(400, f"only n=1 is supported, got {n!r}", "n")
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if mt is None:
        mt = min(default_max_tokens, max_tokens_limit)
    elif isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
        raise RequestError(400, f"'{name}' must be a positive integer, got {mt!r}", name)
    elif mt > max_tokens_limit:
        raise RequestError(400, f"'{name}' {mt} exceeds this server's limit of {max_tokens_limit}", name)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop):
        stops = tuple(stop)
    else:
        raise RequestError(400, "'stop' must be a string or a list of up to 4 non-empty strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "stream")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, "'seed' must be an integer", "seed")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, "'model' must be a string", "model")
    return ChatParams(messages=messages, model=model, temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                      top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True), max_tokens=mt, stop=stops,
                      stream=stream, seed=seed)
