"""The app under abuse and contention, on SQLite and on PostgreSQL: a held transaction cannot stall the
event loop, a lock wait is bounded, failed logins are throttled (never for good), bad input is a 4xx
naming its field, overlap survives expired assignments, idempotency keys cannot be reused for another
judgment, and cookies are Secure behind TLS."""

import asyncio
import re
import threading
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from palate.data.errors import DataError
from palate.feedback.app import create_app
from palate.feedback.assignment import ASSIGNMENT_TTL
from palate.feedback.auth import LoginGuard, LoginThrottle
from palate.feedback.db import Assignment, Judgment
from palate.feedback.importing import create_project, import_items
from palate.feedback.server import BackgroundServer
from tests.feedback.helpers import Setup, backend_database, candidate_rows, login


def new_site(tmp_path, backend: str, **app_kw):
    db = backend_database(backend, tmp_path, "hard.db")
    st = Setup(db)
    st.project("ab", "pairwise", tmp_path, candidate_rows(4), overlap=1)
    st.project("solo", "pairwise", tmp_path, candidate_rows(1), overlap=1)
    st.labeler("ann", password="ann-password", projects=["ab", "solo"])
    st.labeler("bob", password="bob-password", projects=["ab", "solo"])
    st.labeler("boss", role="admin", password="boss-password")
    st.engine.dispose()
    st.app = create_app(db, **app_kw)
    return st


def api(st, server, name):
    return httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {st.tokens[name]}"}, timeout=60)


def login_form(client: httpx.Client) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)


# ----------------------------------------------------------------------------- the event loop


def test_a_held_transaction_cannot_stall_the_event_loop(tmp_path):
    """While another transaction holds SQLite's write lock, a login (which needs the database) waits in a
    worker thread and the event loop keeps answering; the login completes once the lock is free."""
    st = new_site(tmp_path, "sqlite", lock_timeout=300)
    with BackgroundServer(st.app) as server, httpx.Client(base_url=server.url, timeout=60) as web:
        csrf = login_form(web)
        holder = st.app.state.sessions()
        holder.execute(select(Judgment.id).limit(1))  # BEGIN IMMEDIATE: the process's write lock is ours
        answered = {}
        try:
            waiting = threading.Thread(target=lambda: answered.update(r=web.post(
                "/login", data={"name": "ann", "secret": "ann-password", "csrf_token": csrf, "next": "/"})))
            waiting.start()
            for _ in range(10):  # with the loop blocked these would hang until the client timeout
                assert httpx.get(f"{server.url}/static/style.css", timeout=60).status_code == 200
                assert httpx.get(f"{server.url}/login", timeout=60).status_code == 200
            assert waiting.is_alive() and not answered  # the login is still waiting for the lock
        finally:
            holder.rollback()
            holder.close()
        waiting.join(120)
        assert answered["r"].status_code == 303


def test_a_lock_wait_is_bounded_and_answered_503(tmp_path):
    st = new_site(tmp_path, "sqlite", lock_timeout=0.2)
    with BackgroundServer(st.app) as server, api(st, server, "ann") as c:
        holder = st.app.state.sessions()
        holder.execute(select(Judgment.id).limit(1))
        try:
            busy = c.get("/api/me")
            assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
            assert "busy" in busy.json()["detail"]
        finally:
            holder.rollback()
            holder.close()
        assert c.get("/api/me").json()["name"] == "ann"  # nothing left locked behind the refused request


# ----------------------------------------------------------------------------- login throttling


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_login_throttle_backs_off_exponentially_up_to_a_cap_and_forgets():
    clock = Clock()
    th = LoginThrottle(free=2, base=1.0, max_wait=10.0, window=900.0, clock=clock)
    th.failed("k")
    assert th.wait("k") == 0.0  # one free failure, and the next attempt is free too
    th.failed("k")  # 2 failures = free: the next attempt waits 1 s after the last failure
    assert th.wait("k") == 1.0
    clock.t += 0.25
    assert th.wait("k") == 0.75
    clock.t += 0.75
    assert th.wait("k") == 0.0
    th.failed("k")  # 3 failures: 2 s
    assert th.wait("k") == 2.0
    th.failed("k")  # 4: 4 s
    assert th.wait("k") == 4.0
    for _ in range(20):
        th.failed("k")  # 2**24 s would be far past the cap
    assert th.wait("k") == 10.0
    th.succeeded("other")
    assert th.wait("k") == 10.0
    clock.t += 901  # older than the window: forgotten
    assert th.wait("k") == 0.0
    th.failed("k")
    assert th.wait("k") == 0.0  # counting starts again


