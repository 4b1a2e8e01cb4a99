"""MT-Bench judge prompts exactly as FastChat writes them (``fastchat/llm_judge``, Zheng et al. 2023).

FastChat's ``gen_judgment.py`` grades each answer with one of eight prompts from ``data/judge_prompts.jsonl``,
picked by the mode, the turn and whether the question's category is graded against a reference answer
(math, reasoning, coding; ``NEED_REF_CATS`` in its ``common.py``):

    mode       reference   turn 1            turn 2 (the judge sees both turns)
    single     no          single-v1         single-v1-multi-turn
    single     yes         single-math-v1    single-math-v1-multi-turn
    pairwise   no          pair-v2           pair-v2-multi-turn
    pairwise   yes         pair-math-v1      pair-math-v1-multi-turn

A prompt's ``prompt_template`` is filled with ``str.format`` from these fields (the reference fields only for
the reference-graded prompts), and its ``system_prompt`` is sent as the system message:

    turn 1   question, answer (pairwise: answer_a, answer_b), ref_answer_1
    turn 2   question_1, question_2, answer_1, answer_2 (pairwise: answer_a_1, answer_b_1, answer_a_2,
             answer_b_2), ref_answer_1, ref_answer_2

Turn 2 is judged for questions with exactly two turns (as FastChat does). The reference of turn t is the
reference answer's ``choices[0].turns[t]`` (:func:`palate.eval.prompts.read_reference_answers`).

palate ships FastChat's ``judge_prompts.jsonl`` unchanged (``judges/templates/mtbench_judge_prompts.jsonl``,
Apache-2.0, licence beside it); ``--judge-prompts FILE`` uses another copy. Loading checks every row: a
known prompt with the wrong type, a verdict format palate does not read, or a placeholder FastChat would not
fill is refused with file, line and field.

Verdicts are read by :mod:`palate.judges.verdicts` (``[[rating]]`` → :func:`parse_grade`, ``[[A]]`` →
:func:`parse_pairwise`), which agree with FastChat's regexes on a well-formed answer. Where they differ, palate
is stricter and counts a malformed verdict instead of guessing: FastChat takes the first of several
different grades (palate: malformed), falls back to a single-bracket ``[7]`` (palate: malformed), keeps
a grade off the 1-10 scale (palate: malformed), and for a pair with several verdicts prefers ``[[A]]``, then
``[[B]]``, then ``[[C]]`` (palate: malformed).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from palate.data.errors import DataError
from palate.data.readers import iter_rows
from palate.eval.prompts import MTBenchQuestion
from palate.judges.templates import TEMPLATE_DIR

SHIPPED = TEMPLATE_DIR / "mtbench_judge_prompts.jsonl"
NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
MODES = ("single", "pairwise")
NAMES = {("single", False, 1): "single-v1", ("single", True, 1): "single-math-v1",
         ("single", False, 2): "single-v1-multi-turn", ("single", True, 2): "single-math-v1-multi-turn",
         ("pairwise", False, 1): "pair-v2", ("pairwise", True, 1): "pair-math-v1",
         ("pairwise", False, 2): "pair-v2-multi-turn", ("pairwise", True, 2): "pair-math-v1-multi-turn"}
OUTPUT_FORMAT = {"single": "[[rating]]", "pairwise": "[[A]]"}
_ANSWERS = {("single", 1): {"question", "answer"},
            ("single", 2): {"question_1", "question_2", "answer_1", "answer_2"},
            ("pairwise", 1): {"question", "answer_a", "answer_b"},
            ("pairwise", 2): {"question_1", "question_2", "answer_a_1", "answer_b_1", "answer_a_2", "answer_b_2"}}
_REFS = {1: {"ref_answer_1"}, 2: {"ref_answer_1", "ref_answer_2"}}


def fields_of(mode: str, reference: bool, turn: int) -> set[str]:
    """The fields FastChat fills in the template of (mode, reference-graded, turn)."""
    return _ANSWERS[mode, turn] | (_REFS[turn] if reference else set())


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    type: str
    """"single" | "pairwise" """
    system: str
    template: str
    output_format: str


@dataclass(frozen=True)
class JudgePrompts:
    """The prompts of one ``judge_prompts.jsonl`` by name; ``source`` names the file in errors."""

    prompts: dict[str, JudgePrompt]
    source: str

    def get(self, name: str) -> JudgePrompt:
        if name not in self.prompts:
            raise DataError(self.source, None, "name", f"no judge prompt named {name!r} (the file has: "
                            f"{', '.join(self.prompts) or 'none'})")
        return self.prompts[name]


def placeholders(template: str, src: str, n: int) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError(src, n, "prompt_template", f"not a str.format template: {e}") from None
    out = set()
    for _, name, _, _ in parsed:
        if name is not None:
            base = name.split(".")[0].split("[")[0]
            if not base or base.isdigit():
                raise DataError(src, n, "prompt_template", f"positional placeholder {{{name}}}: FastChat fills "
                                "named fields only")
            out.add(base)
    return out


def load_judge_prompts(path: str | Path | None = None) -> JudgePrompts:
    """FastChat's ``judge_prompts.jsonl`` (the shipped copy when ``path`` is None), every row checked."""
    source = Path(path) if path is not None else SHIPPED
    known = {name: (mode, ref, turn) for (mode, ref, turn), name in NAMES.items()}
    prompts: dict[str, JudgePrompt] = {}
    lines: dict[str, int] = {}
    for src, n, row in iter_rows(source):
        for f in ("name", "type", "system_prompt", "prompt_template", "output_format"):
            if not isinstance(row.get(f), str):
                got = "nothing" if row.get(f) is None else type(row[f]).__name__
                raise DataError(src, n, f, f"expected text, got {got} (a FastChat judge prompt row)")
        name = row["name"]
        if name in prompts:
            raise DataError(src, n, "name", f"duplicate judge prompt {name!r} (first at line {lines[name]})")
        if row["type"] not in MODES:
            raise DataError(src, n, "type", f"expected single or pairwise, got {row['type']!r}")
        if name in known:
            mode, ref, turn = known[name]
            if row["type"] != mode:
                raise DataError(src, n, "type", f"{name} is a {mode} prompt, got type {row['type']!r}")
            if row["output_format"] != OUTPUT_FORMAT[mode]:
                raise DataError(src, n, "output_format", f"{name} must ask for {OUTPUT_FORMAT[mode]} (what palate "
                                f"reads), got {row['output_format']!r}")
            extra = placeholders(row["prompt_template"], src, n) - fields_of(mode, ref, turn)
            if extra:
                raise DataError(src, n, "prompt_template", f"{name}: placeholder(s) {sorted(extra)} are not filled "
                                f"(FastChat fills {sorted(fields_of(mode, ref, turn))})")
        prompts[name] = JudgePrompt(name, row["type"], row["system_prompt"], row["prompt_template"],
                                    row["output_format"])
        lines[name] = n
    if not prompts:
        raise DataError(str(source), None, "name", "no judge prompts found")
    return JudgePrompts(prompts, str(source))


