"""Validation of chat-completion bodies (pure): defaults, limits and 400 messages naming the field."""

import json

import pytest

from palate.serve.requests import RequestError, parse_chat_request


def parse(body, limit=64):
    return parse_chat_request(json.dumps(body).encode() if not isinstance(body, bytes) else body, max_tokens_limit=limit)


MSG = [{"role": "user", "content": "hi"}]


def test_defaults_and_fields():
    p = parse({"model": "m", "messages": MSG})
    assert (p.temperature, p.top_p, p.max_tokens, p.stop, p.stream, p.seed) == (1.0, 1.0, 64, (), False, None)
    p = parse({"messages": [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
               "temperature": 0, "max_completion_tokens": 5, "stop": ["\n", "END"], "stream": True, "seed": 3,
               "stream_options": {"include_usage": True}})
    assert p.messages[1]["content"] == "ab" and p.temperature == 0.0 and p.max_tokens == 5
    assert p.stop == ("\n", "END") and p.stream and p.seed == 3


@pytest.mark.parametrize("body, param, text", [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    ({"model": "m"}, "messages", "non-empty list"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": ["hi"]}, "messages[0]", "must be an object"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "one of"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "must be a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content", "only text"),
    ({"messages": MSG, "temperature": 3}, "temperature", "[0, 2]"),
    ({"messages": MSG, "temperature": "hot"}, "temperature", "must be a number"),
    ({"messages": MSG, "top_p": 0}, "top_p", "(0, 1]"),
    ({"messages": MSG, "max_tokens": 65}, "max_tokens", "limit of 64"),
    ({"messages": MSG, "max_tokens": 0}, "max_tokens", "positive integer"),
    ({"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop", "up to 4"),
    ({"messages": MSG, "n": 2}, "n", "only n=1"),
    ({"messages": MSG, "stream": "yes"}, "stream", "true or false"),
    ({"messages": MSG, "seed": 1.5}, "seed", "integer"),
])
def test_malformed_requests_are_400_naming_the_field(body, param, text):
    with pytest.raises(RequestError) as e:
        parse(body)
    assert e.value.status == 400 and e.value.param == param and text in e.value.message
    assert e.value.body()["error"]["param"] == param
