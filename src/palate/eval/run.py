"""The configs and bodies of ``palate eval`` (:class:`EvalConfig`: the win-rate evaluation of
:mod:`palate.eval.policy` or a benchmark suite of :mod:`palate.eval.suites`) and ``palate redteam``
(:class:`RedteamConfig`, :mod:`palate.eval.redteam`). Light to import: the CLI reads their defaults at start."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palate.config import ConfigError

SUITES = ("winrate", "humaneval", "tasks", "mtbench")


@dataclass(frozen=True)
class EvalConfig:
    policies: list[str] = field(default_factory=list)  # run dirs, model dirs, hub names, tiny
    out: str | None = None  # output dir: answers.jsonl, eval/winrates.json, eval_summary.json
    suite: str = "winrate"  # winrate | humaneval | tasks | mtbench
    prompts: str | None = None  # prompt set (JSONL/JSON, AlpacaEval JSON, MT-Bench question.jsonl, dir, bundled:NAME)
    baseline: str | None = None  # winrate: every policy is compared with it; mtbench: the pairwise second model
    tasks: str | None = None  # suite tasks: JSONL of id, prompt and a checker
    n_samples: int = 1  # suite humaneval: completions per problem
    k: list[int] = field(default_factory=lambda: [1])  # suite humaneval: pass@k to report
    judge: str = "panel"  # panel | reward:RUN_DIR | local:MODEL
    references: str | None = None  # suite mtbench: FastChat's reference_answer/gpt-4.jsonl
    judge_prompts: str | None = None  # suite mtbench: FastChat judge_prompts.jsonl (default: palate's copy)
    reward_model: str | None = None  # reward model for the mean reward column
    safety_classifier: str | None = None  # bundled | palate safety dir | HF classifier[#LABEL]
    limit: int | None = None  # first N prompts only
    export_alpaca: str | None = None  # also write answers as AlpacaEval model outputs
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0  # sampling and bootstrap seed
    batch_size: int = 8  # prompts generated / scored together
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self):
        if self.suite not in SUITES:
            raise ConfigError(f"suite (--suite) must be {', '.join(SUITES[:-1])} or {SUITES[-1]}, got {self.suite!r}")


def run_eval(cfg: EvalConfig) -> str:
    """Run the evaluation ``cfg`` describes; returns what ``palate eval`` prints."""
    from palate.eval.policy import GenSettings, evaluate, format_table
    from palate.infra.device import pick_device

    if not cfg.policies:
        raise ConfigError("eval needs at least one policy (POLICY arguments or policies=[...])")
    if not cfg.out:
        raise ConfigError("eval needs an output dir (--out or out=...)")
    settings = GenSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=cfg.seed)
    device = str(pick_device(cfg.device))
    if cfg.suite != "winrate":
        from palate.eval.suites import run_suite

        return run_suite(cfg.suite, list(cfg.policies), cfg.out, prompts=cfg.prompts, baseline=cfg.baseline,
                         tasks=cfg.tasks, judge=cfg.judge, n_samples=cfg.n_samples, ks=tuple(cfg.k), limit=cfg.limit,
                         settings=settings, device=device, batch_size=cfg.batch_size, references=cfg.references,
                         judge_prompts=cfg.judge_prompts)
    if cfg.prompts is None or cfg.baseline is None:
        raise ConfigError("--suite winrate needs --prompts and --baseline (prompts=..., baseline=...)")
    summary = evaluate(list(cfg.policies), cfg.prompts, cfg.baseline, cfg.out, judge=cfg.judge,
                       reward_model=cfg.reward_model, limit=cfg.limit, settings=settings, device=device,
                       batch_size=cfg.batch_size, alpaca_out=cfg.export_alpaca, safety_classifier=cfg.safety_classifier)
    lines = [format_table(summary),
             f"written to {cfg.out} (answers.jsonl, eval/winrates.json, eval_summary.json); palate report {cfg.out}"]
    lines += [f"AlpacaEval model outputs: {path}" for path in summary.get("alpaca_exports", [])]
    return "\n".join(lines)


@dataclass(frozen=True)
class RedteamConfig:
    """``palate redteam``'s config (each flag is a shortcut for the key of the same name)."""

    model: str | None = None  # run dir, model dir, hub name, tiny, or a served model's URL (http://HOST:PORT/v1)
    out: str | None = None  # default: MODEL/redteam for a run dir, else ./redteam-NAME; needed for a URL
    prompts: str = "bundled:redteam"  # suite with prompt, harmful, category, attack
    judge: str | None = None  # safety reward model: an attack succeeds when its score is below threshold
    threshold: float = 0.0  # safety score below which an answer counts as unsafe
    safety_classifier: str | None = None  # an attack succeeds when the answer is unsafe (instead of judge)
    limit: int | None = None  # first N prompts only
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0  # sampling and bootstrap seed
    batch_size: int = 8
    device: str = "auto"  # auto | cpu | cuda | cuda:N


def redteam_out(cfg: RedteamConfig) -> str:
    """Where ``cfg``'s results go: ``out``, else MODEL/redteam for a run dir, else ./redteam-NAME."""
    from palate.eval.policy import is_endpoint

    if cfg.model is None:
        raise ConfigError("redteam needs a MODEL (argument or model=...)")
    if cfg.out is not None:
        return cfg.out
    if is_endpoint(cfg.model):
        raise ConfigError("a URL needs --out (where redteam.json and answers.jsonl go)")
    return str(Path(cfg.model) / "redteam") if Path(cfg.model).is_dir() else f"redteam-{Path(cfg.model).name}"


def run_redteam_config(cfg: RedteamConfig) -> tuple[dict[str, Any], str]:
    """:func:`palate.eval.redteam.run_redteam` as ``cfg`` says; returns the result and the output dir."""
    from palate.eval.policy import GenSettings
    from palate.eval.redteam import run_redteam
    from palate.infra.device import pick_device

    out = redteam_out(cfg)
    settings = GenSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=cfg.seed)
    res = run_redteam(cfg.model, out, prompts=cfg.prompts, limit=cfg.limit, settings=settings, judge=cfg.judge,
                      threshold=cfg.threshold, device=str(pick_device(cfg.device)), batch_size=cfg.batch_size,
                      safety_classifier=cfg.safety_classifier)
    return res, out
