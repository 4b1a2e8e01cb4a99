"""Direct preference optimisation and its family: DPO, IPO, cDPO, robust DPO, RPO, SimPO, ORPO, KTO.

    load preferences (KTO: ratings, or pairs split into thumbs up/down) -> tokenise -> bucketed batches,
        chosen and rejected rows of a pair in one padded batch
    reference log-probs: computed once over the dataset and cached in the run dir (or live: the
        disabled LoRA adapter, or a frozen copy), none for SimPO/ORPO
    greedy samples from the starting policy on held-out prompts
    for each optimizer step: one forward -> completion log-probs (projection only on completion
        tokens, in chunks) -> the chosen loss -> backward -> clip -> AdamW -> log implicit rewards,
        accuracy, margins, chosen log-prob, log-ratio to the reference
    held-out metrics; samples again from the trained policy (before/after side by side) -> final/
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from palate.config import ConfigError, DataConfig, LogConfig, LoraConfig, ModelConfig, TrainConfig
from palate.data.batching import Batch, collate, group_batches, padding_stats, plan_batches
from palate.data.errors import SkipLog
from palate.data.readers import read_preferences, read_ratings
from palate.data.records import Preference, Rating
from palate.data.split import split_heldout
from palate.data.tokenize import Example, encode_groups, encode_responses, uses_chat_template
from palate.eval.monitor import MonitorConfig
from palate.infra import distributed, session
from palate.infra.run import RunDir, recorded
from palate.losses.preference import PREFERENCE_LOSSES, kto_loss, kto_reference_point, requires_reference
from palate.models.logprobs import sequence_logprobs
from palate.models.lora import adapter_disabled, is_peft

log = logging.getLogger("palate.dpo")

LOSSES = (*PREFERENCE_LOSSES, "kto")
REFERENCE_CACHE = "reference_logprobs.pt"


@dataclass(frozen=True)
class DPOSpec:
    loss: str = "dpo"  # dpo | ipo | cdpo | robust | rpo | simpo | orpo | kto
    beta: float = 0.1  # DPO/IPO/cDPO/robust/RPO/KTO: 0.1; SimPO: use ~2.0; ORPO: the λ of the paper (0.1)
    label_smoothing: float = 0.1  # cdpo/robust: probability a label is flipped
    gamma: float = 0.5  # simpo: target reward margin γ (paper's units: γ, not γ/β)
    alpha: float = 1.0  # rpo: weight of the chosen NLL term
    reference: str = "precompute"  # precompute (cached once) | live (disabled LoRA adapter, or a frozen copy)
    records: str = "auto"  # auto | preferences | ratings (KTO reads ratings; pairs are split into up/down)
    desirable_weight: float = 1.0  # kto λ_D
    undesirable_weight: float = 1.0  # kto λ_U
    samples: int = 4  # held-out prompts answered before and after training (0: none)
    sample_max_new_tokens: int = 96
    reward_model: str | None = None  # optional: a palate reward model that scores the before/after samples
    # Held-out answers at every evaluation (the reward-hacking monitor): the first ``watch_prompts`` held-out
    # prompts answered greedily, scored by ``reward_model`` (the proxy, logged as eval_reward) and by ``gold``
    # (``panel``: the simulated labeler panel's mean rubric score, or a ``module:function`` / ``file.py:function``
    # reward; never optimised; logged as eval_gold). Without a reward model the monitor's proxy is the held-out
    # implicit reward margin. 0 prompts or neither scorer: off.
    gold: str | None = None
    watch_prompts: int = 0
    watch_max_new_tokens: int = 64


@dataclass(frozen=True)
class DPOConfig:
    run_dir: str = "runs/dpo"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(path="bundled:preferences", eval_fraction=0.1))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6, epochs=1, warmup_ratio=0.1))
    lora: LoraConfig = field(default_factory=LoraConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dpo: DPOSpec = field(default_factory=DPOSpec)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


def check(spec: DPOSpec) -> None:
    if spec.loss not in LOSSES:
        raise ConfigError(f"dpo.loss must be one of {', '.join(LOSSES)}, got {spec.loss!r}")
    if spec.reference not in ("precompute", "live"):
        raise ConfigError(f"dpo.reference must be precompute or live, got {spec.reference!r}")
    if spec.records not in ("auto", "preferences", "ratings"):
        raise ConfigError(f"dpo.records must be auto, preferences or ratings, got {spec.records!r}")
    if spec.records == "ratings" and spec.loss != "kto":
        raise ConfigError("ratings (unpaired thumbs) train only with dpo.loss=kto")
    if watching(spec) and distributed.world_size() > 1:
        raise ConfigError("dpo.watch_prompts (the held-out watch) runs on one process only for now; "
                          "set dpo.watch_prompts=0 to train on several")


# ----------------------------------------------------------------------------- data


def read_records(data: DataConfig, spec: DPOSpec, skips: SkipLog, path: str | None = None) -> list:
    """Preferences for pairwise losses (ties dropped with a count); Ratings for KTO."""
    source = path or data.path
    kind = spec.records if spec.records != "auto" else ("ratings" if spec.loss == "kto" else "preferences")
    read = read_ratings if kind == "ratings" else read_preferences
    try:
        records = read(source, columns=data.columns, split=data.split, on_error=data.on_error, skips=skips)
    except Exception:
        if spec.records != "auto" or spec.loss != "kto":
            raise
        records = read_preferences(source, columns=data.columns, split=data.split, on_error=data.on_error, skips=skips)
    kept = []
    for rec in records:
        if isinstance(rec, Preference) and rec.tie:
            skips.skip(rec.meta.get("source", source), rec.meta.get("row"), "tie", "tie dropped (no preference to learn)")
            continue
        kept.append(rec)
    if spec.loss == "kto":
        kept = unpaired(kept, skips)
    return kept


def unpaired(records: list, skips: SkipLog) -> list[Rating]:
    """KTO's view of the data: ratings above the scale's midpoint are desirable, below undesirable
    (exactly the midpoint: skipped with a count); a preference pair gives one of each."""
    out = []
    for rec in records:
        if isinstance(rec, Preference):
            out.append(Rating(rec.prompt, rec.chosen, 1.0, (0.0, 1.0), meta={**rec.meta, "from_pair": "chosen"}))
            out.append(Rating(rec.prompt, rec.rejected, 0.0, (0.0, 1.0), meta={**rec.meta, "from_pair": "rejected"}))
            continue
        if rec.score == sum(rec.scale) / 2:
            skips.skip(rec.meta.get("source", "<records>"), rec.meta.get("row"), "score",
                       "rating at the scale's midpoint is neither desirable nor undesirable")
            continue
        out.append(rec)
    return out


def desirable(rating: Rating) -> bool:
    return rating.score > sum(rating.scale) / 2


def encode_kto(tok, ratings: list[Rating], max_length: int, skips: SkipLog, chat_template, truncate: bool,
               seed: int, long_prompts: str = "skip") -> list[list[Example]]:
    """Each rating as ``[own, mismatched]``: its prompt with its response, and its prompt with another
    rating's response (a fixed seeded partner), whose log-ratio estimates KTO's reference point."""
    use_template = uses_chat_template(tok, chat_template)
    order = list(range(len(ratings)))
    random.Random(f"kto-partner:{seed}").shuffle(order)
    partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
    out = []
    for i, rec in enumerate(ratings):
        src, row = rec.meta.get("source", "<records>"), rec.meta.get("row", i + 1)
        ex = encode_responses(tok, rec.prompt, [rec.response, ratings[partner[i]].response], max_length, skips=skips,
                              where=(src, row), index=i, use_template=use_template, truncate_completion=truncate,
                              fields=["response", "response (as KL partner)"], long_prompts=long_prompts)
        if ex:
            out.append(ex)
    return out


def kto_batches(groups: list[list[Example]], batch_size: int, pad_id: int, seed: int, epoch: int,
                bucket: bool = True) -> list[tuple[Batch, Batch]]:
    """``(own rows, mismatched rows)`` batch pairs: the second is only ever run without gradients."""
    order = plan_batches([len(g[0]) for g in groups], batch_size, seed, epoch, bucket=bucket)
    out = []
    for b in order:
        own = collate([groups[i][0] for i in b], pad_id)
        kl = collate([groups[i][1] for i in b], pad_id)
        own.indices = kl.indices = [groups[i][0].index for i in b]
        out.append((own, kl))
    return out


# ----------------------------------------------------------------------------- reference


def reference_key(model, tok_name: str, groups: list[list[Example]], loss: str) -> str:
    """Fingerprint of what the cached reference log-probs depend on: the starting weights and the token ids."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tok_name}|{loss}".encode())
    for name, p in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    for g in groups:
        for ex in g:
            h.update(repr((ex.index, ex.completion_start, ex.input_ids)).encode())
    return h.hexdigest()


