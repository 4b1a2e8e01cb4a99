"""Generation from a policy: chat replies (``palate chat``, demo samples) and batched sampling of n
responses per prompt (best-of-n), via transformers' ``generate`` with the KV cache under inference mode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from palate.data.records import Message
from palate.data.tokenize import encode_prompt, uses_chat_template
from palate.models.logprobs import kv_cache


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
    stop_when: Callable[[str], bool] | None = None,
) -> list[list[Sample]]:
    """``n`` responses to each prompt (``[len(prompts)][n]``), batched with left padding and the KV cache.

    Prompts are rendered exactly as :func:`reply` renders them. Deterministic for a ``seed``; greedy when
    ``temperature`` is 0 (then the n samples are identical). ``stop_when(text)``, if given, is asked of each
    row's response so far after every token; a row it accepts stops there (text kept whole, ``finished``
    True) and a batch ends once every row has stopped, so one long answer no longer holds up the rest.
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
        input_ids, mask = left_pad([ids for _, ids in chunk], pad)  # every prompt ends where generation starts
        width = input_ids.shape[1]
        torch.manual_seed(seed + b)
        criteria = [_StopWhen(stop_when, tokenizer, width)] if stop_when else None
        gen = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=sampling, temperature=temperature if sampling else None, top_p=top_p if sampling else None,
            top_k=top_k if sampling and top_k else None, repetition_penalty=repetition_penalty,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, use_cache=True, stopping_criteria=criteria,
        )[:, width:].cpu()
        for row, (i, _) in enumerate(chunk):
            tokens = gen[row].tolist()
            stopped = criteria[0].stopped_at.get(row) if criteria else None
            if stopped is not None:  # generate pads a stopped row, maybe with the EOS id: cut first
                tokens = tokens[:stopped]
            eos = tokenizer.eos_token_id in tokens
            if eos:
                tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            out[i].append(Sample(text, eos or stopped is not None, len(tokens) + int(eos)))
    return out


class _StopWhen:
    """A transformers stopping criterion: per row, ``predicate(decoded response so far)``; remembers the
    response length at which each row stopped (``generate`` pads a stopped row from then on)."""

    def __init__(self, predicate: Callable[[str], bool], tokenizer, prompt_width: int):
        self.predicate, self.tokenizer, self.width = predicate, tokenizer, prompt_width
        self.stopped_at: dict[int, int | None] = {}

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        response = input_ids[:, self.width:]
        done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        for row in range(len(input_ids)):
            if self.stopped_at.get(row) is not None:
                done[row] = True
                continue
            self.stopped_at[row] = None
            if self.predicate(self.tokenizer.decode(response[row], skip_special_tokens=True)):
                self.stopped_at[row], done[row] = response.shape[1], True
        return done


@dataclass
class Rollout:
    """Responses sampled for RL, with what the update needs: ``B = len(prompt_ids) * n`` rows, sample
    ``b`` answering prompt ``b // n``. Responses are right-padded; ``logprobs`` are of the sampled tokens
    under ``softmax(logits / temperature)`` (what the trainer recomputes), 0 at padding."""

    prompt_ids: torch.Tensor
    """[P, W] left-padded prompts"""
    prompt_mask: torch.Tensor
    """[P, W] 1 on real prompt tokens"""
    n: int
    response_ids: torch.Tensor
    """[B, T] right-padded with the pad id"""
    response_mask: torch.Tensor
    """[B, T] bool"""
    logprobs: torch.Tensor
    """[B, T] float32"""
    stop_reason: list[str]
    """per row: "eos" | "stop" (a stop string) | "length" """
    texts: list[str]
    """decoded responses, cut before a stop string, special tokens removed"""
    sampler_logprobs: torch.Tensor | None = None
    """[B, T] the rollout engine's own log-probs when it is not the trainer (rollout.backend=vllm); ``logprobs`` are
    then the trainer's recomputation (π_old), see palate.rollout.sampling.sample_rollout"""

    @property
    def finished(self) -> torch.Tensor:  # [B] bool
        return torch.tensor([r != "length" for r in self.stop_reason])

    @property
    def lengths(self) -> torch.Tensor:  # [B]
        return self.response_mask.sum(-1)


def _filter_logits(scaled: torch.Tensor, top_p: float, top_k: int) -> torch.Tensor:
    """Mask all but the top-k tokens and the smallest set whose probability reaches top-p (nucleus)."""
    if top_k and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep tokens until the mass before them reaches top_p
        scaled = scaled.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scaled


def eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen] if gen is not None else [])
    return ids


