"""Markdown in prompts and model responses, rendered safely for the task pages.

markdown-it (CommonMark) with raw HTML off: every ``<`` in the text is escaped, so ``<script>`` or
``<img onerror=…>`` in a model's output is shown as text, never parsed. Links work only for http(s) and
mailto URLs (``javascript:``, ``data:``, relative paths stay plain text) and carry
``rel="noopener nofollow noreferrer"``; images are not loaded (the page's CSP would refuse them anyway,
and an image URL is a tracking beacon), their markdown stays text. Fenced code blocks become
``<pre><code>``. Single newlines are kept as line breaks, as chat outputs mean them.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markupsafe import Markup

SAFE_SCHEMES = ("http://", "https://", "mailto:")
REL = "noopener nofollow noreferrer"

_md = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False, "typographer": False})
_md.enable(["table", "strikethrough"]).disable("image")
_md.validateLink = lambda url: url.strip().lower().startswith(SAFE_SCHEMES)


def _link_open(self, tokens, idx, options, env):
    tokens[idx].attrSet("rel", REL)
    return self.renderToken(tokens, idx, options, env)


_md.add_render_rule("link_open", _link_open)


def render_markdown(text) -> Markup:
    """``text`` (anything: non-strings are shown as their ``str``) as HTML that is safe to insert as is."""
    return Markup(_md.render(text if isinstance(text, str) else str(text)))