@torch.inference_mode()
def reference_logprobs(model, batches: list[Batch], n_records: int, env: session.Env) -> torch.Tensor:
    """Summed completion log-probs of the reference (the starting policy, adapter disabled): ``[N, 2]``
    (chosen, rejected) per record, or (own, mismatched) for KTO."""
    was_training = model.training
    model.eval()
    out = torch.full((n_records, 2), float("nan"))
    with adapter_disabled(model):
        for b in batches:
            with session.autocast(env.precision, env.device):
                sums, _ = sequence_logprobs(model, b)
            out[torch.tensor(b.indices)] = sums.float().cpu().view(-1, 2)
    model.train(was_training)
    return out


def cached_reference(run: RunDir, key: str, compute) -> torch.Tensor:
    """Load ``reference_logprobs.pt`` if its key matches, else compute and save it (atomically)."""
    path = run.path / REFERENCE_CACHE
    if path.exists():
        saved = torch.load(path, weights_only=True)
        if saved.get("key") == key:
            log.info("reference log-probs: cached (%s)", path.name)
            return saved["values"]
        log.info("reference log-probs: cache out of date (data or model changed); recomputing")
    values = compute()
    if run.writes:  # multi-process: every process computes the same values, the main one saves them
        tmp = path.with_suffix(".tmp")
        torch.save({"key": key, "values": values}, tmp)
        tmp.replace(path)
    return values