def left_pad(encoded: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, seq in enumerate(encoded):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return ids, mask


def concat_rollouts(parts: list[Rollout], pad: int) -> Rollout:
    """One rollout from several over consecutive slices of the prompts (e.g. from several rollout workers):
    prompts re-left-padded and responses re-right-padded to the widest part, rows kept in order."""
    if not parts:
        raise ValueError("concat_rollouts: no rollouts")
    if len({r.n for r in parts}) != 1:
        raise ValueError(f"concat_rollouts: parts sample different n per prompt: {[r.n for r in parts]}")
    W = max(r.prompt_ids.shape[1] for r in parts)
    T = max(r.response_ids.shape[1] for r in parts)

    def widen(x: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
        extra = x.new_full((x.shape[0], width - x.shape[1]), value)
        return torch.cat([extra, x] if left else [x, extra], dim=1)

    return Rollout(
        prompt_ids=torch.cat([widen(r.prompt_ids, W, pad, True) for r in parts]),
        prompt_mask=torch.cat([widen(r.prompt_mask, W, 0, True) for r in parts]),
        n=parts[0].n,
        response_ids=torch.cat([widen(r.response_ids, T, pad, False) for r in parts]),
        response_mask=torch.cat([widen(r.response_mask, T, False, False) for r in parts]),
        logprobs=torch.cat([widen(r.logprobs, T, 0.0, False) for r in parts]),
        stop_reason=[x for r in parts for x in r.stop_reason],
        texts=[x for r in parts for x in r.texts],
    )


def rollout(model, tokenizer, prompts: list, **kw) -> Rollout:
    """Sample ``n`` responses to each prompt with the KV cache, for RL (see :func:`_rollout`).

    Sampling runs under inference mode; the returned tensors are ordinary ones that autograd may use."""
    r = _rollout(model, tokenizer, prompts, **kw)
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs"):
        setattr(r, name, getattr(r, name).clone())
    return r


@torch.inference_mode()
def _rollout(
    model,
    tokenizer,
    prompts: list,
    *,
    n: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop: tuple[str, ...] = (),
    seed: int = 0,
) -> Rollout:
    """Sample ``n`` responses to each prompt with the KV cache, for RL.

    Each prompt is encoded (as :func:`reply` renders it) and run through the model once; its cache is
    then shared by its ``n`` samples. A row leaves the batch as soon as it emits EOS or a stop string,
    so finished rows cost nothing while the others continue. Deterministic for ``seed`` (its own
    generator: the caller's RNG state is untouched).
    """
    if temperature <= 0:
        raise ValueError("rollout samples: temperature must be > 0 (use reply() for greedy decoding)")
    from transformers import DynamicCache

    use_template = uses_chat_template(tokenizer)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_ids, prompt_mask = left_pad([encode_prompt(tokenizer, p, use_template) for p in prompts], pad)
    gen = torch.Generator().manual_seed(seed)
    stops = eos_ids(model, tokenizer)
    B = len(prompts) * n
    tokens = torch.full((B, max_new_tokens), pad, dtype=torch.long)
    logps = torch.zeros((B, max_new_tokens), dtype=torch.float32)
    reason = ["length"] * B
    length = [max_new_tokens] * B

    cache = DynamicCache(config=model.config)
    mask = prompt_mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids.to(device), attention_mask=mask, position_ids=positions,
                use_cache=True, logits_to_keep=1, **kv_cache(model, cache))
    logits = out.logits[:, -1].float().repeat_interleave(n, 0)
    cache.batch_repeat_interleave(n)
    mask = mask.repeat_interleave(n, 0)
    next_pos = positions[:, -1:].repeat_interleave(n, 0) + 1
    alive = torch.arange(B)  # rows of the full batch still generating, in cache order
    for t in range(max_new_tokens):
        scaled = logits / temperature
        logp_all = torch.log_softmax(scaled, -1)
        probs = _filter_logits(scaled, top_p, top_k).softmax(-1)
        tok = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1)
        tokens[alive, t] = tok
        logps[alive, t] = logp_all.cpu().gather(-1, tok[:, None]).squeeze(-1)
        done = torch.tensor([x in stops for x in tok.tolist()])
        for row in alive[done].tolist():
            reason[row], length[row] = "eos", t + 1
        if stop:
            for i, row in enumerate(alive.tolist()):
                if not done[i] and any(s in tokenizer.decode(tokens[row, max(0, t - 15): t + 1]) for s in stop):
                    done[i] = True
                    reason[row], length[row] = "stop", t + 1
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(-1)
        if len(keep) < len(alive):
            alive, mask, next_pos, tok = alive[keep], mask[keep.to(device)], next_pos[keep.to(device)], tok[keep]
            cache.batch_select_indices(keep.to(device))
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
        out = model(input_ids=tok[:, None].to(device), attention_mask=mask, position_ids=next_pos,
                    use_cache=True, **kv_cache(model, cache))
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    width = max(length)
    response_mask = torch.arange(width)[None, :] < torch.tensor(length)[:, None]
    tokens, logps = tokens[:, :width].masked_fill(~response_mask, pad), logps[:, :width] * response_mask
    texts = []
    for row in range(B):
        text = tokenizer.decode(tokens[row, : length[row]], skip_special_tokens=True)
        if reason[row] == "stop":
            text = text[: min(text.find(s) for s in stop if s in text)] if any(s in text for s in stop) else text
        texts.append(text.strip())
    return Rollout(prompt_ids, prompt_mask, n, tokens, response_mask, logps, reason, texts)
