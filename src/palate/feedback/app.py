"""The labeling web app: login, guidelines, task pages (pairwise, ranking, rating, thumbs) and the JSON API.

Run it with ``palate label serve``, or ``uvicorn`` on :func:`create_app`. Pages are server-rendered
(Jinja2, autoescaped) and work without JavaScript; ``static/app.js`` only adds keyboard shortcuts.
The JSON API (``/api/...``, ``Authorization: Bearer <token>``) is what scripts and simulated
labelers use; it goes through the same assignment and storage code as the pages.
"""

from __future__ import annotations

import secrets

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import DataError as DBAPIDataError
from sqlalchemy.orm import Session

from palate.feedback import auth
from palate.feedback import labeling
from palate.feedback.assignment import (MAX_ID, MAX_REASON, AnswerError, ConflictError, expires_at, form_answer,
                                       next_assignment, progress, submit)
from palate.feedback.db import (LOCK_TIMEOUT, Assignment, DatabaseBusy, Item, Membership, Project, open_db, utcnow)
from palate.feedback.stats import AgreementCache
from palate.feedback.web import (DB, HERE, BodyLimit, Form, LoginRequired, SecurityHeaders, api_user, check_csrf,
                                 client_address, form_int, page_user, project_for, project_form, set_cookie,
                                 templates)


def create_app(db: str = "palate_feedback.db", migrate: bool = True, secure_cookies: bool = False,
               lock_timeout: float = LOCK_TIMEOUT) -> FastAPI:
    """The app on a database path or SQLAlchemy URL; the schema is upgraded to the newest revision first.

    ``secure_cookies``: mark cookies ``Secure`` and send HSTS (automatic for requests that arrive over TLS).
    ``lock_timeout``: seconds a request waits for SQLite's write lock before it is answered 503."""
    engine, sessions = open_db(db, migrate=migrate, lock_timeout=lock_timeout)
    app = FastAPI(title="palate label", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.sessions = engine, sessions
    app.state.secure_cookies = secure_cookies
    app.state.login_guard = auth.LoginGuard()
    app.state.agreement_cache = AgreementCache()  # agreement figures per project, until its judgments change
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit)

    @app.exception_handler(LoginRequired)
    async def _to_login(request: Request, exc: LoginRequired):
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
            return await http_exception_handler(request, exc)
        return templates.TemplateResponse(request, "error.html", {"status": exc.status_code, "detail": exc.detail, "me": None},
                                          status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(DatabaseBusy)
    async def _busy(request: Request, exc: DatabaseBusy):
        return await _http_error(request, HTTPException(503, str(exc), headers={"retry-after": "2"}))

    @app.exception_handler(DBAPIDataError)
    async def _unstorable(request: Request, exc: DBAPIDataError):
        # the last line of defence (each field is checked where it is read): e.g. a NUL character, which
        # PostgreSQL text cannot hold, in a field no check covered
        return await _http_error(request, HTTPException(422, "the request holds a value the database cannot store "
                                                             "(e.g. a NUL character or an out-of-range number)"))

    from palate.feedback.admin import router as admin_router

    app.include_router(admin_router)
    app.include_router(labeling.router)
    _pages(app)
    _api(app)
    return app


def _render(request: Request, name: str, status: int = 200, headers: dict | None = None, **ctx) -> HTMLResponse:
    return templates.TemplateResponse(request, name, ctx, status_code=status, headers=headers)


# ----------------------------------------------------------------------------- pages


def _pages(app: FastAPI) -> None:
    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/"):
        csrf = secrets.token_urlsafe(24)
        resp = _render(request, "login.html", csrf=csrf, next=_local(next), error=None, me=None)
        set_cookie(request, resp, auth.LOGIN_CSRF_COOKIE, csrf, samesite="strict")
        return resp

    @app.post("/login")
    def login_post(request: Request, form: Form, db: DB):
        if not auth.csrf_ok(request.cookies.get(auth.LOGIN_CSRF_COOKIE), form.get("csrf_token")):
            raise HTTPException(403, "the login form's CSRF token is missing or wrong: reload the page")
        name, guard, address = str(form.get("name", "")), request.app.state.login_guard, client_address(request)
        again = lambda error, status, headers=None: _render(  # noqa: E731
            request, "login.html", status, csrf=request.cookies.get(auth.LOGIN_CSRF_COOKIE), next=_local(form.get("next")),
            error=error, me=None, headers=headers)
        try:
            guard.check(name, address)
        except auth.LoginRefused as e:
            return again(str(e), 429, {"retry-after": str(e.retry_after)})
        labeler = auth.login(db, name, str(form.get("secret", "")))
        guard.record(name, address, ok=labeler is not None)
        if labeler is None:
            return again("Unknown name or wrong password/token.", 401)
        sid, _ = auth.start_session(db, labeler)
        db.commit()
        resp = RedirectResponse(_local(form.get("next")), status_code=303)
        set_cookie(request, resp, auth.SESSION_COOKIE, sid, samesite="lax", max_age=auth.SESSION_HOURS * 3600)
        resp.delete_cookie(auth.LOGIN_CSRF_COOKIE)
        return resp

    @app.post("/logout")
    def logout(request: Request, form: Form, db: DB):
        _, ws = page_user(request, db)
        check_csrf(ws, form)
        auth.end_session(db, request.cookies.get(auth.SESSION_COOKIE))
        db.commit()
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(auth.SESSION_COOKIE)
        return resp

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request, db: DB):
        me, ws = page_user(request, db)
        q = select(Project).order_by(Project.id)
        if me.role != "admin":
            q = q.join(Membership, Membership.project_id == Project.id).where(Membership.labeler_id == me.id)
        projects = [{"p": p, "prog": progress(db, p, me)} for p in db.scalars(q)]
        return _render(request, "home.html", me=me, csrf=ws.csrf, projects=projects)

    @app.get("/p/{slug}/guidelines", response_class=HTMLResponse)
    def guidelines(slug: str, request: Request, db: DB):
        me, ws = page_user(request, db)
        project = project_for(db, slug, me)
        m = db.get(Membership, (project.id, me.id))
        if m is not None and m.guidelines_seen_at is None:
            m.guidelines_seen_at = utcnow()
            db.commit()
        paragraphs = [p.strip() for p in project.guidelines.split("\n\n") if p.strip()]
        return _render(request, "guidelines.html", me=me, csrf=ws.csrf, project=project, paragraphs=paragraphs)

    @app.get("/p/{slug}/task", response_class=HTMLResponse)
    def task_page(slug: str, request: Request, db: DB):
        me, ws = page_user(request, db)
        project = project_for(db, slug, me)
        m = db.get(Membership, (project.id, me.id))
        if m is not None and m.guidelines_seen_at is None:
            return RedirectResponse(f"/p/{slug}/guidelines", status_code=303)
        return _task(request, db, project, me, ws)

    @app.post("/p/{slug}/task")
    def task_submit(slug: str, request: Request, form: Form, db: DB):
        me, ws, project = project_form(request, db, slug, form)
        try:
            assignment_id = form_int(form, "assignment_id", required=True)
            duration = form_int(form, "duration_ms", low=0)
            submit(db, project, me, assignment_id, str(form.get("idempotency_key", "")), form_answer(project, form),
                   reason=form.get("reason") or None, duration_ms=duration)
        except AnswerError as e:
            db.rollback()
            return _task(request, db, project, me, ws, error=str(e), status=422)
        except ConflictError as e:
            db.rollback()
            return _task(request, db, project, me, ws, error=str(e), status=409)
        return RedirectResponse(f"/p/{slug}/task", status_code=303)