# ----------------------------------------------------------------------------- losses


def pair_loss(spec: DPOSpec, pol: torch.Tensor, counts: torch.Tensor, ref: torch.Tensor | None):
    """The configured pairwise loss on summed log-probs ``pol`` ``[2B]`` (rows alternate chosen, rejected)."""
    pc, pr = pol[0::2], pol[1::2]
    lc, lr = counts[0::2].clamp_min(1).to(pol.dtype), counts[1::2].clamp_min(1).to(pol.dtype)
    fn = PREFERENCE_LOSSES[spec.loss]
    if spec.loss == "simpo":
        return fn(pc, pr, lc, lr, beta=spec.beta, gamma=spec.gamma)
    if spec.loss == "orpo":
        return fn(pc, pr, lc, lr, -pc / lc, beta=spec.beta)
    rc, rr = ref[:, 0].to(pol.device), ref[:, 1].to(pol.device)
    if spec.loss == "ipo":  # IPO (and TRL) compare per-token average log-probs
        return fn(pc / lc, pr / lr, rc / lc, rr / lr, beta=spec.beta)
    if spec.loss == "rpo":
        return fn(pc, pr, rc, rr, -pc / lc, beta=spec.beta, alpha=spec.alpha)
    if spec.loss in ("cdpo", "robust"):
        return fn(pc, pr, rc, rr, beta=spec.beta, label_smoothing=spec.label_smoothing)
    return fn(pc, pr, rc, rr, beta=spec.beta)


