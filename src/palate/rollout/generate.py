"""Generation from a policy: chat replies (``palate chat``, demo samples) and batched sampling of n
responses per prompt (best-of-n), via transformers' ``generate`` with the KV cache under inference mode."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from palate.data.records import Message
from palate.data.tokenize import encode_prompt, uses_chat_template


@torch.inference_mode()
def reply(
    model,
    tokenizer,
    messages: list[Message] | str,
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    streamer=None,
) -> str:
    """The assistant's next turn for a conversation (greedy when ``temperature`` is 0).

    ``repetition_penalty`` > 1 divides the logits of tokens already present (CTRL, Keskar et al. 2019);
    small models decoded greedily otherwise fall into loops."""
    ids = encode_prompt(tokenizer, messages, uses_chat_template(tokenizer))
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    sampling = temperature > 0
    if sampling:
        torch.manual_seed(seed)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=None,
        repetition_penalty=repetition_penalty,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        streamer=streamer,
    )
    return tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


@dataclass(frozen=True)
class Sample:
    """One sampled response: its text, whether it ended with the stop token (else it hit the length
    limit), and how many tokens were generated."""

    text: str
    finished: bool
    n_tokens: int


@torch.inference_mode()
def sample(
    model,
    tokenizer,
    prompts: list,
    *,
    n: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
) -> list[list[Sample]]:
    """``n`` responses to each prompt (``[len(prompts)][n]``), batched with left padding and the KV cache.

    Prompts are rendered exactly as :func:`reply` renders them. Deterministic for a ``seed``; greedy when
    ``temperature`` is 0 (then the n samples are identical).
    """
    use_template = uses_chat_template(tokenizer)
    encoded = [encode_prompt(tokenizer, p, use_template) for p in prompts]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    jobs = [(i, ids) for i, ids in enumerate(encoded) for _ in range(n)]
    out: list[list[Sample]] = [[] for _ in prompts]
    sampling = temperature > 0
    for b, s in enumerate(range(0, len(jobs), batch_size)):
        chunk = jobs[s : s + batch_size]
        width = max(len(ids) for _, ids in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, ids) in enumerate(chunk):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
        torch.manual_seed(seed + b)
        gen = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=sampling, temperature=temperature if sampling else None, top_p=top_p if sampling else None,
            top_k=top_k if sampling and top_k else None, repetition_penalty=repetition_penalty,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, use_cache=True,
        )[:, width:].cpu()
        for row, (i, _) in enumerate(chunk):
            tokens = gen[row].tolist()
            finished = tokenizer.eos_token_id in tokens
            if finished:
                tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            out[i].append(Sample(text, finished, len(tokens) + int(finished)))
    return out
