"""The labeling app under load, through the clients people use: N API labelers (Bearer tokens), M labelers
posting the real HTML forms (log in through /login with its CSRF token, then the task form's hidden fields;
httpx, or real Chromium pages with --chromium) and a few anonymous password guessers, against a
`palate label serve` process on SQLite and/or PostgreSQL. Optionally kill -9 the server mid-run and
restart it on the same database and port while the clients keep retrying with the same idempotency keys.

    .venv/bin/python bench/labeling_load.py [--labelers 50] [--browsers 4] [--seconds 30]
        [--backend sqlite|postgres|both] [--postgres-url URL] [--kill] [--chromium]

Measures, per backend: acknowledged judgments per second of the run (from the start until the last client
is done, so a restart under --kill counts); p50/p95 latency of next and submit (API and form apart)
and of logins; judgments acknowledged vs stored vs exported (GET /api/projects/{slug}/export?aggregate=none);
keys or (item, labeler) pairs stored twice; items over their overlap; 5xx answers; hangs (no answer within
--timeout seconds). Prints a table and writes bench/results/labeling_load.json.

Exits 1 when an acknowledged judgment is missing (or stored under another id), anything is stored twice,
an item has more judgments than its overlap, the export disagrees with the database, a client crashed, or
any request got a 5xx or hung. Connection errors while the server is down under --kill are retried and
counted, not failures.

The PostgreSQL URL (--postgres-url, default $PALATE_BENCH_POSTGRES_URL) must name a database of its own:
its public schema is dropped and recreated. Clients and server share this machine's cores, so latencies
include the clients' own CPU time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
# palate from this checkout (for the server too), and the test helpers that build the concurrency test's databases
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "bench")]

from sqlalchemy import create_engine, select  # noqa: E402

from palate.feedback.db import Judgment, Project, database_url  # noqa: E402
from record import write_result  # noqa: E402
from tests.feedback.helpers import ServerProcess, Setup, candidate_rows, hidden_fields, reset_postgres  # noqa: E402

SLUG = "load"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CHOICES = ["A", "B", "tie", "both_bad"]
RELOGIN_EVERY = 20  # a form labeler starts a new browser session (fresh login) after this many judgments
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


# ----------------------------------------------------------------------------- the server process


# ----------------------------------------------------------------------------- what the clients saw


class Stats:
    """Latencies per request kind, counters, acknowledged judgments (key -> id, None for form posts)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {}
        self.counts: Counter = Counter()
        self.acked: dict[str, int | None] = {}
        self.problems: list[str] = []

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def problem(self, message: str) -> None:
        with self.lock:
            if len(self.problems) < 50:
                self.problems.append(message)

    def record(self, kind: str, seconds: float, status: int) -> None:
        with self.lock:
            self.latency.setdefault(kind, []).append(seconds)
            self.counts[f"{kind} {status}"] += 1
            if status >= 500:
                self.counts["5xx"] += 1

    def ack(self, key: str, judgment_id: int | None, kind: str) -> None:
        with self.lock:
            self.acked[key] = judgment_id
            self.counts[f"acked {kind}"] += 1