def test_failed_logins_are_throttled_per_account_and_per_address_but_never_for_good(tmp_path):
    clock = Clock()
    st = new_site(tmp_path, "sqlite")
    st.app.state.login_guard = LoginGuard(LoginThrottle(free=3, base=1.0, max_wait=60.0, clock=clock),
                                          LoginThrottle(free=6, base=1.0, max_wait=600.0, clock=clock))
    with BackgroundServer(st.app) as server, httpx.Client(base_url=server.url, timeout=60,
                                                          headers={"accept": "text/html"}) as web:
        def attempt(name, secret):
            csrf = login_form(web)  # a login that works ends the form's CSRF cookie: fetch the form each time
            return web.post("/login", data={"name": name, "secret": secret, "csrf_token": csrf, "next": "/"})

        assert [attempt("boss", "guess").status_code for _ in range(3)] == [401] * 3  # 3 free failures
        refused = attempt("boss", "boss-password")  # now even the right password waits
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "too many failed logins for this account" in refused.text
        clock.t += 1.0  # the wait is over: the right password works and clears the account's record
        assert attempt("boss", "boss-password").status_code == 303
        assert attempt("boss", "guess").status_code == 401  # free failures again for boss
        # the address has failed 4 times; two more are free, then every name is refused from it
        assert attempt("nobody", "x").status_code == 401
        assert attempt("nobody-else", "x").status_code == 401
        refused = attempt("ann", "ann-password")
        assert refused.status_code == 429 and "from your address" in refused.text
        # an API token keeps working throughout
        assert httpx.get(f"{server.url}/api/me", headers={"authorization": f"Bearer {st.tokens['boss']}"}).status_code == 200
        clock.t += 2.0
        assert attempt("ann", "ann-password").status_code == 303


# ----------------------------------------------------------------------------- bad input is a 4xx


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_bad_input_is_a_4xx_that_names_its_field(tmp_path, backend):
    st = new_site(tmp_path, backend)
    with BackgroundServer(st.app) as server, api(st, server, "ann") as c:
        task = c.get("/api/projects/ab/next").json()
        good = {"assignment_id": task["assignment_id"], "idempotency_key": "k-1", "choice": "A"}
        for field, value in [("assignment_id", 2**63), ("assignment_id", 2**31), ("assignment_id", 0),
                             ("assignment_id", -5), ("idempotency_key", "a\x00b"), ("reason", "fine\x00then"),
                             ("duration_ms", -1), ("duration_ms", "soon")]:
            r = c.post("/api/projects/ab/judgments", json={**good, field: value})
            assert r.status_code == 422, (field, value, r.text)
            assert field in r.text, (field, r.text)
        assert c.get("/api/projects/a%00b/next").status_code == 404
        assert c.post("/api/projects/ab/judgments", json=good).status_code == 201  # nothing was stored before

    with BackgroundServer(st.app) as server, httpx.Client(base_url=server.url, timeout=60,
                                                          headers={"accept": "text/html"}) as web:
        csrf = login(web, "bob", "bob-password")
        web.get("/p/ab/guidelines")
        page = web.get("/p/ab/task").text
        fields = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">', page))
        form = {**fields, "csrf_token": csrf, "choice": "B"}
        for field, value in [("assignment_id", str(2**63)), ("assignment_id", "x"), ("duration_ms", "soon"),
                             ("duration_ms", "-3"), ("reason", "a\x00b"), ("idempotency_key", "k\x00")]:
            r = web.post("/p/ab/task", data={**form, field: value})
            assert r.status_code == 422, (field, value)
            assert field in r.text, (field, value)
        bad_login = web.post("/login", data={"name": "bob\x00", "secret": "x", "csrf_token": login_form(web)})
        assert bad_login.status_code == 401


def test_invalid_utf8_in_an_import_names_file_and_line(tmp_path):
    path = tmp_path / "cands.jsonl"
    path.write_bytes(b'{"prompt": "p", "response": "fine"}\n{"prompt": "p", "response": "caf\xe9"}\n')
    st = Setup(str(tmp_path / "u.db"))
    with st.sessions() as s:
        project = create_project(s, "u", "pairwise")
        with pytest.raises(DataError) as e:
            import_items(s, project, path)
    assert str(path) in str(e.value) and "line 2" in str(e.value) and "UTF-8" in str(e.value)


