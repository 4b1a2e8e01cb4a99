"""``palate chat``: one reply to a message, or an interactive session, with any model palate loads."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from palate.config import ConfigError


@dataclass(frozen=True)
class ChatConfig:
    """``palate chat``'s config (each flag is a shortcut for the key of the same name)."""

    model: str | None = None
    """run dir, HF model dir, .gguf file, hub name, or 'bundled'"""
    message: str | None = None
    """one-shot message; none for an interactive session"""
    system: str | None = None
    """system prompt"""
    max_new_tokens: int = 256
    temperature: float = 0.0
    """0 = greedy"""
    repetition_penalty: float = 1.2
    """> 1 discourages repeating tokens (1 = off)"""
    seed: int = 0


def _print(text: str, nl: bool = True) -> None:
    print(text, end="\n" if nl else "", flush=True)


def chat(cfg: ChatConfig, *, stdin: TextIO | None = None, echo: Callable[..., None] = _print) -> None:
    """Load ``cfg.model``; answer ``cfg.message`` once, or else read user turns from ``stdin`` until an empty
    line or EOF (a terminal gets a ``you>`` prompt and streamed answers). ``echo(text, nl=True)`` prints."""
    from palate.models.load import load_model, load_tokenizer
    from palate.rollout.generate import reply

    if cfg.model is None:
        raise ConfigError("chat needs a MODEL (argument or model=...)")
    stdin = stdin or sys.stdin
    tok = load_tokenizer(cfg.model)
    lm = load_model(cfg.model, tokenizer=tok).eval()
    history: list[dict[str, str]] = [{"role": "system", "content": cfg.system}] if cfg.system else []
    gen = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
               repetition_penalty=cfg.repetition_penalty, seed=cfg.seed)
    if cfg.message is not None:
        echo(reply(lm, tok, history + [{"role": "user", "content": cfg.message}], **gen))
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
