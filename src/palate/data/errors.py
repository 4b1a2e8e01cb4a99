"""Errors and skip accounting for input data: every problem names its file, row and field."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from palate.errors import PalateError

log = logging.getLogger("palate.data")


def where(source: str, row: int | None, fieldname: str | None = None) -> str:
    """``file.jsonl line 12 field 'response'`` (rows are 1-based lines for JSONL, 1-based rows otherwise)."""
    parts = [str(source)]
    if row is not None:
        parts.append(f"{'line' if _is_jsonl(str(source)) else 'row'} {row}")
    if fieldname:
        parts.append(f"field '{fieldname}'")
    return " ".join(parts)


def _is_jsonl(source: str) -> bool:
    """A JSONL file, compressed or not (``train.jsonl.gz``): its rows are lines."""
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        source = source.removesuffix(suffix)
    return source.endswith(".jsonl")


class DataError(PalateError, ValueError):
    """Malformed input. ``str(err)`` says where: file, line/row and field."""

    def __init__(self, source: str, row: int | None, fieldname: str | None, message: str):
        self.source, self.row, self.field, self.message = str(source), row, fieldname, message
        super().__init__(f"{where(source, row, fieldname)}: {message}")


@dataclass
class Skip:
    source: str
    row: int | None
    field: str | None
    reason: str

    def __str__(self) -> str:
        return f"{where(self.source, self.row, self.field)}: {self.reason}"


@dataclass
class SkipLog:
    """Rows left out or changed on the way from file to batch, counted by reason and reported.

    ``skips`` are rows dropped; ``truncations`` are rows kept but shortened. Nothing is left out
    without appearing here, and recipes print :meth:`summary` and save :meth:`as_dict`.
    """

    skips: list[Skip] = field(default_factory=list)
    truncations: list[Skip] = field(default_factory=list)
    seen: int = 0

    def skip(self, source: str, row: int | None, fieldname: str | None, reason: str) -> None:
        self.skips.append(Skip(str(source), row, fieldname, reason))

    def truncate(self, source: str, row: int | None, fieldname: str | None, reason: str) -> None:
        self.truncations.append(Skip(str(source), row, fieldname, reason))

    def _reason_counts(self, items: list[Skip]) -> Counter:
        return Counter(s.reason.split(" (")[0] for s in items)

    def summary(self, max_examples: int = 5, saved_in: str | None = "data_report.json") -> str:
        lines = []
        for title, items in (("skipped", self.skips), ("truncated", self.truncations)):
            if not items:
                continue
            counts = ", ".join(f"{n} {r}" for r, n in self._reason_counts(items).most_common())
            rows = len({(s.source, s.row) for s in items})  # a pair can have both answers cut: rows, then fields
            lines.append(f"{title} {rows} of {self.seen} rows: {counts}")
            lines.extend(f"  {s}" for s in items[:max_examples])
            if len(items) > max_examples:
                lines.append(f"  ... and {len(items) - max_examples} more" + (f" (see {saved_in})" if saved_in else ""))
        return "\n".join(lines) if lines else f"all {self.seen} rows used, none truncated"

    def as_dict(self) -> dict:
        return {
            "rows_seen": self.seen,
            "skipped": len(self.skips),
            "truncated": len(self.truncations),  # fields cut (a row may have several)
            "truncated_rows": len({(s.source, s.row) for s in self.truncations}),
            "skipped_by_reason": dict(self._reason_counts(self.skips)),
            "truncated_by_reason": dict(self._reason_counts(self.truncations)),
            "skips": [vars(s) for s in self.skips],
            "truncations": [vars(s) for s in self.truncations],
        }

    def report(self) -> None:
        text = self.summary()
        if self.skips or self.truncations:
            log.warning("%s", text)
        else:
            log.info("%s", text)
