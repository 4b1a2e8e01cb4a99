"""The ``palate`` command line. Each subcommand parses a config and calls one recipe function.

A command takes ``[CONFIG.yaml] [key=value ...]`` (plus its positional arguments, each a key) and
``--print-config``; its flags are shortcuts for keys (:mod:`palate.clikit`). The configs live beside the code they
configure, never here. Every command runs through one error wrapper (:class:`palate.clikit.App`): a
:class:`palate.errors.PalateError`, an OSError or a ValueError is one line ``error: ...`` and exit code 2."""

from __future__ import annotations

import os
import sys

import typer

from palate.clikit import PRINT_CONFIG, App, command_config, echo_config, flag, split_args
from palate.data.check_config import DataCheckConfig
from palate.eval.rl import RLEvalConfig
from palate.eval.run import EvalConfig, MTBenchShowConfig, RedteamConfig, ReportConfig, SafetyTrainConfig, WinrateConfig
from palate.eval.scoring import RMEvalConfig, ScoreConfig
from palate.feedback.cli import label_app
from palate.infra.memory import PlanConfig
from palate.judges.label import JudgeConfig
from palate.serve.chat import ChatConfig
from palate.serve.config import ServeConfig


app = App(help="palate: align language models with human preferences.", no_args_is_help=True,
          add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="print the traceback of an unexpected error on the "
                                     "terminal (otherwise one line names the file that holds it)")) -> None:
    if debug:
        os.environ["PALATE_TRACEBACK"] = "1"


