"""Passwords, per-labeler tokens, browser sessions and CSRF tokens (stdlib crypto only).

* Passwords are hashed with scrypt (n=2**14, r=8, p=1) and a random salt: ``scrypt$n$r$p$salt$hash``.
* Tokens are 32 random bytes shown once; only their SHA-256 is stored (they carry enough entropy that
  a slow hash adds nothing). API clients send ``Authorization: Bearer <token>``.
* A browser login creates a :class:`WebSession` whose id lives in an HttpOnly, SameSite=Lax cookie
  (stored hashed) and whose CSRF token must come back in every form post.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from palate.feedback.db import ROLES, Labeler, Membership, Project, WebSession, utcnow

SESSION_COOKIE = "palate_session"
LOGIN_CSRF_COOKIE = "palate_login_csrf"
SESSION_HOURS = 12
_SCRYPT = (2**14, 8, 1)


def hash_password(password: str) -> str:
    n, r, p = _SCRYPT
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "plt_" + secrets.token_urlsafe(32)


def add_labeler(db: Session, name: str, role: str = "labeler", group: str | None = None,
                password: str | None = None, projects: list[str] = ()) -> tuple[Labeler, str]:
    """Create a labeler; returns it and its API token (shown once, stored hashed)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not name or len(name) > 100:
        raise ValueError("a labeler name must be 1-100 characters")
    if db.scalar(select(Labeler).where(Labeler.name == name)) is not None:
        raise ValueError(f"a labeler named {name!r} already exists")
    token = new_token()
    labeler = Labeler(name=name, role=role, group_tag=group or None, token_hash=token_hash(token),
                      password_hash=hash_password(password) if password else None, active=True)
    db.add(labeler)
    db.flush()
    for slug in projects:
        add_member(db, slug, labeler)
    return labeler, token


def add_member(db: Session, slug: str, labeler: Labeler) -> None:
    project = db.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise ValueError(f"no project {slug!r}")
    if db.get(Membership, (project.id, labeler.id)) is None:
        db.add(Membership(project_id=project.id, labeler_id=labeler.id))
        db.flush()


def labeler_for_token(db: Session, token: str) -> Labeler | None:
    labeler = db.scalar(select(Labeler).where(Labeler.token_hash == token_hash(token)))
    return labeler if labeler is not None and labeler.active else None


def login(db: Session, name: str, secret: str) -> Labeler | None:
    """A labeler by name and password, or by its token in the password field."""
    labeler = db.scalar(select(Labeler).where(Labeler.name == name))
    if labeler is None or not labeler.active:
        hash_password("timing-equaliser")  # same work whether or not the name exists
        return None
    if verify_password(secret, labeler.password_hash):
        return labeler
    if labeler.token_hash and hmac.compare_digest(token_hash(secret), labeler.token_hash):
        return labeler
    return None


def start_session(db: Session, labeler: Labeler) -> tuple[str, str]:
    """Returns (cookie value, csrf token)."""
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    now = utcnow()
    db.execute(delete(WebSession).where(WebSession.expires_at < now))
    db.add(WebSession(id_hash=token_hash(sid), labeler_id=labeler.id, csrf=csrf,
                      expires_at=now + timedelta(hours=SESSION_HOURS)))
    return sid, csrf


def session_for_cookie(db: Session, sid: str | None) -> WebSession | None:
    if not sid:
        return None
    ws = db.get(WebSession, token_hash(sid))
    if ws is None or ws.expires_at < utcnow():
        return None
    return ws


def end_session(db: Session, sid: str | None) -> None:
    if sid:
        db.execute(delete(WebSession).where(WebSession.id_hash == token_hash(sid)))


def csrf_ok(expected: str | None, got: str | None) -> bool:
    return bool(expected) and bool(got) and hmac.compare_digest(expected, got)


def can_access(db: Session, labeler: Labeler, project: Project) -> bool:
    return labeler.role == "admin" or db.get(Membership, (project.id, labeler.id)) is not None
