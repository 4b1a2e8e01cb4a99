"""Passwords, per-labeler tokens, browser sessions and CSRF tokens (stdlib crypto only).

* Passwords are hashed with scrypt (n=2**14, r=8, p=1) and a random salt: ``scrypt$n$r$p$salt$hash``.
* Tokens are 32 random bytes shown once; only their SHA-256 is stored (they carry enough entropy that
  a slow hash adds nothing). API clients send ``Authorization: Bearer <token>``.
* A browser login creates a :class:`WebSession` whose id lives in an HttpOnly, SameSite=Lax cookie
  (stored hashed) and whose CSRF token must come back in every form post.
* Failed logins are throttled per account and per client address (:class:`LoginThrottle`): after a few
  free failures each further attempt must wait an exponentially growing, capped delay, so guessing is
  slow while the right password works again at the latest ``max_wait`` after the last failure (a
  lockout is never permanent, and a labeler's API token keeps working throughout).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass
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
    """A labeler by name and password, or by its token in the password field.

    The read transaction ends before the (deliberately slow) password hash is computed, so no database
    lock or snapshot is held while scrypt runs; the labeler returned is loaded again afterwards."""
    labeler = db.scalar(select(Labeler).where(Labeler.name == name)) if "\x00" not in name else None
    found = None if labeler is None or not labeler.active else (labeler.id, labeler.password_hash, labeler.token_hash)
    db.rollback()
    if found is None:
        hash_password("timing-equaliser")  # same work whether or not the name exists
        return None
    labeler_id, password_hash, stored_token = found
    ok = verify_password(secret, password_hash) or bool(stored_token and hmac.compare_digest(token_hash(secret), stored_token))
    if not ok:
        return None
    labeler = db.get(Labeler, labeler_id)
    return labeler if labeler is not None and labeler.active else None


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0


class LoginThrottle:
    """Failed-login backoff per key (an account name, a client address), in this server process.

    A key's first ``free`` failures within ``window`` seconds cost nothing; once a key has ``n >= free``
    failures, its next attempt must come at least ``base * 2**(n - free)`` seconds (at most ``max_wait``)
    after its last failure, else it is refused before any password is hashed. Failures older than ``window`` are forgotten and a
    successful login clears its account's key. Thread-safe; the lock guards only dictionary updates."""

    def __init__(self, free: int, base: float = 1.0, max_wait: float = 300.0, window: float = 900.0,
                 clock=time.monotonic):
        self.free, self.base, self.max_wait, self.window, self.clock = free, base, max_wait, window, clock
        self._failures: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        with self._lock:
            f = self._failures.get(key)
            if f is None:
                return 0.0
            since = self.clock() - f.last
            if since > self.window:
                del self._failures[key]
                return 0.0
            excess = f.count - self.free
            if excess < 0:
                return 0.0
            return max(0.0, min(self.base * 2 ** excess, self.max_wait) - since)

    def failed(self, key: str) -> None:
        with self._lock:
            f = self._failures.get(key)
            now = self.clock()
            if f is None or now - f.last > self.window:
                f = self._failures[key] = _Failures()
            f.count += 1
            f.last = now
            if len(self._failures) > 100_000:  # bounded memory under a flood of made-up names
                cutoff = now - self.window
                for k in [k for k, v in self._failures.items() if v.last < cutoff][:50_000]:
                    del self._failures[k]

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class LoginRefused(Exception):
    """Too many failed logins: ``retry_after`` seconds until the next attempt is looked at."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


class LoginGuard:
    """The two throttles a login goes through: per account (any address) and per client address."""

    def __init__(self, per_account: LoginThrottle | None = None, per_address: LoginThrottle | None = None):
        self.per_account = per_account or LoginThrottle(free=5, base=1.0, max_wait=300.0)
        self.per_address = per_address or LoginThrottle(free=20, base=1.0, max_wait=900.0)

    def check(self, name: str, address: str) -> None:
        wait = self.per_address.wait(address)
        if wait > 0:
            raise LoginRefused(f"too many failed logins from your address: try again in {math.ceil(wait)} s", wait)
        wait = self.per_account.wait(name.casefold())
        if wait > 0:
            raise LoginRefused(f"too many failed logins for this account: try again in {math.ceil(wait)} s "
                               "(an API token keeps working meanwhile)", wait)

    def record(self, name: str, address: str, ok: bool) -> None:
        if ok:
            self.per_account.succeeded(name.casefold())
            return
        self.per_account.failed(name.casefold())
        self.per_address.failed(address)


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