def needs_reference(q: MTBenchQuestion) -> bool:
    return q.category in NEED_REF_CATS


def judged_turns(q: MTBenchQuestion) -> tuple[int, ...]:
    """1-based turns FastChat judges: the first, and the second when the question has exactly two."""
    return (1, 2) if len(q.turns) == 2 else (1,)


def missing_references(questions: list[MTBenchQuestion]) -> list[str]:
    """``"103 (reasoning, turn 2)"`` for every reference-graded question without a reference for a judged turn."""
    out = []
    for q in questions:
        if not needs_reference(q):
            continue
        ref = q.reference or ()
        lacking = [t for t in range(1, judged_turns(q)[-1] + 1) if len(ref) < t or not ref[t - 1].strip()]
        if lacking:
            out.append(f"{q.question_id} ({q.category}, turn{'s' if len(lacking) > 1 else ''} "
                       f"{', '.join(map(str, lacking))})")
    return out


def check_references(questions: list[MTBenchQuestion]) -> None:
    """Refuse, before any answer is generated, questions that cannot be graded against their reference."""
    missing = missing_references(questions)
    if missing:
        raise ValueError(f"MT-Bench grades {', '.join(NEED_REF_CATS[:3])} against a reference answer, and "
                         f"{len(missing)} question(s) lack one: {'; '.join(missing)}. Pass FastChat's "
                         "reference_answer/gpt-4.jsonl with --references (or give each row a 'reference' list)")


def _fill(p: JudgePrompt, fields: dict[str, str]) -> str:
    return p.template.format(**fields)


def _refs(q: MTBenchQuestion, turn: int) -> dict[str, str]:
    if not needs_reference(q):
        return {}
    if missing_references([q]):
        raise ValueError(f"question {q.question_id} ({q.category}) has no reference answer for turn {turn}")
    return {f"ref_answer_{t}": q.reference[t - 1] for t in range(1, turn + 1)}


def single_prompt(prompts: JudgePrompts, q: MTBenchQuestion, answer: list[str], turn: int) -> tuple[str, str, str]:
    """``(prompt name, system, user)`` grading ``answer`` (the model's answers by turn) at 1-based ``turn``."""
    p = prompts.get(NAMES["single", needs_reference(q), turn])
    if turn == 1:
        fields = {"question": q.turns[0], "answer": answer[0]}
    else:
        fields = {"question_1": q.turns[0], "question_2": q.turns[1], "answer_1": answer[0], "answer_2": answer[1]}
    return p.name, p.system, _fill(p, fields | _refs(q, turn))


def pair_prompt(prompts: JudgePrompts, q: MTBenchQuestion, answer_a: list[str], answer_b: list[str],
                turn: int) -> tuple[str, str, str]:
    """``(prompt name, system, user)`` comparing assistant A's answers with B's at 1-based ``turn``."""
    p = prompts.get(NAMES["pairwise", needs_reference(q), turn])
    if turn == 1:
        fields = {"question": q.turns[0], "answer_a": answer_a[0], "answer_b": answer_b[0]}
    else:
        fields = {"question_1": q.turns[0], "question_2": q.turns[1], "answer_a_1": answer_a[0],
                  "answer_b_1": answer_b[0], "answer_a_2": answer_a[1], "answer_b_2": answer_b[1]}
    return p.name, p.system, _fill(p, fields | _refs(q, turn))

