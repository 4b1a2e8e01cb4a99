"""What a labeler needs beside the task itself: progress toward the goal, skipping an item, changing
the last answer within :data:`edits.EDIT_WINDOW`, and the assignment's deadline. Pages and JSON API.

Like every route that touches the database, these are plain ``def``s (see ``web.py``).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from palate.feedback import edits
from palate.feedback.assignment import (ASSIGNMENT_TTL, EXPIRY_WARNING, MAX_ID, MAX_REASON, AnswerError, ConflictError,
                                        expires_at, form_answer, progress, skip)
from palate.feedback.db import Assignment, Item, Labeler, Project, utcnow
from palate.feedback.web import DB, Form, api_user, form_int, page_user, project_for, project_form, templates

router = APIRouter()


def iso(t) -> str | None:
    return None if t is None else t.isoformat() + "Z"


def shown(project: Project, item: Item, order: list[int]) -> list[dict]:
    """The candidates in displayed order, labelled A/B (pairwise) or 1..K."""
    return [{"pos": p, "label": "AB"[p] if project.task_type == "pairwise" else str(p + 1),
             "text": item.candidates[c]["text"]} for p, c in enumerate(order)]


def status(db: Session, project: Project, me: Labeler, a: Assignment | None = None) -> dict:
    """Template context for the task and done pages: progress, the assignment's deadline, the last answer."""
    last = edits.last_judgment(db, project, me)
    out = {"prog": progress(db, project, me), "last": last if edits.can_edit(last) else None,
           "last_until": edits.editable_until(last) if last is not None else None,
           "ttl_minutes": int(ASSIGNMENT_TTL.total_seconds() // 60), "warn_before": int(EXPIRY_WARNING.total_seconds())}
    if a is not None:
        out["expires"] = expires_at(a)
        out["expires_in"] = max(0, int((out["expires"] - utcnow()).total_seconds()))
    return out


# ----------------------------------------------------------------------------- pages


@router.post("/p/{slug}/skip")
def skip_page(slug: str, request: Request, form: Form, db: DB):
    me, ws, project = project_form(request, db, slug, form)
    try:
        skip(db, project, me, form_int(form, "assignment_id", required=True), str(form.get("skip_reason") or ""))
    except AnswerError as e:
        raise HTTPException(422, str(e)) from None
    except ConflictError as e:
        raise HTTPException(409, str(e)) from None
    return RedirectResponse(f"/p/{slug}/task", status_code=303)


@router.get("/p/{slug}/last")
def last_page(slug: str, request: Request, db: DB):
    me, ws = page_user(request, db)
    project = project_for(db, slug, me)
    j = edits.last_judgment(db, project, me)
    if j is None:
        raise HTTPException(404, f"you have not judged anything in {project.title!r} yet")
    if not edits.can_edit(j):
        raise HTTPException(409, edits.closed_message(j))
    return _edit_page(request, db, project, me, ws, j)


@router.post("/p/{slug}/last")
def last_submit(slug: str, request: Request, form: Form, db: DB):
    me, ws, project = project_form(request, db, slug, form)
    try:
        judgment_id = form_int(form, "judgment_id", required=True)
        edits.edit(db, project, me, judgment_id, form_answer(project, form), reason=str(form.get("reason") or ""))
    except AnswerError as e:
        db.rollback()
        j = edits.last_judgment(db, project, me)
        if j is None:
            raise HTTPException(422, str(e)) from None
        return _edit_page(request, db, project, me, ws, j, error=str(e), status_code=422)
    except ConflictError as e:
        raise HTTPException(409, str(e)) from None
    return RedirectResponse(f"/p/{slug}/task?changed=1", status_code=303)


def _edit_page(request, db, project, me, ws, j, error=None, status_code=200):
    item = db.get(Item, j.item_id)
    return templates.TemplateResponse(request, f"task_{project.task_type}.html", {
        "me": me, "csrf": ws.csrf, "project": project, "item": item, "shown": shown(project, item, j.display_order),
        "editing": j, "edit_until": edits.editable_until(j), "current": edits.answer_in_positions(project, j),
        "current_reason": j.reason, "action": f"/p/{project.slug}/last", "error": error, "max_reason": MAX_REASON,
        "scale": list(range(project.scale_low, project.scale_high + 1))}, status_code=status_code)


# ----------------------------------------------------------------------------- JSON API


class SkipIn(BaseModel):
    assignment_id: int = Field(ge=1, le=MAX_ID)
    reason: str | None = Field(None, max_length=MAX_REASON)


class EditIn(BaseModel):
    choice: str | None = Field(None, max_length=16)
    order: list[int] | None = Field(None, max_length=50)
    scores: dict[str, int] | None = Field(None, max_length=50)
    up: bool | None = None
    reason: str | None = Field(None, max_length=MAX_REASON)  # omitted: the stored reason stays


@router.get("/api/projects/{slug}/progress")
def api_progress(slug: str, request: Request, db: DB):
    """My progress and the project's; my last judgment and until when it can be changed (null: it cannot)."""
    me = api_user(request, db)
    project = project_for(db, slug, me)
    s = status(db, project, me)
    last = s["last"]
    return {**s["prog"], "last_judgment": None if last is None else {"id": last.id, "editable_until": iso(s["last_until"])}}


@router.post("/api/projects/{slug}/skips")
def api_skip(slug: str, body: SkipIn, request: Request, db: DB):
    me = api_user(request, db)
    project = project_for(db, slug, me)
    try:
        s = skip(db, project, me, body.assignment_id, body.reason)
    except AnswerError as e:
        raise HTTPException(422, str(e)) from None
    except ConflictError as e:
        raise HTTPException(409, str(e)) from None
    a = s.assignment
    return JSONResponse({"assignment_id": a.id, "item_id": a.item_id, "skipped_at": iso(a.skipped_at),
                         "reason": a.skip_reason, "duplicate": s.duplicate}, status_code=200 if s.duplicate else 201)


@router.put("/api/projects/{slug}/judgments/{judgment_id}")
def api_edit(slug: str, judgment_id: int, body: EditIn, request: Request, db: DB):
    """Change my last judgment's answer (in the positions the task showed) within the edit window; 409 after."""
    me = api_user(request, db)
    project = project_for(db, slug, me)
    form = {"choice": body.choice, "order": body.order, "scores": body.scores, "up": body.up}
    try:
        e = edits.edit(db, project, me, judgment_id, form, reason=body.reason, keep_reason=body.reason is None)
    except AnswerError as err:
        raise HTTPException(422, str(err)) from None
    except ConflictError as err:
        raise HTTPException(409, str(err)) from None
    j = e.judgment
    return {"id": j.id, "changed": e.changed, "edited_at": iso(j.edited_at), "editable_until": iso(edits.editable_until(j))}