class Run:
    """One backend's load: shared clock, the server and the client settings."""

    def __init__(self, server: ServerProcess, clients: int, seconds: float, timeout: float, resend: float):
        self.server, self.seconds, self.timeout, self.resend = server, seconds, timeout, resend
        self.stats = Stats()
        self.deadline = math.inf
        self.started = threading.Event()
        self.t0 = time.perf_counter()
        self.ready = threading.Barrier(clients, action=self._go)  # the clock starts when every client is set up

    def _go(self) -> None:
        self.deadline = time.monotonic() + self.seconds
        self.t0 = time.perf_counter()
        self.started.set()

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def give_up(self) -> bool:
        """Stop retrying an unanswered submission: one timeout past the end of the run."""
        return time.monotonic() > self.deadline + self.timeout

    def request(self, kind: str, send, *args, **kw) -> httpx.Response | None:
        """One timed request; None when it got no answer (a timeout counts as a hang)."""
        t = time.perf_counter()
        try:
            r = send(*args, **kw)
        except httpx.TimeoutException as e:
            self.stats.count("hangs")
            self.stats.count(f"{kind} hang")
            self.stats.problem(f"{kind}: no answer within {self.timeout:.0f} s ({type(e).__name__}) "
                               f"at t={time.perf_counter() - self.t0:.1f} s")
            return None
        except httpx.TransportError as e:
            self.stats.count(f"transport errors ({type(e).__name__})")
            return None
        self.stats.record(kind, time.perf_counter() - t, r.status_code)
        if r.status_code >= 500:
            self.stats.problem(f"{kind} {r.status_code}: {r.text[:200]}")
        return r

    def unexpected(self, kind: str, r: httpx.Response) -> None:
        self.stats.count("unexpected answers")
        self.stats.problem(f"{kind}: unexpected {r.status_code} {r.headers.get('location', '')} {r.text[:200]!r}")

    def deliver(self, kind: str, send, is_ack) -> httpx.Response | None:
        """Send a submission until the server answers below 500 (always the same body, so the same
        idempotency key), or until :meth:`give_up`; returns the answer if ``is_ack`` accepts it."""
        tries = 0
        while True:
            r = self.request(kind, send)
            tries += 1
            if r is not None and r.status_code < 500:
                break
            if self.give_up():
                self.stats.count("submissions given up (never answered)")
                return None
            pause(tries)
        if tries > 1:
            self.stats.count(f"{kind} retried")
        if not is_ack(r):
            self.unexpected(kind, r)
            return None
        return r


def pause(tries: int) -> None:
    time.sleep(min(1.0, 0.05 * 2 ** min(tries, 5)) * random.uniform(0.5, 1))


# ----------------------------------------------------------------------------- the clients


def api_labeler(run: Run, token: str, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=run.server.url, headers={"authorization": f"Bearer {token}"}, timeout=run.timeout) as c:
        run.ready.wait()
        tries = 0
        while run.running():
            r = run.request("api next", c.get, f"/api/projects/{SLUG}/next")
            if r is None or r.status_code >= 500:
                tries += 1
                pause(tries)
                continue
            tries = 0
            if r.status_code == 204:
                run.stats.count("labelers out of items")
                return
            if r.status_code != 200:
                run.unexpected("api next", r)
                pause(3)
                continue
            key = uuid.uuid4().hex
            body = {"assignment_id": r.json()["assignment_id"], "idempotency_key": key, "choice": rng.choice(CHOICES),
                    "duration_ms": rng.randint(500, 20_000)}
            r = run.deliver("api submit", lambda: c.post(f"/api/projects/{SLUG}/judgments", json=body),
                            lambda r: r.status_code in (200, 201))
            if r is None:
                continue
            run.stats.ack(key, r.json()["id"], "api")
            if rng.random() < run.resend:  # a late retry of an answered request: the same judgment comes back
                again = run.request("api resend", c.post, f"/api/projects/{SLUG}/judgments", json=body)
                if again is not None and again.status_code < 500:
                    if again.status_code == 200 and again.json() == {"id": r.json()["id"], "duplicate": True}:
                        run.stats.count("resends answered as duplicates")
                    else:
                        run.unexpected("api resend", again)


def form_login(run: Run, c: httpx.Client, name: str, secret: str) -> bool:
    """The login page, then its form with the CSRF token (a fresh browser session)."""
    c.cookies.clear()
    r = run.request("form login page", c.get, f"/login?next=/p/{SLUG}/task")
    if r is None or r.status_code != 200:
        return False
    data = {"name": name, "secret": secret, "csrf_token": CSRF.search(r.text).group(1), "next": f"/p/{SLUG}/task"}
    r = run.request("form login", c.post, "/login", data=data)
    if r is None or r.status_code >= 500:
        return False
    if r.status_code != 303:
        run.unexpected("form login", r)
        return False
    return True


