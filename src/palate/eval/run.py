"""The configs and bodies of the evaluation commands, each a frozen config and one function:

    palate eval           :class:`EvalConfig`        :func:`run_eval`  (win rates of :mod:`palate.eval.policy`, or
                                                                         a suite of :mod:`palate.eval.suites`)
    palate redteam        :class:`RedteamConfig`     :func:`run_redteam_config`  (:mod:`palate.eval.redteam`)
    palate winrate        :class:`WinrateConfig`     :func:`winrates`  (:mod:`palate.eval.imported`)
    palate mtbench-show   :class:`MTBenchShowConfig` :func:`mtbench_tables`  (:mod:`palate.eval.mtbench_results`)
    palate safety train   :class:`SafetyTrainConfig` :func:`train_safety`  (:mod:`palate.eval.safety`)
    palate report         :class:`ReportConfig`      :func:`palate.eval.report.write_report`

Light to import (only :mod:`palate.config`): the CLI reads their defaults when it starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palate.config import ConfigError, check_dtype

SUITES = ("winrate", "humaneval", "tasks", "mtbench")


@dataclass(frozen=True)
class EvalConfig:
    policies: list[str] = field(default_factory=list)
    """run dirs, model dirs, hub names, tiny"""
    out: str | None = None
    """output dir: answers.jsonl, eval/winrates.json, eval_summary.json"""
    suite: str = "winrate"
    """winrate | humaneval | tasks | mtbench"""
    prompts: str | None = None
    """prompt set (JSONL/JSON, AlpacaEval JSON, MT-Bench question.jsonl, dir, bundled:NAME)"""
    baseline: str | None = None
    """winrate: every policy is compared with it; mtbench: the pairwise second model"""
    tasks: str | None = None
    """suite tasks: JSONL of id, prompt and a checker"""
    n_samples: int = 1
    """suite humaneval: completions per problem"""
    k: list[int] = field(default_factory=lambda: [1])
    """suite humaneval: pass@k to report"""
    judge: str = "panel"
    """panel | reward:RUN_DIR | local:MODEL"""
    references: str | None = None
    """suite mtbench: FastChat's reference_answer/gpt-4.jsonl"""
    judge_prompts: str | None = None
    """suite mtbench: FastChat judge_prompts.jsonl (default: palate's copy)"""
    reward_model: str | None = None
    """reward model for the mean reward column"""
    safety_classifier: str | None = None
    """bundled | palate safety dir | HF classifier[#LABEL]"""
    limit: int | None = None
    """first N prompts only"""
    export_alpaca: str | None = None
    """also write answers as AlpacaEval model outputs"""
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 = greedy"""
    top_p: float = 1.0
    seed: int = 0
    """sampling and bootstrap seed"""
    batch_size: int = 8
    """prompts generated / scored together"""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""
    dtype: str = "auto"
    """weights answers are generated in: auto (bf16 where the CPU has AMX bf16 units or the GPU bf16, else
    fp32) | fp32 | bf16"""

    def __post_init__(self):
        check_dtype("dtype", self.dtype)
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
                           seed=cfg.seed, dtype=cfg.dtype)
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

    model: str | None = None
    """run dir, model dir, hub name, tiny, or a served model's URL (http://HOST:PORT/v1)"""
    out: str | None = None
    """default: MODEL/redteam for a run dir, else ./redteam-NAME; needed for a URL"""
    prompts: str = "bundled:redteam"
    """suite with prompt, harmful, category, attack"""
    judge: str | None = None
    """safety reward model: an attack succeeds when its score is below threshold"""
    threshold: float = 0.0
    """safety score below which an answer counts as unsafe"""
    safety_classifier: str | None = None
    """an attack succeeds when the answer is unsafe (instead of judge)"""
    limit: int | None = None
    """first N prompts only"""
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 = greedy"""
    top_p: float = 1.0
    seed: int = 0
    """sampling and bootstrap seed"""
    batch_size: int = 8
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""
    dtype: str = "auto"
    """weights answers are generated in: auto (bf16 where the CPU has AMX bf16 units or the GPU bf16, else
    fp32) | fp32 | bf16"""


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

    check_dtype("dtype", cfg.dtype)
    out = redteam_out(cfg)
    settings = GenSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=cfg.seed, dtype=cfg.dtype)
    res = run_redteam(cfg.model, out, prompts=cfg.prompts, limit=cfg.limit, settings=settings, judge=cfg.judge,
                      threshold=cfg.threshold, device=str(pick_device(cfg.device)), batch_size=cfg.batch_size,
                      safety_classifier=cfg.safety_classifier)
    return res, out


@dataclass(frozen=True)
class WinrateConfig:
    """``palate winrate``'s config: win rates from judgments made elsewhere (:mod:`palate.eval.imported`)."""

    judgments: list[str] = field(default_factory=list)
    """AlpacaEval annotations.json, palate judgments, Preference rows"""
    out: str | None = None
    """output dir: eval/winrates.json and report/report.html"""
    length_unit: str | None = None
    """characters | words | tokens (recorded in the output; must be given)"""
    tokenizer: str | None = None
    """length_unit tokens: tokenizer (model dir, hub name, bundled)"""
    baseline: str | None = None
    """the baseline's model name (needed for Preference rows)"""
    policy: str | None = None
    """name of the model in a single AlpacaEval file"""
    lc: str = "joint"
    """joint (one fit over all policies) | alpaca_eval (also AlpacaEval 2's LC)"""
    alpaca_eval_repo: str | None = None
    """lc alpaca_eval: an alpaca_eval checkout or git dir"""
    judge: str | None = None
    """name of the judge, recorded in winrates.json"""
    n_resamples: int = 1000
    """bootstrap resamples for the CIs"""
    seed: int = 0
    """bootstrap seed"""