def pair_metrics(out, pol, counts, ref, weights) -> dict[str, torch.Tensor]:
    """Sums (weighted where it matters) of what a DPO user watches, to be averaged over the step."""
    pc, pr = pol[0::2].detach(), pol[1::2].detach()
    lc, lr = counts[0::2].clamp_min(1).float(), counts[1::2].clamp_min(1).float()
    m = {
        "rewards_chosen": out.chosen_rewards.sum(), "rewards_rejected": out.rejected_rewards.sum(),
        "reward_accuracy": (out.chosen_rewards > out.rejected_rewards).float().sum(),
        "reward_margin": (out.chosen_rewards - out.rejected_rewards).sum(),
        "logp_chosen": pc.sum(), "logp_rejected": pr.sum(),
        "logp_chosen_per_token": (pc / lc).sum(), "len_chosen": lc.sum(), "len_rejected": lr.sum(),
    }
    if ref is not None:  # mean per-token log-ratio on the data's responses: a proxy for KL(π‖π_ref)
        rc, rr = ref[:, 0].to(pc.device), ref[:, 1].to(pc.device)
        m["logratio_per_token"] = (((pc - rc) + (pr - rr)) / (lc + lr)).sum()
    return m


# ----------------------------------------------------------------------------- the recipe


@recorded
def train(cfg: DPOConfig, *, overwrite: bool = False) -> Path:
    check(cfg.dpo)
    spec = cfg.dpo
    kto = spec.loss == "kto"
    run = RunDir.open(cfg.run_dir, cfg, overwrite=overwrite)
    env = session.start(cfg.train, cfg.model, run, cfg.log, cfg)
    tok = session.tokenizer(cfg.model)

    skips = SkipLog()
    records = read_records(cfg.data, spec, skips)
    if cfg.data.eval_path:
        train_recs, eval_recs = records, read_records(cfg.data, spec, skips, path=cfg.data.eval_path)
    else:
        train_recs, eval_recs = split_heldout(records, cfg.data.eval_fraction, cfg.train.seed)
    enc = dict(max_length=cfg.data.max_length, skips=skips, chat_template=cfg.data.chat_template,
               long_prompts=cfg.data.long_prompts)
    if kto:
        groups = encode_kto(tok, train_recs, cfg.data.max_length, skips, cfg.data.chat_template,
                            cfg.data.truncate_completion, cfg.train.seed, cfg.data.long_prompts)
        eval_groups = encode_kto(tok, eval_recs, cfg.data.max_length, skips, cfg.data.chat_template, True,
                                 cfg.train.seed, cfg.data.long_prompts) if eval_recs else []
        n_desirable = sum(desirable(train_recs[g[0].index]) for g in groups)
        counts = {"n_train": len(groups), "n_eval": len(eval_groups), "n_desirable": n_desirable}
    else:
        groups = encode_groups(tok, train_recs, truncate_completion=cfg.data.truncate_completion, **enc)
        eval_groups = encode_groups(tok, eval_recs, **enc) if eval_recs else []
        counts = {"n_train": len(groups), "n_eval": len(eval_groups)}
    session.report_data(run, skips, **counts)

    model = session.policy(cfg.model, cfg.lora, cfg.train, env, tok)

    def batches_of_epoch(epoch: int, which=groups, seed=cfg.train.seed, bucket=cfg.data.bucket):
        if kto:
            return kto_batches(which, cfg.train.batch_size, tok.pad_token_id, seed, epoch, bucket=bucket)
        return group_batches(which, cfg.train.batch_size, tok.pad_token_id, seed, epoch, bucket=bucket)

    stream = session.BatchStream(batches_of_epoch, cfg.train.grad_accum)
    eval_batches = batches_of_epoch(0, eval_groups, 0) if eval_groups else []
    first = [b for pair in stream.epoch(0) for b in pair] if kto else stream.epoch(0)
    log.info("train: %d %s, %d batches/epoch, padding %.1f%%, loss %s (β=%g)", len(groups),
             "ratings" if kto else "pairs", stream.batches_per_epoch, 100 * padding_stats(first)["padding_fraction"],
             spec.loss, spec.beta)

    # The reference: cached log-probs over train and eval data, or a live model evaluated each step.
    ref_train = ref_eval = live_ref = None
    if kto or requires_reference(spec.loss):
        if spec.reference == "precompute":
            seen = stream.records_seen(cfg.train.max_steps or stream.steps_for_epochs(cfg.train.epochs))
            reached = [g for g in groups if g[0].index in seen]
            ref_train, ref_eval = precomputed_references(run, model, tok, cfg, reached, eval_groups, env,
                                                         len(train_recs), len(eval_recs), len(groups) - len(reached))
        else:
            live_ref = LiveReference(model, cfg, env, tok)

    shown = as_encoded(eval_recs, eval_groups)  # held-out prompts as the rule left them (skipped: out; cut: cut)
    samples_before = held_out_samples(model, tok, shown, spec) if spec.samples else []

    loop = session.Loop(run, model, cfg.train, env, stream)
    watch = HeldOutWatch(run, model, tok, shown, spec, cfg.monitor, loop.start_step) if watching(spec) else None
    if watch is not None and loop.start_step == 0:
        loop.run.log(0, watch.measure(0))
    for step, micro in loop:
        n_examples = loop.all_sum(sum(len(b[0].indices) if kto else len(b.indices) for b in micro))
        sums: dict[str, float] = {}
        loss_sum = 0.0
        for b in loop.accumulate(micro):
            if kto:
                loss, m = loop.forward(kto_step, b, train_recs, ref_train, live_ref, spec, env, n_examples)
            else:
                loss, m = loop.forward(pair_step, b, train_recs, ref_train, live_ref, spec, env, n_examples)
            loop.backward(loss)
            loss_sum += float(loss.detach())
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        tokens = sum((b[0].n_tokens + b[1].n_tokens) if kto else b.n_tokens for b in micro)
        sums = loop.all_sum({**sums, "loss": loss_sum, "tokens": tokens})  # over every process's slice
        loss_sum, tokens = sums.pop("loss"), sums.pop("tokens")
        metrics = loop.optimizer_step(loss=loss_sum, tokens=tokens, **averaged(sums, n_examples))
        if eval_batches and loop.due(cfg.train.eval_every):
            metrics.update(evaluate(loop.whole(), eval_batches, eval_recs, ref_eval, live_ref, spec, env))
            if watch is not None:
                metrics.update(watch.measure(step, metrics.get("eval_reward_margin")))
        loop.log(step, metrics)
        if watch is not None and watch.stop:
            log.warning("monitor: stopping at step %d (monitor.action=stop); final/ is the best-gold policy", step)
            break

    summary = {}
    if samples_before:
        after = held_out_samples(loop.whole(), tok, shown, spec)
        rows = [{"prompt": b["prompt"], "before": b["response"], "after": a["response"],
                 **{k: b[k] for k in ("chosen", "rejected") if k in b}} for b, a in zip(samples_before, after)]
        if spec.reward_model:
            summary.update(score_samples(spec.reward_model, rows, [b["prompt_record"] for b in samples_before]))
        run.write_json("samples.json", rows)
        summary["samples"] = "samples.json"
    if watch is not None:
        summary.update(watch.summary())
    final = loop.finish(tok, merge=cfg.lora.merge, **summary)
    if watch is not None and watch.stop:
        watch.keep_best_gold(final)
    return final