def form_labeler(run: Run, name: str, secret: str, seed: int) -> None:
    """A browser without JavaScript: every request is the one the HTML makes."""
    rng = random.Random(seed)
    task = f"/p/{SLUG}/task"
    with httpx.Client(base_url=run.server.url, timeout=run.timeout, headers={"accept": "text/html"}) as c:
        run.ready.wait()
        logged_in, judged, tries = False, 0, 0
        while run.running():
            if not logged_in:
                logged_in = form_login(run, c, name, secret)
                if not logged_in:
                    tries += 1
                    pause(tries)
                    continue
            r = run.request("form next", c.get, task)
            if r is None or r.status_code >= 500:
                tries += 1
                pause(tries)
                continue
            tries = 0
            where = r.headers.get("location", "")
            if r.status_code == 303 and where.endswith("/guidelines"):
                run.request("form guidelines", c.get, where)
                continue
            if r.status_code == 303 and where.startswith("/login"):
                run.stats.count("form sessions lost")
                logged_in = False
                continue
            if r.status_code != 200:
                run.unexpected("form next", r)
                pause(3)
                continue
            fields = hidden_fields(r.text)
            if "assignment_id" not in fields:
                run.stats.count("labelers out of items")
                return
            fields.update(choice=rng.choice(CHOICES), duration_ms=str(rng.randint(500, 20_000)), reason="")
            r = run.deliver("form submit", lambda: c.post(task, data=fields),
                            lambda r: r.status_code == 303 and r.headers.get("location") == task)
            if r is not None:
                run.stats.ack(fields["idempotency_key"], None, "form")
                judged += 1
                if rng.random() < run.resend:  # the form posted twice (double click, back and resubmit)
                    again = run.request("form resend", c.post, task, data=fields)
                    if again is not None and again.status_code < 500:
                        if again.status_code == 303 and again.headers.get("location") == task:
                            run.stats.count("resends answered as duplicates")
                        else:
                            run.unexpected("form resend", again)
                if judged % RELOGIN_EVERY == 0:
                    logged_in = False


def chromium_labeler(run: Run, name: str, secret: str, seed: int) -> None:
    """A real Chromium page: types the login form, clicks the task's buttons. A submission that got no
    answer is sent again from the same browser context with the same form fields (the labeler pressing
    back and resubmitting), so the idempotency key is the page's."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    rng = random.Random(seed)
    base, task = run.server.url, f"/p/{SLUG}/task"

    def timed(kind: str, fn):
        t = time.perf_counter()
        try:
            out = fn()
        except PlaywrightError as e:
            hang = "Timeout" in type(e).__name__ or "Timeout" in str(e)[:80]
            run.stats.count("hangs" if hang else "transport errors (browser)")
            if hang:
                run.stats.count(f"{kind} hang")
                run.stats.problem(f"{kind}: no answer within {run.timeout:.0f} s "
                                  f"at t={time.perf_counter() - run.t0:.1f} s")
            return None
        status = out.status if out is not None else 0
        run.stats.record(kind, time.perf_counter() - t, status)
        return out

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context()
            ctx.set_default_timeout(run.timeout * 1000)
            page = ctx.new_page()
            run.ready.wait()
            logged_in, tries = False, 0
            while run.running():
                if not logged_in:
                    if timed("browser login page", lambda: page.goto(f"{base}/login?next={task}")) is None:
                        tries += 1
                        pause(tries)
                        continue
                    page.fill("input[name=name]", name)
                    page.fill("input[name=secret]", secret)

                    def submit_login():
                        with page.expect_navigation() as nav:
                            page.click("button[type=submit]")
                        return nav.value
                    logged_in = timed("browser login", submit_login) is not None and "/login" not in page.url
                    continue
                if page.url.endswith("/guidelines"):
                    timed("browser next", lambda: page.goto(base + task))
                    continue
                if not page.url.endswith(task):
                    if timed("browser next", lambda: page.goto(base + task)) is None:
                        tries += 1
                        pause(tries)
                    continue
                if page.locator("input[name=assignment_id]").count() == 0:
                    run.stats.count("labelers out of items")
                    return
                fields = page.eval_on_selector_all("form#task input[type=hidden]",
                                                   "els => Object.fromEntries(els.map(e => [e.name, e.value]))")
                choice = rng.choice(CHOICES)

                def click():
                    with page.expect_navigation() as nav:
                        page.click(f"button[name=choice][value={choice}]")
                    return nav.value
                resp = timed("browser submit+next", click)
                posted = resp.request.redirected_from if resp is not None else None
                if posted is not None and posted.method == "POST" and posted.response().status == 303 \
                        and posted.response().headers.get("location") == task:
                    run.stats.ack(fields["idempotency_key"], None, "form")
                    continue
                # no answer: resend the same form from the same context until the server answers
                fields.update(choice=choice, duration_ms=str(rng.randint(500, 20_000)))
                n = 0
                while True:
                    n += 1
                    r = timed("browser resubmit", lambda: ctx.request.post(base + task, form=fields, max_redirects=0))
                    if r is not None and r.status < 500:
                        if r.status == 303 and r.headers.get("location") == task:
                            run.stats.ack(fields["idempotency_key"], None, "form")
                        else:
                            run.stats.count("unexpected answers")
                            run.stats.problem(f"browser resubmit: unexpected {r.status}")
                        break
                    if run.give_up():
                        run.stats.count("submissions given up (never answered)")
                        break
                    pause(n)
                timed("browser next", lambda: page.goto(base + task))
        finally:
            browser.close()


def guesser(run: Run, names: list[str], seed: int, gap: float, address: str) -> None:
    """An anonymous client posting wrong passwords (for real and unknown names) through the login form,
    from its own loopback address: the app throttles failed logins per account and per address, and
    the guessers must not share the form labelers' address or accounts (that lockout is by design)."""
    rng = random.Random(seed)
    with httpx.Client(base_url=run.server.url, timeout=run.timeout, headers={"accept": "text/html"},
                      transport=httpx.HTTPTransport(local_address=address)) as c:
        run.ready.wait()
        csrf = None
        while run.running():
            if csrf is None:
                r = run.request("guess login page", c.get, "/login")
                if r is None or r.status_code != 200:
                    pause(3)
                    continue
                csrf = CSRF.search(r.text).group(1)
            name = rng.choice(names + ["nobody", "admin"])
            r = run.request("guess", c.post, "/login", data={"name": name, "secret": uuid.uuid4().hex[:12],
                                                            "csrf_token": csrf, "next": "/"})
            if r is not None and r.status_code not in (401, 429) and r.status_code < 500:
                run.unexpected("guess", r)
                csrf = None
            if r is None:
                pause(3)
            time.sleep(gap)


