"""Generation from a policy, all through one decoding engine (:func:`decode`): chat replies (``palate chat``,
with streaming), batched sampling of n responses per prompt (best-of-n, evaluation, the demo) and RL rollouts
with the sampled tokens' log-probs. Shared prompt prefill, KV cache (dynamic or static), finished rows leave the
batch, one host sync per token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from palate.data.records import Message
from palate.data.tokenize import encode_prompt, uses_chat_template
from palate.models.logprobs import kv_cache


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
    cache: str = "dynamic",
    compile: bool = False,
) -> str:
    """The assistant's next turn for a conversation (greedy when ``temperature`` is 0), by :func:`decode`.

    ``repetition_penalty`` > 1 divides the logits of tokens already present (CTRL, Keskar et al. 2019);
    small models decoded greedily otherwise fall into loops. ``streamer`` (e.g. transformers'
    ``TextStreamer``) receives the prompt and then each token as it is picked, as with ``generate``."""
    ids = encode_prompt(tokenizer, messages, uses_chat_template(tokenizer))
    input_ids = torch.tensor([ids])
    d = decode(model, input_ids, torch.ones_like(input_ids), max_new_tokens=max_new_tokens, temperature=temperature,
               top_p=top_p, repetition_penalty=repetition_penalty, eos=eos_ids(model, tokenizer), pad=_pad_id(tokenizer),
               generator=torch.Generator().manual_seed(seed), streamer=streamer, cache=cache, compile=compile)
    return tokenizer.decode(d.tokens[0, : d.length[0]], skip_special_tokens=True).strip()


@dataclass(frozen=True)
class Sample:
    """One sampled response: its text, whether it ended with the stop token (else it hit the length
    limit), and how many tokens were generated."""

    text: str
    finished: bool
    n_tokens: int


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
    cache: str = "dynamic",
    compile: bool = False,
) -> list[list[Sample]]:
    """``n`` responses to each prompt (``[len(prompts)][n]``), by :func:`decode` in batches of about
    ``batch_size`` rows (whole prompts with their ``n`` samples, each prompt run through the model once).

    Prompts are rendered exactly as :func:`reply` renders them. Deterministic for a ``seed`` (its own generator
    per batch: the caller's RNG state is untouched); greedy when ``temperature`` is 0 (then the n samples are
    identical and decoded once). ``stop_when(text)``, if given, is asked of each row's response so far after every
    token; a row it accepts stops there (text kept whole, ``finished`` True) and leaves the batch.
    """
    use_template = uses_chat_template(tokenizer)
    encoded = [encode_prompt(tokenizer, p, use_template) for p in prompts]
    pad, eos = _pad_id(tokenizer), eos_ids(model, tokenizer)
    runs = 1 if temperature <= 0 else n  # greedy: one decode, copied n times
    if runs <= batch_size:
        per = batch_size // runs
        pieces = [(list(range(s, min(s + per, len(encoded)))), runs) for s in range(0, len(encoded), per)]
    else:  # more samples than a batch holds: each prompt's samples in several batches
        pieces = [([i], min(batch_size, runs - s)) for i in range(len(encoded)) for s in range(0, runs, batch_size)]
    out: list[list[Sample]] = [[] for _ in prompts]
    for b, (idx, k) in enumerate(pieces):
        prompt_ids, prompt_mask = left_pad([encoded[i] for i in idx], pad)
        d = decode(model, prompt_ids, prompt_mask, n=k, max_new_tokens=max_new_tokens, temperature=temperature,
                   top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, eos=eos, pad=pad,
                   tokenizer=tokenizer, stop_when=stop_when, generator=torch.Generator().manual_seed(seed + b),
                   cache=cache, compile=compile)
        for row in range(len(idx) * k):
            tokens = d.tokens[row, : d.length[row]].tolist()
            ended = d.reason[row] == "eos"
            if ended:
                tokens = tokens[:-1]
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            s = Sample(text, d.reason[row] != "length", len(tokens) + int(ended))
            out[idx[row // k]].extend([s] * (n // runs))
    return out


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


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


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
    cache: str = "dynamic",
    compile: bool = False,
) -> Rollout:
    """Sample ``n`` responses to each prompt with :func:`decode`, for RL, with the sampled tokens' log-probs.

    Each prompt is encoded (as :func:`reply` renders it) and run through the model once; its cache is
    then shared by its ``n`` samples. A row leaves the batch as soon as it emits EOS or a stop string,
    so finished rows cost nothing while the others continue. Deterministic for ``seed`` (its own
    generator: the caller's RNG state is untouched).
    """
    if temperature <= 0:
        raise ValueError("rollout samples: temperature must be > 0 (use reply() for greedy decoding)")
    use_template = uses_chat_template(tokenizer)
    pad = _pad_id(tokenizer)
    prompt_ids, prompt_mask = left_pad([encode_prompt(tokenizer, p, use_template) for p in prompts], pad)
    d = decode(model, prompt_ids, prompt_mask, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
               top_p=top_p, top_k=top_k, eos=eos_ids(model, tokenizer), pad=pad, tokenizer=tokenizer, stop=tuple(stop),
               generator=torch.Generator().manual_seed(seed), logprobs=True, cache=cache, compile=compile)
    B, length, reason = len(prompts) * n, d.length, d.reason
    width = max(length)
    response_mask = torch.arange(width)[None, :] < torch.tensor(length)[:, None]
    tokens, logps = d.tokens[:, :width].masked_fill(~response_mask, pad), d.logprobs[:, :width] * response_mask
    texts = []
    for row in range(B):
        text = tokenizer.decode(tokens[row, : length[row]], skip_special_tokens=True)
        if reason[row] == "stop":
            text = text[: min(text.find(s) for s in stop if s in text)] if any(s in text for s in stop) else text
        texts.append(text.strip())
    return Rollout(prompt_ids, prompt_mask, n, tokens, response_mask, logps, reason, texts)


@dataclass
class Decoded:
    """What :func:`decode` produced for ``B = P * n`` rows (row ``b`` answers prompt ``b // n``): ``tokens``
    [B, T] (pad after a row's end, EOS included where emitted), ``logprobs`` [B, T] of the sampled tokens under
    ``softmax(logits / temperature)`` (None unless asked), per row ``length`` (tokens generated, EOS or the
    token that completed a stop included) and ``reason`` ("eos" | "stop" | "length")."""

    tokens: torch.Tensor
    logprobs: torch.Tensor | None
    length: list[int]
    reason: list[str]


_STOP_CANDIDATES: dict = {}


def _stop_candidates(tokenizer, stop: tuple[str, ...], vocab: int) -> torch.Tensor:
    """[vocab] bool: tokens whose text contains the last character of a stop string (or part of a UTF-8
    character). A stop string newly present in a response ends inside its last token's text, so only rows whose
    new token is a candidate need decoding. Cached per tokenizer and stop strings."""
    key = (id(tokenizer), stop, vocab)
    hit = _STOP_CANDIDATES.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    ends = {s[-1] for s in stop if s}
    texts = tokenizer.batch_decode([[i] for i in range(min(vocab, len(tokenizer)))])
    mask = torch.ones(vocab, dtype=torch.bool)  # ids the tokenizer doesn't know: always check
    mask[: len(texts)] = torch.tensor([("\ufffd" in x) or any(c in x for c in ends) for x in texts], dtype=torch.bool)
    if len(_STOP_CANDIDATES) > 16:
        _STOP_CANDIDATES.clear()
    _STOP_CANDIDATES[key] = (tokenizer, mask)
    return mask


def _pick(logits: torch.Tensor, temperature: float, top_p: float, top_k: int, u: torch.Tensor | None,
          want_logprobs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token per row of ``logits`` [R, V] (float32) and, if asked, its log-prob under
    ``softmax(logits / temperature)`` (before top-p/top-k: what the trainer recomputes).

    Greedy (argmax) when ``temperature`` is 0. Sampling is by inversion: one uniform number per row (``u`` [R, 1],
    on ``logits``' device) against the
    cumulative unnormalised probabilities (``exp(x - max)``), so the vocabulary is swept a few times (max, exp,
    sum, cumsum) and no full log-softmax or per-element random numbers (``multinomial`` draws one exponential per
    vocabulary entry) are made. The filter (a sort over the vocabulary) runs only when top-p < 1 or top-k > 0."""
    if temperature <= 0:
        tok = logits.argmax(-1)
        if not want_logprobs:
            return tok, None
        return tok, logits.gather(-1, tok[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
    scaled = logits if temperature == 1.0 else logits / temperature
    filtered = _filter_logits(scaled, top_p, top_k) if (top_p < 1.0 or top_k) else scaled
    top, argmax = filtered.max(-1, keepdim=True)
    weights = (filtered - top).exp_()
    total = weights.sum(-1, keepdim=True) if want_logprobs and filtered is scaled else None
    cum = weights.cumsum_(-1)
    tok = torch.searchsorted(cum, u * cum[:, -1:], right=True)
    tok = torch.where(tok < cum.shape[-1], tok, argmax).squeeze(-1)  # u * total rounded up to the total: rare
    if not want_logprobs:
        return tok, None
    lse = (top + total.log()).squeeze(-1) if total is not None else torch.logsumexp(scaled, -1)
    return tok, scaled.gather(-1, tok[:, None]).squeeze(-1) - lse


def _static_from(dynamic, model, max_len: int):
    """A transformers ``StaticCache`` of ``max_len`` positions holding ``dynamic``'s (prefilled) keys and values."""
    from transformers import StaticCache

    static = StaticCache(config=model.config, max_cache_len=max_len)
    for d, s in zip(dynamic.layers, static.layers):
        s.lazy_initialization(d.keys, d.values)
        s.keys[:, :, : d.keys.shape[2]].copy_(d.keys)
        s.values[:, :, : d.values.shape[2]].copy_(d.values)
        s.cumulative_length.fill_(d.keys.shape[2])
    return static


def _select_rows(cache, rows: torch.Tensor) -> None:
    """Keep only ``rows`` of a dynamic or static cache (one copy of what is kept)."""
    from transformers import StaticCache

    if not isinstance(cache, StaticCache):
        cache.batch_select_indices(rows)
        return
    for s in cache.layers:
        s.keys, s.values = s.keys.index_select(0, rows), s.values.index_select(0, rows)
        s.batch_size = len(rows)


_COMPILED: dict = {}


def _decode_step(model, compile: bool):
    """The model's forward for one decode step; with ``compile``, a ``torch.compile`` of it (cached per model)."""
    if not compile:
        return model
    fn = _COMPILED.get(id(model))
    if fn is None or fn[0] is not model:
        fn = (model, torch.compile(model, dynamic=True))
        _COMPILED.clear()
        _COMPILED[id(model)] = fn
    return fn[1]


@torch.inference_mode()
def decode(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    n: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    eos: set[int] | None = None,
    pad: int = 0,
    tokenizer=None,
    stop: tuple[str, ...] = (),
    stop_when: Callable[[str], bool] | None = None,
    generator: torch.Generator | None = None,
    logprobs: bool = False,
    streamer=None,
    cache: str = "dynamic",
    compile: bool = False,
) -> Decoded:
    """palate's decoding engine: ``n`` continuations of each left-padded prompt ``[P, W]``, with the KV cache.

    Each prompt is run through the model once and its cache shared by its ``n`` rows. Per token: one forward of
    the rows still generating, one pick (:func:`_pick`: greedy when ``temperature`` is 0, else sampled with one
    uniform number per row from ``generator``), one host copy of the picked ids (the only sync), a vectorised
    EOS check (``torch.isin``). A row that emits an EOS id, completes one of the ``stop`` strings (decoded only
    for rows whose new token could end one) or satisfies ``stop_when(response text so far)`` leaves the batch:
    its cache rows are dropped, so finished rows cost nothing while the others continue.

    ``repetition_penalty`` (CTRL, as transformers applies it: a positive logit divided, a negative one
    multiplied) covers the prompt's tokens (not its padding) and the row's generated ones. ``cache``:
    "dynamic" (transformers' ``DynamicCache``: grows by concatenation, one copy of the cache per token) or
    "static" (``StaticCache`` sized prompt + ``max_new_tokens``, written in place; a copy only when rows leave).
    Default "dynamic": on this 2-core CPU the static cache decoded no faster (bench/rl.py: 205.8 vs 208.3 tok/s at
    32 new tokens, 169 vs 169 at 128: its in-place writes save the copy but it attends over every position) and
    it allocates prompt + max_new_tokens up front; it is the one to compile. ``compile``: ``torch.compile``
    the decode forward (off by default: on a 2-core CPU the bundled model compiled in 73 s and then decoded ~5%
    faster, ~470 rollouts to break even; it is meant
    for GPUs, where it pays only when the compile time is spread over many
    tokens, see bench/rl.py). ``streamer`` (a transformers streamer) gets the prompt, then each picked token.
    """
    from transformers import DynamicCache

    if max_new_tokens < 1:
        raise ValueError(f"decode: max_new_tokens must be >= 1, got {max_new_tokens}")
    if cache not in ("dynamic", "static"):
        raise ValueError(f"decode: cache must be 'dynamic' or 'static', got {cache!r}")
    if (stop or stop_when) and tokenizer is None:
        raise ValueError("decode: stop strings and stop_when need the tokenizer")
    device = next(model.parameters()).device
    P, W = prompt_ids.shape
    B, T = P * n, max_new_tokens
    eos_t = torch.tensor(sorted(eos or ()), dtype=torch.long)
    tokens = torch.full((B, T), pad, dtype=torch.long)
    logps = torch.zeros((B, T), dtype=torch.float32) if logprobs else None
    reason, length = ["length"] * B, [T] * B
    if streamer is not None:
        streamer.put(prompt_ids.cpu())

    kv = DynamicCache(config=model.config)
    mask = prompt_mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids.to(device), attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **kv_cache(model, kv))
    logits = out.logits[:, -1].float()
    del out
    if n > 1:
        logits = logits.repeat_interleave(n, 0)
        kv.batch_repeat_interleave(n)
    # the whole attention mask, allocated once: prompt padding, then every generated position
    full_mask = torch.cat([mask.repeat_interleave(n, 0), mask.new_ones(B, T)], dim=1)
    next_pos = positions[:, -1:].repeat_interleave(n, 0) + 1
    if cache == "static":
        kv = _static_from(kv, model, W + T)
    step = _decode_step(model, compile)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(B, logits.shape[-1], dtype=torch.bool, device=device)
        rows, cols = full_mask[:, :W].nonzero(as_tuple=True)  # the prompt's real tokens, not its padding
        seen[rows, prompt_ids.to(device).repeat_interleave(n, 0)[rows, cols]] = True
    candidates = _stop_candidates(tokenizer, tuple(stop), logits.shape[-1]) if stop else None
    alive = torch.arange(B)  # rows of the full batch still generating, in cache order
    for t in range(T):
        if seen is not None:
            logits = torch.where(seen, torch.where(logits > 0, logits / repetition_penalty,
                                                   logits * repetition_penalty), logits)
        # one uniform number per row of the full batch every step, so a row's draws don't depend on which rows left
        u = torch.rand(B, 1, generator=generator)[alive].to(device) if temperature > 0 else None
        tok_dev, lp = _pick(logits, temperature, top_p, top_k, u, logprobs)
        tok = tok_dev.cpu()
        tokens[alive, t] = tok
        if lp is not None:
            logps[alive, t] = lp.float().cpu()
        if streamer is not None:
            streamer.put(tok)
        done = torch.isin(tok, eos_t)
        if done.any():
            for row in alive[done].tolist():
                reason[row], length[row] = "eos", t + 1
        if stop:
            for i in (candidates[tok] & ~done).nonzero().squeeze(-1).tolist():
                row = int(alive[i])
                if any(s in tokenizer.decode(tokens[row, max(0, t - 15) : t + 1]) for s in stop):
                    done[i] = True
                    reason[row], length[row] = "stop", t + 1
        if stop_when is not None:
            for i in (~done).nonzero().squeeze(-1).tolist():
                row = int(alive[i])
                if stop_when(tokenizer.decode(tokens[row, : t + 1], skip_special_tokens=True)):
                    done[i] = True
                    reason[row], length[row] = "stop", t + 1
        if t == T - 1 or bool(done.all()):
            break
        if seen is not None:
            seen.scatter_(1, tok_dev[:, None], True)
        if done.any():
            keep = (~done).nonzero().squeeze(-1)
            keep_dev = keep.to(device)
            alive, tok_dev = alive[keep], tok_dev[keep_dev]
            full_mask, next_pos = full_mask[keep_dev], next_pos[keep_dev]
            seen = seen[keep_dev] if seen is not None else None
            _select_rows(kv, keep_dev)
        width = W + T if cache == "static" else W + t + 1
        out = step(input_ids=tok_dev[:, None], attention_mask=full_mask[:, :width], position_ids=next_pos,
                   use_cache=True, **kv_cache(model, kv))
        logits = out.logits[:, -1].float()
        del out
        next_pos = next_pos + 1
    if streamer is not None:
        streamer.end()
    return Decoded(tokens, logps, length, reason)
