"""Scalar heads on a causal-LM backbone: the reward model r(x, y).

A palate reward model *is* a Hugging Face ``…ForSequenceClassification`` model: a linear ``score`` head
with ``num_labels = K`` outputs (K ensemble heads, 1 by default) read at the last non-padding token.
Saved with ``save_pretrained`` it loads in any tool with ``AutoModelForSequenceClassification``; palate
adds ``palate_reward.json`` beside it (normalisation stats, max length, chat-template use).

Causal LMs often pad with their end-of-turn token, and HF's sequence classifier reads the *rightmost
token that is not padding*: with pad == eos the reward would be read one token early, before the
response's end-of-turn token. :func:`distinct_pad_token` gives the tokenizer a pad token of its own so
palate's reading position (the last attended token) and HF's agree.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from palate.data.batching import Batch, collate
from palate.data.errors import SkipLog
from palate.data.records import Prompt
from palate.data.tokenize import encode_responses, uses_chat_template

log = logging.getLogger("palate.models")

REWARD_META = "palate_reward.json"


def distinct_pad_token(tokenizer) -> None:
    """Make ``tokenizer.pad_token`` differ from its eos token (using ``unk`` when it has one)."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
        return
    raise ValueError(
        "the tokenizer pads with its end-of-sequence token and has no other special token to pad with; "
        "add one (tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the embeddings)"
    )


def backbone_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(decoder, score head)`` of a sequence-classification model, PEFT-wrapped ones included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix), base.score


def init_heads(model, seed: int) -> None:
    """Fresh head weights, different per head and reproducible per seed: N(0, 1/(hidden+1))."""
    _, head = backbone_and_head(model)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        head.weight.normal_(0.0, 1.0 / math.sqrt(head.weight.shape[1] + 1))
        if head.bias is not None:
            head.bias.zero_()


def reward_scores(model, batch: Batch) -> torch.Tensor:
    """Rewards of each row of a right-padded batch, read at its last real token: ``[rows, heads]``.

    Only those rows' final hidden states go through the head (same numbers as HF's forward, which
    projects every position and then picks one).
    """
    backbone, head = backbone_and_head(model)
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    hidden = backbone(**{k: v.to(device) for k, v in batch.causal_inputs().items()}, use_cache=False).last_hidden_state
    last = batch.attention_mask.to(device).sum(dim=1) - 1  # right padding: the last real token
    return head(hidden[torch.arange(ids.shape[0], device=device), last]).float()


@dataclass
class Scores:
    """Rewards of N responses from a K-head model: ``mean`` and ``std`` over heads ``[N]``, ``heads`` ``[N, K]``.

    ``std`` is the ensemble's disagreement (zero for a single head): the uncertainty used by active
    labeling and the reward-hacking monitor.
    """

    mean: torch.Tensor
    std: torch.Tensor
    heads: torch.Tensor

    def pessimistic(self, k: float = 1.0) -> torch.Tensor:
        """``mean − k·std``: a reward that does not trust what the ensemble disagrees on."""
        return self.mean - k * self.std


def scores_from_heads(heads: torch.Tensor) -> Scores:
    std = heads.std(dim=-1, unbiased=False) if heads.shape[-1] > 1 else torch.zeros_like(heads[..., 0])
    return Scores(heads.mean(dim=-1), std, heads)


class RewardModel:
    """A trained reward model ready to score: ``RewardModel.load(run_or_dir).score(prompts, responses)``."""

    def __init__(self, model, tokenizer, meta: dict[str, Any] | None = None, device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = dict(meta or {})
        self.device = torch.device(device)
        self.max_length = int(self.meta.get("max_length", 1024))
        self.use_template = uses_chat_template(tokenizer, self.meta.get("chat_template"))

    @classmethod
    def load(cls, name: str | Path, *, device: str = "auto", dtype: str = "auto") -> RewardModel:
        """Load a reward model from a palate run dir, a model dir, or any HF sequence-classification model."""
        from palate.infra.device import pick_device
        from palate.models.load import load_model, load_tokenizer, resolve

        kind, where = resolve(str(name))
        tok = load_tokenizer(str(name))
        dev = pick_device(device)
        model = load_model(str(name), dtype=dtype, device=str(dev), tokenizer=tok, num_labels=1)
        meta: dict[str, Any] = {}
        meta_path = Path(where) / REWARD_META
        if kind in ("run", "dir") and meta_path.exists():
            meta = json.loads(meta_path.read_text())
        if tok.pad_token_id != model.config.pad_token_id and model.config.pad_token_id is not None:
            tok.pad_token_id = model.config.pad_token_id  # read where the model was trained to read
        return cls(model, tok, meta, dev)

    @property
    def n_heads(self) -> int:
        return backbone_and_head(self.model)[1].weight.shape[0]

    def encode(self, prompts: list[Prompt], responses: list[str], skips: SkipLog | None = None) -> list:
        """Token sequences exactly as in training (chat template, end-of-turn token, truncation)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        skips = skips if skips is not None else SkipLog()
        out = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            ex = encode_responses(self.tokenizer, p, [r], self.max_length, skips=skips, where=("<score>", i + 1),
                                  index=i, use_template=self.use_template)
            if ex is None:
                raise ValueError(f"row {i + 1}: prompt longer than the reward model's max_length {self.max_length}")
            out.append(ex[0])
        if skips.truncations:
            log.warning("scoring: %d responses truncated to max_length %d", len(skips.truncations), self.max_length)
        return out

    @torch.inference_mode()
    def score(self, prompts: list[Prompt], responses: list[str], *, batch_size: int = 16,
              normalize: bool = False) -> Scores:
        """Score (prompt, response) pairs; batched by length, returned in input order.

        ``normalize=True`` maps rewards to ``(r − mean) / std`` with the statistics saved at training
        time (what RL uses, so a KL coefficient means the same for every reward model).
        """
        examples = self.encode(prompts, responses)
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
        out = torch.empty(len(examples), self.n_heads)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch = collate([examples[i] for i in idx], self.tokenizer.pad_token_id)
            out[idx] = reward_scores(self.model, batch).cpu()
        if normalize:
            out = (out - self.meta.get("mean", 0.0)) / self.meta.get("std", 1.0)
        return scores_from_heads(out)
