"""50 labelers submitting at once against a real server process: every accepted judgment stored exactly
once (idempotency keys, retries racing the original), none lost, overlap respected, export counts match.
Runs on SQLite, and on PostgreSQL when PALATE_TEST_POSTGRES_URL is set (required when PALATE_CI=1)."""

import random
import threading
import time
import uuid
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from palate.feedback.db import Judgment
from tests.feedback.helpers import ServerProcess, Setup, candidate_rows, postgres_url, reset_postgres

pytestmark = pytest.mark.slow  # a server subprocess and 100 client threads
LABELERS, SECONDS, OVERLAP = 50, 4.0, 2


def run_load(db: str, tmp_path):
    st = Setup(db)
    st.project("load", "pairwise", tmp_path, candidate_rows(400), overlap=OVERLAP)
    names = [f"lab{i:02d}" for i in range(LABELERS)]
    for i, n in enumerate(names):
        st.labeler(n, group=f"g{i % 3}", password=None, projects=["load"])
    st.labeler("boss", role="admin", password=None)
    st.engine.dispose()
    server = ServerProcess(db, tmp_path / "server.log")  # its log in a file: a pipe nobody reads stalls it
    start_seconds = server.start()
    url = server.url
    accepted, problems, lock = {}, [], threading.Lock()
    stats = Counter()
    deadline = [0.0]
    ready = threading.Barrier(LABELERS, action=lambda: deadline.__setitem__(0, time.monotonic() + SECONDS))

    def post(client, body, out):
        out.append(client.post("/api/projects/load/judgments", json=body))

    def labeler(name, seed):
        rng = random.Random(seed)
        headers = {"authorization": f"Bearer {st.tokens[name]}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c, httpx.Client(base_url=url, headers=headers, timeout=60) as c2:
            ready.wait()  # the clock starts when every labeler is connected
            while time.monotonic() < deadline[0]:
                r = c.get("/api/projects/load/next")
                if r.status_code == 204:
                    break
                if r.status_code != 200:
                    problems.append(f"{name} next {r.status_code} {r.text[:200]}")
                    return
                body = {"assignment_id": r.json()["assignment_id"], "idempotency_key": uuid.uuid4().hex,
                        "choice": rng.choice(["A", "B", "tie", "both_bad"])}
                responses = []
                if rng.random() < 0.3:  # a retry racing the original request
                    racer = threading.Thread(target=post, args=(c2, body, responses))
                    racer.start()
                    post(c, body, responses)
                    racer.join()
                else:
                    post(c, body, responses)
                if rng.random() < 0.2:  # a late retry after the answer arrived
                    post(c, body, responses)
                codes = sorted(x.status_code for x in responses)
                ids = {x.json()["id"] for x in responses if x.status_code in (200, 201)}
                if codes.count(201) != 1 or any(cd not in (200, 201) for cd in codes) or len(ids) != 1:
                    problems.append(f"{name}: {codes} {[x.text[:100] for x in responses]}")
                    return
                with lock:
                    accepted[body["idempotency_key"]] = ids.pop()
                    stats["duplicates_answered"] += codes.count(200)

    threads = [threading.Thread(target=labeler, args=(n, i)) for i, n in enumerate(names)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        export = httpx.get(f"{url}/api/projects/load/export", headers={"authorization": f"Bearer {st.tokens['boss']}"}, timeout=60)
    finally:
        stopped = server.stop()
    assert stopped == "SIGTERM", f"the server did not stop on SIGTERM: {stopped}\n{server.log_tail()}"
    assert not problems, problems[:5]
    with st.sessions() as s:
        rows = s.execute(select(Judgment.id, Judgment.idempotency_key, Judgment.item_id, Judgment.labeler_id)).all()
        assert s.scalar(select(func.count()).select_from(Judgment)) == len(rows)
    stored = {r.idempotency_key: r.id for r in rows}
    assert len(accepted) >= LABELERS, f"only {len(accepted)} judgments in {SECONDS}s"
    assert stored == accepted  # every accepted judgment stored, with the id the client was given; nothing else
    assert len(Counter((r.item_id, r.labeler_id) for r in rows)) == len(rows)  # no labeler judged an item twice
    assert max(Counter(r.item_id for r in rows).values()) <= OVERLAP
    assert export.status_code == 200 and len(export.text.splitlines()) == len(rows)
    return {"accepted": len(accepted), "duplicates_answered": stats["duplicates_answered"], "server_start_s": round(start_seconds, 2)}


def test_fifty_labelers_concurrently_on_sqlite(tmp_path, record_property):
    figures = run_load(str(tmp_path / "load.db"), tmp_path)
    record_property("figures", figures)
    print("sqlite", figures)
    assert figures["duplicates_answered"] > 0


def test_fifty_labelers_concurrently_on_postgres(tmp_path, record_property):
    url = postgres_url()
    if not url:
        pytest.skip("set PALATE_TEST_POSTGRES_URL=postgresql+psycopg://user:pw@127.0.0.1/db to run against PostgreSQL")
    reset_postgres(url)
    figures = run_load(url, tmp_path)
    record_property("figures", figures)
    print("postgres", figures)
    assert figures["duplicates_answered"] > 0