def guarded(run: Run, fn, *args) -> None:
    try:
        fn(run, *args)
    except threading.BrokenBarrierError:
        pass
    except Exception as e:  # a crashed client is a failed run, never a quietly smaller load
        run.stats.count("client crashes")
        run.stats.problem(f"{fn.__name__} crashed: {type(e).__name__}: {e}")
        run.ready.abort()


# ----------------------------------------------------------------------------- one backend


def prepare(db: str, tmp: Path, args) -> tuple[dict[str, str], dict[str, str], str]:
    """A fresh project with the labelers; returns (API tokens, form passwords, admin token)."""
    st = Setup(db)
    st.project(SLUG, "pairwise", tmp, candidate_rows(args.items), overlap=args.overlap, title="Load",
               guidelines="Pick the better answer.\n\nUse Tie when they are equally good.")
    tokens = {f"api{i:03d}": st.labeler(f"api{i:03d}", group=f"g{i % 3}", password=None, projects=[SLUG])
              for i in range(args.labelers)}
    passwords = {}
    for i in range(args.browsers):
        passwords[f"web{i:02d}"] = f"pw-web{i:02d}-{uuid.uuid4().hex[:8]}"
        st.labeler(f"web{i:02d}", group="web", password=passwords[f"web{i:02d}"], projects=[SLUG])
    admin = st.labeler("boss", role="admin", password=None)
    st.engine.dispose()
    return tokens, passwords, admin


