"""The base of every error palate reports to a user as one line (``error: ...``, exit code 2).

This module is the bottom layer: it imports nothing from palate, so every package can derive its user-facing
errors from :class:`PalateError` (``ConfigError``, ``DataError``, ``RunExistsError``, ``JudgeUnreachable`` ...).
The ``palate`` commands run through one wrapper (:mod:`palate.clikit`) that turns these, and the OSError and
ValueError a bad path or value raises, into that one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class PalateError(Exception):
    """A problem the user can fix (bad config, bad data, a run that exists, a judge that cannot be reached);
    ``str(err)`` is the whole message."""


def keep_traceback_file(error: BaseException, path: Path) -> None:
    """Remember that ``path`` holds ``error``'s traceback (a run's ``error.log``), for the one-line report."""
    try:
        error.palate_traceback_file = path  # type: ignore[attr-defined]
    except AttributeError:  # an exception type with __slots__
        pass


def traceback_file(error: BaseException) -> Path | None:
    """Where :func:`keep_traceback_file` put ``error``'s traceback, if anywhere."""
    return getattr(error, "palate_traceback_file", None)


__all__ = ["PalateError", "keep_traceback_file", "traceback_file"]
