"""Readers: JSONL / JSON files, Hugging Face datasets (local or hub), HH transcripts, chat messages.

Every reader yields the records of :mod:`palate.data.records`. A source is one of

* ``bundled:NAME`` — a dataset shipped inside palate (``bundled:demonstrations``);
* a ``.jsonl`` or ``.json`` file, compressed or not (``.gz``, ``.bz2``, ``.xz``; ``.zst`` with the
  ``zstandard`` package), e.g. HH-RLHF's ``train.jsonl.gz`` as shipped;
* a ``.parquet`` / ``.csv`` (or compressed ``.csv.gz`` …) file, a directory written by
  ``datasets.save_to_disk`` or a directory of data files (read with Hugging Face ``datasets``);
* a Hugging Face Hub dataset name (``org/name``), read with ``datasets.load_dataset`` when online.

Row shapes are detected per row unless ``columns`` names them:

* demonstrations: ``prompt`` + ``response`` (or ``completion``); a chat ``messages`` list whose last
  message is the assistant's reply; an HH transcript in ``chosen`` (``"\\n\\nHuman: … \\n\\nAssistant: …"``);
* preferences: ``prompt`` + ``chosen`` + ``rejected`` (text, or lists of chat messages as TRL writes
  them), or HH transcripts in ``chosen``/``rejected`` split at the last ``Assistant:`` turn;
  optional ``weight``, ``margin`` and ``tie`` (true when the labeler preferred neither);
* rankings: ``prompt`` + ``responses`` (list of texts) + ``order`` (indices best to worst) or ``scores``
  (higher is better; equal scores are a tie and the row is skipped with a count);
* ratings: ``prompt`` + ``response`` (or ``completion``) + ``score`` (optional ``scale`` ``[low, high]``,
  default ``[0, 1]``), or TRL's unpaired format with a boolean ``label`` (thumbs up/down).

Structural problems (bad JSON, a missing field, a wrong type) raise :class:`DataError` naming file,
row and field, or with ``on_error="skip"`` become counted skips. Content problems (an empty
completion, an HH pair whose prompts differ) are always counted skips in the :class:`SkipLog`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from palate.data.errors import DataError, SkipLog
from palate.data.records import Demonstration, Message, Preference, Prompt, Ranking, Rating

BUNDLED_PREFIX = "bundled:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def bundled_path(name: str) -> Path:
    """Path of a dataset shipped with palate, e.g. ``bundled_path("demonstrations")``."""
    path = Path(str(resources.files("palate.data") / "bundled" / f"{name}.jsonl"))
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.jsonl") if not p.stem.startswith("_"))
        raise FileNotFoundError(f"no bundled dataset {name!r}; available: {', '.join(available)}")
    return path


# ----------------------------------------------------------------------------- rows


def iter_rows(source: str | Path, split: str = "train") -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Yield ``(source_label, row_number, row_dict)`` for any supported source; rows are 1-based."""
    text = str(source)
    if text.startswith(BUNDLED_PREFIX):
        path = bundled_path(text[len(BUNDLED_PREFIX):])
        yield from jsonl_rows(path, label=text)
        return
    path = Path(text)
    kind = data_suffix(path)
    if path.is_file() and kind == ".jsonl":
        yield from jsonl_rows(path)
    elif path.is_file() and kind == ".json":
        yield from _json_rows(path)
    elif path.exists():
        yield from _hf_rows(_load_local_hf(path, split), label=str(path))
    else:
        yield from _hf_rows(_load_hub(text, split), label=text)


COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def data_suffix(path: str | Path) -> str:
    """The format suffix of a data file, under any compression suffix: ``train.jsonl.gz`` -> ``.jsonl``."""
    p = Path(path)
    if p.suffix.lower() in COMPRESSIONS:
        p = p.with_suffix("")
    return p.suffix.lower()


