"""``palate data check``: read a dataset as a recipe would and say what it would train on.

:func:`detect_kind` tells demonstrations, preferences, rankings and ratings apart from a file's first
row; :func:`check_dataset` reads every row with the kind's reader and tokenises the records exactly as
``palate sft`` (demonstrations), ``palate rm`` / ``palate dpo`` (preferences, rankings) or KTO (ratings)
would at a given ``max_length`` and long-prompt rule, counting what is skipped, cut or dropped as a tie.
"""

from __future__ import annotations

import statistics
from typing import Any

from palate.data.errors import DataError, SkipLog
from palate.data.readers import iter_rows, read_demonstrations, read_preferences, read_rankings, read_ratings
from palate.data.records import Demonstration, ranking_pairs
from palate.data.tokenize import encode_demonstrations, encode_groups, encode_prompt, uses_chat_template

KINDS = ("demonstrations", "preferences", "rankings", "ratings")


def detect_kind(source: str, split: str = "train", columns: dict[str, str] | None = None) -> str:
    """The record kind of a dataset, from its first row's fields: ``responses`` -> rankings; ``chosen`` and
    ``rejected`` (text, chat messages or HH transcripts) -> preferences; a ``score`` or boolean ``label``
    with a response -> ratings; anything else -> demonstrations."""
    col = {k: k for k in ("prompt", "response", "chosen", "rejected", "responses", "score", "label")}
    col.update(columns or {})
    for src, n, row in iter_rows(source, split):
        if col["responses"] in row:
            return "rankings"
        if col["chosen"] in row and col["rejected"] in row:
            return "preferences"
        has_response = col["response"] in row or "completion" in row
        if has_response and (col["score"] in row or isinstance(row.get(col["label"]), bool)):
            return "ratings"
        return "demonstrations"
    raise DataError(str(source), None, None, "no rows")


def _lengths(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    s = sorted(values)
    return {"min": s[0], "median": int(statistics.median(s)), "p95": s[min(len(s) - 1, int(0.95 * len(s)))],
            "max": s[-1]}


def check_dataset(source: str, kind: str, tokenizer, max_length: int, *, long_prompts: str = "skip",
                  truncate_completion: bool = True, chat_template: bool | None = None, on_error: str = "raise",
                  split: str = "train", columns: dict[str, str] | None = None) -> dict[str, Any]:
    """Read ``source`` as ``kind`` and tokenise it as training would; returns counts and token lengths.

    ``prompt_tokens`` are measured on every record read (before any cut), ``too_long_prompts`` counts those
    that leave no room for a response in ``max_length`` (skipped, or cut from the left with
    ``long_prompts=truncate_left``); ``usable`` is what a recipe would train on."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    skips = SkipLog()
    read = {"demonstrations": read_demonstrations, "preferences": read_preferences, "rankings": read_rankings,
            "ratings": read_ratings}[kind]
    records = read(source, columns=columns, split=split, on_error=on_error, skips=skips)
    report: dict[str, Any] = {"source": str(source), "kind": kind, "rows": skips.seen, "records": len(records),
                              "max_length": max_length, "long_prompts": long_prompts}
    use_template = uses_chat_template(tokenizer, chat_template)
    prompt_tokens = [len(encode_prompt(tokenizer, r.prompt, use_template)) for r in records]
    report["prompt_tokens"] = _lengths(prompt_tokens)
    report["too_long_prompts"] = sum(n >= max_length for n in prompt_tokens)
    enc = dict(skips=skips, chat_template=chat_template, truncate_completion=truncate_completion,
               long_prompts=long_prompts)
    if kind == "preferences":
        ties = [r for r in records if r.tie]
        report["ties"] = len(ties)  # palate rm (reward.ties=drop) and palate dpo drop them, counted
        for r in ties:
            skips.skip(r.meta.get("source", source), r.meta.get("row"), "tie", "tie dropped (rm: reward.ties=drop; dpo)")
        groups = encode_groups(tokenizer, [r for r in records if not r.tie], max_length, **enc)
        report["usable"] = len(groups)
        report["sequence_tokens"] = _lengths([len(e) for g in groups for e in g])
    elif kind == "rankings":
        groups = encode_groups(tokenizer, records, max_length, **enc)
        report["usable"] = len(groups)
        report["pairs_for_bradley_terry"] = sum(len(ranking_pairs(records[g[0].index])) for g in groups)
        report["sequence_tokens"] = _lengths([len(e) for g in groups for e in g])
    else:
        demos = records if kind == "demonstrations" else [
            Demonstration(r.prompt, r.response, meta=r.meta) for r in records]
        examples = encode_demonstrations(tokenizer, demos, max_length, **enc)
        report["usable"] = len(examples)
        report["sequence_tokens"] = _lengths([len(e) for e in examples])
        if kind == "ratings":
            kept = [records[e.index] for e in examples]
            report["desirable"] = sum(r.score > sum(r.scale) / 2 for r in kept)
            report["undesirable"] = sum(r.score < sum(r.scale) / 2 for r in kept)
            report["midpoint"] = len(kept) - report["desirable"] - report["undesirable"]  # KTO skips them
    report["data"] = skips.as_dict()
    report["summary"] = skips.summary()
    return report


_UNITS = {"demonstrations": "demonstrations", "preferences": "preference pairs", "rankings": "rankings",
          "ratings": "ratings"}


def format_check(report: dict[str, Any]) -> str:
    """The check as a few lines for the terminal."""
    kind, unit = report["kind"], _UNITS[report["kind"]]
    reader = {"demonstrations": "palate sft", "preferences": "palate rm / palate dpo",
              "rankings": "palate rm (reward.records=rankings)", "ratings": "palate kto"}[kind]
    lines = [f"{report['usable']} {unit} usable of {report['rows']} rows: what {reader} reads from "
             f"{report['source']} at max_length {report['max_length']} (long_prompts={report['long_prompts']}); "
             f"{report['records']} {unit} read"]
    if kind == "preferences" and report.get("ties"):
        lines.append(f"ties: {report['ties']} (dropped by rm and dpo, counted)")
    if kind == "rankings":
        lines.append(f"as pairs for Bradley–Terry: {report['pairs_for_bradley_terry']}")
    if kind == "ratings":
        lines.append(f"desirable {report['desirable']}, undesirable {report['undesirable']}, at the scale's midpoint "
                     f"{report['midpoint']} (KTO skips those)")

    def stats(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) if d else "none"

    action = "cut from the left" if report["long_prompts"] == "truncate_left" else "skipped"
    lines.append(f"prompt tokens: {stats(report['prompt_tokens'])}; {report['too_long_prompts']} prompts "
                 f">= max_length {report['max_length']} ({action})")
    lines.append(f"tokens per sequence as trained: {stats(report['sequence_tokens'])}")
    lines.append(report["summary"])
    return "\n".join(lines)


__all__ = ["KINDS", "detect_kind", "check_dataset", "format_check"]
