"""Shared web plumbing: the size-limit and security-header middleware, templates, the database session
of a request, and who is asking.

The event loop never waits on the database: every route that touches it is a plain ``def`` (FastAPI runs
it in a worker thread), forms are parsed by the async :func:`form_data` dependency before the route
runs, and :data:`DB` ends the request's transaction (commit, or rollback on an error) when the route
returns, before the response is sent: no transaction, and so no SQLite write lock, outlives a route.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from palate.feedback import auth
from palate.feedback.assignment import MAX_ID, AnswerError
from palate.feedback.db import Labeler, Project
from palate.feedback.richtext import render_markdown

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.autoescape = True  # every {{ value }} is HTML-escaped: model outputs are shown as text
templates.env.filters["prompt_messages"] = lambda p: [{"role": "user", "content": p}] if isinstance(p, str) else p
templates.env.filters["pct"] = lambda x: f"{100 * x:.0f}%" if isinstance(x, (int, float)) else "–"
templates.env.filters["num"] = lambda x: "–" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
templates.env.filters["tojson_pretty"] = lambda x: json.dumps(x, indent=1, ensure_ascii=False)
templates.env.filters["markdown"] = render_markdown  # prompts and responses: raw HTML stays text (richtext.py)
templates.env.filters["when"] = lambda t: Markup(f'<time datetime="{t.isoformat()}Z">{t:%H:%M} UTC</time>')  # app.js: local time

DEFAULT_LIMIT = 256 * 1024  # bytes per request body
UPLOAD_LIMIT = 50 * 1024 * 1024  # project creation with candidate files
UPLOAD_PATHS = ("/admin/projects/new",)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


class BodyLimit:
    """Refuse request bodies over the limit with 413 and a message saying the limit (checks the
    Content-Length header, and counts chunked bodies as they arrive)."""

    def __init__(self, app, limit: int = DEFAULT_LIMIT, upload_limit: int = UPLOAD_LIMIT):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"] in UPLOAD_PATHS else self.limit
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._too_large(scope, receive, send, limit)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await self._too_large(scope, receive, send, limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send, limit):
        resp = JSONResponse({"detail": f"request body too large: the limit is {limit} bytes"}, status_code=413)
        await resp(scope, receive, send)


HSTS = b"max-age=31536000; includeSubDomains"


def is_secure(app, scope_or_request) -> bool:
    """Cookies get ``Secure`` and responses HSTS when the app was started with ``secure_cookies`` or the
    request came over TLS (directly, or through a proxy uvicorn trusts with ``--forwarded-allow-ips``)."""
    scheme = scope_or_request["scheme"] if isinstance(scope_or_request, dict) else scope_or_request.url.scheme
    return bool(getattr(app.state, "secure_cookies", False)) or scheme == "https"


class SecurityHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                                       (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
                if is_secure(scope["app"], scope):
                    message["headers"].append((b"strict-transport-security", HSTS))
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


class LoginRequired(Exception):
    pass


def db_session(request: Request):
    """The request's session; its transaction is committed when the route returns normally, rolled back
    when it raises, and closed either way, before the response goes out (``scope="function"``)."""
    db = request.app.state.sessions()
    try:
        yield db
        db.commit()
    except BaseException:
        db.rollback()
        raise
    finally:
        db.close()


DB = Annotated[Session, Depends(db_session, scope="function")]


async def form_data(request: Request) -> FormData:
    """The request's form, read on the event loop so that the route itself can be a plain ``def``."""
    return await request.form()


Form = Annotated[FormData, Depends(form_data)]


def set_cookie(request: Request, response: Response, key: str, value: str, **kw) -> None:
    response.set_cookie(key, value, httponly=True, secure=is_secure(request.app, request), **kw)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def who(request: Request, db: Session) -> tuple[Labeler | None, auth.WebSession | None]:
    """The labeler behind a Bearer token or a session cookie (with the session, for its CSRF token)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return auth.labeler_for_token(db, header[7:].strip()), None
    ws = auth.session_for_cookie(db, request.cookies.get(auth.SESSION_COOKIE))
    if ws is None:
        return None, None
    labeler = db.get(Labeler, ws.labeler_id)
    return (labeler, ws) if labeler is not None and labeler.active else (None, None)


def api_user(request: Request, db: Session, admin: bool = False) -> Labeler:
    labeler, ws = who(request, db)
    if labeler is None:
        raise HTTPException(401, "a valid token is required (Authorization: Bearer <token>) or log in")
    if ws is not None and request.method not in ("GET", "HEAD") and not auth.csrf_ok(ws.csrf, request.headers.get("x-csrf-token")):
        raise HTTPException(403, "missing or wrong X-CSRF-Token header")
    if admin and labeler.role != "admin":
        raise HTTPException(403, "admins only")
    return labeler


def page_user(request: Request, db: Session, admin: bool = False) -> tuple[Labeler, auth.WebSession]:
    labeler, ws = who(request, db)
    if labeler is None or ws is None:
        raise LoginRequired()
    if admin and labeler.role != "admin":
        raise HTTPException(403, "admins only")
    return labeler, ws


def form_int(form, field: str, required: bool = False, low: int = 1, high: int = MAX_ID) -> int | None:
    """A whole number from a form field in ``[low, high]``; a bad value is an AnswerError naming the field."""
    value = str(form.get(field) or "").strip()
    if not value:
        if required:
            raise AnswerError(f"the form is missing {field}")
        return None
    try:
        number = int(value)
    except ValueError:
        raise AnswerError(f"{field} must be a whole number, got {value[:40]!r}") from None
    if not low <= number <= high:
        raise AnswerError(f"{field} must be between {low} and {high}, got {number}")
    return number


def check_csrf(ws: auth.WebSession, form) -> None:
    if not auth.csrf_ok(ws.csrf, form.get("csrf_token")):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")


def project_form(request: Request, db: Session, slug: str, form) -> tuple[Labeler, auth.WebSession, Project]:
    """A form post to one of a project's pages: the logged-in labeler, its session and the project, once the
    form's CSRF token is checked."""
    me, ws = page_user(request, db)
    project = project_for(db, slug, me)
    check_csrf(ws, form)
    return me, ws, project


def project_for(db: Session, slug: str, labeler: Labeler) -> Project:
    """The project, if this labeler may see it; 404 alike for an unknown project and for someone else's
    (the answer does not tell which slugs exist)."""
    project = db.scalar(select(Project).where(Project.slug == slug)) if "\x00" not in slug else None
    if project is None or not auth.can_access(db, labeler, project):
        raise HTTPException(404, f"no project {slug!r}")
    return project
