"""Who labels what next, and turning a submitted answer (in displayed positions) into a stored judgment.

* Each regular item goes to ``project.overlap`` different labelers; an assignment counts toward that
  while it is done or younger than :data:`ASSIGNMENT_TTL` (abandoned ones free their slot).
* Items with the highest ``priority`` (reward-ensemble disagreement) are served first.
* Every ``project.gold_every``-th task of a labeler is a gold item they have not seen yet.
* The display order is shuffled per assignment and stored with the judgment: the page shows positions
  (A/B, 1..K); answers are mapped back to candidate indices here.
* Submissions carry an idempotency key: a retried request returns the judgment already stored; the same
  key with another assignment or another answer is a conflict, never a silent duplicate.
* Overlap is a promise: an assignment submitted after :data:`ASSIGNMENT_TTL` is still accepted while
  its slot is free, and refused once the item's ``overlap`` slots went to other labelers.
* A skipped assignment (:func:`skip`) frees its slot at once (the item goes back to the pool) and is
  never offered to that labeler again; it cannot be answered any more, nor a judged one skipped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from palate.feedback.db import Assignment, Item, Judgment, Labeler, Project, utcnow

ASSIGNMENT_TTL = timedelta(minutes=30)
EXPIRY_WARNING = timedelta(minutes=5)  # the task page warns this long before its assignment expires
MAX_REASON = 2000
MAX_ID = 2**31 - 1  # ids are 32-bit on PostgreSQL: larger numbers cannot name a row
PAIR_CHOICES = ("A", "B", "tie", "both_bad")


class AnswerError(ValueError):
    """A submission that does not fit its task (shown to the user, HTTP 422)."""


class ConflictError(ValueError):
    """The labeler already judged this item under another idempotency key (HTTP 409)."""


def next_assignment(db: Session, project: Project, labeler: Labeler, rng: random.Random | None = None) -> Assignment | None:
    """The labeler's open assignment, else a new one, else None (nothing left for them)."""
    open_one = db.scalar(_open(project, labeler))
    if open_one is not None:
        return open_one
    item = None
    if project.gold_every > 0:
        n_done = db.scalar(select(func.count()).select_from(Judgment).where(
            Judgment.project_id == project.id, Judgment.labeler_id == labeler.id)) or 0
        if (n_done + 1) % project.gold_every == 0:
            item = _first_item(db, project, labeler, gold=True)
    if item is None:
        item = _first_item(db, project, labeler, gold=False)
    if item is None:
        return None
    order = list(range(len(item.candidates)))
    (rng or random.SystemRandom()).shuffle(order)
    a = Assignment(project_id=project.id, item_id=item.id, labeler_id=labeler.id, display_order=order, done=False)
    db.add(a)
    db.flush()
    return a


def _open(project: Project, labeler: Labeler):
    """The labeler's live assignment: not done, not skipped, younger than ASSIGNMENT_TTL."""
    return select(Assignment).where(
        Assignment.project_id == project.id, Assignment.labeler_id == labeler.id, Assignment.done.is_(False),
        Assignment.skipped_at.is_(None), Assignment.created_at > utcnow() - ASSIGNMENT_TTL).order_by(Assignment.id).limit(1)


def expires_at(a: Assignment):
    return a.created_at + ASSIGNMENT_TTL


def progress(db: Session, project: Project, labeler: Labeler) -> dict:
    """Where a labeler and the project stand: ``mine`` (judgments I made, gold included), ``left_for_me``
    (regular items I could still be given: none of my assignments yet and a free overlap slot, plus my
    open assignment), ``judgments`` (regular judgments stored) of ``target`` (items × overlap)."""
    mine = db.scalar(select(func.count()).select_from(Judgment).where(
        Judgment.project_id == project.id, Judgment.labeler_id == labeler.id)) or 0
    assigned = exists().where(Assignment.item_id == Item.id, Assignment.labeler_id == labeler.id)
    free = db.scalar(select(func.count()).select_from(Item).where(
        Item.project_id == project.id, Item.is_gold.is_(False), ~assigned, _taken(Item.id) < project.overlap)) or 0
    is_open = db.scalar(_open(project, labeler)) is not None
    items = db.scalar(select(func.count()).select_from(Item).where(Item.project_id == project.id, Item.is_gold.is_(False))) or 0
    stored = db.scalar(select(func.count()).select_from(Judgment).join(Item, Item.id == Judgment.item_id).where(
        Judgment.project_id == project.id, Item.is_gold.is_(False))) or 0
    target = items * project.overlap
    return {"mine": mine, "left_for_me": free + is_open, "judgments": stored, "target": target,
            "share": round(stored / target, 4) if target else 0.0}


