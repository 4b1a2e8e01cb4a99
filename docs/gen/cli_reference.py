"""The CLI reference, generated from the Typer app (never written by hand).

    python docs/gen/cli_reference.py            # print the markdown

Walks the click command tree that Typer builds from ``palate.cli.app`` and renders every command, its
help, usage and every argument and option with its type and default. ``commands()`` lists the command
paths (``["sft", "label init", ...]``) so a test can check that each one is documented.
"""

from __future__ import annotations


def _is_group(cmd) -> bool:
    return hasattr(cmd, "commands")  # typer >= 0.2x vendors click: duck-type instead of isinstance


def root():
    import typer.main

    from palate.cli import app

    return typer.main.get_command(app)


def _walk(cmd, path: list[str]):
    yield path, cmd
    if _is_group(cmd):
        for name in sorted(cmd.commands):
            sub = cmd.commands[name]
            if not getattr(sub, "hidden", False):
                yield from _walk(sub, path + [name])


def commands() -> list[str]:
    """Every visible command path below ``palate``: ``["best-of-n", "chat", ..., "label init", ...]``."""
    return [" ".join(p) for p, c in _walk(root(), []) if p and not _is_group(c)]


def anchor(path: str) -> str:
    return "palate-" + path.replace(" ", "-")


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _type(p) -> str:
    if getattr(p, "is_flag", False):
        return "flag"
    t = getattr(p, "type", None)  # click's parameters; typer >= 0.2x has its own (bare_type)
    if t is not None and getattr(t, "choices", None):
        return " \\| ".join(map(str, t.choices))
    name = p.bare_type() if hasattr(p, "bare_type") else getattr(t, "name", str(t))
    return str(name) + (" …" if p.multiple else "")


def _default(p) -> str:
    if p.required:
        return "required"
    d = p.default
    if callable(d) or d is None or d == () or (getattr(p, "is_flag", False) and d is False):
        return ""
    return f"`{d}`"


def _param_row(p) -> str:
    if p.param_type_name == "argument":
        name = f"`{(p.metavar or p.name).upper()}`" + (" …" if p.nargs == -1 else "")
    else:
        opts = list(p.opts) + [o for o in p.secondary_opts]
        name = ", ".join(f"`{o}`" for o in opts)
    help_ = getattr(p, "help", None) or ""
    return f"| {name} | {_cell(_type(p))} | {_cell(_default(p))} | {_cell(help_)} |"


def _usage(cmd, path: list[str]) -> str:
    ctx = cmd.context_class(cmd, info_name="palate " + " ".join(path))
    pieces = cmd.collect_usage_pieces(ctx)
    return f"{ctx.command_path} {' '.join(pieces)}".strip()


def _help(cmd) -> str:
    text = (cmd.help or "").strip()
    return text.split("\f")[0].strip()


def config_commands(tree) -> list[str]:
    """Commands whose arguments are ``[CONFIG.yaml] [key=value ...]`` (a variadic argument named ``args``)."""
    return [" ".join(p) for p, c in tree if p and not _is_group(c)
            and any(q.param_type_name == "argument" and q.name == "args" and q.nargs == -1 for q in c.params)]


def render() -> str:
    top = root()
    tree = list(_walk(top, []))
    out = ["# CLI reference", "",
           "Generated from the Typer app (`palate.cli.app`) by `docs/gen/cli_reference.py` when the site is "
           "built: every command, argument and option, with the help the command itself prints "
           "(`palate COMMAND --help`).", "",
           f"The commands that take a config ({', '.join(f'`{c}`' for c in config_commands(tree))}) read an "
           "optional `CONFIG.yaml` and `section.key=value` overrides; their keys are in the "
           "[config reference](config.md).", "",
           "| command | what it does |", "|---|---|"]
    for path, cmd in tree:
        if path and not _is_group(cmd):
            first = _help(cmd).split("\n\n")[0].replace("\n", " ")
            out.append(f"| [`palate {' '.join(path)}`](#{anchor(' '.join(path))}) | {_cell(first)} |")
    out.append("")
    for path, cmd in tree:
        if not path:
            continue
        name = " ".join(path)
        level = "##" if len(path) == 1 else "###"
        out += [f'{level} palate {name} {{ #{anchor(name)} }}', ""]
        if _help(cmd):
            out += [_help(cmd), ""]
        if _is_group(cmd):
            subs = ", ".join(f"[`{s}`](#{anchor(name + ' ' + s)})" for s in sorted(cmd.commands))
            out += [f"Subcommands: {subs}.", ""]
            continue
        out += ["```", _usage(cmd, path), "```", ""]
        params = [p for p in cmd.params if not getattr(p, "hidden", False) and p.name != "help"]
        if params:
            out += ["| argument / option | type | default | meaning |", "|---|---|---|---|"]
            out += [_param_row(p) for p in params]
            out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render())
