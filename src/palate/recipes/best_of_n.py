"""Best-of-n rejection sampling (RAFT, Dong et al. 2023, arXiv:2304.06767) and ranking distillation.

    for each round r = 1..R:
        sample n responses per prompt from the current policy
        score every response with the reward model
        write samples.jsonl, and best.jsonl (the top response: SFT data) or pairs.jsonl (best vs worst: DPO data)
        if r < R: fine-tune the policy on them (palate sft on best, palate dpo on pairs); it samples round r+1

A round is done once its ``summary.json`` is written (last, atomically): rerunning the same command skips
finished rounds and continues where it stopped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from palate.config import ConfigError, DataConfig, LogConfig, LoraConfig, ModelConfig, TrainConfig
from palate.data.readers import read_prompts
from palate.data.records import prompt_text
from palate.infra.logging import setup_logging
from palate.infra.run import RunDir, recorded

log = logging.getLogger("palate.best_of_n")


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 4
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    repetition_penalty: float = 1.1
    batch_size: int = 8


@dataclass(frozen=True)
class BestOfNConfig:
    run_dir: str = "runs/best-of-n"
    model: ModelConfig = field(default_factory=ModelConfig)
    """the policy that samples round 1"""
    reward_model: str = "runs/demo-rm"
    """a palate reward model run (palate rm) or HF sequence classifier"""
    prompts: str = "bundled:preferences"
    """any source with a prompt column (or chat messages)"""
    max_prompts: int = 32
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    output: str = "best"
    """best (RAFT data for palate sft) | pairs (best vs worst for palate dpo)"""
    min_gap: float = 0.0
    """pairs whose best − worst reward gap is below this are dropped (counted)"""
    rounds: int = 1
    seed: int = 0
    max_length: int = 512
    """of the fine-tuning between rounds"""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, epochs=1, warmup_ratio=0.1))
    lora: LoraConfig = field(default_factory=LoraConfig)
    dpo_beta: float = 0.1
    """pairs rounds: DPO's β"""
    log: LogConfig = field(default_factory=LogConfig)


def check(cfg: BestOfNConfig) -> None:
    if cfg.output not in ("best", "pairs"):
        raise ConfigError(f"output must be best or pairs, got {cfg.output!r}")
    if cfg.sampling.n < (2 if cfg.output == "pairs" else 1):
        raise ConfigError(f"sampling.n must be >= {2 if cfg.output == 'pairs' else 1} for output={cfg.output}")
    if cfg.rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {cfg.rounds}")