def as_encoded(records: list, groups: list[list[Example]]) -> list:
    """The records that tokenisation kept (``groups``), in order, each with its prompt as cut when
    ``data.long_prompts=truncate_left`` cut it: what held-out samples and the watch should answer."""
    out = []
    for g in sorted(groups, key=lambda g: g[0].index):
        rec = records[g[0].index]
        out.append(dataclasses.replace(rec, prompt=g[0].prompt) if g[0].prompt is not None else rec)
    return out


def precomputed_references(run, model, tok, cfg, groups, eval_groups, env, n_train, n_eval, skipped=0):
    """Reference log-probs of ``groups`` (the train records the run will reach) and ``eval_groups``; the
    rows of records the run never trains on (``skipped``: max_steps ends before the epoch does) stay NaN."""
    key = reference_key(model, cfg.model.name, groups + [[]] + eval_groups, cfg.dpo.loss)

    def compute() -> dict[str, torch.Tensor]:
        # Groups are (chosen, rejected), or (own, mismatched) for KTO: two rows per record either way.
        log.info("reference log-probs: one pass over %d train + %d eval records%s", len(groups), len(eval_groups),
                 f" ({skipped} train records are past train.max_steps: not needed)" if skipped else "")
        batches = lambda which: group_batches(which, cfg.train.batch_size * 2, tok.pad_token_id, 0, 0)  # noqa: E731
        return {"train": reference_logprobs(model, batches(groups), n_train, env),
                "eval": reference_logprobs(model, batches(eval_groups), n_eval, env)}

    values = cached_reference(run, key, compute)
    return values["train"], values["eval"]


