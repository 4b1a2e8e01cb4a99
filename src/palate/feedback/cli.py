"""``palate label``: create projects and labelers, serve the web app, export, stats, simulated panels.

Imports no torch (``palate label generate``, which samples with a model, is defined in :mod:`palate.cli`).
Errors: every command runs through :func:`palate.clikit.guarded` (``error: ...``, exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from palate.clikit import App

label_app = App(help="Human feedback web app: projects, labelers, serving, export.", no_args_is_help=True)

DB_HELP = "database: a SQLite file path or a SQLAlchemy URL (postgresql+psycopg://user:pw@host/db)"
DB = typer.Option("palate_feedback.db", "--db", envvar="PALATE_LABEL_DB", help=DB_HELP)


def _open(db: str):
    from palate.feedback.db import open_db

    return open_db(db)[1]()


def _project(s, slug: str):
    from sqlalchemy import select

    from palate.feedback.db import Project

    p = s.scalar(select(Project).where(Project.slug == slug))
    if p is None:
        raise ValueError(f"no project {slug!r}")
    return p


@label_app.command("init")
def init(db: str = DB, admin: str = typer.Option(None, help="also create an admin account with this name"),
         password: str = typer.Option(None, help="the admin's password (a token is always printed)")) -> None:
    """Create the database or upgrade it to the newest schema (keeps every label)."""
    from palate.feedback.auth import add_labeler
    from palate.feedback.db import current_revision, open_db

    engine, sessions = open_db(db)
    typer.echo(f"database {engine.url.render_as_string(hide_password=True)} at schema revision {current_revision(engine)}")
    if admin:
        with sessions() as s:
            _, token = add_labeler(s, admin, "admin", password=password)
            s.commit()
        typer.echo(f"admin {admin!r} token: {token}")


@label_app.command("add-labeler")
def add_labeler_cmd(name: str, db: str = DB, role: str = typer.Option("labeler", help="labeler or admin"),
                    group: str = typer.Option(None, help="optional group tag, e.g. a region or expertise"),
                    password: str = typer.Option(None, help="optional password for the web login"),
                    project: list[str] = typer.Option([], help="projects this labeler works on (repeatable)")) -> None:
    """Create a labeler account; prints its token once."""
    from palate.feedback.auth import add_labeler

    with _open(db) as s:
        _, token = add_labeler(s, name, role, group, password, project)
        s.commit()
    typer.echo(token)


@label_app.command("deactivate")
def deactivate(name: str, db: str = DB) -> None:
    """Lock a labeler out (token, password and open sessions stop working); their labels stay."""
    from sqlalchemy import delete, select

    from palate.feedback.db import Labeler, WebSession

    with _open(db) as s:
        lab = s.scalar(select(Labeler).where(Labeler.name == name))
        if lab is None:
            raise ValueError(f"no labeler {name!r}")
        lab.active = False
        s.execute(delete(WebSession).where(WebSession.labeler_id == lab.id))
        s.commit()
    typer.echo(f"labeler {name!r} deactivated")


@label_app.command("create")
def create(slug: str, db: str = DB, task: str = typer.Option("pairwise", "--type", help="pairwise, ranking, rating or thumbs"),
           candidates: Path = typer.Option(None, help="JSONL of model responses (prompt + response[s], optional model, scores)"),
           prompts: Path = typer.Option(None, help="JSONL of prompts (id + prompt) that candidates refer to by prompt_id"),
           gold: Path = typer.Option(None, help="JSONL of gold items with known answers"),
           scores: Path = typer.Option(None, help="JSONL of precomputed reward-ensemble scores (prompt, response, scores)"),
           title: str = typer.Option("", help="shown to labelers"), overlap: int = typer.Option(1, help="labelers per item"),
           gold_every: int = typer.Option(0, help="every Nth task is a gold check (0: never)"),
           criteria: str = typer.Option("helpfulness,harmlessness,honesty", help="Likert criteria (rating projects)"),
           scale: str = typer.Option("1,7", help="Likert scale low,high"),
           guidelines: Path = typer.Option(None, help="text file with the labeling guidelines"),
           pairs_per_prompt: int = typer.Option(1, help="pairs per prompt (most ensemble disagreement first)"),
           k: int = typer.Option(4, help="responses per ranking item"),
           labeler: list[str] = typer.Option([], help="existing labelers to add (repeatable)")) -> None:
    """Create a project from a candidates file (and optional prompts and gold files)."""
    from sqlalchemy import select

    from palate.feedback.auth import add_member
    from palate.feedback.db import Labeler
    from palate.feedback.importing import create_project, import_items

    with _open(db) as s:
        lo, hi = (int(x) for x in scale.split(","))
        p = create_project(s, slug, task, title, [c for c in criteria.split(",")], (lo, hi), overlap, gold_every,
                           guidelines.read_text(encoding="utf-8") if guidelines else "")
        report = import_items(s, p, candidates, prompts, gold, pairs_per_prompt, k, scores=scores)
        for name in labeler:
            lab = s.scalar(select(Labeler).where(Labeler.name == name))
            if lab is None:
                raise ValueError(f"no labeler {name!r}")
            add_member(s, slug, lab)
        s.commit()
    typer.echo(f"project {slug!r} ({task}): {json.dumps(report)}")


@label_app.command("import")
def import_cmd(slug: str, db: str = DB, candidates: Path = typer.Option(None), prompts: Path = typer.Option(None),
               gold: Path = typer.Option(None), scores: Path = typer.Option(None), pairs_per_prompt: int = typer.Option(1),
               k: int = typer.Option(4)) -> None:
    """Add more candidates or gold items to a project."""
    from palate.feedback.importing import import_items

    with _open(db) as s:
        report = import_items(s, _project(s, slug), candidates, prompts, gold, pairs_per_prompt, k, scores=scores)
        s.commit()
    typer.echo(json.dumps(report))


@label_app.command("serve")
def serve(db: str = DB, host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
          secure_cookies: bool = typer.Option(False, help="mark cookies Secure and send HSTS (when a TLS proxy sits in "
                                                          "front; automatic for requests that arrive over https)"),
          forwarded_allow_ips: str = typer.Option("127.0.0.1", help="proxies whose X-Forwarded-For/-Proto are trusted "
                                                                    "(client address for login throttling, https)")) -> None:
    """Serve the labeling app (upgrades the database schema first)."""
    import uvicorn

    from palate.feedback.app import create_app

    typer.echo(f"palate label on http://{host}:{port} (database {db})")
    uvicorn.run(create_app(db, secure_cookies=secure_cookies), host=host, port=port, log_level="info",
                proxy_headers=True, forwarded_allow_ips=forwarded_allow_ips)


@label_app.command("export")
def export(slug: str, db: str = DB, out: Path = typer.Option(..., help="output .jsonl, .csv, or a directory for --format hf"),
           aggregate: str = typer.Option("none", help="none (a row per judgment), majority or dawid-skene"),
           fmt: str = typer.Option("jsonl", "--format", help="jsonl, csv (raw judgments) or hf (datasets.save_to_disk)"),
           include_gold: bool = typer.Option(False, "--gold", help="also export gold items")) -> None:
    """Export judgments as the Preference / Ranking / Rating rows `palate rm` and `palate dpo` read."""
    from palate.feedback.export import export_rows, judgments_csv, to_jsonl

    with _open(db) as s:
        p = _project(s, slug)
        if fmt == "csv":
            out.write_text(judgments_csv(s, p), encoding="utf-8")
            typer.echo(f"wrote {out}")
            return
        rows, report = export_rows(s, p, aggregate, include_gold)
    if fmt == "hf":
        import datasets

        for r in rows:  # Arrow needs one type per column: keep meta as a JSON string
            r["meta"] = json.dumps(r["meta"], ensure_ascii=False)
        datasets.Dataset.from_list(rows).save_to_disk(str(out))
    elif fmt == "jsonl":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_jsonl(rows), encoding="utf-8")
    else:
        raise ValueError(f"--format must be jsonl, csv or hf, got {fmt!r}")
    typer.echo(f"wrote {out}: {json.dumps(report)}")


@label_app.command("stats")
def stats(slug: str, db: str = DB) -> None:
    """Progress, throughput, agreement and per-labeler stats as JSON."""
    from palate.feedback.stats import project_stats

    with _open(db) as s:
        typer.echo(json.dumps(project_stats(s, _project(s, slug)), indent=2))


@label_app.command("simulate")
def simulate(slug: str, db: str = DB, n: int = typer.Option(6, help="simulated labelers"),
             groups: str = typer.Option("concise,thorough", help="their groups (tastes), comma-separated"),
             noise: float = typer.Option(0.3), url: str = typer.Option(None, help="a running server; default: start one"),
             seconds: float = typer.Option(None, help="stop after this long"), max_per_labeler: int = typer.Option(None),
             seed: int = typer.Option(0)) -> None:
    """Label a project with a simulated panel through the HTTP API (accounts sim-<group>-<i>)."""
    from palate.feedback.simulate import default_panel, enroll, run_panel

    panel = default_panel(n, tuple(g.strip() for g in groups.split(",") if g.strip()), noise)
    with _open(db) as s:
        _project(s, slug)
        pairs = enroll(s, slug, panel)
        s.commit()
    if url:
        result = run_panel(url, slug, pairs, seconds, max_per_labeler, seed)
    else:
        from palate.feedback.app import create_app
        from palate.feedback.server import BackgroundServer

        with BackgroundServer(create_app(db)) as srv:
            result = run_panel(srv.url, slug, pairs, seconds, max_per_labeler, seed)
    typer.echo(json.dumps({"submitted": result.submitted, "by_labeler": result.by_labeler, "errors": result.errors}))
    if result.errors:
        raise typer.Exit(1)
