"""Griffe extension for the API pages: the docstrings use Sphinx roles (``:func:`gae```, ``:class:`PairLoss```),
which Markdown would show literally as ":func:"; render each as plain code (``gae()``, ``PairLoss``)."""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|meth|class|mod|attr|data|obj|exc):`~?([^`]+)`")


def strip_roles(text: str) -> str:
    def code(m: re.Match) -> str:
        name = m.group(1)
        return f"`{name}()`" if m.group(0).startswith((":func:", ":meth:")) and not name.endswith(")") else f"`{name}`"

    return ROLE.sub(code, text)


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, node, obj, agent, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = strip_roles(obj.docstring.value)
