"""Shared setup for the feedback tests: a database with projects and labelers, a live uvicorn server,
and logging in through the real login form."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest

from palate.feedback.auth import add_labeler
from palate.feedback.db import open_db
from palate.feedback.importing import create_project, import_items

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