def open_data(path: str | Path, label: str | None = None):
    """Open a data file for binary reading, decompressing by its suffix (``.gz``, ``.bz2``, ``.xz``, ``.zst``).

    ``.zst`` needs the ``zstandard`` package; without it the error says so (naming the file)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gz":
        import gzip

        return gzip.open(path, "rb")
    if suffix == ".bz2":
        import bz2

        return bz2.open(path, "rb")
    if suffix == ".xz":
        import lzma

        return lzma.open(path, "rb")
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DataError(str(path) if label is None else label, None, None,
                            "a .zst file needs the zstandard package (pip install zstandard), or decompress it "
                            "first (zstd -d)") from None
        return zstandard.open(path, "rb")
    return open(path, "rb")


def _decompressed(f, label: str):
    """Lines of an open (compressed) file; a corrupt or truncated archive is a :class:`DataError` naming the file
    and the last line read."""
    import lzma
    import zlib

    lineno = 0
    try:
        for lineno, raw in enumerate(f, start=1):
            yield lineno, raw
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise DataError(label, None, None, f"cannot decompress after line {lineno}: {e}") from None


def jsonl_rows(path: str | Path, label: str | None = None) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(label, line number, row)`` for each JSON object of a JSONL file (decompressed when it ends in ``.gz``,
    ``.bz2``, ``.xz`` or ``.zst``); blank lines skipped, a bad line raises :class:`DataError` naming ``label``
    (default: the path) and its line."""
    label = str(path) if label is None else label
    with open_data(path, label) as f:
        for lineno, raw in _decompressed(f, label):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(label, lineno, None, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(label, lineno, None, f"invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(label, lineno, None, f"expected a JSON object, got {type(row).__name__}")
            yield label, lineno, row


def _json_rows(path: Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    with open_data(path) as f:
        raw = b"".join(line for _, line in _decompressed(f, str(path)))
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(str(path), None, None, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1})") from None
    except json.JSONDecodeError as e:
        raise DataError(str(path), None, None, f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(str(path), None, None, "expected a JSON list of objects (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(str(path), None, None, "expected a JSON list of objects")
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(str(path), i, None, f"expected a JSON object, got {type(row).__name__}")
        yield str(path), i, row


def _load_local_hf(path: Path, split: str):
    import datasets

    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(path))
    elif path.is_file():
        compressed = path.suffix.lower() in COMPRESSIONS
        kind = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}.get(data_suffix(path))
        if kind is None or (compressed and kind != "csv"):
            name = "".join(path.suffixes[-2:]) if compressed else path.suffix
            raise DataError(str(path), None, None, f"unsupported file type {name!r} (use .jsonl, .json, .parquet, "
                            ".csv; .jsonl, .json and .csv may be compressed: .gz, .bz2, .xz, .zst)")
        if path.suffix.lower() == ".zst":
            open_data(path).close()  # the clear error when zstandard is missing
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    else:
        ds = datasets.load_dataset(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(str(path), None, None, f"no split {split!r}; splits are {sorted(ds)}")
        ds = ds[split]
    return ds


def _load_hub(name: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - re-raised with the context a user needs
        raise DataError(
            name, None, None,
            f"not a file or directory here, and loading it as a Hugging Face Hub dataset failed: {e}",
        ) from e


def _hf_rows(ds, label: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    # Arrow tables give every row every column, filling absent ones with None: drop those so shape
    # detection sees the fields a row really has (as it does for JSONL).
    for i, row in enumerate(ds, start=1):
        yield label, i, {k: v for k, v in row.items() if v is not None}


# ----------------------------------------------------------------------------- fields


def _field(row: dict, name: str, source: str, lineno: int, kind: type | tuple = str) -> Any:
    if name not in row or row[name] is None:
        present = ", ".join(sorted(row)) or "none"
        raise DataError(source, lineno, name, f"missing field (fields present: {present})")
    value = row[name]
    if not isinstance(value, kind):
        raise DataError(source, lineno, name, f"expected {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _kind_name(kind: type | tuple) -> str:
    names = {str: "text", list: "a list of chat messages", float: "a number", int: "a number"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _messages(value: Any, source: str, lineno: int, name: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DataError(source, lineno, name, "expected a non-empty list of chat messages")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(source, lineno, f"{name}[{j}]", "each message needs text 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def parse_hh(text: str, source: str, lineno: int, name: str) -> list[Message]:
    """Split an Anthropic HH transcript (``"\\n\\nHuman: … \\n\\nAssistant: …"``) into chat messages."""
    parts = _HH_TURN.split("\n\n" + text.lstrip())
    if len(parts) < 3 or parts[0].strip():
        raise DataError(source, lineno, name, "not an HH transcript (expected '\\n\\nHuman: ... \\n\\nAssistant: ...')")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": body.strip()} for who, body in zip(parts[1::2], parts[2::2])]


def _split_last_assistant(messages: list[Message], source: str, lineno: int, name: str) -> tuple[list[Message], str]:
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise DataError(source, lineno, name, "the conversation must end with an assistant turn after a prompt")
    return messages[:-1], messages[-1]["content"]


def _is_hh(value: Any) -> bool:
    return isinstance(value, str) and value.lstrip().startswith("Human:")


# ----------------------------------------------------------------------------- demonstrations


def read_demonstrations(
    source: str | Path,
    *,
    columns: dict[str, str] | None = None,
    split: str = "train",
    on_error: str = "raise",
    skips: SkipLog | None = None,
) -> list[Demonstration]:
    """Read SFT demonstrations from any source (see module docstring).

    ``columns`` maps palate's names to the file's, e.g. ``{"prompt": "question", "response": "answer"}``
    or ``{"messages": "conversation"}``. Empty responses are skipped and counted in ``skips``.
    """
    return _read(source, _demonstration_from_row, columns, split, on_error, skips)


def _demonstration_from_row(row: dict, src: str, n: int, col: dict[str, str], skips: SkipLog) -> Demonstration | None:
    meta = {**_extra_meta(row, col, "demonstration"), "source": src, "row": n}  # provenance wins over same-named columns
    if col["messages"] in row:
        msgs = _messages(row[col["messages"]], src, n, col["messages"])
        prompt, response = _split_last_assistant(msgs, src, n, col["messages"])
        field = col["messages"]
    elif col["prompt"] in row:
        prompt = _prompt_value(row, col["prompt"], src, n)
        field = col["response"] if col["response"] in row or "completion" not in row else "completion"
        response = _field(row, field, src, n)
    elif col["chosen"] in row and _is_hh(row[col["chosen"]]):
        msgs = parse_hh(row[col["chosen"]], src, n, col["chosen"])
        prompt, response = _split_last_assistant(msgs, src, n, col["chosen"])
        field = col["chosen"]
    else:
        present = ", ".join(sorted(row)) or "none"
        raise DataError(src, n, col["prompt"], f"no demonstration fields: expected 'prompt'+'response', 'messages' "
                        f"or an HH 'chosen' transcript (fields present: {present}; map others with columns=...)")
    if not response.strip():
        skips.skip(src, n, field, "empty completion")
        return None
    return Demonstration(prompt=prompt, response=response, meta=meta)


def _prompt_value(row: dict, name: str, src: str, n: int) -> Prompt:
    value = _field(row, name, src, n, (str, list))
    if isinstance(value, list):
        return _messages(value, src, n, name)
    if not value.strip():
        raise DataError(src, n, name, "empty prompt")
    return value


# ----------------------------------------------------------------------------- preferences


def read_preferences(
    source: str | Path,
    *,
    columns: dict[str, str] | None = None,
    split: str = "train",
    on_error: str = "raise",
    skips: SkipLog | None = None,
) -> list[Preference]:
    """Read pairwise preferences from any source (see module docstring)."""
    return _read(source, _preference_from_row, columns, split, on_error, skips)


def _completion(value: Any, src: str, n: int, name: str) -> str:
    """A response given as text or as a one-assistant-message list (TRL's conversational format)."""
    if isinstance(value, list):
        msgs = _messages(value, src, n, name)
        if msgs[-1]["role"] != "assistant":
            raise DataError(src, n, name, "the last message must be the assistant's")
        return msgs[-1]["content"]
    if not isinstance(value, str):
        raise DataError(src, n, name, f"expected text or chat messages, got {type(value).__name__}")
    return value


def _preference_from_row(row: dict, src: str, n: int, col: dict[str, str], skips: SkipLog) -> Preference | None:
    c, r = col["chosen"], col["rejected"]
    chosen_raw = _field(row, c, src, n, (str, list))
    rejected_raw = _field(row, r, src, n, (str, list))
    if col["prompt"] not in row and _is_hh(chosen_raw) and _is_hh(rejected_raw):
        pc, chosen = _split_last_assistant(parse_hh(chosen_raw, src, n, c), src, n, c)
        pr, rejected = _split_last_assistant(parse_hh(rejected_raw, src, n, r), src, n, r)
        if pc != pr:
            skips.skip(src, n, r, "chosen and rejected transcripts have different prompts")
            return None
        prompt: Prompt = pc
    else:
        prompt = _prompt_value(row, col["prompt"], src, n)
        chosen, rejected = _completion(chosen_raw, src, n, c), _completion(rejected_raw, src, n, r)
    for name, text in ((c, chosen), (r, rejected)):
        if not text.strip():
            skips.skip(src, n, name, "empty completion")
            return None
    weight = _number(row, col["weight"], src, n, default=1.0)
    if weight < 0:
        raise DataError(src, n, col["weight"], f"weight must be >= 0, got {weight}")
    margin = _number(row, col["margin"], src, n, default=None)
    tie = row.get(col["tie"], False)
    if not isinstance(tie, bool):
        raise DataError(src, n, col["tie"], f"expected true or false, got {type(tie).__name__}")
    meta = {**_extra_meta(row, col, "preference"), "source": src, "row": n}  # provenance wins over same-named columns
    return Preference(prompt=prompt, chosen=chosen, rejected=rejected, weight=weight, margin=margin, tie=tie, meta=meta)


# ----------------------------------------------------------------------------- rankings


def read_rankings(
    source: str | Path,
    *,
    columns: dict[str, str] | None = None,
    split: str = "train",
    on_error: str = "raise",
    skips: SkipLog | None = None,
) -> list[Ranking]:
    """Read K-way rankings (see module docstring)."""
    return _read(source, _ranking_from_row, columns, split, on_error, skips)


def _ranking_from_row(row: dict, src: str, n: int, col: dict[str, str], skips: SkipLog) -> Ranking | None:
    prompt = _prompt_value(row, col["prompt"], src, n)
    raw = _field(row, col["responses"], src, n, list)
    responses = [_completion(r, src, n, f"{col['responses']}[{j}]") for j, r in enumerate(raw)]
    if len(responses) < 2:
        raise DataError(src, n, col["responses"], f"a ranking needs at least 2 responses, got {len(responses)}")
    for j, text in enumerate(responses):
        if not text.strip():
            skips.skip(src, n, f"{col['responses']}[{j}]", "empty completion")
            return None
    if col["order"] in row:
        order = _field(row, col["order"], src, n, list)
        if sorted(o for o in order if isinstance(o, int) and not isinstance(o, bool)) != list(range(len(responses))):
            raise DataError(src, n, col["order"], f"must list each index 0..{len(responses) - 1} once, got {order}")
    elif col["scores"] in row:
        scores = _field(row, col["scores"], src, n, list)
        if len(scores) != len(responses) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores):
            raise DataError(src, n, col["scores"], f"expected {len(responses)} numbers, one per response")
        if len(set(scores)) < len(scores):
            skips.skip(src, n, col["scores"], "tied scores give no full order")
            return None
        order = sorted(range(len(scores)), key=lambda j: -scores[j])
    else:
        raise DataError(src, n, col["order"], f"a ranking needs '{col['order']}' or '{col['scores']}'")
    meta = {**_extra_meta(row, col, "ranking"), "source": src, "row": n}
    return Ranking(prompt=prompt, responses=responses, order=list(order), meta=meta)


# ----------------------------------------------------------------------------- ratings


def read_ratings(
    source: str | Path,
    *,
    columns: dict[str, str] | None = None,
    split: str = "train",
    on_error: str = "raise",
    skips: SkipLog | None = None,
) -> list[Rating]:
    """Read single-response ratings or thumbs (see module docstring)."""
    return _read(source, _rating_from_row, columns, split, on_error, skips)


def _rating_from_row(row: dict, src: str, n: int, col: dict[str, str], skips: SkipLog) -> Rating | None:
    prompt = _prompt_value(row, col["prompt"], src, n)
    name = col["response"] if col["response"] in row or "completion" not in row else "completion"
    response = _completion(_field(row, name, src, n, (str, list)), src, n, name)
    if not response.strip():
        skips.skip(src, n, name, "empty completion")
        return None
    if col["score"] not in row and isinstance(row.get(col["label"]), bool):
        score, scale = float(row[col["label"]]), (0.0, 1.0)
    else:
        score = _number(row, col["score"], src, n, default=None)
        if score is None:
            raise DataError(src, n, col["score"], f"missing field: a rating needs '{col['score']}' or a boolean '{col['label']}'")
        raw_scale = row.get(col["scale"], [0, 1])
        if (not isinstance(raw_scale, list) or len(raw_scale) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw_scale)
                or raw_scale[0] >= raw_scale[1]):
            raise DataError(src, n, col["scale"], f"expected [low, high] with low < high, got {raw_scale!r}")
        scale = (float(raw_scale[0]), float(raw_scale[1]))
        if not scale[0] <= score <= scale[1]:
            raise DataError(src, n, col["score"], f"score {score} outside the scale {list(scale)}")
    meta = {**_extra_meta(row, col, "rating"), "source": src, "row": n}
    return Rating(prompt=prompt, response=response, score=score, scale=scale, meta=meta)


def _number(row: dict, name: str, src: str, n: int, default: float | None) -> float | None:
    if row.get(name) is None:
        return default
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(src, n, name, f"expected a number, got {type(value).__name__}")
    return float(value)


# ----------------------------------------------------------------------------- shared loop

_DEFAULT_COLUMNS = ("prompt", "response", "messages", "chosen", "rejected", "weight", "margin", "tie",
                    "responses", "order", "scores", "score", "scale", "label")


_FIELDS_OF = {
    "demonstration": ("prompt", "response", "messages", "chosen", "rejected"),
    "preference": ("prompt", "chosen", "rejected", "weight", "margin", "tie"),
    "ranking": ("prompt", "responses", "order", "scores"),
    "rating": ("prompt", "response", "score", "scale", "label"),
}


def _extra_meta(row: dict, col: dict[str, str], kind: str) -> dict[str, Any]:
    """Keep a row's ``meta`` object and small scalar extras (ids, categories, labeler groups)."""
    used = {col[name] for name in _FIELDS_OF[kind]} | {"completion"}
    extra = {k: v for k, v in row.items() if k not in used and k != "meta" and isinstance(v, (str, int, float, bool))}
    if isinstance(row.get("meta"), dict):
        extra.update(row["meta"])
    return extra


def _read(source, from_row, columns, split, on_error, skips) -> list:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    col = {name: name for name in _DEFAULT_COLUMNS}
    unknown = set(columns or {}) - set(col)
    if unknown:
        raise ValueError(f"unknown column names {sorted(unknown)}; palate's names are {list(_DEFAULT_COLUMNS)}")
    col.update(columns or {})
    skips = skips if skips is not None else SkipLog()
    records = []
    for src, n, row in iter_rows(source, split):
        skips.seen += 1
        try:
            record = from_row(row, src, n, col, skips)
        except DataError as e:
            if on_error == "raise" or e.row is None:
                raise
            skips.skip(e.source, e.row, e.field, e.message)
            continue
        if record is not None:
            records.append(record)
    if not records:
        raise DataError(str(source), None, None, f"no usable rows ({skips.seen} read)\n{skips.summary()}")
    return records


# ----------------------------------------------------------------------------- prompts


def read_prompts(source: str | Path, *, column: str = "prompt", split: str = "train", limit: int | None = None) -> list[Prompt]:
    """Distinct prompts, in file order: a row's ``column`` (text or chat messages), or the turns before the
    last assistant reply of a ``messages`` row. Rows with neither raise :class:`DataError`."""
    return [p for p, _, _ in read_prompt_rows(source, column=column, split=split, limit=limit)]


def read_prompt_rows(source: str | Path, *, column: str = "prompt", split: str = "train",
                     limit: int | None = None) -> list[tuple[Prompt, str, int]]:
    """:func:`read_prompts` with where each prompt was first seen: ``(prompt, source, row)``."""
    seen, out = set(), []
    for src, n, row in iter_rows(source, split):
        if column in row:
            prompt = _prompt_value(row, column, src, n)
        elif "messages" in row:
            msgs = _messages(row["messages"], src, n, "messages")
            prompt = msgs[:-1] if msgs[-1]["role"] == "assistant" and len(msgs) > 1 else msgs
        else:
            present = ", ".join(sorted(row)) or "none"
            raise DataError(src, n, column, f"missing field (fields present: {present})")
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append((prompt, src, n))
            if limit and len(out) >= limit:
                break
    if not out:
        raise DataError(str(source), None, column, "no prompts found")
    return out
