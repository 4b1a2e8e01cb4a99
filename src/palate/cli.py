"""The ``palate`` command line. Each subcommand parses a config and calls one recipe function."""

from __future__ import annotations

import sys

import typer

from palate.clikit import PRINT_CONFIG, App, USER_ERRORS, command_config, echo_config, flag, split_args
from palate.eval.run import EvalConfig, RedteamConfig
from palate.feedback.cli import label_app
from palate.infra.memory import PlanConfig
from palate.judges.label import JudgeConfig as _J
from palate.serve.config import ServeConfig


def _user_errors() -> tuple[type[BaseException], ...]:
    """What every command reports as ``error: ...`` (exit 2): palate's own errors, bad paths and values, and a
    reward that is not finite (a RuntimeError of palate.rollout, imported only when an error passes)."""
    from palate.rollout.rewards import NonFiniteError

    return (*USER_ERRORS, NonFiniteError)


app = App(help="palate: align language models with human preferences.", no_args_is_help=True,
          add_completion=False, pretty_exceptions_enable=False, errors=_user_errors)
data_app = App(help="Inspect and check datasets.", no_args_is_help=True, errors=_user_errors)
app.add_typer(data_app, name="data")
safety_app = App(help="Train and use the safety classifier (P(unsafe) of an answer).", no_args_is_help=True,
                 errors=_user_errors)
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
    """Shared body of the training commands: resolve the config and run the recipe (errors: see _user_errors)."""
    cfg = command_config(config_cls, args)
    if print_config:
        echo_config(cfg)
        return
    final = train_fn(cfg, overwrite=overwrite)
    typer.echo(f"{label}: {final}")


_OVERWRITE = typer.Option(False, "--overwrite", help="replace an existing run in run_dir")
_PRINT_CONFIG = PRINT_CONFIG


@app.command(context_settings={"allow_extra_args": False})
def sft(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
        print_config: bool = _PRINT_CONFIG) -> None:
    """Supervised fine-tuning on demonstrations (resumes automatically if run_dir has checkpoints)."""
    from palate.recipes.sft import SFTConfig, train

    _train(SFTConfig, train, args, overwrite, print_config)


@app.command(context_settings={"allow_extra_args": False})
def rm(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
       print_config: bool = _PRINT_CONFIG) -> None:
    """Train a reward model on preferences or rankings; evaluates on held-out pairs at the end."""
    from palate.recipes.reward import RewardConfig, train

    _train(RewardConfig, train, args, overwrite, print_config)


@app.command(context_settings={"allow_extra_args": False})
def dpo(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
        print_config: bool = _PRINT_CONFIG,
        loss: str = typer.Option(None, "--loss", help="dpo | ipo | cdpo | robust | rpo | simpo | orpo | kto "
                                 "(same as dpo.loss=...)")) -> None:
    """Direct preference optimisation (DPO and its family) on preference pairs, or KTO on ratings."""
    from palate.recipes.dpo import DPOConfig, train

    _train(DPOConfig, train, (args or []) + ([f"dpo.loss={loss}"] if loss else []), overwrite, print_config)


@app.command(context_settings={"allow_extra_args": False})
def kto(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
        print_config: bool = _PRINT_CONFIG) -> None:
    """KTO on unpaired thumbs up/down (ratings), or on preference pairs split into one of each."""
    from palate.recipes.kto import KTOConfig, train

    _train(KTOConfig, train, args, overwrite, print_config)


@app.command(context_settings={"allow_extra_args": False})
def ppo(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
        print_config: bool = _PRINT_CONFIG) -> None:
    """PPO with a value head, GAE and KL control against the starting policy (RLHF)."""
    from palate.recipes.ppo import PPOConfig, train

    _train(PPOConfig, train, args, overwrite, print_config)


@app.command(context_settings={"allow_extra_args": False})
def grpo(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
         print_config: bool = _PRINT_CONFIG,
         advantage: str = typer.Option(None, "--advantage", help="grpo | rloo | reinforce_pp "
                                       "(same as grpo.advantage=...)")) -> None:
    """Critic-free online RL: GRPO, RLOO or REINFORCE++ over groups of samples per prompt."""
    from palate.recipes.grpo import GRPOConfig, train

    extra = [f"grpo.advantage={advantage}"] if advantage else []
    _train(GRPOConfig, train, (args or []) + extra, overwrite, print_config)


