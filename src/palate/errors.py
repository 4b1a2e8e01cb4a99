"""The base of every error palate reports to a user as one line (``error: ...``, exit code 2).

This module is the bottom layer: it imports nothing from palate, so every package can derive its user-facing
errors from :class:`PalateError` (``ConfigError``, ``DataError``, ``RunExistsError``, ``JudgeUnreachable`` ...).
The ``palate`` commands run through one wrapper (:mod:`palate.clikit`) that turns these, and the OSError and
ValueError a bad path or value raises, into that one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PalateError(Exception):
    """A problem the user can fix (bad config, bad data, a run that exists, a judge that cannot be reached);
    ``str(err)`` is the whole message."""


__all__ = ["PalateError"]
