"""Every ``palate`` command shown in a ```bash block of README.md or docs/ parses: commands that take
``--print-config`` resolve their config with it (a misspelt key, a wrong type or a missing required option
fails); the others are parsed by the command itself without running. Torch-free and quick, so a renamed
option or config key cannot leave the docs behind. (Running them end to end is the job of the e2e tests.)"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "docs" / "gen"))
import cli_reference  # noqa: E402

ENV = {"DB": "postgresql+psycopg://palate:secret@db.internal/labels"}  # what the docs set with export


def documented_commands() -> list[tuple[str, str]]:
    """``(file, command line)`` for every palate command in a bash block, continuation lines joined,
    comments dropped; ``torchrun ... -m palate sft ...`` counts as ``palate sft ...``."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
                m = re.search(r"(?:^|-m )palate (.*)$", line)
                if m:
                    found.append((str(path.relative_to(REPO)), "palate " + m.group(1)))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    files = {f for f, _ in COMMANDS}
    assert "README.md" in files and "docs/guides/online-rl.md" in files and len(COMMANDS) > 40


@pytest.mark.parametrize("where,line", COMMANDS, ids=[f"{f}:{c[:60]}" for f, c in COMMANDS])
def test_documented_command_parses(where, line, monkeypatch):
    from typer.testing import CliRunner

    from palate.cli import app

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = shlex.split(line)[1:]
    args = [re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: ENV[m.group(1) or m.group(2)], a) for a in args]
    cmd, rest = cli_reference.root(), list(args)
    while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:
        cmd = cmd.commands[rest.pop(0)]
    assert not hasattr(cmd, "commands"), f"{where}: {line!r} names no command"
    if any("--print-config" in p.opts for p in cmd.params if p.param_type_name == "option"):
        extra = [] if "--print-config" in args else ["--print-config"]
        result = CliRunner().invoke(app, args + extra)
        assert result.exit_code == 0, f"{where}: {line!r} -> {result.output[-500:]}"
    else:
        cmd.make_context("palate", rest)  # raises on an unknown option or a missing argument