def _first_item(db: Session, project: Project, labeler: Labeler, gold: bool) -> Item | None:
    mine = exists().where(Assignment.item_id == Item.id, Assignment.labeler_id == labeler.id)
    q = select(Item).where(Item.project_id == project.id, Item.is_gold.is_(gold), ~mine)
    if gold:
        return db.scalar(q.order_by(Item.id).limit(1))
    q = q.where(_taken(Item.id) < project.overlap).order_by(Item.priority.desc(), Item.id).limit(1)
    if db.get_bind().dialect.name != "postgresql":
        return db.scalar(q)  # SQLite: transactions are serialised (see db.make_engine)
    # PostgreSQL: lock the item (others skip it), then count again in a new statement, which sees every
    # assignment committed before we got the lock; a full item is passed over.
    passed: list[int] = []
    for _ in range(50):
        item = db.scalar((q.where(Item.id.not_in(passed)) if passed else q).with_for_update(skip_locked=True, of=Item))
        if item is None or db.scalar(select(_taken(item.id))) < project.overlap:
            return item
        passed.append(item.id)
    return None


def _taken(item_id):
    """Assignments holding a slot of an item: done, or handed out less than ASSIGNMENT_TTL ago and not skipped."""
    return (select(func.count()).select_from(Assignment).where(Assignment.item_id == item_id, _holds_slot())
            .scalar_subquery())


def _holds_slot():
    return or_(Assignment.done.is_(True),
               (Assignment.created_at > utcnow() - ASSIGNMENT_TTL) & Assignment.skipped_at.is_(None))


def form_answer(project: Project, form) -> dict:
    """A task page's form fields as a submission (in displayed positions, as the JSON API takes it)."""
    if project.task_type == "pairwise":
        return {"choice": form.get("choice")}
    if project.task_type == "thumbs":
        return {"up": form.get("up")}
    if project.task_type == "ranking":
        order = str(form.get("order") or "")
        if not order:  # no-JavaScript fallback: a rank select per displayed position
            ranks = {k[5:]: v for k, v in form.items() if k.startswith("rank_")}
            try:
                pairs = sorted(((int(p), int(r)) for p, r in ranks.items()), key=lambda x: x[1])
            except ValueError:
                raise AnswerError("every response needs a rank (a whole number)") from None
            if len({r for _, r in pairs}) != len(pairs):
                raise AnswerError(f"give every response a different rank (got ranks {sorted(r for _, r in pairs)})")
            order = ",".join(str(p) for p, _ in pairs)
        return {"order": order}
    return {"scores": {c: form.get(f"score_{c}") for c in project.criteria}}


def answer_from_positions(project: Project, order: list[int], form: dict) -> dict:
    """Validate a submission given in displayed positions; return the answer in candidate indices."""
    t = project.task_type
    if t == "pairwise":
        choice = form.get("choice")
        if choice not in PAIR_CHOICES:
            raise AnswerError(f"choice must be one of {', '.join(PAIR_CHOICES)}, got {choice!r}")
        return {"choice": order[0] if choice == "A" else order[1] if choice == "B" else choice}
    if t == "ranking":
        ranked = form.get("order")
        if isinstance(ranked, str):
            try:
                ranked = [int(x) for x in ranked.split(",") if x.strip()]
            except ValueError:
                raise AnswerError(f"order must be comma-separated positions, got {ranked!r}") from None
        if not isinstance(ranked, list) or sorted(ranked) != list(range(len(order))):
            raise AnswerError(f"order must rank every response exactly once: a permutation of 0..{len(order) - 1}, got {ranked!r}")
        return {"order": [order[p] for p in ranked]}
    if t == "thumbs":
        up = form.get("up")
        if isinstance(up, str) and up in ("up", "down"):
            up = up == "up"
        if not isinstance(up, bool):
            raise AnswerError(f"up must be true/false ('up' or 'down'), got {up!r}")
        return {"up": up}
    scores = form.get("scores") or {}
    if not isinstance(scores, dict):
        raise AnswerError("scores must map each criterion to a number")
    out = {}
    for c in project.criteria:
        v = scores.get(c)
        try:
            v = int(v)
        except (TypeError, ValueError):
            raise AnswerError(f"missing or non-numeric score for criterion {c!r}") from None
        if not project.scale_low <= v <= project.scale_high:
            raise AnswerError(f"score for {c!r} must be in [{project.scale_low}, {project.scale_high}], got {v}")
        out[c] = v
    extra = set(scores) - set(project.criteria)
    if extra:
        raise AnswerError(f"unknown criteria {sorted(extra)}; this project rates {project.criteria}")
    return {"scores": out}


@dataclass
class Submitted:
    judgment: Judgment
    duplicate: bool