def load(backend: str, db: str, tmp: Path, args) -> dict:
    tokens, passwords, admin = prepare(db, tmp, args)
    server = ServerProcess(db, tmp / f"server-{backend}.log")
    server.start()
    form = chromium_labeler if args.chromium else form_labeler
    guessed = list(tokens)[:5]  # real accounts, but not the form labelers' (a lockout would be by design)
    clients = ([(api_labeler, tok, i) for i, tok in enumerate(tokens.values())]
               + [(form, name, pw, 1000 + i) for i, (name, pw) in enumerate(passwords.items())]
               + [(guesser, guessed, 2000 + i, args.guess_gap, f"127.0.0.{2 + i}") for i in range(args.guessers)])
    run = Run(server, len(clients), args.seconds, args.timeout, args.resend)
    threads = [threading.Thread(target=guarded, args=(run, *c), daemon=True) for c in clients]
    kill: dict = {}
    try:
        for t in threads:
            t.start()
        if args.kill and run.started.wait(timeout=600):
            time.sleep(args.seconds / 2)
            t_kill = time.perf_counter()
            server.kill9()
            kill = {"at_s": round(t_kill - run.t0, 2), "restart_s": round(server.start(), 2),
                    "down_s": round(time.perf_counter() - t_kill, 2)}
        for t in threads:
            t.join()
        wall = time.perf_counter() - run.t0 if run.started.is_set() else 0.0
        responsive = server.responsive()
        exported, export_error = export_ids(run, admin) if responsive else (None, "the server stopped answering")
    finally:
        stopped = server.stop()
    out = check(db, run, args.overlap, exported)
    out.update(backend=backend, wall_s=round(wall, 2), server_start_s=round(server.starts[0], 2), kill=kill,
               responsive_after_run=responsive, server_stopped_by=stopped, export_error=export_error,
               server_log_errors=server.log_errors()[:20])
    if out["failures"] or not responsive:
        out["server_log_tail"] = server.log_tail()
    return out


def export_ids(run: Run, admin: str) -> tuple[list[int] | None, str | None]:
    """The export's judgment ids (one row per judgment), or None and why not."""
    r = run.request("export", httpx.get, f"{run.server.url}/api/projects/{SLUG}/export",
                    params={"aggregate": "none"}, headers={"authorization": f"Bearer {admin}"}, timeout=run.timeout)
    if r is None:
        return None, "no answer"
    if r.status_code != 200:
        return None, f"HTTP {r.status_code}: {r.text[:200]}"
    return [json.loads(line)["meta"]["judgment_id"] for line in r.text.splitlines() if line.strip()], None


def check(db: str, run: Run, overlap: int, exported: list[int] | None) -> dict:
    """Compare what the clients were told with what the database holds (read with a plain engine,
    after the server is gone)."""
    engine = create_engine(database_url(db))
    try:
        with engine.connect() as conn:
            pid = conn.scalar(select(Project.id).where(Project.slug == SLUG))
            rows = conn.execute(select(Judgment.id, Judgment.idempotency_key, Judgment.item_id, Judgment.labeler_id)
                                .where(Judgment.project_id == pid)).all()
    finally:
        engine.dispose()
    s = run.stats
    stored = {r.idempotency_key: r.id for r in rows}
    missing = [k for k in s.acked if k not in stored]
    wrong_id = [k for k, i in s.acked.items() if i is not None and k in stored and stored[k] != i]
    out = {
        "acknowledged": len(s.acked), "acknowledged_api": s.counts["acked api"],
        "acknowledged_form": s.counts["acked form"], "stored": len(rows),
        "exported": None if exported is None else len(exported), "judgments_per_s": None,
        "missing": len(missing), "stored_under_another_id": len(wrong_id),
        "stored_not_acknowledged": len(set(stored) - set(s.acked)),
        "duplicate_keys": extra(Counter(r.idempotency_key for r in rows)),
        "duplicate_item_labeler": extra(Counter((r.item_id, r.labeler_id) for r in rows)),
        "items_over_overlap": sum(1 for n in Counter(r.item_id for r in rows).values() if n > overlap),
        # ids exported but not stored, stored but not exported, or exported twice
        "export_mismatch": None if exported is None else
        len(set(exported) ^ {r.id for r in rows}) + extra(Counter(exported)),
        "5xx": s.counts["5xx"], "hangs": s.counts["hangs"], "unexpected": s.counts["unexpected answers"],
        "client_crashes": s.counts["client crashes"],
        "latency_ms": {k: pct(v) for k, v in sorted(s.latency.items())},
        "counts": dict(sorted(s.counts.items())), "problems": s.problems[:20], "missing_keys": missing[:10],
    }
    failures = [f"{out[k]} {label}" for k, label in [
        ("missing", "acknowledged judgments missing from the database"),
        ("stored_under_another_id", "acknowledged judgments stored under another id"),
        ("duplicate_keys", "idempotency keys stored twice"), ("duplicate_item_labeler", "(item, labeler) stored twice"),
        ("items_over_overlap", "items over their overlap"), ("5xx", "5xx answers"),
        ("hangs", f"requests with no answer within {run.timeout:.0f} s"), ("unexpected", "unexpected answers"),
        ("client_crashes", "clients crashed")] if out[k]]
    if exported is None:
        failures.append("no export")
    elif out["export_mismatch"]:
        failures.append(f"export differs from the database ({len(exported)} rows, {len(rows)} stored)")
    out["failures"] = failures
    return out