class LiveReference:
    """The reference evaluated every step: the policy with its LoRA adapter disabled (no extra memory),
    or, for a full fine-tune, a frozen copy of the starting weights (one more model in memory)."""

    def __init__(self, model, cfg: DPOConfig, env, tok):
        import copy

        self.env = env
        if is_peft(model):
            self.model, self.adapter = model, True
        else:
            log.warning("dpo.reference=live with a full fine-tune keeps a frozen copy of the model in memory; "
                        "dpo.reference=precompute avoids it")
            self.model, self.adapter = copy.deepcopy(model).eval().requires_grad_(False), False

    @torch.inference_mode()
    def rows(self, batch: Batch) -> torch.Tensor:
        """Summed reference log-probs of each row of ``batch``: ``[R]``."""
        was_training = self.model.training
        self.model.eval()
        with adapter_disabled(self.model, self.adapter), session.autocast(self.env.precision, self.env.device):
            sums, _ = sequence_logprobs(self.model, batch)
        self.model.train(was_training)
        return sums.float().clone()


def _ref_rows(ref_table, live_ref, batch: Batch) -> torch.Tensor | None:
    if ref_table is not None:
        return ref_table[torch.tensor(batch.indices)]
    if live_ref is not None:
        return live_ref.rows(batch).view(-1, 2)
    return None


def pair_step(model, batch, records, ref_table, live_ref, spec, env, n_examples):
    with session.autocast(env.precision, env.device):
        pol, counts = sequence_logprobs(model, batch)
    ref = _ref_rows(ref_table, live_ref, batch)
    out = pair_loss(spec, pol.float(), counts, ref)
    weights = torch.tensor([records[i].weight for i in batch.indices], device=out.losses.device)
    loss = (weights * out.losses).sum() / n_examples
    return loss, pair_metrics(out, pol, counts, ref, weights)


def kto_step(model, batches, records, ref_table, live_ref, spec, env, n_examples):
    own, kl = batches
    with session.autocast(env.precision, env.device):
        pol, counts = sequence_logprobs(model, own)
        with torch.no_grad():
            pol_kl, _ = sequence_logprobs(model, kl)
    if ref_table is not None:
        ref = ref_table[torch.tensor(own.indices)]
    else:  # live: stack own and mismatched rows the way the cache stores them
        ref = torch.stack([live_ref.rows(own), live_ref.rows(kl)], dim=1)
    ref = ref.to(pol.device)
    z0 = kto_reference_point(pol_kl.float(), ref[:, 1])
    want = torch.tensor([desirable(records[i]) for i in own.indices], device=pol.device)
    out = kto_loss(pol.float(), ref[:, 0], want, z0, beta=spec.beta, desirable_weight=spec.desirable_weight,
                   undesirable_weight=spec.undesirable_weight)
    weights = torch.tensor([records[i].meta.get("weight", 1.0) for i in own.indices], device=pol.device, dtype=torch.float)
    loss = (weights * out.losses).sum() / n_examples
    r = out.rewards.detach()
    m = {"kl_reference_point": z0 * len(own.indices), "rewards_desirable": (r * want).sum(),
         "rewards_undesirable": (r * ~want).sum(), "desirable": want.float().sum(),
         "logp_per_token": (pol.detach() / counts.clamp_min(1)).sum()}
    return loss, m