def submit(db: Session, project: Project, labeler: Labeler, assignment_id: int, key: str, form: dict,
           reason: str | None = None, duration_ms: int | None = None) -> Submitted:
    """Store a judgment exactly once per idempotency key (commits)."""
    check_text("idempotency_key", key, 1, 100)
    if reason is not None:
        check_text("reason", reason, 0, MAX_REASON)
    existing = _by_key(db, key, labeler)
    a = db.get(Assignment, assignment_id) if isinstance(assignment_id, int) and 1 <= assignment_id <= MAX_ID else None
    if a is None or a.labeler_id != labeler.id or a.project_id != project.id:
        raise AnswerError(f"assignment_id: no assignment {assignment_id} for you in project {project.slug!r}")
    answer = answer_from_positions(project, a.display_order, form)
    if existing is None and a.skipped_at is not None:
        raise ConflictError(f"assignment {a.id} was skipped: your answer was not stored; take the next task")
    if existing is not None:
        if existing.item_id != a.item_id or existing.answer != answer:
            what = "another assignment" if existing.item_id != a.item_id else "a different answer"
            raise ConflictError(f"idempotency_key {key!r} was already used for {what}: "
                                "use a new key for a new judgment")
        return Submitted(existing, True)
    if not a.done and a.created_at <= utcnow() - ASSIGNMENT_TTL and not _slot_free(db, project, a):
        raise ConflictError(f"assignment {a.id} expired ({int(ASSIGNMENT_TTL.total_seconds() // 60)} minutes) and its "
                            "item went to other labelers meanwhile: your answer was not stored; take the next task")
    j = Judgment(project_id=project.id, item_id=a.item_id, labeler_id=labeler.id, idempotency_key=key,
                 answer=answer, display_order=a.display_order, reason=(reason or "").strip() or None,
                 duration_ms=duration_ms if isinstance(duration_ms, int) and 0 <= duration_ms < 86_400_000 else None,
                 created_at=utcnow())
    db.add(j)
    try:  # done only if not skipped meanwhile (a conditional UPDATE: PostgreSQL re-checks it after a concurrent skip)
        if db.execute(update(Assignment).where(Assignment.id == a.id, Assignment.skipped_at.is_(None))
                      .values(done=True)).rowcount != 1:
            db.rollback()
            raise ConflictError(f"assignment {a.id} was skipped: your answer was not stored; take the next task")
        db.commit()
    except IntegrityError:
        db.rollback()
        existing = _by_key(db, key, labeler)
        if existing is not None:
            return Submitted(existing, True)
        raise ConflictError("you already judged this item") from None
    return Submitted(j, False)


@dataclass
class Skipped:
    assignment: Assignment
    duplicate: bool


def skip(db: Session, project: Project, labeler: Labeler, assignment_id: int, reason: str | None = None) -> Skipped:
    """Give an assignment back (commits): its slot is free for others at once, it is never offered to this
    labeler again, and the skip (with its reason) is counted. Skipping it again is answered as a duplicate;
    a judged assignment cannot be skipped (change the answer instead)."""
    if reason is not None:
        check_text("reason", reason, 0, MAX_REASON)
    a = db.get(Assignment, assignment_id) if isinstance(assignment_id, int) and 1 <= assignment_id <= MAX_ID else None
    if a is None or a.labeler_id != labeler.id or a.project_id != project.id:
        raise AnswerError(f"assignment_id: no assignment {assignment_id} for you in project {project.slug!r}")
    if a.skipped_at is not None:
        return Skipped(a, True)
    done = ConflictError(f"assignment {a.id} is already judged: it cannot be skipped (you may change your "
                         "last answer for a few minutes instead)")
    if a.done:
        raise done
    # only while neither judged nor skipped meanwhile: PostgreSQL re-checks the WHERE after a concurrent submit
    changed = db.execute(update(Assignment).where(Assignment.id == a.id, Assignment.done.is_(False),
                                                  Assignment.skipped_at.is_(None))
                         .values(skipped_at=utcnow(), skip_reason=(reason or "").strip() or None)).rowcount
    db.commit()
    if changed == 1:
        return Skipped(a, False)  # the UPDATE set a's attributes too
    db.refresh(a)
    if a.skipped_at is not None:
        return Skipped(a, True)
    raise done


def check_text(field: str, value, low: int, high: int) -> None:
    """A text field within ``[low, high]`` characters and storable everywhere (PostgreSQL refuses NUL)."""
    if not isinstance(value, str) or not low <= len(value) <= high:
        n = len(value) if isinstance(value, str) else type(value).__name__
        raise AnswerError(f"{field} must be {low}-{high} characters (got {n})")
    if "\x00" in value:
        raise AnswerError(f"{field} contains a NUL character (\\u0000), which cannot be stored")


def _slot_free(db: Session, project: Project, a: Assignment) -> bool:
    """Whether an expired assignment's item still has a slot for it: fewer than ``overlap`` other
    assignments done or live. On PostgreSQL the item row is locked first, as :func:`_first_item` does
    when it hands the item out, so the two cannot both take the last slot."""
    item = db.get(Item, a.item_id)
    if item is None or item.is_gold:
        return item is not None
    if db.get_bind().dialect.name == "postgresql":
        db.scalar(select(Item.id).where(Item.id == a.item_id).with_for_update())
    others = db.scalar(select(func.count()).select_from(Assignment).where(
        Assignment.item_id == a.item_id, Assignment.id != a.id, _holds_slot()))
    return others < project.overlap


def _by_key(db: Session, key: str, labeler: Labeler) -> Judgment | None:
    j = db.scalar(select(Judgment).where(Judgment.idempotency_key == key))
    if j is not None and j.labeler_id != labeler.id:
        raise ConflictError("this idempotency key was used by another labeler")
    return j
