"""Schema, engine and migrations for the feedback app.

SQLite by default (WAL journal; every transaction is ``BEGIN IMMEDIATE`` behind an in-process lock, so
concurrent writers queue in order instead of failing on a stale snapshot; the lock is waited for at most
:data:`LOCK_TIMEOUT` seconds, then :class:`DatabaseBusy` is raised) or any SQLAlchemy URL, e.g.
``postgresql+psycopg://user:pw@host/db``. The web app only touches the database from worker threads and
ends every transaction before it answers (see ``web.db_session``), so the lock is never held across a
response and never taken on the event loop.
The schema is owned by the Alembic scripts in ``migrations/``: :func:`upgrade` brings any older
database to the newest revision in place, so upgrading palate never loses labels.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint,
                        create_engine, event)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

TASK_TYPES = ("pairwise", "ranking", "rating", "thumbs")
ROLES = ("admin", "labeler")
MIGRATIONS = Path(__file__).parent / "migrations"
LOCK_TIMEOUT = 30.0  # seconds a SQLite transaction waits for the process's write lock


class DatabaseBusy(RuntimeError):
    """The database's write lock was not free within the timeout (the web app answers 503 + Retry-After)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # stored naive UTC on every backend


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    task_type: Mapped[str] = mapped_column(String(16))
    criteria: Mapped[list] = mapped_column(JSON, default=list)  # Likert criteria (rating projects)
    scale_low: Mapped[int] = mapped_column(Integer, default=1)
    scale_high: Mapped[int] = mapped_column(Integer, default=7)
    overlap: Mapped[int] = mapped_column(Integer, default=1)  # each item judged by this many labelers
    gold_every: Mapped[int] = mapped_column(Integer, default=0)  # every Nth task is a gold item (0: never)
    guidelines: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Item(Base):
    """One thing to judge: a prompt and its candidates (2 for pairwise, K for ranking, 1 for rating/thumbs).

    ``candidates`` is a list of ``{"text", "model", "scores"}``; ``model`` and ``scores`` are never shown
    to labelers. ``gold`` is the known answer of an attention-check item (in candidate indices)."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    prompt: Mapped[object] = mapped_column(JSON)
    candidates: Mapped[list] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(300), default="")
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold: Mapped[object] = mapped_column(JSON, nullable=True)
    priority: Mapped[float] = mapped_column(Float, default=0.0)  # ensemble disagreement: served first
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Labeler(Base):
    __tablename__ = "labelers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="labeler")
    group_tag: Mapped[str | None] = mapped_column(String(100), nullable=True)
    password_hash: Mapped[str | None] = mapped_column(String(300), nullable=True)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)  # added in revision 0002
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), primary_key=True)
    guidelines_seen_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Assignment(Base):
    """An item handed to a labeler, with the randomised display order (``display_order[p]`` is the
    candidate index shown at position ``p``)."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "labeler_id", name="uq_assignment_item_labeler"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    display_order: Mapped[list] = mapped_column(JSON)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # a skipped assignment holds no slot of its item and is never offered to this labeler again (rev. 0003)
    skipped_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    skip_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Judgment(Base):
    """A labeler's answer, stored once per ``idempotency_key`` and once per (item, labeler).

    ``answer`` is in candidate indices (``{"choice": 0|1|"tie"|"both_bad"}``, ``{"order": [...]}``,
    ``{"scores": {criterion: n}}`` or ``{"up": bool}``); ``display_order`` records what was shown where.
    A changed answer replaces ``answer`` and sets ``edited_at``; the earlier one goes to ``judgment_edits``."""

    __tablename__ = "judgments"
    __table_args__ = (UniqueConstraint("item_id", "labeler_id", name="uq_judgment_item_labeler"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    answer: Mapped[dict] = mapped_column(JSON)
    display_order: Mapped[list] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)  # added in revision 0002
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    edited_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # last change (rev. 0003)


class JudgmentEdit(Base):
    """An answer as it was before its labeler changed it (``answer`` on the judgment is the latest)."""

    __tablename__ = "judgment_edits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    judgment_id: Mapped[int] = mapped_column(ForeignKey("judgments.id"), index=True)
    previous_answer: Mapped[dict] = mapped_column(JSON)
    previous_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    edited_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class WebSession(Base):
    __tablename__ = "web_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime)


# ----------------------------------------------------------------------------- engine


def database_url(db: str) -> str:
    """A SQLAlchemy URL, or a file path made into a SQLite URL."""
    return db if "://" in db else f"sqlite:///{Path(db).expanduser().resolve()}"


def make_engine(db: str, lock_timeout: float = LOCK_TIMEOUT) -> Engine:
    url = database_url(db)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60},
                               pool_size=20, max_overflow=20)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # transactions are begun explicitly below
            cur = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=60000"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        # One writer at a time: a process-wide lock hands the database over in order (SQLite's own busy
        # handler polls with growing sleeps, which starves under many threads); other processes still
        # wait on SQLite's lock through busy_timeout. A wait is bounded: a transaction held too long
        # makes the others fail with DatabaseBusy instead of queueing for ever.
        lock = threading.Lock()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            if not lock.acquire(timeout=lock_timeout):
                raise DatabaseBusy(f"the database stayed busy for {lock_timeout:g} s: try again")
            conn.info["palate_write_lock"] = True
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                conn.info.pop("palate_write_lock", None)
                lock.release()
                raise

        def _end(conn, how: str) -> None:
            try:
                getattr(conn.connection.dbapi_connection, how)()  # SQLAlchemy's own call is then a no-op
            finally:
                if conn.info.pop("palate_write_lock", False):
                    lock.release()

        event.listen(engine, "commit", lambda conn: _end(conn, "commit"))
        event.listen(engine, "rollback", lambda conn: _end(conn, "rollback"))
        return engine
    return create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database schema to ``revision`` (default: newest), keeping every row."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def open_db(db: str, migrate: bool = True, lock_timeout: float = LOCK_TIMEOUT) -> tuple[Engine, sessionmaker]:
    engine = make_engine(db, lock_timeout)
    if migrate:
        upgrade(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
