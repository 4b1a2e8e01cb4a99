"""Generation from a policy. For now: chat replies (``palate chat``, demo samples) via transformers'
``generate`` with the KV cache under inference mode."""

from __future__ import annotations

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
