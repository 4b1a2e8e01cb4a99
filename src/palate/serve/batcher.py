"""Continuous request batching for the server: one worker thread owns the model.

Requests arriving within ``wait_ms`` of the first waiting one (up to ``max_batch``) are generated together
in one left-padded batch with the KV cache. Each row keeps its own temperature, top-p, max_tokens, stop
strings and seed; a row leaves the batch when it stops, so the others continue at the smaller size. Text
is handed back as deltas through each request's ``emit`` callback (called from the worker thread).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from palate.models.logprobs import kv_cache
from palate.rollout.generate import _pick, eos_ids, left_pad

log = logging.getLogger("palate.serve")


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[dict], None]
    """{"delta": str} ... then {"done": True, "finish_reason", "completion_tokens"} or {"error"}"""
    temperature: float = 0.0
    """0 = greedy"""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    cancelled: bool = False
    # worker state
    tokens: list[int] = field(default_factory=list)
    sent: int = 0
    """characters of text already emitted"""
    hit_eos: bool = False


class Batcher:
    def __init__(self, model, tokenizer, *, max_batch: int = 8, wait_ms: float = 10.0):
        self.model, self.tok = model.eval(), tokenizer
        self.max_batch, self.wait = max_batch, wait_ms / 1000.0
        self.device = next(model.parameters()).device
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stops = eos_ids(model, tokenizer)
        self.queue: queue.Queue[GenRequest | None] = queue.Queue()
        self.stats = {"requests": 0, "batches": 0, "max_batch_seen": 0, "batch_sizes": Counter(), "tokens": 0}
        self._thread = threading.Thread(target=self._loop, name="palate-batcher", daemon=True)
        self._thread.start()

    def submit(self, req: GenRequest) -> None:
        self.queue.put(req)

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=10)

    def _gather(self, first: GenRequest) -> list[GenRequest]:
        batch, deadline = [first], time.monotonic() + self.wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = self.queue.get(timeout=max(remaining, 0)) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self.queue.put(None)
                break
            batch.append(nxt)
        return batch

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = self._gather(first)
            self.stats["requests"] += len(batch)
            self.stats["batches"] += 1
            self.stats["batch_sizes"][len(batch)] += 1
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(batch))
            try:
                self._generate(batch)
            except Exception as e:  # noqa: BLE001 - reported to every waiting client, the worker keeps serving
                log.exception("generation failed")
                for r in batch:
                    r.emit({"error": f"generation failed: {type(e).__name__}: {e}"})

    def _pick(self, logits: torch.Tensor, rows: list[GenRequest], gens: list) -> list[int]:
        """Each row's next token with its own temperature, top-p and generator, by the decoding engine's pick
        (palate.rollout.generate._pick: greedy, or one uniform number per row against the cumulative
        probabilities); rows sharing their settings are picked together."""
        out = [0] * len(rows)
        groups: dict[tuple[float, float], list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault((max(r.temperature, 0.0), r.top_p), []).append(i)
        for (temperature, top_p), idx in groups.items():
            u = None
            if temperature > 0:
                u = torch.cat([torch.rand(1, 1, generator=gens[i]) for i in idx]).to(logits.device)
            sel = torch.tensor(idx, device=logits.device)
            tok, _ = _pick(logits.index_select(0, sel), temperature, top_p, 0, u, False)
            for i, t in zip(idx, tok.tolist()):
                out[i] = t
        return out

    def _advance(self, r: GenRequest, tok: int) -> str | None:
        """Record ``tok`` for ``r``, emit the text that is safe to send; returns a finish reason or None."""
        if tok in self.stops:
            r.hit_eos = True
            return "stop"
        r.tokens.append(tok)
        text = self.tok.decode(r.tokens, skip_special_tokens=True)
        hits = [text.find(s) for s in r.stop if s in text]
        if hits:
            self._emit_upto(r, text, min(hits))
            return "stop"
        if len(r.tokens) >= r.max_tokens:
            return "length"
        if not text.endswith("\ufffd"):  # an incomplete UTF-8 character waits for its next token
            hold = max((len(s) - 1 for s in r.stop), default=0)  # a stop string may be starting
            self._emit_upto(r, text, len(text) - hold)
        return None

    @staticmethod
    def _emit_upto(r: GenRequest, text: str, end: int) -> None:
        if end > r.sent:
            r.emit({"delta": text[r.sent : end]})
            r.sent = end

    def _finish(self, r: GenRequest, reason: str) -> None:
        text = self.tok.decode(r.tokens, skip_special_tokens=True)
        if reason != "stop" or not any(s in text for s in r.stop):
            self._emit_upto(r, text, len(text))
        self.stats["tokens"] += len(r.tokens)
        r.emit({"done": True, "finish_reason": reason, "completion_tokens": len(r.tokens) + int(r.hit_eos)})

    @torch.inference_mode()
    def _generate(self, batch: list[GenRequest]) -> None:
        from transformers import DynamicCache

        gens = [torch.Generator().manual_seed(r.seed if r.seed is not None else int(torch.randint(0, 2**31, ())))
                for r in batch]
        ids, mask = left_pad([r.prompt_ids for r in batch], self.pad)
        mask = mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **kv_cache(self.model, cache))
        logits = out.logits[:, -1].float()
        next_pos = positions[:, -1:] + 1
        rows = list(range(len(batch)))  # indices into batch still generating, in cache order
        while rows:
            picked = self._pick(logits, [batch[i] for i in rows], [gens[i] for i in rows])
            keep = []
            for k, (i, tok) in enumerate(zip(rows, picked)):
                r = batch[i]
                reason = "cancelled" if r.cancelled else self._advance(r, tok)
                if reason is None:
                    keep.append(k)
                elif reason != "cancelled":
                    self._finish(r, reason)
            if not keep:
                return
            if len(keep) < len(rows):
                sel = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(sel)
                mask, next_pos = mask[sel], next_pos[sel]
                rows, picked = [rows[k] for k in keep], [picked[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            tok_t = torch.tensor(picked, device=self.device)[:, None]
            out = self.model(input_ids=tok_t, attention_mask=mask, position_ids=next_pos,
                             use_cache=True, **kv_cache(self.model, cache))
            logits = out.logits[:, -1].float()
            next_pos = next_pos + 1