@torch.no_grad()
def evaluate(model, batches, records, ref_table, live_ref, spec, env) -> dict[str, float]:
    """Held-out loss and the same metrics as training, prefixed ``eval_``."""
    was_training = model.training
    model.eval()
    n = sum(len(b[0].indices) if spec.loss == "kto" else len(b.indices) for b in batches)
    sums: dict[str, float] = {}
    for b in batches:
        step = kto_step if spec.loss == "kto" else pair_step
        loss, m = step(model, b, records, ref_table, live_ref, spec, env, n)
        for k, v in {"loss": loss * n, **m}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    model.train(was_training)
    return {f"eval_{k}": v for k, v in averaged(sums, n).items()}


def averaged(sums: dict[str, float], n: int) -> dict[str, float]:
    """Per-example means of summed metrics; KTO's rewards are averaged within their own class."""
    out = {k: v / n for k, v in sums.items()}
    if "desirable" in sums:
        n_up = sums["desirable"]
        out["rewards_desirable"] = sums["rewards_desirable"] / n_up if n_up else float("nan")
        out["rewards_undesirable"] = sums["rewards_undesirable"] / (n - n_up) if n - n_up else float("nan")
    return out


def score_samples(reward_model: str, rows: list[dict], prompts: list) -> dict[str, float]:
    """Score before/after answers with an independent reward model (adds ``reward_before/after`` to rows)."""
    from palate.models.heads import RewardModel

    rm = RewardModel.load(reward_model)
    before = rm.score(prompts, [r["before"] for r in rows]).mean.tolist()
    after = rm.score(prompts, [r["after"] for r in rows]).mean.tolist()
    for r, b, a in zip(rows, before, after):
        r["reward_before"], r["reward_after"] = b, a
    # a prompt the reward model skips (its long_prompts rule) scores NaN: averaged over the scored ones
    scored = [(b, a) for b, a in zip(before, after) if b == b and a == a] or [(float("nan"), float("nan"))]
    summary = {"sample_reward_before": sum(b for b, _ in scored) / len(scored),
               "sample_reward_after": sum(a for _, a in scored) / len(scored)}
    log.info("held-out samples scored by %s: mean reward %.3f before, %.3f after", reward_model,
             summary["sample_reward_before"], summary["sample_reward_after"])
    return summary


