"""The ``palate`` command line. Each subcommand parses a config and calls one recipe function."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(help="palate: align language models with human preferences.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Inspect and check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
safety_app = typer.Typer(help="Train and use the safety classifier (P(unsafe) of an answer).", no_args_is_help=True)
app.add_typer(safety_app, name="safety")
app.add_typer(__import__("palate.feedback.cli", fromlist=["label_app"]).label_app, name="label")  # palate label ...


def _config_and_overrides(args: list[str] | None) -> tuple[str | None, list[str]]:
    """``[config.yaml] [key=value ...]`` in any order."""
    config, overrides = None, []
    for a in args or []:
        if "=" in a:
            overrides.append(a)
        elif a.endswith((".yaml", ".yml")):
            if config is not None:
                raise typer.BadParameter(f"two config files given: {config} and {a}")
            config = a
        else:
            raise typer.BadParameter(f"{a!r} is neither a .yaml config nor a key=value override")
    return config, overrides


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _data_stem(source: str) -> str:
    """``data/test.jsonl.gz`` -> ``test``; ``bundled:preferences`` -> ``preferences``."""
    from palate.data.readers import COMPRESSIONS

    path = Path(source.replace("bundled:", ""))
    if path.suffix.lower() in COMPRESSIONS:
        path = path.with_suffix("")
    return path.stem


_ARGS_HELP = "an optional CONFIG.yaml and section.key=value overrides, e.g. train.lr=1e-5"


def _train(config_cls: type, train_fn, args: list[str] | None, overwrite: bool, print_config: bool,
           label: str = "final model") -> None:
    """Shared body of the training commands: resolve the config, run the recipe, report clear errors."""
    from palate.config import ConfigError, dump_yaml, load_config
    from palate.data.errors import DataError
    from palate.infra.run import RunExistsError
    from palate.rollout.rewards import NonFiniteError

    config, overrides = _config_and_overrides(args)
    try:
        cfg = load_config(config_cls, config, overrides)
        if print_config:
            typer.echo(dump_yaml(cfg), nl=False)
            return
        final = train_fn(cfg, overwrite=overwrite)
    except (ConfigError, DataError, RunExistsError, FileNotFoundError) as e:
        _fail(e)
    except NonFiniteError as e:
        _fail(e)
    typer.echo(f"{label}: {final}")


_OVERWRITE = typer.Option(False, "--overwrite", help="replace an existing run in run_dir")
_PRINT_CONFIG = typer.Option(False, "--print-config", help="print the resolved config as YAML and exit")


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
    from palate.data.errors import DataError
    from palate.data.readers import read_preferences
    from palate.eval.reward import evaluate_reward_model, format_report
    from palate.infra.logging import setup_logging
    from palate.models.heads import RewardModel

    setup_logging()
    try:
        rm_ = RewardModel.load(model)
        pairs = read_preferences(data)
    except (DataError, FileNotFoundError, OSError) as e:
        _fail(e)
    target = Path(out) if out else Path(model) / f"eval-{_data_stem(data)}"
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
    import json

    from palate.data.errors import DataError, SkipLog
    from palate.data.readers import iter_rows, read_demonstrations
    from palate.infra.logging import setup_logging
    from palate.models.heads import RewardModel

    setup_logging()
    try:
        rows = [row for _, _, row in iter_rows(input)]
        records = read_demonstrations(input)  # validates every row, naming file, line and field
        rm_ = RewardModel.load(model)
    except (DataError, FileNotFoundError, OSError) as e:
        _fail(e)
    if len(records) != len(rows):
        _fail(ValueError(f"{input}: {len(rows) - len(records)} rows have an empty response; nothing written"))
    skips = SkipLog(seen=len(records))
    try:
        scores = rm_.score([r.prompt for r in records], [r.response for r in records], batch_size=batch_size,
                           normalize=normalize, skips=skips,
                           where=[(r.meta["source"], r.meta["row"]) for r in records])
    except ValueError as e:
        _fail(e)
    target = Path(output) if output else Path(input).parent / f"{_data_stem(input)}.scored.jsonl"
    reasons = {(s.source, s.row): s.reason for s in skips.skips}
    with open(target, "w") as f:
        for row, rec, mean, std in zip(rows, records, scores.mean.tolist(), scores.std.tolist()):
            extra = {"reward_std": std} if rm_.n_heads > 1 else {}
            if mean != mean:  # NaN: skipped by the reward model's long_prompts rule, written as null with the reason
                row, mean, extra = {**row, "skipped": reasons.get((rec.meta["source"], rec.meta["row"]))}, None, {}
            f.write(json.dumps({**row, "reward": mean, **extra}, ensure_ascii=False) + "\n")
    scored = scores.mean[~scores.mean.isnan()]
    typer.echo(f"scored {len(scored)} of {len(rows)} rows -> {target} (reward mean {scored.mean():.4f}, "
               f"std {scored.std():.4f}{', normalised' if normalize else ''})")
    if skips.skips or skips.truncations:
        typer.echo(f"reward model max_length {rm_.max_length}, long_prompts={rm_.long_prompts}: {skips.summary()}")


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
    from transformers import TextStreamer

    from palate.infra.logging import setup_logging
    from palate.models.load import load_model, load_tokenizer
    from palate.rollout.generate import reply

    setup_logging()
    try:
        tok = load_tokenizer(model)
        lm = load_model(model, tokenizer=tok).eval()
    except (FileNotFoundError, OSError) as e:
        _fail(e)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    gen = dict(max_new_tokens=max_new_tokens, temperature=temperature, repetition_penalty=repetition_penalty, seed=seed)
    if message is not None:
        typer.echo(reply(lm, tok, history + [{"role": "user", "content": message}], **gen))
        return
    interactive = sys.stdin.isatty()
    while True:
        try:
            text = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not text.strip():
            break
        history.append({"role": "user", "content": text.strip()})
        if interactive:
            typer.echo("model> ", nl=False)
            streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            answer = reply(lm, tok, history, streamer=streamer, **gen)
        else:
            answer = reply(lm, tok, history, **gen)
            typer.echo(f"model> {answer}")
        history.append({"role": "assistant", "content": answer})


@app.command()
def judge(
    input: str = typer.Argument(..., help="candidate pairs: prompt + response_a/response_b, or chosen/rejected (any "
                                "preference format; the label then gives agreement figures); file or bundled:NAME"),
    out: str = typer.Option(..., "--out", help="Preference JSONL to write (+ .summary.json, .malformed.jsonl)"),
    judge_: str = typer.Option("bundled", "--judge", help="local model name/run dir, or an OpenAI-compatible base URL "
                               "(http://host:port/v1)"),
    model: str = typer.Option("default", "--model", help="model name to request from an HTTP judge"),
    mode: str = typer.Option("tie", help="what verdicts that flip with the order become: tie | weight"),
    template: str = typer.Option("pairwise", help="template name (pairwise, reference) or path to your own"),
    limit: int = typer.Option(None, help="judge only the first N pairs"),
    seed: int = typer.Option(0, help="seed of the slot assignment for chosen/rejected rows"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="environment variable holding the HTTP judge's key"),
    cache_dir: str = typer.Option(None, help="HTTP answer cache (default: OUT's folder/.judge-cache)"),
    concurrency: int = typer.Option(4, help="HTTP requests in flight"),
    rate_limit: float = typer.Option(None, help="HTTP requests per second at most"),
    max_retries: int = typer.Option(5, help="HTTP retries (exponential backoff, or the server's Retry-After) before "
                                    "the run stops with an error; a failed request is never a verdict"),
    timeout: float = typer.Option(120.0, help="HTTP judge: seconds to wait for a connection and for each read"),
    max_tokens: int = typer.Option(512, help="HTTP judge: longest answer (explanation + verdict) to ask for"),
    batch_size: int = typer.Option(8, help="local judge: prompts per forward"),
    min_mass: float = typer.Option(0.0, help="local judge: verdict tokens' probability below this is malformed"),
    judge_name: str = typer.Option(None, help="name matched against model_a/model_b for the self-preference rate"),
) -> None:
    """RLAIF: label candidate pairs with an AI judge (both orders, debiased) as preference data for rm/dpo."""
    from palate.data.errors import DataError
    from palate.infra.logging import setup_logging
    from palate.judges import make_judge
    from palate.judges.http import JudgeHTTPError, JudgeUnreachable
    from palate.judges.label import format_summary, label_file

    setup_logging()
    if mode not in ("tie", "weight"):
        _fail(ValueError(f"--mode must be tie or weight, got {mode!r}"))
    if judge_.startswith(("http://", "https://")):
        kw = dict(model=model, api_key_env=api_key_env, template=template, concurrency=concurrency,
                  rate_limit=rate_limit, max_retries=max_retries, name=judge_name, max_tokens=max_tokens,
                  timeout=timeout, cache_dir=cache_dir or str(Path(out).resolve().parent / ".judge-cache"))
    else:
        kw = dict(template=template, batch_size=batch_size, min_mass=min_mass)
    try:
        j = make_judge(judge_, **kw)
        summary = label_file(j, input, out, mode=mode, seed=seed, limit=limit, judge_name=judge_name)
    except (DataError, FileNotFoundError, OSError, KeyError, ValueError, JudgeUnreachable, JudgeHTTPError) as e:
        _fail(e)
    typer.echo(format_summary(summary))


@app.command(context_settings={"allow_extra_args": False})
def constitutional(args: list[str] = typer.Argument(None, help=_ARGS_HELP), overwrite: bool = _OVERWRITE,
                   print_config: bool = _PRINT_CONFIG) -> None:
    """Constitutional AI: generate, critique against a sampled principle, revise; writes SFT data (sft.jsonl)
    and revised-over-original pairs (pairs.jsonl). Resumes if rerun."""
    from palate.recipes.constitutional import ConstitutionalConfig, train

    _train(ConstitutionalConfig, train, args, overwrite, print_config, label="data")


@app.command()
def serve(
    model: str = typer.Argument(..., help="run dir, HF model dir, .gguf file, hub name, 'bundled' or 'tiny'"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000),
    api_key: str = typer.Option(None, "--api-key", envvar="PALATE_API_KEY",
                                help="require 'Authorization: Bearer KEY' (or set PALATE_API_KEY)"),
    max_batch: int = typer.Option(8, help="requests generated together at most"),
    batch_wait_ms: float = typer.Option(10.0, help="how long the first waiting request waits for others"),
    max_request_bytes: int = typer.Option(1 << 20, help="larger request bodies get 413"),
    max_tokens_limit: int = typer.Option(1024, help="largest max_tokens a request may ask for"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    safety_classifier: str = typer.Option(None, "--safety-classifier", help="guardrail: block unsafe requests and "
                                          "answers (bundled | palate safety dir | HF classifier[#LABEL])"),
    input_threshold: float = typer.Option(None, help="block a request whose P(unsafe) >= this (default: the "
                                          "classifier's threshold when neither threshold is given)"),
    output_threshold: float = typer.Option(None, help="block an answer whose P(unsafe) >= this"),
    refusal: str = typer.Option(None, help="what a blocked request or answer gets instead"),
    best_of: int = typer.Option(1, "--best-of", help="sample N answers, serve the reward model's best"),
    reward_model: str = typer.Option(None, "--reward-model", help="reward model for --best-of (run or model dir)"),
    guard_log: str = typer.Option(None, "--guard-log", help="JSONL log of blocked/replaced answers "
                                  "(default guardrails.jsonl)"),
) -> None:
    """OpenAI-compatible chat server (/v1/chat/completions with streaming, /v1/models) with request batching;
    optional guardrails (safety filter in and out, best-of-N with a reward model; counters at /v1/guardrails)."""
    from palate.infra.device import pick_device
    from palate.infra.logging import setup_logging
    from palate.serve.app import serve as run_server

    setup_logging()
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        typer.secho(f"warning: serving on {host} without an API key", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"serving {model} at http://{host}:{port}/v1 (Ctrl-C stops)")
    try:
        guard = dict(safety_classifier=safety_classifier, input_threshold=input_threshold,
                     output_threshold=output_threshold, refusal=refusal, best_of=best_of, reward_model=reward_model,
                     guard_log=guard_log)
        run_server(model, host=host, port=port, device=str(pick_device(device)), api_key=api_key, max_batch=max_batch,
                   batch_wait_ms=batch_wait_ms, max_request_bytes=max_request_bytes, max_tokens_limit=max_tokens_limit,
                   guard=guard)
    except (FileNotFoundError, OSError, ValueError) as e:
        _fail(e)


@app.command()
def report(
    run: str = typer.Argument(..., help="a run directory"),
    out: str = typer.Option(None, "--out", help="HTML file to write (default: RUN/report/report.html); report.md beside it"),
) -> None:
    """One self-contained HTML report of a run (curves, RL, reward-model eval, win rates, monitor, samples)."""
    from palate.eval.report import write_report

    try:
        path = write_report(run, out)
    except (FileNotFoundError, ValueError) as e:
        _fail(e)
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
    from palate.data.errors import DataError
    from palate.eval.alpaca_eval import LENGTH_UNITS
    from palate.eval.imported import format_winrates, read_judgments, winrates_from_judgments

    if length_unit not in LENGTH_UNITS:
        _fail(ValueError(f"--length-unit must be one of {', '.join(LENGTH_UNITS)}, got {length_unit!r}"))
    if (length_unit == "tokens") != (tokenizer is not None):
        _fail(ValueError("--tokenizer goes with --length-unit tokens (and tokens need one)"))
    try:
        tok = None
        if tokenizer:
            from palate.models.load import load_tokenizer

            tok = load_tokenizer(tokenizer)
        judged = read_judgments(judgments, baseline=baseline, unit=length_unit, tokenizer=tok, policy=policy)
        summary = winrates_from_judgments(judged, out, unit=length_unit, tokenizer=tok, lc=lc,
                                          alpaca_eval_repo=alpaca_eval_repo, judge=judge_, n_resamples=n_resamples,
                                          seed=seed)
    except (DataError, FileNotFoundError, OSError, ValueError) as e:
        _fail(e)
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
    from palate.config import ConfigError
    from palate.eval.rl import format_reevaluation
    from palate.recipes.rl_eval import reevaluate
    from palate.infra.device import pick_device
    from palate.infra.logging import setup_logging

    setup_logging()
    try:
        summary = reevaluate(run, samples=samples, policy=policy, max_new_tokens=max_new_tokens,
                             device=str(pick_device(device)))
    except (ConfigError, FileNotFoundError, OSError, ValueError) as e:
        _fail(e)
    typer.echo(format_reevaluation(summary))
    typer.echo(f"written to {run}/report/rl_reeval.json (answers in {run}/report/reeval/eval_samples.jsonl)")


_GEN = dict(max_new_tokens=typer.Option(128, help="longest answer in tokens"),
            temperature=typer.Option(0.0, help="0 = greedy; > 0 samples with --seed"),
            top_p=typer.Option(1.0), seed=typer.Option(0, help="sampling and bootstrap seed"),
            batch_size=typer.Option(8, help="prompts generated / scored together"),
            device=typer.Option("auto", help="auto | cpu | cuda | cuda:N"))


_SAFETY_HELP = ("safety classifier for P(unsafe) of each answer: bundled | a `palate safety train` dir | "
                "a sequence-classification model dir or hub name (NAME#LABEL names its unsafe label)")


@app.command("eval")
def eval_(
    policies: list[str] = typer.Argument(..., help="policies to evaluate: run dirs, model dirs, hub names, tiny"),
    prompts: str = typer.Option(None, "--prompts", help="prompt set: JSONL/JSON, AlpacaEval JSON, MT-Bench "
                                "question.jsonl, dataset dir, bundled:NAME"),
    baseline: str = typer.Option(None, "--baseline", help="model every policy is compared against (e.g. the SFT "
                                 "run); --suite mtbench: the second model of the pairwise comparison"),
    out: str = typer.Option(..., "--out", help="output dir: answers.jsonl, eval/winrates.json, eval_summary.json"),
    suite: str = typer.Option("winrate", "--suite", help="winrate (vs --baseline) | humaneval (sandboxed pass@k) | "
                              "tasks (--tasks FILE: task success rate) | mtbench (--prompts question.jsonl)"),
    tasks: str = typer.Option(None, "--tasks", help="--suite tasks: JSONL of id, prompt and a checker"),
    n_samples: int = typer.Option(1, "--n-samples", help="--suite humaneval: completions per problem"),
    k: list[int] = typer.Option([1], "--k", help="--suite humaneval: pass@k to report (repeatable)"),
    judge_: str = typer.Option("panel", "--judge", help="panel | reward:RUN_DIR | local:MODEL"),
    references: str = typer.Option(None, "--references", help="--suite mtbench: FastChat's reference_answer/"
                                   "gpt-4.jsonl (math, reasoning and coding are graded against it)"),
    judge_prompts: str = typer.Option(None, "--judge-prompts", help="--suite mtbench: FastChat judge_prompts.jsonl "
                                      "(default: the copy shipped with palate)"),
    reward_model: str = typer.Option(None, "--reward-model", help="reward model for the mean reward column"),
    safety_classifier: str = typer.Option(None, "--safety-classifier", help=_SAFETY_HELP),
    limit: int = typer.Option(None, help="first N prompts only"),
    export_alpaca: str = typer.Option(None, "--export-alpaca", help="also write answers as AlpacaEval model outputs"),
    max_new_tokens: int = _GEN["max_new_tokens"], temperature: float = _GEN["temperature"],
    top_p: float = _GEN["top_p"], seed: int = _GEN["seed"], batch_size: int = _GEN["batch_size"],
    device: str = _GEN["device"],
) -> None:
    """Win rates (raw, length-controlled, 95% CIs) of policies against a baseline, reward, length, diversity
    and refusals on a prompt set. Answers are cached in OUT/answers.jsonl."""
    from palate.data.errors import DataError
    from palate.eval.policy import GenSettings, evaluate, format_table
    from palate.infra.device import pick_device
    from palate.infra.logging import setup_logging

    setup_logging()
    settings = GenSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    if suite != "winrate":
        from palate.eval.suites import run_suite

        try:
            typer.echo(run_suite(suite, policies, out, prompts=prompts, baseline=baseline, tasks=tasks, judge=judge_,
                                 n_samples=n_samples, ks=tuple(k), limit=limit, settings=settings,
                                 device=str(pick_device(device)), batch_size=batch_size, references=references,
                                 judge_prompts=judge_prompts))
        except (DataError, FileNotFoundError, OSError, ValueError, RuntimeError) as e:
            _fail(e)
        return
    if prompts is None or baseline is None:
        _fail(ValueError("--suite winrate needs --prompts and --baseline"))
    try:
        summary = evaluate(policies, prompts, baseline, out, judge=judge_, reward_model=reward_model, limit=limit,
                           settings=settings, device=str(pick_device(device)), batch_size=batch_size,
                           alpaca_out=export_alpaca, safety_classifier=safety_classifier)
    except (DataError, FileNotFoundError, OSError, ValueError, RuntimeError) as e:
        _fail(e)
    typer.echo(format_table(summary))
    typer.echo(f"written to {out} (answers.jsonl, eval/winrates.json, eval_summary.json); palate report {out}")
    for path in summary.get("alpaca_exports", []):
        typer.echo(f"AlpacaEval model outputs: {path}")


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
    from palate.data.errors import DataError
    from palate.eval import mtbench_results as res
    from palate.eval.prompts import read_mtbench

    if mode not in ("single", "pairwise-baseline", "pairwise-all"):
        _fail(ValueError(f"--mode must be single, pairwise-baseline or pairwise-all, got {mode!r}"))
    try:
        if mode == "single":
            rows = res.read_single_judgments(judgments)
            cats = {q.question_id: q.category for q in read_mtbench(questions)} if questions else None
            names = [m for m in dict.fromkeys(r["model"] for r in rows) if not model_list or m in model_list]
            typer.echo(res.format_single(res.summarise_single(rows, cats, names)))
        else:
            rows = res.read_pair_judgments(judgments)
            base = baseline_model if mode == "pairwise-baseline" else None
            typer.echo(res.format_pairwise(res.summarise_pairwise(rows, base, model_list or None)))
    except (DataError, FileNotFoundError, OSError) as e:
        _fail(e)


@app.command()
def redteam(
    model: str = typer.Argument(..., help="model to attack: run dir, model dir, hub name, tiny, or a served "
                                "model's URL (http://HOST:PORT/v1, e.g. palate serve with guardrails)"),
    out: str = typer.Option(None, "--out", help="output dir (default: MODEL/redteam for a run dir, "
                            "else ./redteam-NAME; needed for a URL)"),
    prompts: str = typer.Option("bundled:redteam", "--prompts", help="suite with prompt, harmful, category, attack"),
    judge_: str = typer.Option(None, "--judge", help="safety reward model: an attack succeeds when its score is "
                               "below --threshold (default: the answer is not a refusal)"),
    threshold: float = typer.Option(0.0, help="safety score below which an answer counts as unsafe"),
    safety_classifier: str = typer.Option(None, "--safety-classifier", help=_SAFETY_HELP + "; an attack succeeds "
                                          "when the answer is unsafe (instead of --judge)"),
    limit: int = typer.Option(None, help="first N prompts only"),
    max_new_tokens: int = _GEN["max_new_tokens"], temperature: float = _GEN["temperature"],
    top_p: float = _GEN["top_p"], seed: int = _GEN["seed"], batch_size: int = _GEN["batch_size"],
    device: str = _GEN["device"],
) -> None:
    """Red-team a model: attack success rate per category and jailbreak framing (95% CIs), over-refusal on
    benign look-alikes, worst samples; writes redteam.json and answers.jsonl."""
    from palate.data.errors import DataError
    from palate.eval.policy import GenSettings, is_endpoint
    from palate.eval.redteam import format_redteam, run_redteam
    from palate.infra.device import pick_device
    from palate.infra.logging import setup_logging

    setup_logging()
    if out is None:
        if is_endpoint(model):
            _fail(ValueError("a URL needs --out (where redteam.json and answers.jsonl go)"))
        out = str(Path(model) / "redteam") if Path(model).is_dir() else f"redteam-{Path(model).name}"
    settings = GenSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    try:
        res = run_redteam(model, out, prompts=prompts, limit=limit, settings=settings, judge=judge_,
                          threshold=threshold, device=str(pick_device(device)), batch_size=batch_size,
                          safety_classifier=safety_classifier)
    except (DataError, FileNotFoundError, OSError, ValueError, RuntimeError) as e:
        _fail(e)
    typer.echo(format_redteam(res))
    typer.echo(f"written to {out} (redteam.json, answers.jsonl); palate report {out}")


@app.command()
def plan(
    model: str = typer.Argument(None, help="model dir, run dir, 'bundled' or hub name (reads config.json)"),
    params: str = typer.Option(None, "--params", help="a parameter count instead of a model, e.g. 7B (shape assumed)"),
    method: str = typer.Option("sft", help="sft | rm | dpo | ppo | grpo"),
    lora: bool = typer.Option(False, "--lora/--full", help="LoRA on all linear layers, or full fine-tuning"),
    lora_r: int = typer.Option(16, help="LoRA rank"),
    dtype: str = typer.Option("bf16", help="bf16 (mixed precision) | fp32"),
    seq_len: int = typer.Option(2048, help="tokens per row"),
    micro_batch: int = typer.Option(1, help="rows (pairs for rm/dpo) per device per forward"),
    devices: int = typer.Option(1, help="data-parallel devices to shard over"),
    reference: str = typer.Option("precompute", help="dpo: precompute (no reference model resident) | live"),
    gpu_memory: float = typer.Option(None, help="GiB per device: mark which configurations fit"),
    as_json: bool = typer.Option(False, "--json", help="print the table as JSON"),
) -> None:
    """Estimate per-device memory (GiB) of a training run for every sharding strategy, with and without
    gradient checkpointing: weights, gradients, AdamW states, resident frozen models, activations, logits."""
    import json as _json

    from palate.infra.memory import Setup, format_table, load_shape, parse_params, plan as make_plan, shape_from_params

    try:
        if (model is None) == (params is None):
            raise ValueError("give a MODEL or --params (one of them)")
        shape = shape_from_params(parse_params(params)) if params else load_shape(model)
        base = Setup(method=method, lora=lora, lora_r=lora_r, dtype=dtype, seq_len=seq_len, micro_batch=micro_batch,
                     devices=devices, reference=reference)
        rows = make_plan(shape, base, gpu_memory)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(e)
    typer.echo(_json.dumps(rows, indent=1) if as_json else format_table(shape, base, rows, gpu_memory))


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
    from palate.data.errors import DataError
    from palate.models.load import load_tokenizer

    if kind != "auto" and kind not in KINDS:
        _fail(ValueError(f"--kind must be auto or one of {', '.join(KINDS)}, got {kind!r}"))
    try:
        kind = detect_kind(path, split) if kind == "auto" else kind
        tok = load_tokenizer(model)
        report = check_dataset(path, kind, tok, max_length, long_prompts=long_prompts, on_error=on_error, split=split)
    except (DataError, FileNotFoundError, OSError, ValueError) as e:
        _fail(e)
    typer.echo(_json.dumps(report, indent=1) if as_json else format_check(report))


@app.command("run", context_settings={"allow_extra_args": False})
def run_cmd(args: list[str] = typer.Argument(None, help="PIPELINE.yaml and key=value overrides, e.g. rounds=2"),
            print_config: bool = _PRINT_CONFIG) -> None:
    """The whole pipeline: SFT -> sample -> judge -> reward model -> DPO/GRPO/PPO -> eval -> report. Stages are
    cached by a hash of their config and inputs: a rerun redoes only what changed."""
    from palate.config import ConfigError, dump_yaml
    from palate.data.errors import DataError
    from palate.pipeline import format_summary, load_pipeline, run_pipeline

    config, overrides = _config_and_overrides(args)
    try:
        cfg = load_pipeline(config, overrides)
        if print_config:
            typer.echo(dump_yaml(cfg), nl=False)
            return
        summary = run_pipeline(cfg)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as e:
        _fail(e)
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
    device: str = _GEN["device"],
) -> None:
    """Embed labelled answers with all-MiniLM-L6-v2 and fit a logistic-regression head; report held-out
    accuracy (95% bootstrap CI) and AUC. Use the result with --safety-classifier OUT."""
    from palate.data.errors import DataError
    from palate.eval.safety import format_training, train_safety_classifier
    from palate.infra.device import pick_device

    try:
        meta = train_safety_classifier(data, out, heldout=heldout, l2=l2, threshold=threshold, seed=seed,
                                       overwrite=overwrite, device=str(pick_device(device)))
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as e:
        _fail(e)
    typer.echo(format_training(meta))
    typer.echo(f"written to {out}; use it with --safety-classifier {out}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
