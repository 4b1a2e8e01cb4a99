"""Shared setup for the feedback tests: a database with projects and labelers, a live uvicorn server,
and logging in through the real login form."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from palate.feedback.auth import add_labeler
from palate.feedback.db import open_db
from palate.feedback.importing import create_project, import_items
from palate.feedback.server import free_port

ROOT = Path(__file__).resolve().parents[2]

WORDS = "river stone garden window paper lamp forest music bread cloud train pencil mountain coffee".split()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def candidate_rows(n_prompts: int, per_prompt: int = 2, scores: bool = False) -> list[dict]:
    rows = []
    for i in range(n_prompts):
        for j in range(per_prompt):
            words = " ".join(WORDS[(i + j + k) % len(WORDS)] for k in range(3 + j))
            row = {"prompt": f"Question {i}: describe the {WORDS[i % len(WORDS)]}.", "response": f"Answer {j}: {words}",
                   "model": f"model-{j}"}
            if scores:
                row["scores"] = [float(j), float(j) * (-1) ** i, 0.5]
            rows.append(row)
    return rows


def postgres_url() -> str | None:
    url = os.environ.get("PALATE_TEST_POSTGRES_URL")
    if not url and os.environ.get("PALATE_CI") == "1":
        pytest.fail("PALATE_CI=1 but PALATE_TEST_POSTGRES_URL is not set: CI must test against PostgreSQL")
    return url


def backend_database(backend: str, tmp_path: Path, name: str = "test.db") -> str:
    """A fresh database for a test: a SQLite file under ``tmp_path``, or the test PostgreSQL database
    emptied (skipped when none is configured outside CI)."""
    if backend == "sqlite":
        return str(tmp_path / name)
    url = postgres_url()
    if url is None:
        pytest.skip("PALATE_TEST_POSTGRES_URL is not set")
    reset_postgres(url)
    return url


def reset_postgres(url: str) -> None:
    """Drop every table so a test starts from an empty schema (a dedicated test database)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


class Setup:
    """A database with an admin and labelers; ``tokens[name]`` are their API tokens."""

    def __init__(self, db: str):
        self.db = db
        self.engine, self.sessions = open_db(db)
        self.tokens: dict[str, str] = {}

    def labeler(self, name, role="labeler", group=None, password="pw-" + "x" * 8, projects=()):
        with self.sessions() as s:
            _, token = add_labeler(s, name, role, group, password, list(projects))
            s.commit()
        self.tokens[name] = token
        return token

    def project(self, slug, task_type, tmp: Path, rows=None, gold=None, **kw):
        cands = write_jsonl(tmp / f"{slug}-cands.jsonl", rows) if rows is not None else None
        gold_path = write_jsonl(tmp / f"{slug}-gold.jsonl", gold) if gold else None
        imp = {k: kw.pop(k) for k in ("pairs_per_prompt", "k") if k in kw}
        with self.sessions() as s:
            p = create_project(s, slug, task_type, **kw)
            report = import_items(s, p, cands, None, gold_path, **imp)
            s.commit()
        return report


def login(client: httpx.Client, name: str, secret: str) -> str:
    """Log in through the form; returns the session's CSRF token (from the next page)."""
    r = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', r.text).group(1)
    r = client.post("/login", data={"name": name, "secret": secret, "csrf_token": csrf, "next": "/"})
    assert r.status_code == 303, r.text
    page = client.get("/")
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def hidden_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">', html))


class ServerProcess:
    """``python -m palate label serve`` in a subprocess, its output in a log file (a pipe nobody reads
    would fill up and stall the server on its access log)."""

    def __init__(self, db: str, log: Path, port: int | None = None):
        self.db, self.log, self.port = db, log, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts: list[float] = []  # seconds from spawn until /login answered, per start

    def start(self, timeout: float = 60) -> float:
        env = {**os.environ, "PYTHONUNBUFFERED": "1",  # palate from this checkout, whatever is installed
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
        with open(self.log, "a") as out:
            out.write(f"\n===== start {datetime.now().isoformat(timespec='seconds')}\n")
            out.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "palate", "label", "serve", "--db", self.db,
                                          "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=ROOT)
        t0 = time.perf_counter()
        while True:
            try:
                if httpx.get(f"{self.url}/login", timeout=1).status_code == 200:
                    self.starts.append(time.perf_counter() - t0)
                    return self.starts[-1]
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.perf_counter() - t0 > timeout:
                self.proc.kill()
                raise RuntimeError(f"the server did not start on {self.url}:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, grace: float = 10) -> str:
        """SIGTERM, then SIGKILL after ``grace`` seconds; says which it took."""
        if self.proc is None or self.proc.poll() is not None:
            return "already exited"
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace)
            return "SIGTERM"
        except subprocess.TimeoutExpired:
            self.kill9()
            return f"SIGKILL (no exit {grace:.0f} s after SIGTERM)"

    def responsive(self, timeout: float = 5) -> bool:
        try:
            return httpx.get(f"{self.url}/login", timeout=timeout).status_code == 200
        except httpx.TransportError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def log_errors(self) -> list[str]:
        """Tracebacks' last lines and ERROR lines in the server's output."""
        out, text = [], self.log.read_text(errors="replace").splitlines()
        for i, line in enumerate(text):
            if line.startswith("ERROR") or (line.startswith("Traceback") and i + 1 < len(text)):
                if line.startswith("Traceback"):
                    j = i + 1
                    while j < len(text) and (text[j].startswith(" ") or not text[j].strip()):
                        j += 1
                    line = text[j] if j < len(text) else line
                out.append(line.strip())
        return out
