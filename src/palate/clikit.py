"""What every ``palate`` command shares: one error path, and ``[CONFIG.yaml] [key=value ...]`` configs.

* :class:`App` is a ``typer.Typer`` whose commands all run through :func:`guarded`: a user-facing error
  (:class:`palate.errors.PalateError`, and the ``OSError``/``ValueError`` a bad path or value raises) becomes one
  line ``error: ...`` on stderr and exit code 2; any other exception (a bug) becomes one line too, naming the file
  that holds its traceback (the run's ``error.log`` when a run was open, else a temporary file), exit code 1.
  ``palate --debug ...`` (or ``PALATE_TRACEBACK=1``) lets every exception through with its traceback.
* :func:`command_config` resolves a command's frozen dataclass config from, in increasing precedence: the
  dataclass defaults, an optional ``CONFIG.yaml``, ``key=value`` overrides, positional arguments and flags
  (each flag is a shortcut for one key). :func:`echo_config` prints it as YAML that the same command reads back.

Imports nothing from palate but :mod:`palate.config` and :mod:`palate.errors` (the feedback app's commands use
it and must not import torch).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import tempfile
import traceback
from pathlib import Path
from collections.abc import Callable
from typing import Any, NoReturn

import typer

from palate.config import ConfigError, dump_yaml, load_config
from palate.errors import PalateError, traceback_file

USER_ERRORS: tuple[type[BaseException], ...] = (PalateError, OSError, ValueError)
# What a command raises to end itself or to say its usage was wrong: typer's (which vendors click since 0.2x, so
# click's own classes are not these) and click's ClickException base, found through typer.BadParameter.
_CLI_EXITS: tuple[type[BaseException], ...] = (
    typer.Exit, typer.Abort, next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))


def fail(e: BaseException | str) -> NoReturn:
    """Print ``error: ...`` and exit with code 2."""
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def guarded(fn: Callable, errors: Callable[[], tuple[type[BaseException], ...]] = lambda: USER_ERRORS) -> Callable:
    """``fn`` with user-facing errors turned into :func:`fail`. ``errors()`` is called only when an exception
    passes, so a command module can name error types whose modules are slow to import."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _CLI_EXITS:
            raise
        except Exception as e:
            if debugging():
                raise
            if isinstance(e, errors()):
                fail(e)
            unexpected(e)

    return run


def debugging() -> bool:
    """``palate --debug`` (or ``PALATE_TRACEBACK=1``): exceptions keep their tracebacks on the terminal."""
    return os.environ.get("PALATE_TRACEBACK", "") not in ("", "0")


def unexpected(e: BaseException) -> NoReturn:
    """One line for an exception palate did not expect, and the traceback kept in a file: the run's ``error.log``
    when the failing command had opened a run (:meth:`palate.infra.run.RunDir.mark_failed` wrote it), else a new
    temporary file. Exit code 1."""
    where = traceback_file(e)
    if where is None:
        fd, name = tempfile.mkstemp(prefix="palate-error-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(e)))
        where = Path(name)
    first = (str(e).strip().splitlines() or [""])[0]
    typer.secho(f"error: {type(e).__name__}: {first} (unexpected; the traceback is in {where}; rerun with "
                f"`palate --debug ...` to print it here, and please report it)", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


class App(typer.Typer):
    """A ``typer.Typer`` whose every command runs through :func:`guarded` (``errors`` as there)."""

    def __init__(self, *args, errors: Callable[[], tuple[type[BaseException], ...]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._errors = errors or (lambda: USER_ERRORS)

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)
        return lambda fn: register(guarded(fn, self._errors))


# ----------------------------------------------------------------------------- configs

PRINT_CONFIG = typer.Option(False, "--print-config", help="print the resolved config as YAML (which this command "
                            "accepts back as CONFIG.yaml) and exit")
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def split_args(args: list[str] | None) -> tuple[str | None, list[str], list[str]]:
    """``[config.yaml] [key=value ...] [positional ...]`` in any order -> (config, overrides, positionals).
    A ``key=value`` starts with a dotted name (``train.lr=1e-5``); a path or URL with ``=`` later on is a
    positional."""
    config, overrides, positionals = None, [], []
    for a in args or []:
        if _OVERRIDE.match(a):
            overrides.append(a)
        elif a.endswith((".yaml", ".yml")):
            if config is not None:
                raise typer.BadParameter(f"two config files given: {config} and {a}")
            config = a
        else:
            positionals.append(a)
    return config, overrides, positionals


def as_override(key: str, value: Any) -> str:
    """``key=value`` whose value YAML reads back as ``value`` (JSON is YAML: text stays text, ``7`` stays 7)."""
    return f"{key}={json.dumps(value)}"


def command_config(cls: type, args: list[str] | None, *, positional: str | tuple[str, ...] = (),
                   flags: dict[str, Any] | None = None) -> Any:
    """Resolve ``cls`` from ``args`` (``[CONFIG.yaml] [key=value ...]`` plus positionals for the key(s)
    ``positional``: one list field takes them all, else each key takes one, in order) and ``flags``
    (``{key: value}``; a ``None`` value is a flag not given)."""
    config, overrides, positionals = split_args(args)
    keys = (positional,) if isinstance(positional, str) else tuple(positional)
    if positionals:
        if not keys:
            raise typer.BadParameter(f"{positionals[0]!r} is neither a .yaml config nor a key=value override")
        if len(keys) == 1 and cls.__dataclass_fields__[keys[0]].default_factory is list:
            overrides.append(as_override(keys[0], positionals))
        elif len(positionals) > len(keys):
            expected = f"one {keys[0]}" if len(keys) == 1 else f"at most {len(keys)} arguments ({', '.join(keys)})"
            raise ConfigError(f"{expected} expected, got {len(positionals)}: {', '.join(positionals)}")
        else:
            overrides += [as_override(k, v) for k, v in zip(keys, positionals)]
    overrides += [as_override(k, v) for k, v in (flags or {}).items() if v is not None]
    return load_config(cls, config, overrides)


def flag(cls: type, key: str, *decls: str, help: str = "", **kwargs) -> Any:
    """A ``typer.Option`` that is a shortcut for ``key=...`` of config ``cls``: not given, it is ``None`` and
    leaves the key to the config; its help names the key and the config's default."""
    f = cls.__dataclass_fields__[key]
    default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    shown = "" if default is None else f", default {default}"
    text = f"{help} " if help else ""
    return typer.Option(None, *decls, help=f"{text}(key {key}{shown})", show_default=False, **kwargs)


def echo_config(cfg: Any) -> None:
    typer.echo(dump_yaml(cfg), nl=False)


__all__ = ["App", "PRINT_CONFIG", "USER_ERRORS", "as_override", "command_config", "echo_config",
           "fail", "flag", "guarded", "split_args"]
