"""The config reference, generated from the config dataclasses (never written by hand).

    python docs/gen/config_reference.py         # print the markdown

Every ``@dataclass`` named ``*Config`` under ``src/palate`` is found with ``ast`` (no list to keep up to
date) and imported for its defaults; each field's meaning is its attribute docstring (a string literal
right after the field) if it has one, else the ``#`` comment on the field's line, else the block of ``#``
comment lines right above it. The commands that take a config (``palate sft`` → ``SFTConfig`` …) are read
from ``palate/cli.py``: the ``*Config`` each command function imports.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import tokenize
import typing
from dataclasses import dataclass
from pathlib import Path

import palate

SRC = Path(palate.__file__).resolve().parent


@dataclass
class Field:
    name: str
    type: str
    default: str
    meaning: str


@dataclass
class ConfigClass:
    module: str
    name: str
    doc: str
    fields: list[Field]
    cls: type

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    unique: bool = True  # no other config class has this name (set by find_configs)

    @property
    def anchor(self) -> str:
        """``sftconfig``: the class name, so a link survives a move to another module; qualified by the module
        (``palate-rollout-rewards-rewardconfig``) where two classes share the name."""
        name = self.name if self.unique else self.qualname
        return name.replace(".", "-").replace("_", "-").lower()


def _comments(source: str) -> dict[int, str]:
    """Line number -> text of the ``#`` comment on that line."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _is_dataclass_node(node: ast.ClassDef) -> bool:
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "dataclass":
            return True
    return False


def _meanings(node: ast.ClassDef, lines: list[str], comments: dict[int, str]) -> dict[str, tuple[str, str]]:
    """Field name -> (annotation as written, meaning)."""
    out = {}
    body = node.body
    for i, stmt in enumerate(body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        meaning = ""
        nxt = body[i + 1] if i + 1 < len(body) else None
        if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            meaning = " ".join(nxt.value.value.split())
        elif stmt.end_lineno in comments:
            meaning = comments[stmt.end_lineno]
        else:
            block, ln = [], stmt.lineno - 1
            while ln >= 1 and lines[ln - 1].strip().startswith("#"):
                block.insert(0, comments.get(ln, ""))
                ln -= 1
            meaning = " ".join(block)
        out[stmt.target.id] = (ast.unparse(stmt.annotation), meaning)
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        v = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        v = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(v):
            return f"{type(v).__name__}()"
    else:
        return "required"
    if isinstance(v, str):
        return repr(v)
    if v is None:
        return "None"
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v)


_SOURCES: dict[Path, tuple[ast.Module, list[str], dict[int, str]]] = {}


def _source(path: Path):
    if path not in _SOURCES:
        source = path.read_text(encoding="utf-8")
        _SOURCES[path] = (ast.parse(source), source.splitlines(), _comments(source))
    return _SOURCES[path]


def _describe(cls: type) -> ConfigClass:
    path = Path(inspect.getsourcefile(cls)).resolve()
    tree, lines, comments = _source(path)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    meanings = _meanings(node, lines, comments)
    fields = []
    for f in dataclasses.fields(cls):
        annotation, meaning = meanings.get(f.name, (str(f.type), ""))
        fields.append(Field(f.name, annotation, _default(f), meaning))
    return ConfigClass(cls.__module__, cls.__qualname__, ast.get_docstring(node) or "", fields, cls)