@recorded
def train(cfg: BestOfNConfig, *, overwrite: bool = False) -> Path:
    """Run every round; returns the last round's data file (best.jsonl or pairs.jsonl)."""
    from palate.models.heads import RewardModel, resolve_reward_model

    check(cfg)
    setup_logging()
    resolve_reward_model(cfg.reward_model)  # a missing local path: one line now, before the run dir is made
    run = RunDir.open(cfg.run_dir, cfg, overwrite=overwrite)
    prompts = read_prompts(cfg.prompts, limit=cfg.max_prompts)
    rm = RewardModel.load(cfg.reward_model)
    policy = cfg.model.name
    data_file = None
    for r in range(1, cfg.rounds + 1):
        rdir = run.path / f"round-{r}"
        done = rdir / "summary.json"
        if done.exists():
            summary = json.loads(done.read_text())
            log.info("round %d already done (%s); skipping", r, done)
        else:
            summary = sample_and_select(cfg, r, policy, prompts, rm, rdir)
            if r < cfg.rounds:
                summary["next_policy"] = str(fine_tune(cfg, rdir, policy, Path(summary["data"])))
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            tmp.replace(done)
            run.log(r, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        data_file = Path(summary["data"])
        policy = summary.get("next_policy", policy)
    run.mark_finished(summary={"rounds": cfg.rounds, "data": str(data_file)})
    run.close()
    return data_file


def sample_and_select(cfg: BestOfNConfig, r: int, policy: str, prompts: list, rm, rdir: Path) -> dict:
    """One round's sampling, scoring and selection; writes its files into ``rdir``."""
    from palate.models.load import inference_dtype, load_model, load_tokenizer
    from palate.rollout.generate import sample

    rdir.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(policy)
    model = load_model(policy, tokenizer=tok, dtype=inference_dtype(cfg.model.dtype), seed=cfg.seed).eval()
    s = cfg.sampling
    log.info("round %d: sampling %d x %d responses from %s", r, len(prompts), s.n, policy)
    samples = sample(model, tok, prompts, n=s.n, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                     top_p=s.top_p, top_k=s.top_k, repetition_penalty=s.repetition_penalty,
                     seed=cfg.seed * 1000 + r, batch_size=s.batch_size)
    del model
    flat = [(i, j, x) for i, group in enumerate(samples) for j, x in enumerate(group)]
    rewards = rm.score([prompts[i] for i, _, _ in flat], [x.text for _, _, x in flat]).mean.tolist()
    by_prompt: dict[int, list[tuple[float, str]]] = {}
    unscored = 0  # NaN: the reward model skips the prompt (its long_prompts rule); kept out of the selection
    with open(rdir / "samples.jsonl", "w") as f:
        for (i, j, x), reward in zip(flat, rewards):
            if reward == reward:
                by_prompt.setdefault(i, []).append((reward, x.text))
            else:
                reward, unscored = None, unscored + 1
            f.write(json.dumps({"prompt": prompts[i], "sample": j, "response": x.text, "reward": reward,
                                "finished": x.finished, "n_tokens": x.n_tokens}, ensure_ascii=False) + "\n")
    if not by_prompt:
        raise ValueError(f"round {r}: the reward model could score none of the {len(flat)} samples (every prompt too "
                         f"long for its max_length {rm.max_length})")
    rows, dropped = [], 0
    for i, scored in sorted(by_prompt.items()):
        best = max(scored, key=lambda t: t[0])
        worst = min(scored, key=lambda t: t[0])
        if cfg.output == "best":
            rows.append({"prompt": prompts[i], "response": best[1], "reward": best[0]})
        elif best[0] - worst[0] < cfg.min_gap or best[1] == worst[1]:
            dropped += 1
        else:
            rows.append({"prompt": prompts[i], "chosen": best[1], "rejected": worst[1], "margin": best[0] - worst[0],
                         "reward_chosen": best[0], "reward_rejected": worst[0]})
    data = rdir / ("best.jsonl" if cfg.output == "best" else "pairs.jsonl")
    tmp = data.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    tmp.replace(data)
    best_mean = sum(max(t[0] for t in v) for v in by_prompt.values()) / len(by_prompt)
    scored = [t[0] for v in by_prompt.values() for t in v]
    summary = {
        "round": r, "policy": policy, "prompts": len(prompts), "samples": len(flat), "data": str(data),
        "rows_written": len(rows), "pairs_dropped_below_min_gap": dropped, "samples_unscored": unscored,
        "reward_mean": sum(scored) / len(scored), "reward_best_mean": best_mean,
        "best_of_n_gain": best_mean - sum(scored) / len(scored),
        "finished_fraction": sum(x.finished for _, _, x in flat) / len(flat),
    }
    log.info("round %d: mean reward %.3f, best-of-%d %.3f (gain %.3f), %d rows -> %s%s", r, summary["reward_mean"],
             cfg.sampling.n, best_mean, summary["best_of_n_gain"], len(rows), data,
             f", {dropped} pairs dropped (gap < {cfg.min_gap})" if dropped else "")
    if rows:
        log.info("e.g. %r -> %r", prompt_text(rows[0]["prompt"])[:80], (rows[0].get("response") or rows[0]["chosen"])[:120])
    return summary


def fine_tune(cfg: BestOfNConfig, rdir: Path, policy: str, data: Path) -> Path:
    """Train the next round's policy on this round's data: SFT on best responses, DPO on pairs."""
    data_cfg = DataConfig(path=str(data), eval_fraction=0.0, max_length=cfg.max_length)
    model = replace(ModelConfig(), name=policy, dtype=cfg.model.dtype, device=cfg.model.device)
    if cfg.output == "best":
        from palate.recipes.sft import SFTConfig
        from palate.recipes.sft import train as train_sft

        sub = SFTConfig(run_dir=str(rdir / "sft"), model=model, data=data_cfg, train=cfg.train, lora=cfg.lora, log=cfg.log)
        fn = train_sft
    else:
        from palate.recipes.dpo import DPOConfig, DPOSpec
        from palate.recipes.dpo import train as train_dpo

        sub = DPOConfig(run_dir=str(rdir / "dpo"), model=model, data=data_cfg, train=cfg.train, lora=cfg.lora,
                        log=cfg.log, dpo=DPOSpec(beta=cfg.dpo_beta, samples=0))
        fn = train_dpo
    if RunDir(Path(sub.run_dir)).status().get("state") == "finished":  # crashed after training, before summary
        return Path(sub.run_dir)
    fn(sub)
    return Path(sub.run_dir)