# ----------------------------------------------------------------------------- overlap and idempotency


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_expired_assignment_whose_slot_went_elsewhere_is_refused(tmp_path, backend):
    st = new_site(tmp_path, backend)

    def expire(assignment_id):
        with st.app.state.sessions() as s:
            a = s.get(Assignment, assignment_id)
            a.created_at -= ASSIGNMENT_TTL + timedelta(minutes=1)
            s.commit()

    with BackgroundServer(st.app) as server, api(st, server, "ann") as ann, api(st, server, "bob") as bob:
        late = ann.get("/api/projects/solo/next").json()
        assert bob.get("/api/projects/solo/next").status_code == 204  # overlap 1: ann holds the only slot
        expire(late["assignment_id"])
        taken = bob.get("/api/projects/solo/next").json()  # the slot is free again and bob takes it
        assert taken["item_id"] == late["item_id"]
        r = ann.post("/api/projects/solo/judgments", json={"assignment_id": late["assignment_id"],
                                                             "idempotency_key": "late", "choice": "A"})
        assert r.status_code == 409 and "expired" in r.json()["detail"]
        assert bob.post("/api/projects/solo/judgments", json={"assignment_id": taken["assignment_id"],
                                                               "idempotency_key": "bob-1", "choice": "B"}).status_code == 201
        # an expired assignment whose slot nobody took is still welcome
        mine = ann.get("/api/projects/ab/next").json()
        expire(mine["assignment_id"])
        r = ann.post("/api/projects/ab/judgments", json={"assignment_id": mine["assignment_id"],
                                                           "idempotency_key": "late-ok", "choice": "A"})
        assert r.status_code == 201
    with st.app.state.sessions() as s:
        per_item = s.scalars(select(Judgment.item_id).where(Judgment.item_id == late["item_id"])).all()
        assert len(per_item) == 1  # overlap 1 kept


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_idempotency_key_reused_for_another_judgment_is_409(tmp_path, backend):
    st = new_site(tmp_path, backend)
    with BackgroundServer(st.app) as server, api(st, server, "ann") as c:
        first = c.get("/api/projects/ab/next").json()
        body = {"assignment_id": first["assignment_id"], "idempotency_key": "once", "choice": "A"}
        assert c.post("/api/projects/ab/judgments", json=body).status_code == 201
        assert c.post("/api/projects/ab/judgments", json=body).json()["duplicate"] is True  # a true retry
        r = c.post("/api/projects/ab/judgments", json={**body, "choice": "B"})
        assert r.status_code == 409 and "different answer" in r.json()["detail"]
        second = c.get("/api/projects/ab/next").json()
        r = c.post("/api/projects/ab/judgments", json={**body, "assignment_id": second["assignment_id"]})
        assert r.status_code == 409 and "another assignment" in r.json()["detail"]
        assert c.post("/api/projects/ab/judgments", json={**body, "assignment_id": second["assignment_id"],
                                                            "idempotency_key": "twice"}).status_code == 201
    with st.app.state.sessions() as s:
        assert [j.answer for j in s.scalars(select(Judgment).where(Judgment.idempotency_key == "once"))] == [
            {"choice": s.get(Assignment, first["assignment_id"]).display_order[0]}]


# ----------------------------------------------------------------------------- cookies behind TLS


def test_secure_cookies_and_hsts_when_asked_or_behind_tls(tmp_path):
    st = new_site(tmp_path, "sqlite")
    with BackgroundServer(st.app) as server:
        plain = httpx.get(f"{server.url}/login")
        assert "secure" not in plain.headers["set-cookie"].lower() and "strict-transport-security" not in plain.headers
        # a TLS proxy on 127.0.0.1 (trusted by default) says the request came over https
        proxied = httpx.get(f"{server.url}/login", headers={"x-forwarded-proto": "https"})
        assert "; secure" in proxied.headers["set-cookie"].lower()
        assert proxied.headers["strict-transport-security"].startswith("max-age=")
    st.app.state.secure_cookies = True  # palate label serve --secure-cookies
    with BackgroundServer(st.app) as server:
        assert "strict-transport-security" in httpx.get(f"{server.url}/static/style.css").headers
        form = httpx.get(f"{server.url}/login")
        csrf = form.headers["set-cookie"].split(";")[0].split("=", 1)[1]  # a Secure cookie: sent by hand over http
        r = httpx.post(f"{server.url}/login", headers={"cookie": f"palate_login_csrf={csrf}"},
                       data={"name": "ann", "secret": "ann-password", "csrf_token": csrf, "next": "/"})
        assert r.status_code == 303
        cookie = [v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("palate_session=")][0]
        assert "; secure" in cookie.lower() and "httponly" in cookie.lower()


def test_no_route_runs_on_the_event_loop_with_the_database(tmp_path):
    """Structural guard for the freeze: a route that is ``async def`` runs on the event loop, so none may
    take the database session; each session dependency ends its transaction before the response."""
    from fastapi.routing import APIRoute

    from palate.feedback.web import db_session

    app = create_app(str(tmp_path / "s.db"))
    on_loop, late, checked = [], [], 0
    routes = list(app.routes)
    for route in routes:
        if hasattr(route, "original_router"):  # an included router (the admin pages): walk its routes too
            routes += route.original_router.routes
        if not isinstance(route, APIRoute):
            continue
        deps = []
        stack = list(route.dependant.dependencies)
        while stack:
            d = stack.pop()
            deps.append(d)
            stack.extend(d.dependencies)
        uses_db = [d for d in deps if d.call is db_session]
        checked += bool(uses_db)
        if uses_db and asyncio.iscoroutinefunction(route.endpoint):
            on_loop.append(route.path)
        late += [route.path for d in uses_db if d.scope != "function"]
    assert checked >= 20 and not on_loop and not late, (checked, on_loop, late)
