"""MkDocs hook: adds the generated reference pages to the site at build time (nothing is written into docs/).

- ``reference/cli.md``     every command and option, from the Typer app (cli_reference.py)
- ``reference/config.md``  every config section and field, from the dataclasses (config_reference.py)
- ``results/bench.md``     the figures in bench/results/*.json (results_page.py)
- ``reference/api/*.md``   one mkdocstrings block per module of losses, data, models, eval, judges (api_pages.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File

sys.path.insert(0, str(Path(__file__).resolve().parent))

import api_pages  # noqa: E402
import cli_reference  # noqa: E402
import config_reference  # noqa: E402
import results_page  # noqa: E402

PAGES = {
    "reference/cli.md": cli_reference.render,
    "reference/config.md": config_reference.render,
    "results/bench.md": results_page.render,
    **{f"reference/api/{pkg}.md": (lambda pkg=pkg: api_pages.render(pkg)) for pkg in api_pages.PACKAGES},
}


def on_files(files, config):
    for uri, render in PAGES.items():
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, content=render()))
    return files