@app.command("best-of-n", context_settings={"allow_extra_args": False})
def best_of_n(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
              print_config: bool = _PRINT_CONFIG) -> None:
    """Sample n responses per prompt, keep the reward model's best (SFT data) or best-vs-worst pairs (DPO
    data); with rounds > 1, fine-tune on them and sample again."""
    from palate.recipes.best_of_n import BestOfNConfig, train

    _train(BestOfNConfig, train, args, overwrite, print_config, label="data")


@app.command("rm-eval")
def rm_eval(
    model: str = typer.Argument(..., help="reward model: palate run dir or HF sequence-classification model dir"),
    data: str = typer.Option(..., "--data", help="preference pairs: file, dataset dir, bundled:NAME or hub name"),
    out: str = typer.Option(None, "--out", help="where to write rm_eval.json and plots (default: MODEL/eval-<data>)"),
    batch_size: int = typer.Option(16),
    seed: int = typer.Option(0, help="seed of the bootstrap CI and the calibration orientation"),
) -> None:
    """Evaluate a reward model on preference pairs: accuracy with CI, calibration, length bias, per group."""
    from pathlib import Path

    from palate.data.readers import read_preferences
    from palate.eval.reward import evaluate_reward_model, format_report
    from palate.eval.scoring import data_stem
    from palate.infra.logging import setup_logging
    from palate.models.heads import RewardModel

    setup_logging()
    rm_ = RewardModel.load(model)
    pairs = read_preferences(data)
    target = Path(out) if out else Path(model) / f"eval-{data_stem(data)}"
    report = evaluate_reward_model(rm_, pairs, target, seed=seed, batch_size=batch_size)
    typer.echo(format_report(report))
    typer.echo(f"written to {target}")


@app.command()
def score(
    model: str = typer.Argument(..., help="reward model: palate run dir or HF sequence-classification model dir"),
    input: str = typer.Option(..., "--input", help="JSONL/dataset with prompt and response columns"),
    output: str = typer.Option(None, "--output", help="JSONL to write (default: INPUT with .scored.jsonl)"),
    batch_size: int = typer.Option(16),
    normalize: bool = typer.Option(False, help="(r - mean) / std with the stats saved at training time"),
) -> None:
    """Score (prompt, response) rows with a reward model; writes each row back with its reward."""
    from palate.eval.scoring import format_scoring, score_file
    from palate.infra.logging import setup_logging

    setup_logging()
    typer.echo(format_scoring(score_file(model, input, output, batch_size=batch_size, normalize=normalize)))


@app.command()
def chat(
    model: str = typer.Argument(..., help="run dir, HF model dir, .gguf file, hub name, or 'bundled'"),
    message: str = typer.Argument(None, help="one-shot message; omit for an interactive session"),
    system: str = typer.Option(None, help="system prompt"),
    max_new_tokens: int = typer.Option(256),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    repetition_penalty: float = typer.Option(1.2, help="> 1 discourages repeating tokens (1 = off)"),
    seed: int = typer.Option(0),
) -> None:
    """Talk to a model: one reply to MESSAGE, or an interactive session (empty line or Ctrl-D quits)."""
    from palate.infra.logging import setup_logging
    from palate.serve.chat import chat as run_chat

    setup_logging()
    run_chat(model, message, system=system, max_new_tokens=max_new_tokens, temperature=temperature,
             repetition_penalty=repetition_penalty, seed=seed, stdin=sys.stdin, echo=typer.echo)