def _local(path) -> str:
    """Only same-site redirect targets (no open redirects)."""
    path = str(path or "/")
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def _task(request, db, project, me, ws, error=None, status=200):
    a = next_assignment(db, project, me)
    item = db.get(Item, a.item_id) if a is not None else None
    where = labeling.status(db, project, me, a)  # read in the same transaction, which ends before rendering
    db.commit()
    changed = request.query_params.get("changed") == "1"
    if a is None:
        return _render(request, "done.html", me=me, csrf=ws.csrf, project=project, changed=changed, **where)
    return _render(request, f"task_{project.task_type}.html", status, me=me, csrf=ws.csrf, project=project, item=item,
                   assignment=a, shown=labeling.shown(project, item, a.display_order), key=secrets.token_hex(16),
                   error=error, max_reason=MAX_REASON, scale=list(range(project.scale_low, project.scale_high + 1)),
                   action=f"/p/{project.slug}/task", current={}, changed=changed, **where)


# ----------------------------------------------------------------------------- JSON API


class JudgmentIn(BaseModel):
    assignment_id: int = Field(ge=1, le=MAX_ID)
    idempotency_key: str = Field(min_length=1, max_length=100)
    choice: str | None = Field(None, max_length=16)
    order: list[int] | None = Field(None, max_length=50)
    scores: dict[str, int] | None = Field(None, max_length=50)
    up: bool | None = None
    reason: str | None = Field(None, max_length=MAX_REASON)
    duration_ms: int | None = Field(None, ge=0)


def task_json(db: Session, project: Project, a: Assignment) -> dict:
    """What a labeler sees: positions and texts, never model names or scores; and when the assignment expires
    (its slot may go to someone else after that). Progress is ``GET .../progress`` (kept off this hot path)."""
    item = db.get(Item, a.item_id)
    return {"assignment_id": a.id, "item_id": item.id, "task_type": project.task_type, "prompt": item.prompt,
            "candidates": [{"position": p, "text": item.candidates[c]["text"]} for p, c in enumerate(a.display_order)],
            "criteria": project.criteria, "scale": [project.scale_low, project.scale_high],
            "expires_at": labeling.iso(expires_at(a))}


def _api(app: FastAPI) -> None:
    @app.get("/api/me")
    def me(request: Request, db: DB):
        u = api_user(request, db)
        return {"name": u.name, "role": u.role, "group": u.group_tag}

    @app.get("/api/projects")
    def projects(request: Request, db: DB):
        u = api_user(request, db)
        q = select(Project).order_by(Project.id)
        if u.role != "admin":
            q = q.join(Membership, Membership.project_id == Project.id).where(Membership.labeler_id == u.id)
        return [{"slug": p.slug, "title": p.title, "task_type": p.task_type, "guidelines": p.guidelines} for p in db.scalars(q)]

    @app.get("/api/projects/{slug}/next")
    def next_task(slug: str, request: Request, db: DB):
        u = api_user(request, db)
        project = project_for(db, slug, u)
        a = next_assignment(db, project, u)
        db.commit()
        if a is None:
            return Response(status_code=204)
        return task_json(db, project, a)

    @app.post("/api/projects/{slug}/judgments")
    def post_judgment(slug: str, body: JudgmentIn, request: Request, db: DB):
        u = api_user(request, db)
        project = project_for(db, slug, u)
        form = {"choice": body.choice, "order": body.order, "scores": body.scores, "up": body.up}
        try:
            s = submit(db, project, u, body.assignment_id, body.idempotency_key, form, body.reason, body.duration_ms)
        except AnswerError as e:
            raise HTTPException(422, str(e)) from None
        except ConflictError as e:
            raise HTTPException(409, str(e)) from None
        return JSONResponse({"id": s.judgment.id, "duplicate": s.duplicate}, status_code=200 if s.duplicate else 201)