def winrates(cfg: WinrateConfig) -> str:
    """Read ``cfg.judgments``, write win rates and the report to ``cfg.out``; returns the printed table."""
    from palate.eval.alpaca_eval import LENGTH_UNITS
    from palate.eval.imported import format_winrates, read_judgments, winrates_from_judgments

    if not cfg.judgments or cfg.out is None:
        raise ConfigError("winrate needs JUDGMENTS files (arguments or judgments=[...]) and --out (out=...)")
    if cfg.length_unit is None:
        raise ConfigError(f"winrate needs --length-unit (length_unit=): one of {', '.join(LENGTH_UNITS)}")
    if cfg.length_unit not in LENGTH_UNITS:
        raise ConfigError(f"--length-unit must be one of {', '.join(LENGTH_UNITS)}, got {cfg.length_unit!r}")
    if (cfg.length_unit == "tokens") != (cfg.tokenizer is not None):
        raise ConfigError("--tokenizer goes with --length-unit tokens (and tokens need one)")
    tok = None
    if cfg.tokenizer:
        from palate.models.load import load_tokenizer

        tok = load_tokenizer(cfg.tokenizer)
    judged = read_judgments(list(cfg.judgments), baseline=cfg.baseline, unit=cfg.length_unit, tokenizer=tok,
                            policy=cfg.policy)
    summary = winrates_from_judgments(judged, cfg.out, unit=cfg.length_unit, tokenizer=tok, lc=cfg.lc,
                                      alpaca_eval_repo=cfg.alpaca_eval_repo, judge=cfg.judge,
                                      n_resamples=cfg.n_resamples, seed=cfg.seed)
    return format_winrates(summary)


MTBENCH_MODES = ("single", "pairwise-baseline", "pairwise-all")


@dataclass(frozen=True)
class MTBenchShowConfig:
    """``palate mtbench-show``'s config: MT-Bench tables as FastChat's show_result.py computes them."""

    judgments: str | None = None
    """model_judgment/gpt-4_single.jsonl or gpt-4_pair.jsonl"""
    mode: str = "single"
    """single | pairwise-baseline | pairwise-all"""
    baseline_model: str = "gpt-3.5-turbo"
    """pairwise-baseline: the baseline"""
    model_list: list[str] = field(default_factory=list)
    """only these models (empty: all)"""
    questions: str | None = None
    """question.jsonl, for the mean per category"""

    def __post_init__(self):
        if self.mode not in MTBENCH_MODES:
            raise ConfigError(f"--mode must be single, pairwise-baseline or pairwise-all, got {self.mode!r}")


def mtbench_tables(cfg: MTBenchShowConfig) -> str:
    from palate.eval import mtbench_results as res
    from palate.eval.prompts import read_mtbench

    if cfg.judgments is None:
        raise ConfigError("mtbench-show needs a JUDGMENTS file (argument or judgments=...)")
    if cfg.mode == "single":
        rows = res.read_single_judgments(cfg.judgments)
        cats = {q.question_id: q.category for q in read_mtbench(cfg.questions)} if cfg.questions else None
        names = [m for m in dict.fromkeys(r["model"] for r in rows) if not cfg.model_list or m in cfg.model_list]
        return res.format_single(res.summarise_single(rows, cats, names))
    rows = res.read_pair_judgments(cfg.judgments)
    base = cfg.baseline_model if cfg.mode == "pairwise-baseline" else None
    return res.format_pairwise(res.summarise_pairwise(rows, base, list(cfg.model_list) or None))


@dataclass(frozen=True)
class SafetyTrainConfig:
    """``palate safety train``'s config (:func:`palate.eval.safety.train_safety_classifier`)."""

    out: str | None = None
    """directory for head.safetensors and safety.json"""
    data: str = "bundled:safety"
    """labelled answers: rows with response, label (safe|unsafe), prompt, category"""
    heldout: float = 0.2
    """fraction held out (stratified by label and category) for accuracy/AUC"""
    l2: float | None = None
    """L2 penalty of the logistic head (default: chosen by 5-fold CV)"""
    threshold: float = 0.5
    """P(unsafe) at or above which an answer counts as unsafe"""
    seed: int = 0
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""


def train_safety(cfg: SafetyTrainConfig, *, overwrite: bool = False) -> str:
    """Train the classifier ``cfg`` describes; returns what ``palate safety train`` prints."""
    from palate.eval.safety import format_training, train_safety_classifier
    from palate.infra.device import pick_device

    if cfg.out is None:
        raise ConfigError("safety train needs --out (out=...)")
    meta = train_safety_classifier(cfg.data, cfg.out, heldout=cfg.heldout, l2=cfg.l2, threshold=cfg.threshold,
                                   seed=cfg.seed, overwrite=overwrite, device=str(pick_device(cfg.device)))
    return f"{format_training(meta)}\nwritten to {cfg.out}; use it with --safety-classifier {cfg.out}"


@dataclass(frozen=True)
class ReportConfig:
    """``palate report``'s config."""

    run: str | None = None
    """a run directory"""
    out: str | None = None
    """HTML file to write (default: RUN/report/report.html); report.md beside it"""


def report(cfg: ReportConfig) -> Path:
    """Write the run's HTML report and report.md; returns the HTML file."""
    from palate.eval.report import write_report

    if cfg.run is None:
        raise ConfigError("report needs a RUN directory (argument or run=...)")
    return write_report(cfg.run, cfg.out)
