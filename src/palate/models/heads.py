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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from palate.data.batching import Batch, collate, split_rows
from palate.data.errors import SkipLog
from palate.data.records import Prompt
from palate.data.tokenize import encode_responses, uses_chat_template
from palate.models.logprobs import SharedPrompts, fsdp_sharded, prompt_shared_forward, shared_prompts

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


def reward_scores(model, batch: Batch, row_parts: int = 1, share_prompts: bool = True) -> torch.Tensor:
    """Rewards of each row of a right-padded batch, read at its last real token: ``[rows, heads]``.

    The head sees only those rows' final hidden states: the backbone returns hidden states, never a
    ``[rows, seq, heads]`` (or vocabulary) logits tensor; same numbers as HF's forward, which projects
    every position and then picks one.

    ``row_parts > 1`` runs the rows as up to that many length buckets (:func:`palate.data.batching.split_rows`),
    each padded only to its own longest row, so a short rejected response is not padded to its long chosen
    one; the scores come back in the batch's row order (equal to one forward's to float rounding).

    Rows that share a prompt (a comparison's responses) run it once (``share_prompts``) when that costs fewer
    positions than the batch or its buckets (:func:`reward_plan`, :func:`palate.models.logprobs.shared_prompts`):
    the prompt's key/value cache serves each response, whose last token's state is scored (not under FSDP2:
    :func:`palate.models.logprobs.fsdp_sharded`).
    """
    how, plan = reward_plan(batch, row_parts, share_prompts and not fsdp_sharded(model))
    if how == "shared":
        return _scores_with_shared_prompts(model, plan)
    if how == "buckets":
        scores = torch.cat([_scores_at_last_token(model, sub) for _, sub in plan])
        where = torch.empty(batch.input_ids.shape[0], dtype=torch.long)  # batch row -> position in ``scores``
        where[torch.tensor([r for rows, _ in plan for r in rows])] = torch.arange(len(where))
        return scores[where.to(scores.device)]
    return _scores_at_last_token(model, batch)


def reward_plan(batch: Batch, row_parts: int = 1, share_prompts: bool = True) -> tuple[str, Any]:
    """How :func:`reward_scores` runs a batch, the cheapest in positions: ``("shared", shared_prompts(batch))``,
    ``("buckets", split_rows(batch, row_parts))`` or ``("one", batch)``."""
    parts = split_rows(batch, row_parts) if row_parts > 1 and batch.attention_mask is not None \
        and batch.input_ids.shape[0] > 1 else []
    shared = shared_prompts(batch, max(row_parts, 1)) if share_prompts else None
    if shared is not None and (len(parts) < 2 or
                               plan_positions(("shared", shared))[0] < plan_positions(("buckets", parts))[0]):
        return "shared", shared
    return ("buckets", parts) if len(parts) > 1 else ("one", batch)


def plan_positions(plan: tuple[str, Any]) -> tuple[int, int]:
    """(positions a :func:`reward_plan` runs through the backbone, real tokens among them)."""
    how, what = plan
    if how == "shared":
        return what.positions(predict=False)
    subs = [sub for _, sub in what] if how == "buckets" else [what]
    return sum(sub.n_slots for sub in subs), sum(sub.n_tokens for sub in subs)


def _scores_with_shared_prompts(model, shared: SharedPrompts) -> torch.Tensor:
    backbone, head = backbone_and_head(model)
    _, hidden = prompt_shared_forward(backbone, shared.prompt_ids, shared.prompt_mask, shared.response_ids,
                                      shared.which, shared.parts)
    last = shared.response_mask.sum(dim=1).to(hidden.device) - 1  # right padding: each response's last real token
    return head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]).float()


def _scores_at_last_token(model, batch: Batch) -> torch.Tensor:
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
    skipped: list[int] = field(default_factory=list)
    """rows left unscored (NaN): prompt over-long, long_prompts=skip"""

    def pessimistic(self, k: float = 1.0) -> torch.Tensor:
        """``mean − k·std``: a reward that does not trust what the ensemble disagrees on."""
        return self.mean - k * self.std


def scores_from_heads(heads: torch.Tensor) -> Scores:
    std = heads.std(dim=-1, unbiased=False) if heads.shape[-1] > 1 else torch.zeros_like(heads[..., 0])
    return Scores(heads.mean(dim=-1), std, heads)


