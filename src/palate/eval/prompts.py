"""Labelled prompt sets for ``palate eval`` / ``palate redteam``, and AlpacaEval / MT-Bench import and export.

A prompt set is any source :func:`palate.data.readers.iter_rows` reads. Each row becomes an
:class:`EvalPrompt`, recognised by its fields:

    MT-Bench question.jsonl    {"question_id", "category", "turns": [first, second, ...]}   first turn used
    AlpacaEval JSON list       [{"instruction", "dataset"?, "output"?, "generator"?}, ...]
    palate / chat              {"prompt": text or messages} or {"messages": [...]} (as read_prompts)
    HH-RLHF as shipped         {"chosen": "\\n\\nHuman: … \\n\\nAssistant: …", "rejected": …}   the conversation
                               before chosen's last Assistant turn

Optional labels on any row: ``category`` (text), ``attack`` (text, red-team framing) and ``harmful``
(bool; ``category == "benign"`` also means not harmful). A malformed row raises
:class:`palate.data.errors.DataError` naming the file, line/row and field.

:func:`read_mtbench` reads MT-Bench questions with every turn for the multi-turn suite (``palate eval
--suite mtbench``, :mod:`palate.eval.mtbench`), as FastChat ships them: ``question.jsonl`` unchanged (its
own ``reference`` lists may hold empty strings) and the reference answers the judge grades math, reasoning
and coding against from ``reference_answer/gpt-4.jsonl`` (:func:`read_reference_answers`).

:func:`export_alpaca` writes answers in AlpacaEval's model-outputs format
``[{"instruction", "output", "generator"}]`` so ``alpaca_eval --model_outputs FILE`` can judge them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palate.data.errors import DataError
from palate.data.readers import _is_hh, _messages, _prompt_value, iter_rows, parse_hh
from palate.data.records import Prompt


@dataclass(frozen=True)
class EvalPrompt:
    prompt: Prompt
    id: str
    category: str | None = None
    attack: str | None = None
    harmful: bool | None = None


def _text(row: dict, name: str, src: str, n: int) -> str:
    v = row.get(name)
    if not isinstance(v, str) or not v.strip():
        got = type(v).__name__ if v is not None else "nothing"
        raise DataError(src, n, name, f"expected non-empty text, got {got}")
    return v


def _label(row: dict, name: str, src: str, n: int) -> str | None:
    v = row.get(name)
    if v is None:
        return None
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise DataError(src, n, name, f"expected a text label, got {type(v).__name__}")
    return str(v)


def _prompt_of(row: dict, src: str, n: int, column: str) -> tuple[Prompt, str | None, str | None]:
    """(prompt, id, category from the format) for one row."""
    if "turns" in row:  # MT-Bench
        turns = row["turns"]
        if not isinstance(turns, list) or not turns:
            raise DataError(src, n, "turns", "expected a non-empty list of turns")
        if not isinstance(turns[0], str) or not turns[0].strip():
            raise DataError(src, n, "turns[0]", "expected the first turn as non-empty text")
        qid = row.get("question_id")
        if qid is None:
            raise DataError(src, n, "question_id", "missing field (MT-Bench rows need question_id and turns)")
        return turns[0], str(qid), _label(row, "category", src, n)
    if column not in row and "instruction" in row:  # AlpacaEval
        return _text(row, "instruction", src, n), None, _label(row, "dataset", src, n)
    if column in row:
        return _prompt_value(row, column, src, n), None, None
    if "messages" in row:
        msgs = _messages(row["messages"], src, n, "messages")
        return (msgs[:-1] if msgs[-1]["role"] == "assistant" and len(msgs) > 1 else msgs), None, None
    if _is_hh(row.get("chosen")):  # an HH-RLHF pair: the prompt both answers reply to
        msgs = parse_hh(row["chosen"], src, n, "chosen")
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise DataError(src, n, "chosen", "the transcript must end with an Assistant turn after a Human one")
        return msgs[:-1], None, None
    present = ", ".join(sorted(row)) or "none"
    raise DataError(src, n, column, f"missing field: need '{column}', 'messages', 'instruction' (AlpacaEval), "
                    f"'turns' (MT-Bench) or an HH transcript in 'chosen' (fields present: {present})")


def read_eval_prompts(source: str | Path, *, column: str = "prompt", limit: int | None = None,
                      split: str = "train") -> list[EvalPrompt]:
    """The prompts of ``source`` with their labels, in file order (see the module docstring)."""
    out: list[EvalPrompt] = []
    for src, n, row in iter_rows(source, split):
        prompt, qid, fmt_category = _prompt_of(row, src, n, column)
        category = _label(row, "category", src, n) or fmt_category
        harmful = row.get("harmful")
        if harmful is not None and not isinstance(harmful, bool):
            raise DataError(src, n, "harmful", f"expected true or false, got {harmful!r}")
        if harmful is None and category is not None and category.lower() == "benign":
            harmful = False
        out.append(EvalPrompt(prompt, qid or _label(row, "id", src, n) or str(n), category,
                              _label(row, "attack", src, n), harmful))
        if limit and len(out) >= limit:
            break
    if not out:
        raise DataError(str(source), None, column, "no prompts found")
    return out


@dataclass(frozen=True)
class MTBenchQuestion:
    question_id: str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None
    """reference answer per turn, the one the judge grades against"""


def _text_list(row: dict, name: str, src: str, n: int, *, allow_empty: bool = False) -> tuple[str, ...]:
    v = row[name]
    if not isinstance(v, list) or not v:
        raise DataError(src, n, name, f"expected a non-empty list of text, got {type(v).__name__}")
    for i, t in enumerate(v):
        if not isinstance(t, str) or not (allow_empty or t.strip()):
            raise DataError(src, n, f"{name}[{i}]", "expected text" if allow_empty else "expected non-empty text")
    return tuple(v)


def read_reference_answers(source: str | Path) -> dict[str, tuple[str, ...]]:
    """FastChat's ``reference_answer/<judge>.jsonl``: rows ``{"question_id", "choices": [{"turns": [...]}], ...}``
    (the format of a model's answers); the reference of each turn is ``choices[0].turns[t]``. Keyed by
    question id as text; a duplicate id, a missing field or an empty answer names file, line and field."""
    return read_answer_turns(source)


def read_answer_turns(source: str | Path, *, allow_empty: bool = False) -> dict[str, tuple[str, ...]]:
    """Answers per turn from a FastChat answer file (``model_answer/<model>.jsonl`` or ``reference_answer/``):
    ``{question_id: choices[0].turns}``. A model may answer with empty text (``allow_empty``); a reference may not."""
    out: dict[str, tuple[str, ...]] = {}
    lines: dict[str, int] = {}
    for src, n, row in iter_rows(source):
        if "question_id" not in row:
            raise DataError(src, n, "question_id", "missing field (answer rows need question_id and choices)")
        qid = _label(row, "question_id", src, n)
        if qid in out:
            raise DataError(src, n, "question_id", f"duplicate question_id {qid} (first at line {lines[qid]})")
        choices = row.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise DataError(src, n, "choices", "expected a non-empty list of {\"turns\": [...]} objects")
        turns = choices[0].get("turns")
        if not isinstance(turns, list) or not turns:
            raise DataError(src, n, "choices[0].turns", "expected a non-empty list of text")
        for i, t in enumerate(turns):
            if not isinstance(t, str) or not (allow_empty or t.strip()):
                raise DataError(src, n, f"choices[0].turns[{i}]", "expected text" if allow_empty else
                                "expected non-empty text (a reference answer)")
        out[qid], lines[qid] = tuple(turns), n
    if not out:
        raise DataError(str(source), None, "question_id", "no answers found")
    return out


def read_mtbench(source: str | Path, *, references: str | Path | None = None,
                 limit: int | None = None) -> list[MTBenchQuestion]:
    """MT-Bench ``question.jsonl`` rows ``{"question_id", "category", "turns": [...], "reference"?: [...]}``,
    every field checked (a bad row names file, line and field; ids must be unique).

    The reference a judge grades against comes from ``references`` (FastChat's ``reference_answer/gpt-4.jsonl``,
    :func:`read_reference_answers`) when given, as in FastChat, where the question rows' own ``reference``
    lists are never shown to the judge; without it, from the row's ``reference``. Empty strings in a row's
    ``reference`` are accepted (FastChat ships them for questions 103, 108, 110, 131, 133, 142-144)."""
    refs = read_reference_answers(references) if references is not None else None
    out: list[MTBenchQuestion] = []
    seen: dict[str, int] = {}
    for src, n, row in iter_rows(source):
        for name in ("question_id", "category", "turns"):
            if name not in row:
                raise DataError(src, n, name, "missing field (MT-Bench rows need question_id, category, turns)")
        qid = _label(row, "question_id", src, n)
        if qid in seen:
            raise DataError(src, n, "question_id", f"duplicate question_id {qid} (first at line {seen[qid]})")
        seen[qid] = n
        turns = _text_list(row, "turns", src, n)
        own = (_text_list(row, "reference", src, n, allow_empty=True) if row.get("reference") is not None
               else None)
        out.append(MTBenchQuestion(qid, _text(row, "category", src, n), turns, refs.get(qid) if refs is not None
                                   else own))
        if limit and len(out) >= limit:
            break
    if not out:
        raise DataError(str(source), None, "turns", "no questions found")
    return out


def instruction_text(prompt: Prompt) -> str:
    """A prompt as one instruction string: text as is, chat messages as their last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def export_alpaca(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (``prompt``, ``answer``, ``policy``) as AlpacaEval model outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [{"instruction": instruction_text(r["prompt"]), "output": r["answer"], "generator": r["policy"]}
            for r in rows]
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    return path
