"""Judge prompt templates: plain files with ``{{ name }}`` placeholders that users copy and edit.

A template is named by a file path, or by the name of one shipped in ``judges/templates/``
(``pairwise``, ``single``, ``reference``, ``critique``, ``revision``). Rendering fails loudly on a
placeholder the caller did not fill, so an edited template can never send a literal ``{{ x }}``.
"""

from __future__ import annotations

import re
from pathlib import Path

from palate.errors import PalateError

TEMPLATE_DIR = Path(__file__).parent / "templates"
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def template_path(name: str | Path) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    shipped = TEMPLATE_DIR / f"{name}.md"
    if shipped.is_file():
        return shipped
    options = ", ".join(sorted(p.stem for p in TEMPLATE_DIR.glob("*.md")))
    raise FileNotFoundError(f"no judge template {name!r}: not a file, and not one of the shipped ones ({options})")


def load_template(name: str | Path) -> str:
    return template_path(name).read_text(encoding="utf-8")


def placeholders(template: str) -> set[str]:
    return set(_PLACEHOLDER.findall(template))


class TemplateError(PalateError, KeyError):
    """A template placeholder without a value (a ``KeyError``, for callers that catch that)."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0])


def render(template: str, **fields: str) -> str:
    """Fill every ``{{ name }}``; a placeholder without a value raises :class:`TemplateError` naming it. Values are
    inserted verbatim (braces in answers are safe: the text is not re-scanned)."""
    missing = placeholders(template) - set(fields)
    if missing:
        raise TemplateError(f"template placeholders without a value: {sorted(missing)} (given: {sorted(fields)})")
    return _PLACEHOLDER.sub(lambda m: str(fields[m.group(1)]), template)
