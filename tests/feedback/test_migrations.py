"""Alembic migrations: an old database upgrades in place and keeps every label."""

import json
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from palate.feedback.db import Assignment, Base, Judgment, JudgmentEdit, Project, current_revision, make_engine, open_db, upgrade
from palate.feedback.export import export_rows
from tests.feedback.helpers import backend_database


def test_upgrade_from_revision_0001_keeps_labels(tmp_path):
    db = str(tmp_path / "old.db")
    engine = make_engine(db)
    upgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    assert "duration_ms" not in {c["name"] for c in inspect(engine).get_columns("judgments")}
    with engine.begin() as conn:  # rows written by the 0001 schema
        conn.execute(text("INSERT INTO projects (id, slug, title, task_type, criteria, scale_low, scale_high, overlap, gold_every, guidelines, created_at) "
                          "VALUES (1, 'old', 'Old', 'pairwise', '[]', 1, 7, 1, 0, '', '2025-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO items (id, project_id, prompt, candidates, source, is_gold, priority, created_at) VALUES "
                          "(1, 1, '\"Which?\"', :c, 'f.jsonl line 1', 0, 0, '2025-01-01 00:00:00')"),
                     {"c": json.dumps([{"text": "good", "model": "m1", "scores": None}, {"text": "bad", "model": "m2", "scores": None}])})
        conn.execute(text("INSERT INTO labelers (id, name, role, created_at) VALUES (1, 'ann', 'labeler', '2025-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO judgments (id, project_id, item_id, labeler_id, idempotency_key, answer, display_order, created_at) "
                          "VALUES (1, 1, 1, 1, 'k1', '{\"choice\": 0}', '[1, 0]', '2025-01-01 00:00:05')"))
    engine.dispose()
    engine, sessions = open_db(db)  # what `palate label serve` does on start
    assert current_revision(engine) == "0003"
    with sessions() as s:
        rows, _ = export_rows(s, s.get(Project, 1))
    assert [(r["chosen"], r["rejected"], r["labeler_id"]) for r in rows] == [("good", "bad", "ann")]
    with create_engine(f"sqlite:///{db}").connect() as conn:
        assert conn.execute(text("SELECT active FROM labelers")).scalar() == 1
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_feedback_imports_no_torch(tmp_path):
    """The app imports and migrates a new database without torch or transformers (start-up time is measured
    by bench/feedback_startup.py, not asserted here)."""
    code = ("import sys; import palate.feedback.app as a; "
            f"a.create_app({str(tmp_path / 'x.db')!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "import palate.feedback.simulate, palate.feedback.agreement, palate.feedback.cli, palate.feedback.stats; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x.db").exists()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrade_from_revision_0002_keeps_rows_and_adds_skips_and_edits(tmp_path, backend):
    db = backend_database(backend, tmp_path, "rev2.db")
    engine = make_engine(db)
    upgrade(engine, "0002")
    assert "judgment_edits" not in inspect(engine).get_table_names()
    with engine.begin() as conn:  # rows written by the 0002 schema: one judged and one open assignment
        conn.execute(text("INSERT INTO projects (id, slug, title, task_type, criteria, scale_low, scale_high, overlap, gold_every, guidelines, created_at) "
                          "VALUES (1, 'old', 'Old', 'pairwise', '[]', 1, 7, 1, 0, '', '2025-01-01 00:00:00')"))
        for i in (1, 2):
            conn.execute(text("INSERT INTO items (id, project_id, prompt, candidates, source, is_gold, priority, created_at) VALUES "
                              "(:i, 1, '\"Which?\"', :c, 'f.jsonl', false, 0, '2025-01-01 00:00:00')"),
                         {"i": i, "c": json.dumps([{"text": f"good {i}", "model": "m1"}, {"text": f"bad {i}", "model": "m2"}])})
        conn.execute(text("INSERT INTO labelers (id, name, role, created_at, active) VALUES (1, 'ann', 'labeler', '2025-01-01 00:00:00', true)"))
        conn.execute(text("INSERT INTO assignments (id, project_id, item_id, labeler_id, display_order, done, created_at) VALUES "
                          "(1, 1, 1, 1, '[1, 0]', true, '2025-01-01 00:00:01'), (2, 1, 2, 1, '[0, 1]', false, '2025-01-01 00:00:06')"))
        conn.execute(text("INSERT INTO judgments (id, project_id, item_id, labeler_id, idempotency_key, answer, display_order, reason, duration_ms, created_at) "
                          "VALUES (1, 1, 1, 1, 'k1', '{\"choice\": 0}', '[1, 0]', 'why', 1200, '2025-01-01 00:00:05')"))
    engine.dispose()
    engine, sessions = open_db(db)
    assert current_revision(engine) == "0003"
    with sessions() as s:
        a1, a2 = s.get(Assignment, 1), s.get(Assignment, 2)
        assert (a1.done, a1.skipped_at, a2.done, a2.skipped_at, a2.skip_reason) == (True, None, False, None, None)
        j = s.get(Judgment, 1)
        assert (j.answer, j.reason, j.duration_ms, j.edited_at) == ({"choice": 0}, "why", 1200, None)
        rows, _ = export_rows(s, s.get(Project, 1))
        assert [(r["chosen"], r["rejected"], r["labeler_id"]) for r in rows] == [("good 1", "bad 1", "ann")]
        s.add(JudgmentEdit(judgment_id=1, previous_answer={"choice": 1}))  # the new table takes rows
        s.commit()
    with engine.connect() as conn:  # the migrated schema is exactly what the models declare
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()
