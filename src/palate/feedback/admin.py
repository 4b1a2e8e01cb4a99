"""Admin pages: dashboard (progress, throughput, skips, agreement, per-labeler stats a page at a time), project creation from
uploaded files, labeler accounts, and downloads (Preference/Ranking/Rating JSONL, CSV)."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from palate.data.errors import DataError
from palate.feedback import auth
from palate.feedback.db import Labeler, Membership, Project
from palate.feedback.export import AGGREGATES, export_rows, judgments_csv, to_jsonl
from palate.feedback.importing import create_project, import_items
from palate.feedback.assignment import MAX_ID
from palate.feedback.stats import (LABELERS_PER_PAGE, agreement_stats, labeler_stats, project_stats, project_summary,
                                   skipped_items)
from palate.feedback.web import DB, Form, api_user, check_csrf, page_user, project_for, templates

router = APIRouter()


def _project(db: Session, slug: str, me: Labeler) -> Project:
    return project_for(db, slug, me)


@router.get("/admin", response_class=HTMLResponse)
def dashboard(request: Request, db: DB):
    me, ws = page_user(request, db, admin=True)
    cache = request.app.state.agreement_cache
    rows = [project_summary(db, p) | {"title": p.title, "agreement": agreement_stats(db, p, cache)}
            for p in db.scalars(select(Project).order_by(Project.id))]
    return templates.TemplateResponse(request, "admin.html", {"me": me, "csrf": ws.csrf, "projects": rows})


@router.get("/admin/projects/new", response_class=HTMLResponse)
def new_project_form(request: Request, db: DB):
    me, ws = page_user(request, db, admin=True)
    return templates.TemplateResponse(request, "admin_new.html", {"me": me, "csrf": ws.csrf, "error": None, "form": {}})


@router.post("/admin/projects/new")
def new_project(request: Request, form: Form, db: DB):
    me, ws = page_user(request, db, admin=True)
    check_csrf(ws, form)
    tmp = tempfile.mkdtemp(prefix="palate-upload-")
    try:
        files = {name: _saved(form.get(name), Path(tmp), name) for name in ("candidates", "prompts", "gold")}
        if files["candidates"] is None and files["gold"] is None:
            raise ValueError("upload a candidates file (JSONL of model responses)")
        crit = [c for c in re.split(r"[,\n]", str(form.get("criteria") or "")) if c.strip()]
        project = create_project(db, str(form.get("slug", "")).strip(), str(form.get("task_type", "")),
                                 title=str(form.get("title") or ""), criteria=crit or None,
                                 scale=(_int(form, "scale_low", 1), _int(form, "scale_high", 7)),
                                 overlap=_int(form, "overlap", 1), gold_every=_int(form, "gold_every", 0),
                                 guidelines=str(form.get("guidelines") or ""))
        import_items(db, project, files["candidates"], files["prompts"], files["gold"],
                     pairs_per_prompt=_int(form, "pairs_per_prompt", 1), k=_int(form, "k", 4))
        for name in re.split(r"[,\s]+", str(form.get("labelers") or "")):
            lab = db.scalar(select(Labeler).where(Labeler.name == name)) if name else None
            if name and lab is None:
                raise ValueError(f"no labeler named {name!r} (create it on the Labelers page first)")
            if lab is not None:
                auth.add_member(db, project.slug, lab)
    except (ValueError, DataError) as e:
        db.rollback()
        message = str(e)
        for name in ("candidates", "prompts", "gold"):  # name the uploaded file, not the server's temp path
            message = message.replace(str(Path(tmp) / name) + os.sep, "")
        return templates.TemplateResponse(request, "admin_new.html", {"me": me, "csrf": ws.csrf, "error": message,
                                                                      "form": {k: v for k, v in form.items() if isinstance(v, str)}},
                                          status_code=422)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    db.commit()
    return RedirectResponse(f"/admin/projects/{project.slug}", status_code=303)


def _saved(upload, tmp: Path, field: str) -> Path | None:
    """An uploaded file copied to ``tmp/field/NAME`` (runs in a worker thread: the upload is already
    spooled by the form parser, so this is local file I/O)."""
    if upload is None or isinstance(upload, str) or not upload.filename:
        return None
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(upload.filename).name) or f"{field}.jsonl"
    path = tmp / field
    path.mkdir()
    path = path / name
    upload.file.seek(0)
    with path.open("wb") as out:
        shutil.copyfileobj(upload.file, out)
    return path


def _int(form, name: str, default: int) -> int:
    value = form.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None


@router.get("/admin/projects/{slug}", response_class=HTMLResponse)
def project_page(slug: str, request: Request, db: DB, page: int = Query(1, ge=1, le=MAX_ID)):
    """The project's dashboard; the labeler table shows LABELERS_PER_PAGE labelers per ``?page=N``."""
    me, ws = page_user(request, db, admin=True)
    project = _project(db, slug, me)
    n_members = db.scalar(select(func.count()).select_from(Membership).where(Membership.project_id == project.id))
    labelers, total = labeler_stats(db, project, (page - 1) * LABELERS_PER_PAGE, LABELERS_PER_PAGE)
    pages = max(1, -(-total // LABELERS_PER_PAGE))
    if page > pages:
        raise HTTPException(404, f"page {page} does not exist: the labeler table has {pages} page(s)")
    return templates.TemplateResponse(request, "admin_project.html", {
        "me": me, "csrf": ws.csrf, "project": project, "stats": project_summary(db, project),
        "agreement": agreement_stats(db, project, request.app.state.agreement_cache), "labelers": labelers,
        "labeler_total": total, "page": page, "pages": pages, "per_page": LABELERS_PER_PAGE,
        "skipped": skipped_items(db, project, limit=10), "members": n_members, "aggregates": AGGREGATES})


@router.get("/admin/projects/{slug}/export.jsonl")
def export_jsonl(slug: str, request: Request, db: DB, aggregate: str = "none", gold: bool = False):
    me, _ = page_user(request, db, admin=True)
    project = _project(db, slug, me)
    return _jsonl(db, project, aggregate, gold)


def _jsonl(db, project, aggregate, gold):
    if aggregate not in AGGREGATES:
        raise HTTPException(422, f"aggregate must be one of {', '.join(AGGREGATES)}")
    rows, _ = export_rows(db, project, aggregate, include_gold=gold)
    kind = {"pairwise": "preferences", "ranking": "rankings"}.get(project.task_type, "ratings")
    return PlainTextResponse(to_jsonl(rows), media_type="application/x-ndjson", headers={
        "content-disposition": f'attachment; filename="{project.slug}-{kind}-{aggregate}.jsonl"'})


@router.get("/admin/projects/{slug}/judgments.csv")
def export_csv(slug: str, request: Request, db: DB):
    me, _ = page_user(request, db, admin=True)
    project = _project(db, slug, me)
    return PlainTextResponse(judgments_csv(db, project), media_type="text/csv", headers={
        "content-disposition": f'attachment; filename="{project.slug}-judgments.csv"'})


@router.get("/admin/projects/{slug}/labelers.csv")
def labelers_csv(slug: str, request: Request, db: DB):
    me, _ = page_user(request, db, admin=True)
    stats, _ = labeler_stats(db, _project(db, slug, me))
    buf = io.StringIO()
    fields = ["labeler", "group", "judgments", "gold_judged", "gold_accuracy", "agreement_with_majority", "median_seconds",
              "last_judged", "skips", "edited"]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(stats)
    return PlainTextResponse(buf.getvalue(), media_type="text/csv", headers={
        "content-disposition": f'attachment; filename="{slug}-labelers.csv"'})


@router.get("/admin/labelers", response_class=HTMLResponse)
def labelers_page(request: Request, db: DB):
    me, ws = page_user(request, db, admin=True)
    return _labelers(request, db, me, ws)


def _labelers(request, db, me, ws, created=None, token=None, error=None, status=200):
    labelers = db.scalars(select(Labeler).order_by(Labeler.name)).all()
    projects = db.scalars(select(Project).order_by(Project.slug)).all()
    return templates.TemplateResponse(request, "admin_labelers.html", {
        "me": me, "csrf": ws.csrf, "labelers": labelers, "projects": projects, "created": created, "token": token,
        "error": error}, status_code=status)


@router.post("/admin/labelers")
def create_labeler(request: Request, form: Form, db: DB):
    me, ws = page_user(request, db, admin=True)
    check_csrf(ws, form)
    try:
        lab, token = auth.add_labeler(db, str(form.get("name", "")).strip(), str(form.get("role") or "labeler"),
                                      str(form.get("group") or "").strip() or None, str(form.get("password") or "") or None,
                                      [str(p) for p in form.getlist("projects")])
    except ValueError as e:
        db.rollback()
        return _labelers(request, db, me, ws, error=str(e), status=422)
    db.commit()
    return _labelers(request, db, me, ws, created=lab, token=token)


@router.get("/api/projects/{slug}/stats")
def api_stats(slug: str, request: Request, db: DB):
    me = api_user(request, db, admin=True)
    return project_stats(db, _project(db, slug, me), request.app.state.agreement_cache)


@router.get("/api/projects/{slug}/export")
def api_export(slug: str, request: Request, db: DB, aggregate: str = "none", gold: bool = False):
    me = api_user(request, db, admin=True)
    return _jsonl(db, _project(db, slug, me), aggregate, gold)
