"""``palate chat``: one reply to a message, or an interactive session, with any model palate loads."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO


def _print(text: str, nl: bool = True) -> None:
    print(text, end="\n" if nl else "", flush=True)


def chat(model: str, message: str | None = None, *, system: str | None = None, max_new_tokens: int = 256,
         temperature: float = 0.0, repetition_penalty: float = 1.2, seed: int = 0, stdin: TextIO | None = None,
         echo: Callable[..., None] = _print) -> None:
    """Load ``model``; answer ``message`` once, or else read user turns from ``stdin`` until an empty line or
    EOF (a terminal gets a ``you>`` prompt and streamed answers). ``echo(text, nl=True)`` prints."""
    from palate.models.load import load_model, load_tokenizer
    from palate.rollout.generate import reply

    stdin = stdin or sys.stdin
    tok = load_tokenizer(model)
    lm = load_model(model, tokenizer=tok).eval()
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    gen = dict(max_new_tokens=max_new_tokens, temperature=temperature, repetition_penalty=repetition_penalty, seed=seed)
    if message is not None:
        echo(reply(lm, tok, history + [{"role": "user", "content": message}], **gen))
        return
    interactive = stdin.isatty()
    while True:
        try:
            text = input("you> ") if interactive else stdin.readline()
        except EOFError:
            break
        if not text.strip():
            break
        history.append({"role": "user", "content": text.strip()})
        if interactive:
            from transformers import TextStreamer

            echo("model> ", nl=False)
            answer = reply(lm, tok, history, streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True),
                           **gen)
        else:
            answer = reply(lm, tok, history, **gen)
            echo(f"model> {answer}")
        history.append({"role": "assistant", "content": answer})