def extra(counts: Counter) -> int:
    """How many rows repeat a value already seen."""
    return sum(n - 1 for n in counts.values() if n > 1)


def pct(xs: list[float]) -> dict:
    xs = sorted(xs)

    def q(p):
        return round(1000 * xs[max(0, math.ceil(p * len(xs)) - 1)], 1)
    return {"n": len(xs), "p50": q(0.5), "p95": q(0.95), "max": round(1000 * xs[-1], 1)}


# ----------------------------------------------------------------------------- report


def git_state() -> dict:
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout
    return {"commit": git("rev-parse", "HEAD").strip(),
            "dirty_files": [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()]}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def table(results: dict[str, dict]) -> str:
    names = list(results)
    lat_kinds = sorted({k for r in results.values() for k in r["latency_ms"]})
    rows = [("judgments/s (acknowledged)", lambda r: r["judgments_per_s"])]
    rows += [(f"{k} p50 / p95 ms (n)", lambda r, k=k: _lat(r["latency_ms"].get(k))) for k in lat_kinds]
    rows += [(label, lambda r, k=k: r[k]) for label, k in [
        ("acknowledged (api + form)", "acknowledged"), ("stored in the database", "stored"), ("exported", "exported"),
        ("acknowledged but missing", "missing"), ("stored, never acknowledged", "stored_not_acknowledged"),
        ("duplicate keys", "duplicate_keys"), ("duplicate (item, labeler)", "duplicate_item_labeler"),
        ("items over overlap", "items_over_overlap"), ("5xx", "5xx"), ("hangs (timeouts)", "hangs"),
        ("unexpected answers", "unexpected")]]
    rows += [("login guesses 401 / 429", lambda r: f"{r['counts'].get('guess 401', 0)} / {r['counts'].get('guess 429', 0)}"),
             ("transport errors", lambda r: sum(v for k, v in r["counts"].items() if k.startswith("transport errors"))),
             ("submissions retried after no answer",
              lambda r: r["counts"].get("api submit retried", 0) + r["counts"].get("form submit retried", 0)),
             ("resends answered as duplicates", lambda r: r["counts"].get("resends answered as duplicates", 0)),
             ("kill -9 at / down for (s)", lambda r: f"{r['kill']['at_s']} / {r['kill']['down_s']}" if r["kill"] else "–"),
             ("server answers after run", lambda r: "yes" if r["responsive_after_run"] else "NO"),
             ("verdict", lambda r: "FAIL" if r["failures"] else "ok")]
    width = max(len(label) for label, _ in rows)
    cols = [[str(fn(results[n])) for n in names] for _, fn in rows]
    cw = [max(len(n), *(len(c[i]) for c in cols)) for i, n in enumerate(names)]
    lines = [f"{'':{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, cw))]
    for (label, _), vals in zip(rows, cols):
        lines.append(f"{label:{width}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(vals, cw)))
    return "\n".join(lines)


def _lat(d: dict | None) -> str:
    return "–" if d is None else f"{d['p50']:.0f} / {d['p95']:.0f} ({d['n']})"


@contextmanager
def database(backend: str, args):
    with tempfile.TemporaryDirectory(prefix=f"palate-load-{backend}-") as d:
        if backend == "sqlite":
            yield str(Path(d) / "load.db"), Path(d)
        else:
            reset_postgres(args.postgres_url)
            yield args.postgres_url, Path(d)


def main(argv: list[str] | None = None) -> int:
    env_url = os.environ.get("PALATE_BENCH_POSTGRES_URL")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labelers", type=int, default=50, help="API labelers (Bearer tokens)")
    ap.add_argument("--browsers", type=int, default=4, help="labelers using the HTML login and task forms")
    ap.add_argument("--chromium", action="store_true", help="form labelers drive real Chromium pages (Playwright)")
    ap.add_argument("--guessers", type=int, default=2, help="anonymous clients posting wrong passwords to /login")
    ap.add_argument("--guess-gap", type=float, default=0.1, help="seconds between one guesser's attempts")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both" if env_url else "sqlite")
    ap.add_argument("--postgres-url", default=env_url,
                    help="a database of its own (its public schema is dropped); default $PALATE_BENCH_POSTGRES_URL")
    ap.add_argument("--kill", action="store_true",
                    help="kill -9 the server half-way through and restart it on the same database and port")
    ap.add_argument("--resend", type=float, default=0.1,
                    help="share of answered submissions sent again with the same key (must come back as duplicates)")
    ap.add_argument("--items", type=int, default=6000, help="pairwise items in the project")
    ap.add_argument("--overlap", type=int, default=2, help="labelers per item")
    ap.add_argument("--timeout", type=float, default=30, help="seconds a request may go unanswered before it is a hang")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "labeling_load.json")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends and not args.postgres_url:
        ap.error("PostgreSQL needs --postgres-url or PALATE_BENCH_POSTGRES_URL "
                 "(postgresql+psycopg://user:pw@127.0.0.1/db, a database of its own)")
    if args.chromium and not Path(CHROMIUM).exists():
        ap.error(f"--chromium needs {CHROMIUM}")

    started = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_avg": os.getloadavg()}
    results = {}
    for backend in backends:
        print(f"{backend}: {args.labelers} API labelers, {args.browsers} {'Chromium' if args.chromium else 'form'} "
              f"labelers, {args.guessers} guessers, {args.seconds:g} s{', kill -9 half-way' if args.kill else ''} ...",
              flush=True)
        with database(backend, args) as (db, tmp):
            r = load(backend, db, tmp, args)
        r["judgments_per_s"] = round(r["acknowledged"] / r["wall_s"], 1) if r["wall_s"] else None
        results[backend] = r
        for f in r["failures"]:
            print(f"  FAIL {backend}: {f}")
        for p in r["problems"][:8]:
            print(f"  {backend}: {p}")
        for e in r["server_log_errors"][:5]:
            print(f"  {backend} server log: {e}")
    print()
    print(table(results))

    git = git_state()
    clients = args.labelers + args.browsers + args.guessers
    report = {"command": shlex.join([".venv/bin/python", "bench/labeling_load.py", *argv]),
              "git_commit": git["commit"], "git_dirty_src": git["dirty_files"], "date": started["date"],
              "cpu": cpu_model(), "cores": os.cpu_count(), "client_threads": clients,
              "load_avg_before": [round(x, 2) for x in started["load_avg"]],
              "load_avg_after": [round(x, 2) for x in os.getloadavg()],
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "postgres_url"},
              "ok": not any(r["failures"] for r in results.values()), "backends": results}
    first = backends[0]
    note = "; ".join(f"{b}: {r['judgments_per_s']} judgments/s, "
                     + ("FAIL: " + ", ".join(r["failures"]) if r["failures"] else "ok") for b, r in results.items())
    path = write_result("labeling_load", report, metric=f"labeling app under load: acknowledged judgments/s on {first}",
                        unit="judgments/s", palate=results[first]["judgments_per_s"], note=note, path=args.out,
                        argv=["labeling_load.py", *argv])
    print(f"\nwrote {path}")
    if git["dirty_files"]:
        print(f"measured with uncommitted changes to: {', '.join(git['dirty_files'])}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