@app.command(context_settings={"allow_extra_args": False})
def judge(
    args: list[str] = typer.Argument(None, help="INPUT: candidate pairs, prompt + response_a/response_b, or "
                                     "chosen/rejected (any preference format; the label then gives agreement "
                                     "figures); file or bundled:NAME (key input); and " + _CONFIG_ARGS),
    print_config: bool = _PRINT_CONFIG,
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
    from palate.judges.label import format_summary, judge_from_config

    cfg = command_config(_J, args, positional="input", flags=dict(
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
                   print_config: bool = _PRINT_CONFIG) -> None:
    """Constitutional AI: generate, critique against a sampled principle, revise; writes SFT data (sft.jsonl)
    and revised-over-original pairs (pairs.jsonl). Resumes if rerun."""
    from palate.recipes.constitutional import ConstitutionalConfig, train

    _train(ConstitutionalConfig, train, args, overwrite, print_config, label="data")


_S = ServeConfig


@app.command(context_settings={"allow_extra_args": False})
def serve(
    args: list[str] = typer.Argument(None, help="MODEL: run dir, HF model dir, .gguf file, hub name, 'bundled' or "
                                     "'tiny' (key model); and " + _CONFIG_ARGS),
    print_config: bool = _PRINT_CONFIG,
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
    from palate.serve.config import api_key_of, check_serve, exposed_without_key, serve_config

    cfg = command_config(_S, args, positional="model", flags=dict(
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


@app.command()
def report(
    run: str = typer.Argument(..., help="a run directory"),
    out: str = typer.Option(None, "--out", help="HTML file to write (default: RUN/report/report.html); report.md beside it"),
) -> None:
    """One self-contained HTML report of a run (curves, RL, reward-model eval, win rates, monitor, samples)."""
    from palate.eval.report import write_report

    path = write_report(run, out)
    typer.echo(f"report: {path}\nsummary: {path.parent / 'report.md'}")


@app.command()
def winrate(
    judgments: list[str] = typer.Argument(..., help="judgment files: AlpacaEval annotations.json (.gz/.xz), palate "
                                          "eval/judgments.jsonl, or Preference rows naming chosen_model/rejected_model"),
    out: str = typer.Option(..., "--out", help="output dir: eval/winrates.json and report/report.html"),
    length_unit: str = typer.Option(..., "--length-unit", help="characters | words | tokens (recorded in the output)"),
    tokenizer: str = typer.Option(None, "--tokenizer", help="--length-unit tokens: tokenizer (model dir, hub name, "
                                  "bundled)"),
    baseline: str = typer.Option(None, "--baseline", help="the baseline's model name (needed for Preference rows)"),
    policy: str = typer.Option(None, "--policy", help="name of the model in a single AlpacaEval file (default: its "
                               "results/<model>/ folder, else generator_2)"),
    lc: str = typer.Option("joint", "--lc", help="joint (palate: one fit over all policies) | alpaca_eval (also "
                           "AlpacaEval 2's LC for AlpacaEval annotations)"),
    alpaca_eval_repo: str = typer.Option(None, "--alpaca-eval-repo", help="--lc alpaca_eval: an alpaca_eval checkout "
                                         "or git dir; its annotations join the difficulty fit"),
    judge_: str = typer.Option(None, "--judge", help="name of the judge, recorded in winrates.json"),
    n_resamples: int = typer.Option(1000, help="bootstrap resamples for the CIs"),
    seed: int = typer.Option(0, help="bootstrap seed"),
) -> None:
    """Win rates (raw and length-controlled, 95% CIs) from pairwise judgments made elsewhere, written as palate's own
    judging writes them (eval/winrates.json + the HTML report)."""
    from palate.eval.alpaca_eval import LENGTH_UNITS
    from palate.eval.imported import format_winrates, read_judgments, winrates_from_judgments

    if length_unit not in LENGTH_UNITS:
        raise ValueError(f"--length-unit must be one of {', '.join(LENGTH_UNITS)}, got {length_unit!r}")
    if (length_unit == "tokens") != (tokenizer is not None):
        raise ValueError("--tokenizer goes with --length-unit tokens (and tokens need one)")
    tok = None
    if tokenizer:
        from palate.models.load import load_tokenizer

        tok = load_tokenizer(tokenizer)
    judged = read_judgments(judgments, baseline=baseline, unit=length_unit, tokenizer=tok, policy=policy)
    summary = winrates_from_judgments(judged, out, unit=length_unit, tokenizer=tok, lc=lc,
                                      alpaca_eval_repo=alpaca_eval_repo, judge=judge_, n_resamples=n_resamples,
                                      seed=seed)
    typer.echo(format_winrates(summary))


@app.command("rl-eval")
def rl_eval(
    run: str = typer.Argument(..., help="a finished palate ppo or grpo run directory"),
    samples: int = typer.Option(8, "--samples", help="answers per held-out prompt, for each of the two policies"),
    policy: str = typer.Option(None, "--policy", help="trained policy to compare with the start (default RUN/final)"),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="override the run's rollout.max_new_tokens"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
) -> None:
    """Held-out reward of an RL run's starting and trained policies, several samples per held-out prompt
    (the run's prompts, reward, rollout settings and seed), paired by prompt with a 95% CI."""
    from palate.eval.rl import format_reevaluation
    from palate.recipes.rl_eval import reevaluate
    from palate.infra.device import pick_device
    from palate.infra.logging import setup_logging

    setup_logging()
    summary = reevaluate(run, samples=samples, policy=policy, max_new_tokens=max_new_tokens,
                         device=str(pick_device(device)))
    typer.echo(format_reevaluation(summary))
    typer.echo(f"written to {run}/report/rl_reeval.json (answers in {run}/report/reeval/eval_samples.jsonl)")


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
    print_config: bool = _PRINT_CONFIG,
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
    from palate.eval.run import run_eval
    from palate.infra.logging import setup_logging

    cfg = command_config(_E, args, positional="policies", flags=dict(
        prompts=prompts, baseline=baseline, out=out, suite=suite, tasks=tasks, n_samples=n_samples, k=k or None,
        judge=judge_, references=references, judge_prompts=judge_prompts, reward_model=reward_model,
        safety_classifier=safety_classifier, limit=limit, export_alpaca=export_alpaca, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size, device=device))
    if print_config:
        echo_config(cfg)
        return
    setup_logging()
    typer.echo(run_eval(cfg))


@app.command("mtbench-show")
def mtbench_show(
    judgments: str = typer.Argument(..., help="FastChat judgment file: model_judgment/gpt-4_single.jsonl or "
                                    "gpt-4_pair.jsonl (or palate's OUT/mtbench/model_judgment/*.jsonl)"),
    mode: str = typer.Option("single", "--mode", help="single | pairwise-baseline | pairwise-all"),
    baseline_model: str = typer.Option("gpt-3.5-turbo", "--baseline-model", help="pairwise-baseline: the baseline"),
    model_list: list[str] = typer.Option(None, "--model-list", help="only these models (repeatable)"),
    questions: str = typer.Option(None, "--questions", help="question.jsonl, for the mean per category"),
) -> None:
    """MT-Bench tables from judgment files, computed as FastChat's show_result.py does."""
    from palate.eval import mtbench_results as res
    from palate.eval.prompts import read_mtbench

    if mode not in ("single", "pairwise-baseline", "pairwise-all"):
        raise ValueError(f"--mode must be single, pairwise-baseline or pairwise-all, got {mode!r}")
    if mode == "single":
        rows = res.read_single_judgments(judgments)
        cats = {q.question_id: q.category for q in read_mtbench(questions)} if questions else None
        names = [m for m in dict.fromkeys(r["model"] for r in rows) if not model_list or m in model_list]
        typer.echo(res.format_single(res.summarise_single(rows, cats, names)))
    else:
        rows = res.read_pair_judgments(judgments)
        base = baseline_model if mode == "pairwise-baseline" else None
        typer.echo(res.format_pairwise(res.summarise_pairwise(rows, base, model_list or None)))


_R = RedteamConfig
_RG = _gen_flags(_R)


@app.command(context_settings={"allow_extra_args": False})
def redteam(
    args: list[str] = typer.Argument(None, help="MODEL to attack: run dir, model dir, hub name, tiny, or a served "
                                     "model's URL (http://HOST:PORT/v1, e.g. palate serve with guardrails) (key model); "
                                     "and " + _CONFIG_ARGS),
    print_config: bool = _PRINT_CONFIG,
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
    from palate.eval.run import run_redteam_config
    from palate.infra.logging import setup_logging

    cfg = command_config(_R, args, positional="model", flags=dict(
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
    print_config: bool = _PRINT_CONFIG,
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
    from palate.infra.memory import plan_report

    cfg = command_config(_P, args, positional="model", flags=dict(
        params=params, method=method, lora=lora, lora_r=lora_r, dtype=dtype, seq_len=seq_len, micro_batch=micro_batch,
        devices=devices, reference=reference, gpu_memory=gpu_memory, json=as_json))
    if print_config:
        echo_config(cfg)
        return
    typer.echo(plan_report(cfg))


@data_app.command("check")
def data_check(
    path: str = typer.Argument(..., help="file (.jsonl/.json, compressed or not; .parquet, .csv), dataset dir, "
                               "bundled:NAME or hub name"),
    kind: str = typer.Option("auto", help="auto (from the first row) | demonstrations | preferences | rankings | "
                             "ratings"),
    model: str = typer.Option("bundled", help="tokenizer to measure lengths with (the model you will train)"),
    max_length: int = typer.Option(512, help="data.max_length of the run"),
    long_prompts: str = typer.Option("skip", help="data.long_prompts of the run: skip | truncate_left"),
    on_error: str = typer.Option("raise", help="raise | skip"),
    split: str = typer.Option("train", help="split of a dataset dir or hub dataset"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Read a dataset as training would (palate sft, rm, dpo, KTO) and report rows, usable records, token
    lengths, over-long prompts, ties, skips and truncations."""
    import json as _json

    from palate.data.check import KINDS, check_dataset, detect_kind, format_check
    from palate.models.load import load_tokenizer

    if kind != "auto" and kind not in KINDS:
        raise ValueError(f"--kind must be auto or one of {', '.join(KINDS)}, got {kind!r}")
    kind = detect_kind(path, split) if kind == "auto" else kind
    tok = load_tokenizer(model)
    report = check_dataset(path, kind, tok, max_length, long_prompts=long_prompts, on_error=on_error, split=split)
    typer.echo(_json.dumps(report, indent=1) if as_json else format_check(report))


@app.command("run", context_settings={"allow_extra_args": False})
def run_cmd(args: list[str] = typer.Argument(None, help="PIPELINE.yaml and key=value overrides, e.g. rounds=2"),
            print_config: bool = _PRINT_CONFIG) -> None:
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


@safety_app.command("train")
def safety_train(
    out: str = typer.Option(..., "--out", help="directory for head.safetensors and safety.json"),
    data: str = typer.Option("bundled:safety", "--data", help="labelled answers: JSONL/JSON rows with response, "
                             "label (safe|unsafe), optional prompt and category"),
    heldout: float = typer.Option(0.2, help="fraction held out (stratified by label and category) for accuracy/AUC"),
    l2: float = typer.Option(None, help="L2 penalty of the logistic head (default: chosen by 5-fold CV)"),
    threshold: float = typer.Option(0.5, help="P(unsafe) at or above which an answer counts as unsafe"),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a classifier already in --out"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
) -> None:
    """Embed labelled answers with all-MiniLM-L6-v2 and fit a logistic-regression head; report held-out
    accuracy (95% bootstrap CI) and AUC. Use the result with --safety-classifier OUT."""
    from palate.eval.safety import format_training, train_safety_classifier
    from palate.infra.device import pick_device

    meta = train_safety_classifier(data, out, heldout=heldout, l2=l2, threshold=threshold, seed=seed,
                                   overwrite=overwrite, device=str(pick_device(device)))
    typer.echo(format_training(meta))
    typer.echo(f"written to {out}; use it with --safety-classifier {out}")


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

    written, empty = sample_candidates(model, prompts, out, n=n, name=name, max_new_tokens=max_new_tokens,
                                       temperature=temperature, top_p=top_p, seed=seed, append=append)
    typer.echo(f"wrote {written} responses to {out}" + (f" ({empty} empty responses left out)" if empty else ""))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
