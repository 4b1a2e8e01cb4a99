"""Changing one's last answer: a labeler may replace their latest judgment in a project for
:data:`EDIT_WINDOW` after submitting it (a mis-click undone), never later and never an older one.

History stays honest: the judgment keeps its id, item, display order and ``created_at``; ``answer``
becomes the new one (so exports and stats use it), ``edited_at`` says when, and the earlier answer
and reason go to ``judgment_edits``, one row per change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from palate.feedback.assignment import MAX_ID, MAX_REASON, AnswerError, ConflictError, answer_from_positions, check_text
from palate.feedback.db import Judgment, JudgmentEdit, Labeler, Project, utcnow

EDIT_WINDOW = timedelta(minutes=10)


class WindowClosed(ConflictError):
    """The judgment is older than EDIT_WINDOW, or no longer the labeler's last one (HTTP 409)."""


def last_judgment(db: Session, project: Project, labeler: Labeler) -> Judgment | None:
    return db.scalar(select(Judgment).where(Judgment.project_id == project.id, Judgment.labeler_id == labeler.id)
                     .order_by(Judgment.id.desc()).limit(1))


def editable_until(j: Judgment) -> datetime:
    return j.created_at + EDIT_WINDOW


def can_edit(j: Judgment | None) -> bool:
    return j is not None and utcnow() < editable_until(j)


def answer_in_positions(project: Project, j: Judgment) -> dict:
    """A stored answer (candidate indices) as the page showed it (positions): what to pre-select."""
    order, answer = j.display_order, j.answer
    if project.task_type == "pairwise":
        c = answer["choice"]
        return {"choice": "AB"[order.index(c)] if c in (0, 1) else c}
    if project.task_type == "ranking":
        ranked = [order.index(c) for c in answer["order"]]  # positions, best first
        return {"order": ranked, "ranks": {p: ranked.index(p) + 1 for p in ranked}}
    return dict(answer)  # thumbs and ratings do not depend on the display order


@dataclass
class Edited:
    judgment: Judgment
    changed: bool


def edit(db: Session, project: Project, labeler: Labeler, judgment_id: int, form: dict,
         reason: str | None = None, keep_reason: bool = False) -> Edited:
    """Replace the answer of the labeler's last judgment (commits). ``form`` is in displayed positions, as for
    a submission; ``keep_reason`` leaves the stored reason as it is. The same answer again changes nothing."""
    if reason is not None:
        check_text("reason", reason, 0, MAX_REASON)
    j = None
    if isinstance(judgment_id, int) and 1 <= judgment_id <= MAX_ID:
        q = select(Judgment).where(Judgment.id == judgment_id).execution_options(populate_existing=True)
        if db.get_bind().dialect.name == "postgresql":
            q = q.with_for_update()  # two changes at once: the second sees the first's answer as the previous one
        j = db.scalar(q)
    if j is None or j.labeler_id != labeler.id or j.project_id != project.id:
        raise AnswerError(f"judgment_id: no judgment {judgment_id} of yours in project {project.slug!r}")
    latest = last_judgment(db, project, labeler)
    if latest.id != j.id:
        raise WindowClosed(f"judgment {j.id} is no longer your last one (judgment {latest.id} is): only your last "
                           "answer can be changed")
    if not can_edit(j):
        raise WindowClosed(closed_message(j))
    answer = answer_from_positions(project, j.display_order, form)
    new_reason = j.reason if keep_reason else (reason or "").strip() or None
    if answer == j.answer and new_reason == j.reason:
        db.commit()
        return Edited(j, False)
    now = utcnow()
    db.add(JudgmentEdit(judgment_id=j.id, previous_answer=j.answer, previous_reason=j.reason, edited_at=now))
    j.answer, j.reason, j.edited_at = answer, new_reason, now
    db.commit()
    return Edited(j, True)


def closed_message(j: Judgment) -> str:
    return (f"the {int(EDIT_WINDOW.total_seconds() // 60)}-minute window to change judgment {j.id} closed at "
            f"{editable_until(j):%Y-%m-%d %H:%M:%S} UTC: the answer stays as it is")
