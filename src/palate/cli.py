"""The ``palate`` command line. Each subcommand parses a config and calls one recipe function."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(help="palate: align language models with human preferences.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Inspect and check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


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


@app.command(context_settings={"allow_extra_args": False})
def sft(
    args: list[str] = typer.Argument(None, help="an optional CONFIG.yaml and section.key=value overrides, e.g. train.lr=1e-5"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run in run_dir"),
    print_config: bool = typer.Option(False, "--print-config", help="print the resolved config as YAML and exit"),
) -> None:
    """Supervised fine-tuning on demonstrations (resumes automatically if run_dir has checkpoints)."""
    from palate.config import ConfigError, dump_yaml, load_config
    from palate.data.errors import DataError
    from palate.infra.run import RunExistsError
    from palate.recipes.sft import SFTConfig, train

    config, overrides = _config_and_overrides(args)
    try:
        cfg = load_config(SFTConfig, config, overrides)
        if print_config:
            typer.echo(dump_yaml(cfg), nl=False)
            return
        final = train(cfg, overwrite=overwrite)
    except (ConfigError, DataError, RunExistsError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(f"final model: {final}")


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


@data_app.command("check")
def data_check(
    path: str = typer.Argument(..., help="file, dataset dir, bundled:NAME or hub name"),
    kind: str = typer.Option("demonstrations", help="demonstrations | preferences"),
    model: str = typer.Option("bundled", help="tokenizer to measure lengths with"),
    max_length: int = typer.Option(512),
    on_error: str = typer.Option("raise", help="raise | skip"),
) -> None:
    """Read a dataset as training would and report rows, token lengths, skips and truncations."""
    from palate.data.errors import DataError, SkipLog
    from palate.data.readers import read_demonstrations, read_preferences
    from palate.data.tokenize import encode_demonstrations
    from palate.models.load import load_tokenizer

    skips = SkipLog()
    try:
        if kind == "preferences":
            records = read_preferences(path, on_error=on_error, skips=skips)
            typer.echo(f"{len(records)} preference pairs read")
            typer.echo(skips.summary())
            return
        if kind != "demonstrations":
            raise typer.BadParameter("kind must be demonstrations or preferences")
        records = read_demonstrations(path, on_error=on_error, skips=skips)
        tok = load_tokenizer(model)
        examples = encode_demonstrations(tok, records, max_length, skips=skips)
    except DataError as e:
        _fail(e)
    lengths = sorted(len(e) for e in examples)
    typer.echo(f"{len(examples)} demonstrations usable of {skips.seen} rows; tokens per example: "
               f"min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}, total {sum(lengths)}")
    typer.echo(skips.summary())


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
