"""The documentation site builds with ``mkdocs build --strict`` (a broken link or anchor, a missing page or a
docstring mkdocstrings cannot render fails it), and its generated references cover the code: every Typer
command and option, and every field of the config classes, computed from the code rather than listed here,
so a new command or field without documentation cannot slip by."""

from __future__ import annotations

import dataclasses
import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GEN = REPO / "docs" / "gen"

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")
pytest.importorskip("material")

sys.path.insert(0, str(GEN))
import cli_reference  # noqa: E402
import config_reference  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


def test_every_page_of_the_nav_is_built(site):
    for page in ["index.html", "getting-started.html", "concepts.html", "guides/online-rl.html",
                 "reference/cli.html", "reference/config.html", "reference/api/losses.html",
                 "results/index.html", "results/bench.html"]:
        assert (site / page).is_file(), page


def test_cli_reference_lists_every_command_and_option(site):
    page = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    root = cli_reference.root()
    commands = cli_reference.commands()
    assert {"sft", "rm", "dpo", "grpo", "ppo", "label serve", "data check"} <= set(commands)
    for path in commands:
        assert f'id="{cli_reference.anchor(path)}"' in page, f"palate {path} has no section in the CLI reference"
        cmd = root
        for part in path.split():
            cmd = cmd.commands[part]
        section = page.split(f'id="{cli_reference.anchor(path)}"', 1)[1].split("<h2", 1)[0].split("<h3", 1)[0]
        for p in cmd.params:
            if p.name == "help" or getattr(p, "hidden", False):
                continue
            names = list(p.opts) if p.param_type_name == "option" else [(p.metavar or p.name).upper()]
            assert all(n in html.unescape(section) for n in names), f"palate {path}: {names} not documented"


def test_config_reference_lists_every_field(site):
    page = (site / "reference" / "config.html").read_text(encoding="utf-8")
    configs = {c.qualname: c for c in config_reference.find_configs()}
    from palate.config import DataConfig, TrainConfig
    from palate.recipes.grpo import GRPOConfig
    from palate.rollout.rewards import RewardConfig as RolloutRewardConfig

    for cls in (TrainConfig, DataConfig, GRPOConfig, RolloutRewardConfig):
        c = configs[f"{cls.__module__}.{cls.__qualname__}"]
        section = page.split(f'id="{c.anchor}"', 1)[1].split("<h2", 1)[0]
        for f in dataclasses.fields(cls):
            assert f"<code>{f.name}</code>" in section, f"{cls.__qualname__}.{f.name} missing from the config reference"
    # every section a command's config holds is documented, however deeply nested
    for c in configs.values():
        assert f'id="{c.anchor}"' in page, c.qualname
    # every command that takes a config links to it
    for cmd in config_reference.command_configs():
        assert f"palate {cmd}" in _text(site / "reference" / "config.html"), cmd


def test_field_meanings_come_from_docstrings_or_comments(tmp_path, monkeypatch):
    """The generator reads an attribute docstring first, then the trailing comment, then a comment block above."""
    src = tmp_path / "demo_cfg.py"
    src.write_text(
        "from dataclasses import dataclass\n\n@dataclass\nclass DemoConfig:\n"
        "    a: int = 1  # the trailing comment\n"
        "    b: str = 'x'\n    \"\"\"the docstring\"\"\"\n"
        "    # a block above\n    # on two lines\n    c: float = 0.5\n"
        "    d: bool = False\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("demo_cfg")
    desc = config_reference._describe(mod.DemoConfig)
    meanings = {f.name: f.meaning for f in desc.fields}
    assert meanings == {"a": "the trailing comment", "b": "the docstring", "c": "a block above on two lines", "d": ""}
    assert [f.default for f in desc.fields] == ["1", "'x'", "0.5", "false"]


def test_loss_formulas_render_as_code(site):
    page = (site / "reference" / "api" / "losses.html").read_text(encoding="utf-8")
    assert 'id="palate.losses.preference.dpo_loss"' in page
    assert re.search(r"<pre><span></span><code>loss = −log σ\(β·h\)", page), "DPO's formula is not a code block"


def test_results_page_is_generated_from_every_json(site):
    text = _text(site / "results" / "bench.html")
    for path in (REPO / "bench" / "results").glob("*.json"):
        assert f"bench/results/{path.name}" in text