data_app = App(help="Inspect and check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
safety_app = App(help="Train and use the safety classifier (P(unsafe) of an answer).", no_args_is_help=True)
app.add_typer(safety_app, name="safety")
app.add_typer(label_app, name="label")  # palate label ...


def _config_and_overrides(args: list[str] | None) -> tuple[str | None, list[str]]:
    """``[config.yaml] [key=value ...]`` in any order."""
    config, overrides, positionals = split_args(args)
    if positionals:
        raise typer.BadParameter(f"{positionals[0]!r} is neither a .yaml config nor a key=value override")
    return config, overrides


_ARGS_HELP = "an optional CONFIG.yaml and section.key=value overrides, e.g. train.lr=1e-5"
_CONFIG_ARGS = "CONFIG.yaml and key=value overrides (flags win over keys, keys over the file; --print-config shows them)"


def _train(config_cls: type, train_fn, args: list[str] | None, overwrite: bool, print_config: bool,
           label: str = "final model") -> None:
    """Shared body of the training commands: resolve the config and run the recipe (errors: one line, by the App wrapper)."""
    cfg = command_config(config_cls, args)
    if print_config:
        echo_config(cfg)
        return
    final = train_fn(cfg, overwrite=overwrite)
    typer.echo(f"{label}: {final}")


_OVERWRITE = typer.Option(False, "--overwrite", help="replace an existing run in run_dir")


@app.command(context_settings={"allow_extra_args": False})
def sft(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
        print_config: bool = PRINT_CONFIG) -> None:
    """Supervised fine-tuning on demonstrations (resumes automatically if run_dir has checkpoints)."""
    from palate.recipes.sft import SFTConfig, train

    _train(SFTConfig, train, args, overwrite, print_config)


@app.command(context_settings={"allow_extra_args": False})
def rm(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
       print_config: bool = PRINT_CONFIG) -> None:
    """Train a reward model on preferences or rankings; evaluates on held-out pairs at the end."""
    from palate.recipes.reward import RewardConfig, train

    _train(RewardConfig, train, args, overwrite, print_config)


@app.command(context_settings={"allow_extra_args": False})
def dpo(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
        print_config: bool = PRINT_CONFIG,
        loss: str = typer.Option(None, "--loss", help="dpo | ipo | cdpo | robust | rpo | simpo | orpo "
                                 "(same as dpo.loss=...)")) -> None:
    """Direct preference optimisation (DPO and its family) on preference pairs (KTO on ratings: palate kto)."""
    from palate.recipes.dpo import DPOConfig, train

    _train(DPOConfig, train, (args or []) + ([f"dpo.loss={loss}"] if loss else []), overwrite, print_config)


@app.command(context_settings={"allow_extra_args": False})
def kto(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
        print_config: bool = PRINT_CONFIG) -> None:
    """KTO on unpaired thumbs up/down (ratings), or on preference pairs split into one of each."""
    from palate.recipes.kto import KTOConfig, train

    _train(KTOConfig, train, args, overwrite, print_config)


@app.command(context_settings={"allow_extra_args": False})
def ppo(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
        print_config: bool = PRINT_CONFIG) -> None:
    """PPO with a value head, GAE and KL control against the starting policy (RLHF)."""
    from palate.recipes.ppo import PPOConfig, train

    _train(PPOConfig, train, args, overwrite, print_config)


@app.command(context_settings={"allow_extra_args": False})
def grpo(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
         print_config: bool = PRINT_CONFIG,
         advantage: str = typer.Option(None, "--advantage", help="grpo | rloo | reinforce_pp "
                                       "(same as grpo.advantage=...)")) -> None:
    """Critic-free online RL: GRPO, RLOO or REINFORCE++ over groups of samples per prompt."""
    from palate.recipes.grpo import GRPOConfig, train

    extra = [f"grpo.advantage={advantage}"] if advantage else []
    _train(GRPOConfig, train, (args or []) + extra, overwrite, print_config)


@app.command("best-of-n", context_settings={"allow_extra_args": False})
def best_of_n(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
              print_config: bool = PRINT_CONFIG) -> None:
    """Sample n responses per prompt, keep the reward model's best (SFT data) or best-vs-worst pairs (DPO
    data); with rounds > 1, fine-tune on them and sample again."""
    from palate.recipes.best_of_n import BestOfNConfig, train

    _train(BestOfNConfig, train, args, overwrite, print_config, label="data")


_RM = RMEvalConfig


@app.command("rm-eval", context_settings={"allow_extra_args": False})
def rm_eval(
    args: list[str] = typer.Argument(None, help="MODEL: reward model, palate run dir or HF sequence-classification "
                                     "model dir (key model); and " + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    data: str = flag(_RM, "data", "--data", help="preference pairs (needed): file, dataset dir, bundled:NAME or hub "
                     "name"),
    out: str = flag(_RM, "out", "--out", help="where to write rm_eval.json and plots (default: MODEL/eval-<data>)"),
    batch_size: int = flag(_RM, "batch_size", "--batch-size"),
    seed: int = flag(_RM, "seed", "--seed", help="seed of the bootstrap CI and the calibration orientation"),
) -> None:
    """Evaluate a reward model on preference pairs: accuracy with CI, calibration, length bias, per group."""
    from palate.eval.reward import format_report
    from palate.eval.scoring import RMEvalConfig, rm_eval as run_rm_eval
    from palate.infra.logging import setup_logging

    cfg = command_config(RMEvalConfig, args, positional="model", flags={"data": data, "out": out, "batch_size": batch_size,
                                                               "seed": seed})
    if print_config:
        echo_config(cfg)
        return
    setup_logging()
    report, target = run_rm_eval(cfg)
    typer.echo(format_report(report))
    typer.echo(f"written to {target}")


_SC = ScoreConfig


@app.command(context_settings={"allow_extra_args": False})
def score(
    args: list[str] = typer.Argument(None, help="MODEL: reward model, palate run dir or HF sequence-classification "
                                     "model dir (key model); and " + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    input: str = flag(_SC, "input", "--input", help="JSONL/dataset with prompt and response columns (needed)"),
    output: str = flag(_SC, "output", "--output", help="JSONL to write (default: INPUT with .scored.jsonl)"),
    batch_size: int = flag(_SC, "batch_size", "--batch-size"),
    normalize: bool = flag(_SC, "normalize", "--normalize/--no-normalize", help="(r - mean) / std with the stats "
                           "saved at training time"),
) -> None:
    """Score (prompt, response) rows with a reward model; writes each row back with its reward."""
    from palate.eval.scoring import ScoreConfig, format_scoring, score_config
    from palate.infra.logging import setup_logging

    cfg = command_config(ScoreConfig, args, positional="model", flags={"input": input, "output": output,
                                                               "batch_size": batch_size, "normalize": normalize})
    if print_config:
        echo_config(cfg)
        return
    setup_logging()
    typer.echo(format_scoring(score_config(cfg)))


_C = ChatConfig


@app.command(context_settings={"allow_extra_args": False})
def chat(
    args: list[str] = typer.Argument(None, help="MODEL (run dir, HF model dir, .gguf file, hub name, or 'bundled'; "
                                     "key model) and MESSAGE (one-shot; omit for an interactive session; key "
                                     "message: a message that looks like key=value or ends in .yaml goes as "
                                     "message='...'); and " + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    system: str = flag(_C, "system", "--system", help="system prompt"),
    max_new_tokens: int = flag(_C, "max_new_tokens", "--max-new-tokens"),
    temperature: float = flag(_C, "temperature", "--temperature", help="0 = greedy"),
    repetition_penalty: float = flag(_C, "repetition_penalty", "--repetition-penalty", help="> 1 discourages "
                                     "repeating tokens (1 = off)"),
    seed: int = flag(_C, "seed", "--seed"),
) -> None:
    """Talk to a model: one reply to MESSAGE, or an interactive session (empty line or Ctrl-D quits)."""
    from palate.infra.logging import setup_logging
    from palate.serve.chat import ChatConfig, chat as run_chat

    cfg = command_config(ChatConfig, args, positional=("model", "message"), flags={
        "system": system, "max_new_tokens": max_new_tokens, "temperature": temperature,
        "repetition_penalty": repetition_penalty, "seed": seed})
    if print_config:
        echo_config(cfg)
        return
    setup_logging()
    run_chat(cfg, stdin=sys.stdin, echo=typer.echo)


_J = JudgeConfig


@app.command(context_settings={"allow_extra_args": False})
def judge(
    args: list[str] = typer.Argument(None, help="INPUT: candidate pairs, prompt + response_a/response_b, or "
                                     "chosen/rejected (any preference format; the label then gives agreement "
                                     "figures); file or bundled:NAME (key input); and " + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    out: str = flag(_J, "out", "--out", help="Preference JSONL to write (+ .summary.json, .malformed.jsonl)"),
    judge_: str = flag(_J, "judge", "--judge", help="local model name/run dir, or an OpenAI-compatible base URL "
                       "(http://host:port/v1)"),
    model: str = flag(_J, "model", "--model", help="model name to request from an HTTP judge"),
    mode: str = flag(_J, "mode", "--mode", help="what verdicts that flip with the order become: tie | weight"),
    template: str = flag(_J, "template", "--template", help="template name (pairwise, reference) or path to your own"),
    limit: int = flag(_J, "limit", "--limit", help="judge only the first N pairs"),
    seed: int = flag(_J, "seed", "--seed", help="seed of the slot assignment for chosen/rejected rows"),
    api_key_env: str = flag(_J, "api_key_env", "--api-key-env", help="environment variable holding the HTTP "
                            "judge's key"),
    cache_dir: str = flag(_J, "cache_dir", "--cache-dir", help="HTTP answer cache (default: OUT's "
                          "folder/.judge-cache)"),
    concurrency: int = flag(_J, "concurrency", "--concurrency", help="HTTP requests in flight"),
    rate_limit: float = flag(_J, "rate_limit", "--rate-limit", help="HTTP requests per second at most"),
    max_retries: int = flag(_J, "max_retries", "--max-retries", help="HTTP retries (exponential backoff, or the "
                            "server's Retry-After) before the run stops with an error; a failed request is never a "
                            "verdict"),
    timeout: float = flag(_J, "timeout", "--timeout", help="HTTP judge: seconds to wait for a connection and for "
                          "each read"),
    max_tokens: int = flag(_J, "max_tokens", "--max-tokens", help="HTTP judge: longest answer (explanation + "
                           "verdict) to ask for"),
    batch_size: int = flag(_J, "batch_size", "--batch-size", help="local judge: prompts per forward"),
    min_mass: float = flag(_J, "min_mass", "--min-mass", help="local judge: verdict tokens' probability below this "
                           "is malformed"),
    judge_name: str = flag(_J, "judge_name", "--judge-name", help="name matched against model_a/model_b for the "
                           "self-preference rate"),
) -> None:
    """RLAIF: label candidate pairs with an AI judge (both orders, debiased) as preference data for rm/dpo."""
    from palate.infra.logging import setup_logging
    from palate.judges.label import JudgeConfig, format_summary, judge_from_config

    cfg = command_config(JudgeConfig, args, positional="input", flags=dict(
        out=out, judge=judge_, model=model, mode=mode, template=template, limit=limit, seed=seed,
        api_key_env=api_key_env, cache_dir=cache_dir, concurrency=concurrency, rate_limit=rate_limit,
        max_retries=max_retries, timeout=timeout, max_tokens=max_tokens, batch_size=batch_size, min_mass=min_mass,
        judge_name=judge_name))
    if print_config:
        echo_config(cfg)
        return
    setup_logging()
    typer.echo(format_summary(judge_from_config(cfg)))


@app.command(context_settings={"allow_extra_args": False})
def constitutional(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
                   print_config: bool = PRINT_CONFIG) -> None:
    """Constitutional AI: generate, critique against a sampled principle, revise; writes SFT data (sft.jsonl)
    and revised-over-original pairs (pairs.jsonl). Resumes if rerun."""
    from palate.recipes.constitutional import ConstitutionalConfig, train

    _train(ConstitutionalConfig, train, args, overwrite, print_config, label="data")


_S = ServeConfig


@app.command(context_settings={"allow_extra_args": False})
def serve(
    args: list[str] = typer.Argument(None, help="MODEL: run dir, HF model dir, .gguf file, hub name, 'bundled' or "
                                     "'tiny' (key model); and " + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    host: str = flag(_S, "host", "--host", help="interface to listen on (0.0.0.0 exposes it to the network)"),
    port: int = flag(_S, "port", "--port"),
    api_key: str = typer.Option(None, "--api-key", help="require 'Authorization: Bearer KEY'; not a config key (a "
                                "secret): without it the key is read from the environment variable api_key_env "
                                "(default PALATE_API_KEY)"),
    api_key_env: str = flag(_S, "api_key_env", "--api-key-env", help="environment variable holding the API key"),
    max_batch: int = flag(_S, "max_batch", "--max-batch", help="requests generated together at most"),
    batch_wait_ms: float = flag(_S, "batch_wait_ms", "--batch-wait-ms", help="how long the first waiting request "
                                "waits for others"),
    max_request_bytes: int = flag(_S, "max_request_bytes", "--max-request-bytes", help="larger request bodies get "
                                  "413"),
    max_tokens_limit: int = flag(_S, "max_tokens_limit", "--max-tokens-limit", help="largest max_tokens a request "
                                 "may ask for"),
    device: str = flag(_S, "device", "--device", help="auto | cpu | cuda | cuda:N"),
    safety_classifier: str = flag(_S, "safety_classifier", "--safety-classifier", help="guardrail: block unsafe "
                                  "requests and answers (bundled | palate safety dir | HF classifier[#LABEL])"),
    input_threshold: float = flag(_S, "input_threshold", "--input-threshold", help="block a request whose "
                                  "P(unsafe) >= this (default: the classifier's threshold when neither threshold is "
                                  "given)"),
    output_threshold: float = flag(_S, "output_threshold", "--output-threshold", help="block an answer whose "
                                   "P(unsafe) >= this"),
    refusal: str = flag(_S, "refusal", "--refusal", help="what a blocked request or answer gets instead"),
    best_of: int = flag(_S, "best_of", "--best-of", help="sample N answers, serve the reward model's best"),
    reward_model: str = flag(_S, "reward_model", "--reward-model", help="reward model for --best-of (run or model "
                             "dir)"),
    guard_log: str = flag(_S, "guard_log", "--guard-log", help="JSONL log of blocked/replaced answers "
                          "(default guardrails.jsonl)"),
) -> None:
    """OpenAI-compatible chat server (/v1/chat/completions with streaming, /v1/models) with request batching;
    optional guardrails (safety filter in and out, best-of-N with a reward model; counters at /v1/guardrails)."""
    from palate.infra.logging import setup_logging
    from palate.serve.config import ServeConfig, api_key_of, check_serve, exposed_without_key, serve_config

    cfg = command_config(ServeConfig, args, positional="model", flags=dict(
        host=host, port=port, api_key_env=api_key_env, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
        max_request_bytes=max_request_bytes, max_tokens_limit=max_tokens_limit, device=device,
        safety_classifier=safety_classifier, input_threshold=input_threshold, output_threshold=output_threshold,
        refusal=refusal, best_of=best_of, reward_model=reward_model, guard_log=guard_log))
    if print_config:
        echo_config(cfg)
        return
    check_serve(cfg)
    setup_logging()
    key = api_key_of(cfg, api_key)
    if exposed_without_key(cfg, key):
        typer.secho(f"warning: serving on {cfg.host} without an API key", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"serving {cfg.model} at http://{cfg.host}:{cfg.port}/v1 (Ctrl-C stops)")
    serve_config(cfg, key)


@app.command(context_settings={"allow_extra_args": False})
def report(
    args: list[str] = typer.Argument(None, help="RUN: a run directory (key run); and " + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    out: str = flag(ReportConfig, "out", "--out", help="HTML file to write (default: RUN/report/report.html); "
                    "report.md beside it"),
) -> None:
    """One self-contained HTML report of a run (curves, RL, reward-model eval, win rates, monitor, samples)."""
    from palate.eval.run import ReportConfig, report as write_report

    cfg = command_config(ReportConfig, args, positional="run", flags={"out": out})
    if print_config:
        echo_config(cfg)
        return
    path = write_report(cfg)
    typer.echo(f"report: {path}\nsummary: {path.parent / 'report.md'}")


_W = WinrateConfig


@app.command(context_settings={"allow_extra_args": False})
def winrate(
    args: list[str] = typer.Argument(None, help="JUDGMENTS ...: AlpacaEval annotations.json (.gz/.xz), palate "
                                     "eval/judgments.jsonl, or Preference rows naming chosen_model/rejected_model "
                                     "(key judgments); and " + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    out: str = flag(_W, "out", "--out", help="output dir (needed): eval/winrates.json and report/report.html"),
    length_unit: str = flag(_W, "length_unit", "--length-unit", help="characters | words | tokens (needed; recorded "
                            "in the output)"),
    tokenizer: str = flag(_W, "tokenizer", "--tokenizer", help="--length-unit tokens: tokenizer (model dir, hub "
                          "name, bundled)"),
    baseline: str = flag(_W, "baseline", "--baseline", help="the baseline's model name (needed for Preference rows)"),
    policy: str = flag(_W, "policy", "--policy", help="name of the model in a single AlpacaEval file (default: its "
                       "results/<model>/ folder, else generator_2)"),
    lc: str = flag(_W, "lc", "--lc", help="joint (palate: one fit over all policies) | alpaca_eval (also "
                   "AlpacaEval 2's LC for AlpacaEval annotations)"),
    alpaca_eval_repo: str = flag(_W, "alpaca_eval_repo", "--alpaca-eval-repo", help="--lc alpaca_eval: an "
                                 "alpaca_eval checkout or git dir; its annotations join the difficulty fit"),
    judge_: str = flag(_W, "judge", "--judge", help="name of the judge, recorded in winrates.json"),
    n_resamples: int = flag(_W, "n_resamples", "--n-resamples", help="bootstrap resamples for the CIs"),
    seed: int = flag(_W, "seed", "--seed", help="bootstrap seed"),
) -> None:
    """Win rates (raw and length-controlled, 95% CIs) from pairwise judgments made elsewhere, written as palate's own
    judging writes them (eval/winrates.json + the HTML report)."""
    from palate.eval.run import WinrateConfig, winrates

    cfg = command_config(WinrateConfig, args, positional="judgments", flags={
        "out": out, "length_unit": length_unit, "tokenizer": tokenizer, "baseline": baseline, "policy": policy,
        "lc": lc, "alpaca_eval_repo": alpaca_eval_repo, "judge": judge_, "n_resamples": n_resamples, "seed": seed})
    if print_config:
        echo_config(cfg)
        return
    typer.echo(winrates(cfg))


_RL = RLEvalConfig


@app.command("rl-eval", context_settings={"allow_extra_args": False})
def rl_eval(
    args: list[str] = typer.Argument(None, help="RUN: a finished palate ppo or grpo run directory (key run); and "
                                     + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    samples: int = flag(_RL, "samples", "--samples", help="answers per held-out prompt, for each of the two policies"),
    policy: str = flag(_RL, "policy", "--policy", help="trained policy to compare with the start (default RUN/final)"),
    max_new_tokens: int = flag(_RL, "max_new_tokens", "--max-new-tokens", help="override the run's rollout.max_new_tokens"),
    device: str = flag(_RL, "device", "--device", help="auto | cpu | cuda | cuda:N"),
) -> None:
    """Held-out reward of an RL run's starting and trained policies, several samples per held-out prompt
    (the run's prompts, reward, rollout settings and seed), paired by prompt with a 95% CI."""
    from palate.eval.rl import format_reevaluation
    from palate.infra.device import pick_device
    from palate.infra.logging import setup_logging
    from palate.recipes.rl_eval import reevaluate

    cfg = command_config(RLEvalConfig, args, positional="run", flags={
        "samples": samples, "policy": policy, "max_new_tokens": max_new_tokens, "device": device})
    if print_config:
        echo_config(cfg)
        return
    if cfg.run is None:
        raise typer.BadParameter("give the run directory: palate rl-eval RUN")
    setup_logging()
    summary = reevaluate(cfg.run, samples=cfg.samples, policy=cfg.policy, max_new_tokens=cfg.max_new_tokens,
                         device=str(pick_device(cfg.device)))
    typer.echo(format_reevaluation(summary))
    typer.echo(f"written to {cfg.run}/report/rl_reeval.json (answers in {cfg.run}/report/reeval/eval_samples.jsonl)")


_SAFETY_HELP = ("safety classifier for P(unsafe) of each answer: bundled | a `palate safety train` dir | "
                "a sequence-classification model dir or hub name (NAME#LABEL names its unsafe label)")


def _gen_flags(cls: type) -> dict:
    """The generation flags eval and redteam share, each a shortcut for its key of ``cls``."""
    return dict(max_new_tokens=flag(cls, "max_new_tokens", "--max-new-tokens", help="longest answer in tokens"),
                temperature=flag(cls, "temperature", "--temperature", help="0 = greedy; > 0 samples with --seed"),
                top_p=flag(cls, "top_p", "--top-p"),
                seed=flag(cls, "seed", "--seed", help="sampling and bootstrap seed"),
                batch_size=flag(cls, "batch_size", "--batch-size", help="prompts generated / scored together"),
                device=flag(cls, "device", "--device", help="auto | cpu | cuda | cuda:N"))


_E = EvalConfig
_EG = _gen_flags(_E)


@app.command("eval", context_settings={"allow_extra_args": False})
def eval_(
    args: list[str] = typer.Argument(None, help="POLICY ...: policies to evaluate: run dirs, model dirs, hub names, "
                                     "tiny (key policies); and " + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    prompts: str = flag(_E, "prompts", "--prompts", help="prompt set: JSONL/JSON, AlpacaEval JSON, MT-Bench "
                        "question.jsonl, dataset dir, bundled:NAME"),
    baseline: str = flag(_E, "baseline", "--baseline", help="model every policy is compared against (e.g. the SFT "
                         "run); --suite mtbench: the second model of the pairwise comparison"),
    out: str = flag(_E, "out", "--out", help="output dir (needed): answers.jsonl, eval/winrates.json, "
                    "eval_summary.json"),
    suite: str = flag(_E, "suite", "--suite", help="winrate (vs --baseline) | humaneval (sandboxed pass@k) | "
                      "tasks (--tasks FILE: task success rate) | mtbench (--prompts question.jsonl)"),
    tasks: str = flag(_E, "tasks", "--tasks", help="--suite tasks: JSONL of id, prompt and a checker"),
    n_samples: int = flag(_E, "n_samples", "--n-samples", help="--suite humaneval: completions per problem"),
    k: list[int] = flag(_E, "k", "--k", help="--suite humaneval: pass@k to report (repeatable)"),
    judge_: str = flag(_E, "judge", "--judge", help="panel | reward:RUN_DIR | local:MODEL"),
    references: str = flag(_E, "references", "--references", help="--suite mtbench: FastChat's reference_answer/"
                           "gpt-4.jsonl (math, reasoning and coding are graded against it)"),
    judge_prompts: str = flag(_E, "judge_prompts", "--judge-prompts", help="--suite mtbench: FastChat "
                              "judge_prompts.jsonl (default: the copy shipped with palate)"),
    reward_model: str = flag(_E, "reward_model", "--reward-model", help="reward model for the mean reward column"),
    safety_classifier: str = flag(_E, "safety_classifier", "--safety-classifier", help=_SAFETY_HELP),
    limit: int = flag(_E, "limit", "--limit", help="first N prompts only"),
    export_alpaca: str = flag(_E, "export_alpaca", "--export-alpaca", help="also write answers as AlpacaEval model "
                              "outputs"),
    max_new_tokens: int = _EG["max_new_tokens"], temperature: float = _EG["temperature"],
    top_p: float = _EG["top_p"], seed: int = _EG["seed"], batch_size: int = _EG["batch_size"],
    device: str = _EG["device"],
) -> None:
    """Win rates (raw, length-controlled, 95% CIs) of policies against a baseline, reward, length, diversity
    and refusals on a prompt set, or a benchmark suite (--suite). Answers are cached in OUT/answers.jsonl."""
    from palate.eval.run import EvalConfig, run_eval
    from palate.infra.logging import setup_logging

    cfg = command_config(EvalConfig, args, positional="policies", flags=dict(
        prompts=prompts, baseline=baseline, out=out, suite=suite, tasks=tasks, n_samples=n_samples, k=k or None,
        judge=judge_, references=references, judge_prompts=judge_prompts, reward_model=reward_model,
        safety_classifier=safety_classifier, limit=limit, export_alpaca=export_alpaca, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size, device=device))
    if print_config:
        echo_config(cfg)
        return
    setup_logging()
    typer.echo(run_eval(cfg))


_M = MTBenchShowConfig


@app.command("mtbench-show", context_settings={"allow_extra_args": False})
def mtbench_show(
    args: list[str] = typer.Argument(None, help="JUDGMENTS: FastChat judgment file, model_judgment/gpt-4_single.jsonl "
                                     "or gpt-4_pair.jsonl (or palate's OUT/mtbench/model_judgment/*.jsonl; key "
                                     "judgments); and " + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    mode: str = flag(_M, "mode", "--mode", help="single | pairwise-baseline | pairwise-all"),
    baseline_model: str = flag(_M, "baseline_model", "--baseline-model", help="pairwise-baseline: the baseline"),
    model_list: list[str] = flag(_M, "model_list", "--model-list", help="only these models (repeatable)"),
    questions: str = flag(_M, "questions", "--questions", help="question.jsonl, for the mean per category"),
) -> None:
    """MT-Bench tables from judgment files, computed as FastChat's show_result.py does."""
    from palate.eval.run import MTBenchShowConfig, mtbench_tables

    cfg = command_config(MTBenchShowConfig, args, positional="judgments", flags={
        "mode": mode, "baseline_model": baseline_model, "model_list": model_list or None, "questions": questions})
    if print_config:
        echo_config(cfg)
        return
    typer.echo(mtbench_tables(cfg))


_R = RedteamConfig
_RG = _gen_flags(_R)


@app.command(context_settings={"allow_extra_args": False})
def redteam(
    args: list[str] = typer.Argument(None, help="MODEL to attack: run dir, model dir, hub name, tiny, or a served "
                                     "model's URL (http://HOST:PORT/v1, e.g. palate serve with guardrails) (key model); "
                                     "and " + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    out: str = flag(_R, "out", "--out", help="output dir (default: MODEL/redteam for a run dir, else "
                    "./redteam-NAME; needed for a URL)"),
    prompts: str = flag(_R, "prompts", "--prompts", help="suite with prompt, harmful, category, attack"),
    judge_: str = flag(_R, "judge", "--judge", help="safety reward model: an attack succeeds when its score is "
                       "below --threshold (default: the answer is not a refusal)"),
    threshold: float = flag(_R, "threshold", "--threshold", help="safety score below which an answer counts as "
                            "unsafe"),
    safety_classifier: str = flag(_R, "safety_classifier", "--safety-classifier", help=_SAFETY_HELP + "; an attack "
                                  "succeeds when the answer is unsafe (instead of --judge)"),
    limit: int = flag(_R, "limit", "--limit", help="first N prompts only"),
    max_new_tokens: int = _RG["max_new_tokens"], temperature: float = _RG["temperature"],
    top_p: float = _RG["top_p"], seed: int = _RG["seed"], batch_size: int = _RG["batch_size"],
    device: str = _RG["device"],
) -> None:
    """Red-team a model: attack success rate per category and jailbreak framing (95% CIs), over-refusal on
    benign look-alikes, worst samples; writes redteam.json and answers.jsonl."""
    from palate.eval.redteam import format_redteam
    from palate.eval.run import RedteamConfig, run_redteam_config
    from palate.infra.logging import setup_logging

    cfg = command_config(RedteamConfig, args, positional="model", flags=dict(
        out=out, prompts=prompts, judge=judge_, threshold=threshold, safety_classifier=safety_classifier, limit=limit,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
        device=device))
    if print_config:
        echo_config(cfg)
        return
    setup_logging()
    res, out = run_redteam_config(cfg)
    typer.echo(format_redteam(res))
    typer.echo(f"written to {out} (redteam.json, answers.jsonl); palate report {out}")


_P = PlanConfig


@app.command(context_settings={"allow_extra_args": False})
def plan(
    args: list[str] = typer.Argument(None, help="MODEL: model dir, run dir, 'bundled' or hub name (reads "
                                     "config.json) (key model); and " + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    params: str = flag(_P, "params", "--params", help="a parameter count instead of a model, e.g. 7B (shape "
                       "assumed)"),
    method: str = flag(_P, "method", "--method", help="sft | rm | dpo | ppo | grpo"),
    lora: bool = flag(_P, "lora", "--lora/--full", help="LoRA on all linear layers, or full fine-tuning"),
    lora_r: int = flag(_P, "lora_r", "--lora-r", help="LoRA rank"),
    dtype: str = flag(_P, "dtype", "--dtype", help="bf16 (mixed precision) | fp32"),
    seq_len: int = flag(_P, "seq_len", "--seq-len", help="tokens per row"),
    micro_batch: int = flag(_P, "micro_batch", "--micro-batch", help="rows (pairs for rm/dpo) per device per forward"),
    devices: int = flag(_P, "devices", "--devices", help="data-parallel devices to shard over"),
    reference: str = flag(_P, "reference", "--reference", help="dpo: precompute (no reference model resident) | "
                          "live"),
    gpu_memory: float = flag(_P, "gpu_memory", "--gpu-memory", help="GiB per device: mark which configurations fit"),
    as_json: bool = flag(_P, "json", "--json", help="print the table as JSON"),
) -> None:
    """Estimate per-device memory (GiB) of a training run for every sharding strategy, with and without
    gradient checkpointing: weights, gradients, AdamW states, resident frozen models, activations, logits."""
    from palate.infra.memory import PlanConfig, plan_report

    cfg = command_config(PlanConfig, args, positional="model", flags=dict(
        params=params, method=method, lora=lora, lora_r=lora_r, dtype=dtype, seq_len=seq_len, micro_batch=micro_batch,
        devices=devices, reference=reference, gpu_memory=gpu_memory, json=as_json))
    if print_config:
        echo_config(cfg)
        return
    typer.echo(plan_report(cfg))


_D = DataCheckConfig


@data_app.command("check", context_settings={"allow_extra_args": False})
def data_check(
    args: list[str] = typer.Argument(None, help="PATH: file (.jsonl/.json, compressed or not; .parquet, .csv), "
                                     "dataset dir, bundled:NAME or hub name (key path); and " + _CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    kind: str = flag(_D, "kind", "--kind", help="auto (from the first row) | demonstrations | preferences | "
                     "rankings | ratings"),
    model: str = flag(_D, "model", "--model", help="tokenizer to measure lengths with (the model you will train)"),
    max_length: int = flag(_D, "max_length", "--max-length", help="data.max_length of the run"),
    long_prompts: str = flag(_D, "long_prompts", "--long-prompts", help="data.long_prompts of the run: skip | "
                             "truncate_left"),
    on_error: str = flag(_D, "on_error", "--on-error", help="raise | skip"),
    split: str = flag(_D, "split", "--split", help="split of a dataset dir or hub dataset"),
    as_json: bool = flag(_D, "json", "--json", help="print the report as JSON"),
) -> None:
    """Read a dataset as training would (palate sft, rm, dpo, kto) and report rows, usable records, token
    lengths, over-long prompts, ties, skips and truncations."""
    from palate.data.check_config import DataCheckConfig, check_report
    from palate.models.load import load_tokenizer

    cfg = command_config(DataCheckConfig, args, positional="path", flags={
        "kind": kind, "model": model, "max_length": max_length, "long_prompts": long_prompts, "on_error": on_error,
        "split": split, "json": as_json})
    if print_config:
        echo_config(cfg)
        return
    typer.echo(check_report(cfg, load_tokenizer))


@app.command("run", context_settings={"allow_extra_args": False})
def run_cmd(args: list[str] = typer.Argument(None, help="PIPELINE.yaml and key=value overrides, e.g. rounds=2"),
            print_config: bool = PRINT_CONFIG) -> None:
    """The whole pipeline: SFT -> sample -> judge -> reward model -> DPO/GRPO/PPO -> eval -> report. Stages are
    cached by a hash of their config and inputs: a rerun redoes only what changed."""
    from palate.pipeline import format_summary, load_pipeline, run_pipeline

    config, overrides = _config_and_overrides(args)
    cfg = load_pipeline(config, overrides)
    if print_config:
        echo_config(cfg)
        return
    summary = run_pipeline(cfg)
    typer.echo(format_summary(summary))


@app.command("demo", context_settings={"allow_extra_args": False})
def demo(args: list[str] = typer.Argument(None, help="key=value overrides of examples/demo_pipeline.yaml")) -> None:
    """The demo: the whole pipeline on the bundled model, prompts and a simulated two-group labeler panel."""
    from palate.pipeline import DEMO_PIPELINE

    run_cmd([str(DEMO_PIPELINE), *(args or [])], False)


_ST = SafetyTrainConfig


@safety_app.command("train", context_settings={"allow_extra_args": False})
def safety_train(
    args: list[str] = typer.Argument(None, help=_CONFIG_ARGS),
    print_config: bool = PRINT_CONFIG,
    out: str = flag(_ST, "out", "--out", help="directory for head.safetensors and safety.json (needed)"),
    data: str = flag(_ST, "data", "--data", help="labelled answers: JSONL/JSON rows with response, label "
                     "(safe|unsafe), optional prompt and category"),
    heldout: float = flag(_ST, "heldout", "--heldout", help="fraction held out (stratified by label and category) "
                          "for accuracy/AUC"),
    l2: float = flag(_ST, "l2", "--l2", help="L2 penalty of the logistic head (default: chosen by 5-fold CV)"),
    threshold: float = flag(_ST, "threshold", "--threshold", help="P(unsafe) at or above which an answer counts as "
                            "unsafe"),
    seed: int = flag(_ST, "seed", "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a classifier already in --out"),
    device: str = flag(_ST, "device", "--device", help="auto | cpu | cuda | cuda:N"),
) -> None:
    """Embed labelled answers with all-MiniLM-L6-v2 and fit a logistic-regression head; report held-out
    accuracy (95% bootstrap CI) and AUC. Use the result with --safety-classifier OUT."""
    from palate.eval.run import SafetyTrainConfig, train_safety

    cfg = command_config(SafetyTrainConfig, args, flags={"out": out, "data": data, "heldout": heldout, "l2": l2,
                                           "threshold": threshold, "seed": seed, "device": device})
    if print_config:
        echo_config(cfg)
        return
    typer.echo(train_safety(cfg, overwrite=overwrite))


@label_app.command("generate")
def label_generate(
    model: str = typer.Argument(..., help="a palate run dir, HF model dir or hub name, 'bundled' or 'tiny'"),
    prompts: str = typer.Option(..., help="prompts (JSONL with 'prompt', or any source `palate` reads)"),
    out: str = typer.Option(..., help="candidates JSONL to write (or extend with --append)"),
    n: int = typer.Option(2, help="responses per prompt"),
    name: str = typer.Option(None, help="model name recorded (hidden from labelers)"),
    max_new_tokens: int = typer.Option(128), temperature: float = typer.Option(0.8), top_p: float = typer.Option(0.95),
    seed: int = typer.Option(0), append: bool = typer.Option(False, help="add to OUT (e.g. a second model)"),
) -> None:
    """Sample candidate responses with a palate model for a project (imports torch; the server does not)."""
    from palate.judges.candidates import sample_candidates

    counts = sample_candidates(model, prompts, out, n=n, name=name, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, seed=seed, append=append)
    left_out = f" ({counts[1]} empty responses left out)" if counts[1] else ""
    typer.echo(f"wrote {counts[0]} responses to {out}{left_out}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
