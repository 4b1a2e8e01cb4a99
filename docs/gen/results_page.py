"""The measured-results page, generated from ``bench/results/*.json`` (never written by hand).

    python docs/gen/results_page.py             # print the markdown

Files written through ``bench/record.py`` carry a ``bench`` headline (metric, the palate/TRL/plain figures,
command, machine, date); older files carry what their benchmark wrote (``command``, ``git_commit``,
``date``, ``cpu``... when it wrote them). Each file gets a section with its provenance (or a note that the
file does not record it) and every scalar figure it holds, named by its key path.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
MAX_ROWS = 60


def _table_module():
    spec = importlib.util.spec_from_file_location("_bench_table", ROOT / "bench" / "table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cell(v) -> str:
    if isinstance(v, float):
        v = f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _scalars(value, prefix: str = "", depth: int = 0):
    """(key path, scalar) for every number, string or bool up to depth 4; lists are summarised by length."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "bench":
                continue
            yield from _scalars(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
    elif isinstance(value, list):
        if value and all(isinstance(x, (int, float, str)) for x in value) and len(value) <= 8:
            yield prefix, ", ".join(_cell(x) for x in value)
        else:
            yield prefix, f"({len(value)} entries)"
    elif depth <= 4:
        yield prefix, value


def _provenance(data: dict) -> list[tuple[str, str]]:
    head = data.get("bench") if isinstance(data.get("bench"), dict) else {}
    machine = head.get("machine") or {}
    cpu = machine.get("cpu") or data.get("cpu")
    cores = machine.get("cores") or data.get("cores")
    rows = [
        ("command", head.get("command") or data.get("command")),
        ("commit", data.get("git_commit") or head.get("git_commit")),
        ("machine", ", ".join(str(x) for x in [cpu, f"{cores} cores" if cores else None,
                                               machine.get("gpu"), machine.get("torch") and f"torch {machine['torch']}"]
                              if x) or None),
        ("date", head.get("date") or data.get("date")),
    ]
    return [(k, f"`{v}`" if k in ("command", "commit") and v else (v or "*not recorded in the file*"))
            for k, v in rows]


def render() -> str:
    table = _table_module()
    rows, _skipped = table.read_results(RESULTS)
    out = ["# Measured results (bench/results)", "",
           "Generated from the JSON files in `bench/results/` by `docs/gen/results_page.py` when the site is "
           "built. Each figure holds for the machine and date it was measured on; where a file does not "
           "record its command, commit or machine, that is said rather than guessed. The hand-written "
           "[Results](index.md) page collects the other measurements quoted in these docs, each with its "
           "command.", ""]
    if rows:
        body = table.render(rows, [])
        out += ["## Headline figures", "", *body.split("\n", 2)[2].strip().splitlines()[2:], ""]
    for path in sorted(RESULTS.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            out += [f"## {path.stem}", "", f"Not valid JSON ({e.msg} at line {e.lineno}).", ""]
            continue
        out += [f"## {path.stem}", "", f"`bench/results/{path.name}`", ""]
        out += [f"- **{k}**: {v}" for k, v in _provenance(data)]
        out.append("")
        head = data.get("bench")
        if isinstance(head, dict) and "metric" in head:
            out += [f"Headline: **{head['metric']}** = {_cell(head.get('palate'))} {head.get('unit', '')}"
                    + (f" ({head['note']})" if head.get("note") else ""), ""]
        scalars = [(k, v) for k, v in _scalars(data) if k not in ("command", "git_commit", "date", "cpu", "cores")]
        out += ["??? note \"every figure in the file\"", "", "    | key | value |", "    |---|---|"]
        out += [f"    | `{k}` | {_cell(v)} |" for k, v in scalars[:MAX_ROWS]]
        if len(scalars) > MAX_ROWS:
            out.append(f"    | … | {len(scalars) - MAX_ROWS} more in the file |")
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render())