def resolve_reward_model(name: str | Path) -> tuple[str, str]:
    """:func:`palate.models.load.resolve` for a reward model: a missing local path says how to train one."""
    from palate.models.load import ModelNotFoundError, resolve

    try:
        return resolve(str(name))
    except ModelNotFoundError:
        raise ModelNotFoundError(str(name), f"train the reward model first (palate rm examples/rm_demo.yaml writes "
                                            f"runs/demo-rm; palate rm CONFIG run_dir={name} for yours) or give a "
                                            f"Hugging Face Hub name") from None


def reward_model_meta(name: str | Path) -> dict[str, Any]:
    """A reward model's ``palate_reward.json`` (max length, long-prompt rule, normalisation stats), read
    without loading its weights; empty for a model palate did not train."""
    kind, where = resolve_reward_model(name)
    path = Path(where) / REWARD_META
    return json.loads(path.read_text()) if kind in ("run", "dir") and path.exists() else {}


class RewardModel:
    """A trained reward model ready to score: ``RewardModel.load(run_or_dir).score(prompts, responses)``."""

    def __init__(self, model, tokenizer, meta: dict[str, Any] | None = None, device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = dict(meta or {})
        self.device = torch.device(device)
        self.max_length = int(self.meta.get("max_length", 1024))
        self.long_prompts = str(self.meta.get("long_prompts", "skip"))  # as in training (data.long_prompts)
        self.use_template = uses_chat_template(tokenizer, self.meta.get("chat_template"))

    @classmethod
    def load(cls, name: str | Path, *, device: str = "auto", dtype: str = "auto") -> RewardModel:
        """Load a reward model from a palate run dir, a model dir, or any HF sequence-classification model."""
        from palate.infra.device import pick_device
        from palate.models.load import load_model, load_tokenizer

        resolve_reward_model(name)  # a missing local path fails here, in one line, before any Hub lookup
        tok = load_tokenizer(str(name))
        dev = pick_device(device)
        model = load_model(str(name), dtype=dtype, device=str(dev), tokenizer=tok, num_labels=1)
        meta = reward_model_meta(name)
        if tok.pad_token_id != model.config.pad_token_id and model.config.pad_token_id is not None:
            tok.pad_token_id = model.config.pad_token_id  # read where the model was trained to read
        return cls(model, tok, meta, dev)

    @property
    def n_heads(self) -> int:
        return backbone_and_head(self.model)[1].weight.shape[0]

    def encode(self, prompts: list[Prompt], responses: list[str], skips: SkipLog | None = None,
               where: list[tuple[str, int]] | None = None) -> list:
        """Token sequences exactly as in training (chat template, end-of-turn token, truncation), one per row.

        A prompt that leaves no room within the model's ``max_length`` follows the rule it was trained with
        (``long_prompts`` in ``palate_reward.json``): skipped (``None`` in its place) or cut from the left.
        Skips and truncations are counted in ``skips``, named by ``where`` (``(source, row)`` per row)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        skips = skips if skips is not None else SkipLog()
        out = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            ex = encode_responses(self.tokenizer, p, [r], self.max_length, skips=skips,
                                  where=where[i] if where else ("<score>", i + 1), index=i,
                                  use_template=self.use_template, long_prompts=self.long_prompts)
            out.append(ex[0] if ex else None)
        if skips.skips or skips.truncations:
            log.warning("scoring at max_length %d (long_prompts=%s): %s", self.max_length, self.long_prompts,
                        skips.summary(max_examples=3, saved_in=None))
        return out

    @torch.inference_mode()
    def score(self, prompts: list[Prompt], responses: list[str], *, batch_size: int = 16,
              normalize: bool = False, skips: SkipLog | None = None,
              where: list[tuple[str, int]] | None = None) -> Scores:
        """Score (prompt, response) pairs; batched by length, returned in input order.

        ``normalize=True`` maps rewards to ``(r − mean) / std`` with the statistics saved at training
        time (what RL uses, so a KL coefficient means the same for every reward model). A row whose prompt
        is skipped (see :meth:`encode`) scores NaN and is listed in ``Scores.skipped``.
        """
        skips = skips if skips is not None else SkipLog(seen=len(prompts))
        examples = self.encode(prompts, responses, skips, where)
        kept = [i for i, ex in enumerate(examples) if ex is not None]
        order = sorted(kept, key=lambda i: len(examples[i]))
        out = torch.full((len(examples), self.n_heads), float("nan"))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch = collate([examples[i] for i in idx], self.tokenizer.pad_token_id)
            out[idx] = reward_scores(self.model, batch).cpu()
        if normalize:
            out = (out - self.meta.get("mean", 0.0)) / self.meta.get("std", 1.0)
        scores = scores_from_heads(out)
        scores.skipped = [i for i, ex in enumerate(examples) if ex is None]
        return scores