def _nested(cls: type) -> dict[str, type]:
    """Field name -> the dataclass it holds (a config section), for the fields that hold one."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        candidates = [tp, *typing.get_args(tp)]
        for c in candidates:
            if isinstance(c, type) and dataclasses.is_dataclass(c):
                out[f.name] = c
                break
    return out


def find_configs() -> list[ConfigClass]:
    """Every ``*Config`` dataclass under src/palate, and every dataclass a config holds as a section."""
    roots = []
    for path in sorted(SRC.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "Config" not in source or "dataclass" not in source:
            continue
        module = "palate." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Config") and _is_dataclass_node(node):
                roots.append(getattr(importlib.import_module(module), node.name))
    seen: dict[type, None] = {}
    todo = list(roots)
    while todo:
        cls = todo.pop(0)
        if cls in seen:
            continue
        seen[cls] = None
        todo += list(_nested(cls).values())
    found = [_describe(c) for c in seen]
    names = [c.name for c in found]
    for c in found:
        c.unique = names.count(c.name) == 1
    # shared sections first, then the rest by module
    found.sort(key=lambda c: (c.module != "palate.config", c.module, c.name))
    return found


def command_configs() -> dict[str, str]:
    """``palate`` command -> the ``*Config`` it reads (from palate/cli.py): the one its function imports or
    passes to ``command_config``; commands of a sub-app (``data_app``, ``safety_app``) carry its name."""
    tree = ast.parse((SRC / "cli.py").read_text(encoding="utf-8"))
    imported = {alias.asname or alias.name: f"{node.module}.{alias.name}" for node in tree.body
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("palate")
                for alias in node.names}
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        name = None
        for d in node.decorator_list:
            if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command":
                name = d.args[0].value if d.args and isinstance(d.args[0], ast.Constant) else node.name
                owner = d.func.value.id if isinstance(d.func.value, ast.Name) else "app"
                if owner.endswith("_app"):
                    name = f"{owner[: -len('_app')]} {name}"
        if name is None:
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("palate"):
                for alias in sub.names:
                    if alias.name.endswith("Config") and alias.name != "ConfigError":
                        out[name] = f"{sub.module}.{alias.name}"
                    elif alias.name == "load_pipeline":  # palate run reads a PipelineConfig through it
                        out[name] = f"{sub.module}.PipelineConfig"
            elif (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "command_config"
                  and sub.args and isinstance(sub.args[0], ast.Name) and sub.args[0].id in imported):
                out[name] = imported[sub.args[0].id]
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _type_cell(f: Field, by_name: dict[str, ConfigClass], owner: ConfigClass) -> str:
    """The annotation, with a link when the field holds another config section."""
    nested = _nested(owner.cls).get(f.name)
    target = by_name.get(f"{nested.__module__}.{nested.__qualname__}") if nested else None
    if target is not None:
        return f"[`{f.type}`](#{target.anchor})"
    return f"`{_cell(f.type)}`"


def render() -> str:
    configs = find_configs()
    by_name = {c.qualname: c for c in configs}
    commands = command_configs()
    out = ["# Config reference", "",
           "Generated from the config dataclasses by `docs/gen/config_reference.py` when the site is built: "
           "every `*Config` dataclass under `src/palate`, each field with its type, default and meaning "
           "(the field's docstring or its `#` comment in the source).", "",
           "A config is YAML with one mapping per section; on the command line `section.key=value` sets one "
           "field (`train.lr=1e-5`, `lora.enabled=true`, `data.columns={prompt: question}`), and "
           "`--print-config` prints the resolved result. Unknown keys and wrongly typed values are errors "
           "that name the key. See [Configs and overrides](../concepts.md#configs-and-overrides).", "",
           "## Commands and their configs", "", "| command | config |", "|---|---|"]
    for cmd in sorted(commands):
        c = by_name.get(commands[cmd])
        if c is not None:
            out.append(f"| `palate {cmd}` | [`{c.name}`](#{c.anchor}) |")
    out.append("")
    for c in configs:
        users = [f"`palate {cmd}`" for cmd, q in sorted(commands.items()) if q == c.qualname]
        parents = [f"`{name}` in [{p.name}](#{p.anchor})" for p in configs for name, t in _nested(p.cls).items()
                   if t is c.cls]
        line = f"`{c.qualname}`" + (f", read by {', '.join(users)}" if users else "")
        out += [f"## {c.name} {{ #{c.anchor} }}", "", line, ""]
        if parents:
            out += ["The section " + ", ".join(parents) + ".", ""]
        if c.doc:
            out += [c.doc, ""]
        out += ["| field | type | default | meaning |", "|---|---|---|---|"]
        for f in c.fields:
            out.append(f"| `{f.name}` | {_type_cell(f, by_name, c)} | `{_cell(f.default)}` | {_cell(f.meaning)} |")
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render())