def held_out_samples(model, tok, eval_recs: list, spec: DPOSpec) -> list[dict]:
    """Greedy replies to the first held-out prompts (the run's before/after evidence)."""
    from palate.data.records import prompt_text
    from palate.rollout.generate import reply

    was_training = model.training
    model.eval()
    seen, out = set(), []
    for rec in eval_recs:
        key = json.dumps(rec.prompt, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        text = reply(model, tok, rec.prompt, max_new_tokens=spec.sample_max_new_tokens, repetition_penalty=1.2)
        entry = {"prompt": prompt_text(rec.prompt), "response": text, "prompt_record": rec.prompt}
        if isinstance(rec, Preference):
            entry.update(chosen=rec.chosen, rejected=rec.rejected)
        out.append(entry)
        if len(out) >= spec.samples:
            break
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------- held-out watch (monitor)


def watching(spec: DPOSpec) -> bool:
    return spec.watch_prompts > 0 and bool(spec.gold or spec.reward_model)


def gold_scorer(spec: str):
    """``panel`` → the simulated panel's mean rubric score; else a ``module:function`` reward."""
    if spec == "panel":
        from palate.feedback.simulate import panel_score

        return panel_score
    from palate.rollout.rewards import load_function

    return load_function(spec)


class HeldOutWatch:
    """At each evaluation: greedy answers to the first held-out prompts, scored by the proxy reward model
    and the gold signal; rows go to ``eval_samples.jsonl`` and the signals to the reward-hacking monitor
    (:class:`palate.rollout.experience.Watch`: alerts to the log and ``monitor.jsonl``, each new best gold
    saves ``best_gold/``; with ``monitor.action=stop`` an alert ends the run and ``final/`` becomes the
    best-gold policy, the last one kept in ``final_at_stop/``)."""

    def __init__(self, run, model, tok, eval_recs: list, spec: DPOSpec, monitor_cfg: MonitorConfig, start_step: int):
        from palate.models.heads import RewardModel
        from palate.rollout.experience import Watch

        self.model, self.tok, self.spec, self.run = model, tok, spec, run
        seen, self.prompts = set(), []
        for rec in eval_recs:
            key = json.dumps(rec.prompt, sort_keys=True)
            if key not in seen:
                seen.add(key)
                self.prompts.append(rec.prompt)
            if len(self.prompts) >= spec.watch_prompts:
                break
        self.rm = RewardModel.load(spec.reward_model) if spec.reward_model else None
        self.gold = gold_scorer(spec.gold) if spec.gold else None
        self.watch = Watch(run, model, tok, monitor_cfg, None, start_step)

    @property
    def stop(self) -> bool:
        return self.watch.stopped_at is not None

    def measure(self, step: int, margin: float | None = None) -> dict[str, float]:
        """Answer, score, feed the monitor. The proxy is the reward model's mean score when there is one,
        else ``margin``: DPO's own held-out implicit reward margin (what the loss pushes up)."""
        from palate.data.records import prompt_text
        from palate.eval.rl import write_eval_samples
        from palate.eval.text import repeated_ngram_fraction
        from palate.rollout.generate import sample

        was_training = self.model.training
        self.model.eval()
        answers = [s[0].text for s in sample(self.model, self.tok, self.prompts, n=1, temperature=0.0,
                                             max_new_tokens=self.spec.watch_max_new_tokens, repetition_penalty=1.1,
                                             batch_size=64)]
        self.model.train(was_training)
        proxy = self.rm.score(self.prompts, answers).mean.tolist() if self.rm is not None else None
        gold = [float(self.gold(prompt_text(p), a)) for p, a in zip(self.prompts, answers)] if self.gold else None
        lengths = [len(a.split()) for a in answers]
        out = {"eval_response_length": sum(lengths) / len(lengths),
               "repetition": sum(repeated_ngram_fraction(a) for a in answers) / len(answers)}
        if proxy is not None:  # NaN: a prompt the reward model skips (its long_prompts rule)
            finite = [x for x in proxy if x == x]
            out["eval_reward"] = sum(finite) / len(finite) if finite else float("nan")
        if gold is not None:
            out["eval_gold"] = sum(gold) / len(gold)
        rows = [{"step": step, "i": i, "gold": g} for i, g in enumerate(gold or [])]
        write_eval_samples(self.run.path, step, [prompt_text(p) for p in self.prompts], answers,
                           proxy if proxy is not None else gold, None)
        if rows:
            with open(self.run.path / "eval_gold.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        self.watch.update(step, proxy=out.get("eval_reward", margin), gold=out.get("eval_gold"), reward=proxy,
                          length=lengths if proxy is not None else None, repetition=out["repetition"])
        out["monitor_alerts"] = len(self.watch.monitor.alerts)
        log.info("held-out answers (step %d): %s", step, ", ".join(f"{k} {v:.4g}" for k, v in out.items()))
        return out

    def summary(self) -> dict:
        m = self.watch.monitor
        self.run.write_json("monitor.json", m.summary())
        return {"monitor_alerts": len(m.alerts), "best_gold": m.best_gold, "best_gold_step": m.best_gold_step}

    def keep_best_gold(self, final: Path) -> None:
        self.watch.keep_best_gold(final)
