"""What labelers expect beside the task, over real HTTP (uvicorn on 127.0.0.1): progress toward the goal,
skipping an item (its slot goes back to the pool), changing the last answer within the window, markdown
rendered safely, the assignment's deadline, and the admin's paginated labeler table. Skip and change
semantics run on SQLite and on PostgreSQL (when PALATE_TEST_POSTGRES_URL is set)."""

import random
import re
import threading
import uuid
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from palate.feedback.app import create_app
from palate.feedback.assignment import ASSIGNMENT_TTL
from palate.feedback.db import Assignment, Item, Judgment, JudgmentEdit, Labeler, Project, utcnow
from palate.feedback.edits import EDIT_WINDOW
from palate.feedback.export import export_rows
from palate.feedback.richtext import render_markdown
from palate.feedback.server import BackgroundServer
from tests.feedback.conftest import XSS
from tests.feedback.helpers import Setup, backend_database, candidate_rows, hidden_fields, login

BACKENDS = ["sqlite", "postgres"]


@contextmanager
def served(st: Setup):
    with BackgroundServer(create_app(st.db)) as server:
        st.url = server.url
        yield st
    st.engine.dispose()


def api(st, name) -> httpx.Client:
    return httpx.Client(base_url=st.url, headers={"authorization": f"Bearer {st.tokens[name]}"}, timeout=60)


def web(st) -> httpx.Client:
    return httpx.Client(base_url=st.url, timeout=60, headers={"accept": "text/html"})


def judge(c: httpx.Client, slug: str, choice: str = "A") -> tuple[dict, int]:
    task = c.get(f"/api/projects/{slug}/next").json()
    r = c.post(f"/api/projects/{slug}/judgments", json={"assignment_id": task["assignment_id"],
                                                        "idempotency_key": uuid.uuid4().hex, "choice": choice})
    assert r.status_code == 201, r.text
    return task, r.json()["id"]


def backdate(st, model, row_id: int, by: timedelta) -> None:
    with st.sessions() as s:
        s.execute(update(model).where(model.id == row_id).values(created_at=utcnow() - by))
        s.commit()


# ----------------------------------------------------------------------------- progress


@pytest.mark.parametrize("backend", BACKENDS)
def test_progress_counts_my_judgments_items_left_for_me_and_the_project(tmp_path, backend):
    st = Setup(backend_database(backend, tmp_path, "labeling.db"))
    st.project("pp", "pairwise", tmp_path, candidate_rows(4), overlap=2)  # 4 items x 2 = 8 judgments to make
    for name in ("ann", "bob", "cat"):
        st.labeler(name, password=f"{name}-password", projects=["pp"])
    with served(st), api(st, "ann") as ann, api(st, "bob") as bob, api(st, "cat") as cat:
        assert ann.get("/api/projects/pp/progress").json() == {
            "mine": 0, "left_for_me": 4, "judgments": 0, "target": 8, "share": 0.0, "last_judgment": None}
        task = ann.get("/api/projects/pp/next").json()
        open_one = ann.get("/api/projects/pp/progress").json()
        assert {k: open_one[k] for k in ("mine", "left_for_me", "judgments")} == {"mine": 0, "left_for_me": 4, "judgments": 0}  # 3 free + the open one
        r = ann.post("/api/projects/pp/judgments", json={"assignment_id": task["assignment_id"], "idempotency_key": "p1", "choice": "A"})
        mine = ann.get("/api/projects/pp/progress").json()
        assert {k: mine[k] for k in ("mine", "left_for_me", "judgments", "share")} == {"mine": 1, "left_for_me": 3, "judgments": 1, "share": 0.125}
        assert mine["last_judgment"]["id"] == r.json()["id"]
        bob_task, _ = judge(bob, "pp")
        assert bob_task["item_id"] == task["item_id"]  # the second slot of the same item: now it is full
        assert cat.get("/api/projects/pp/progress").json()["left_for_me"] == 3  # not the full item
        assert bob.get("/api/projects/pp/progress").json()["left_for_me"] == 3
        with web(st) as c:
            login(c, "ann", "ann-password")
            home = c.get("/").text
            assert re.search(r"you have judged 1 ·\s+3 left for you · project 2 / 8\s+\(25%\)", home), home
            c.get("/p/pp/guidelines")
            page = c.get("/p/pp/task").text  # hands ann her next item: still 3 left, one of them open
            assert '<strong id="mine">1</strong>' in page and '<strong id="left-for-me">3</strong>' in page
            assert re.search(r"Project: 2 / 8 judgments \(25%\)", page)


# ----------------------------------------------------------------------------- skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_skip_frees_the_slot_is_never_offered_again_and_is_counted(tmp_path, backend):
    st = Setup(backend_database(backend, tmp_path, "labeling.db"))
    st.project("sk", "pairwise", tmp_path, candidate_rows(3), overlap=1)
    st.labeler("ann", projects=["sk"])
    st.labeler("bob", projects=["sk"])
    st.labeler("boss", role="admin")
    with served(st), api(st, "ann") as ann, api(st, "bob") as bob:
        first = ann.get("/api/projects/sk/next").json()
        r = ann.post("/api/projects/sk/skips", json={"assignment_id": first["assignment_id"], "reason": " I can't judge this language "})
        assert r.status_code == 201, r.text
        assert r.json()["item_id"] == first["item_id"] and r.json()["reason"] == "I can't judge this language" and not r.json()["duplicate"]
        again = ann.post("/api/projects/sk/skips", json={"assignment_id": first["assignment_id"]})
        assert again.status_code == 200 and again.json()["duplicate"] and again.json()["skipped_at"] == r.json()["skipped_at"]
        late = ann.post("/api/projects/sk/judgments", json={"assignment_id": first["assignment_id"], "idempotency_key": "s1", "choice": "A"})
        assert late.status_code == 409 and "was skipped" in late.json()["detail"]
        second = ann.get("/api/projects/sk/next").json()
        assert second["item_id"] != first["item_id"]  # never offered to ann again
        assert ann.get("/api/projects/sk/progress").json()["left_for_me"] == 2  # the third item and the open one
        bob_task, bob_judgment = judge(bob, "sk")
        assert bob_task["item_id"] == first["item_id"]  # the skipped item's only slot went back to the pool
        bob_a = bob_task["assignment_id"]
        judged = bob.post("/api/projects/sk/skips", json={"assignment_id": bob_a})
        assert judged.status_code == 409 and "already judged" in judged.json()["detail"]
        assert ann.post("/api/projects/sk/skips", json={"assignment_id": bob_a}).status_code == 422  # not hers
        assert ann.post("/api/projects/sk/skips", json={"assignment_id": second["assignment_id"], "reason": "x" * 2001}).status_code == 422
        nul = ann.post("/api/projects/sk/skips", json={"assignment_id": second["assignment_id"], "reason": "a\x00b"})
        assert nul.status_code == 422 and "reason" in nul.json()["detail"]
        for c in (ann, bob):  # everything else gets judged: each item exactly once (overlap 1)
            while (t := c.get("/api/projects/sk/next")).status_code == 200:
                assert c.post("/api/projects/sk/judgments", json={"assignment_id": t.json()["assignment_id"],
                                                                  "idempotency_key": uuid.uuid4().hex, "choice": "B"}).status_code == 201
    with st.sessions() as s:
        rows = s.execute(select(Judgment.item_id, Labeler.name).join(Labeler, Labeler.id == Judgment.labeler_id)).all()
    assert sorted(i for i, _ in rows) == sorted({i for i, _ in rows}) and len(rows) == 3
    assert (first["item_id"], "bob") in rows and (first["item_id"], "ann") not in rows
    with served(st), api(st, "boss") as boss:
        stats = boss.get("/api/projects/sk/stats").json()
    assert stats["skips"] == 1 and stats["judgments"] == 3 and stats["progress"] == 1.0
    assert stats["skipped_items"] == [{"item_id": first["item_id"], "skips": 1, "reasons": ["I can't judge this language"]}]
    assert {x["labeler"]: x["skips"] for x in stats["labelers"]} == {"ann": 1, "bob": 0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_skip_racing_a_submission_of_the_same_assignment_never_both_win(tmp_path, backend):
    """A double click on Skip and an answer at once: exactly one of them is accepted, the other is a 409, and
    the assignment is either judged (one judgment stored) or skipped (none), never both."""
    st = Setup(backend_database(backend, tmp_path, "labeling.db"))
    st.project("race", "pairwise", tmp_path, candidate_rows(12), overlap=1)
    st.labeler("ann", projects=["race"])
    outcomes = []
    with served(st), api(st, "ann") as c1, api(st, "ann") as c2:
        while (r := c1.get("/api/projects/race/next")).status_code == 200:
            a = r.json()["assignment_id"]
            got = {}
            go = threading.Barrier(2)

            def post(name, client, path, body):
                go.wait()
                got[name] = client.post(path, json=body).status_code

            racers = [threading.Thread(target=post, args=("skip", c1, "/api/projects/race/skips", {"assignment_id": a})),
                      threading.Thread(target=post, args=("judge", c2, "/api/projects/race/judgments",
                                                          {"assignment_id": a, "idempotency_key": uuid.uuid4().hex, "choice": "A"}))]
            for t in racers:
                t.start()
            for t in racers:
                t.join()
            assert sorted(got.values()) == [201, 409], got
            outcomes.append("skip" if got["skip"] == 201 else "judge")
    with st.sessions() as s:
        rows = s.scalars(select(Assignment).order_by(Assignment.id)).all()
        judged = {j.item_id for j in s.scalars(select(Judgment))}
    assert len(rows) == len(outcomes) == 12  # every item once: a skipped one is not handed to ann again
    for a, won in zip(rows, outcomes):
        assert (a.done, a.skipped_at is not None, a.item_id in judged) == ((True, False, True) if won == "judge" else (False, True, False))


def test_skip_button_on_the_task_page(tmp_path):
    st = Setup(str(tmp_path / "skip.db"))
    st.project("sk", "rating", tmp_path, candidate_rows(2, per_prompt=1), criteria=["helpfulness"], scale=(1, 5))
    st.labeler("ann", password="ann-password", projects=["sk"])
    with served(st), web(st) as c:
        csrf = login(c, "ann", "ann-password")
        c.get("/p/sk/guidelines")
        page = c.get("/p/sk/task").text
        assert 'action="/p/sk/skip"' in page and 'name="skip_reason"' in page
        a = hidden_fields(page)["assignment_id"]
        forged = c.post("/p/sk/skip", data={"assignment_id": a, "skip_reason": "x"})
        assert forged.status_code == 403
        r = c.post("/p/sk/skip", data={"csrf_token": csrf, "assignment_id": a, "skip_reason": "offensive text"})
        assert r.status_code == 303 and r.headers["location"] == "/p/sk/task"
        nxt = hidden_fields(c.get("/p/sk/task").text)["assignment_id"]
        assert nxt != a
        twice = c.post("/p/sk/skip", data={"csrf_token": csrf, "assignment_id": a})
        assert twice.status_code == 303  # a double click skips once
        bad = c.post("/p/sk/skip", data={"csrf_token": csrf, "assignment_id": "x"})
        assert bad.status_code == 422 and "assignment_id must be a whole number" in bad.text
    with st.sessions() as s:
        skipped = s.scalars(select(Assignment).where(Assignment.skipped_at.is_not(None))).all()
    assert [(x.id, x.skip_reason) for x in skipped] == [(int(a), "offensive text")]


# ----------------------------------------------------------------------------- change the last answer


@pytest.mark.parametrize("backend", BACKENDS)
def test_change_last_answer_within_the_window_keeps_history(tmp_path, backend):
    st = Setup(backend_database(backend, tmp_path, "labeling.db"))
    st.project("ed", "pairwise", tmp_path, candidate_rows(3), overlap=1)
    st.labeler("ann", projects=["ed"])
    st.labeler("bob", projects=["ed"])
    with served(st), api(st, "ann") as ann, api(st, "bob") as bob:
        task, jid = judge(ann, "ed", "A")
        with st.sessions() as s:
            order = s.get(Judgment, jid).display_order
        r = ann.put(f"/api/projects/ed/judgments/{jid}", json={"choice": "B"})
        assert r.status_code == 200 and r.json()["changed"] and r.json()["edited_at"], r.text
        same = ann.put(f"/api/projects/ed/judgments/{jid}", json={"choice": "B"})
        assert same.status_code == 200 and not same.json()["changed"]  # a repeated request changes nothing
        why = ann.put(f"/api/projects/ed/judgments/{jid}", json={"choice": "B", "reason": "misclicked"})
        assert why.json()["changed"]
        bad = ann.put(f"/api/projects/ed/judgments/{jid}", json={"choice": "C"})
        assert bad.status_code == 422 and "choice must be one of" in bad.json()["detail"]
        assert bob.put(f"/api/projects/ed/judgments/{jid}", json={"choice": "A"}).status_code == 422  # not his
        with st.sessions() as s:
            j = s.get(Judgment, jid)
            history = s.scalars(select(JudgmentEdit).where(JudgmentEdit.judgment_id == jid).order_by(JudgmentEdit.id)).all()
            rows, _ = export_rows(s, s.scalar(select(Project)))
            item = s.get(Item, j.item_id)
        assert j.answer == {"choice": order[1]} and j.reason == "misclicked" and j.edited_at is not None
        assert [(h.previous_answer, h.previous_reason) for h in history] == [({"choice": order[0]}, None), ({"choice": order[1]}, None)]
        assert [x["chosen"] for x in rows] == [item.candidates[order[1]]["text"]]  # exports use the latest answer
        assert rows[0]["meta"]["reason"] == "misclicked" and rows[0]["meta"]["edited_at"] == j.edited_at.isoformat() + "Z"

        _, j2 = judge(ann, "ed", "tie")
        older = ann.put(f"/api/projects/ed/judgments/{jid}", json={"choice": "A"})
        assert older.status_code == 409 and "no longer your last" in older.json()["detail"]
        backdate(st, Judgment, j2, EDIT_WINDOW + timedelta(seconds=5))
        closed = ann.put(f"/api/projects/ed/judgments/{j2}", json={"choice": "A"})
        assert closed.status_code == 409 and "10-minute window to change judgment" in closed.json()["detail"] \
            and "closed at" in closed.json()["detail"]
        assert ann.get("/api/projects/ed/progress").json()["last_judgment"] is None
    with st.sessions() as s:
        assert s.get(Judgment, j2).answer == {"choice": "tie"} and s.get(Judgment, j2).edited_at is None


def test_change_my_last_answer_on_the_pages(tmp_path):
    st = Setup(str(tmp_path / "edit.db"))
    st.project("ab", "pairwise", tmp_path, candidate_rows(3), overlap=1)
    st.project("lk", "rating", tmp_path, candidate_rows(2, per_prompt=1), criteria=["helpfulness", "honesty"], scale=(1, 5))
    st.labeler("ann", password="ann-password", projects=["ab", "lk"])
    with served(st), web(st) as c, api(st, "ann") as ann:
        csrf = login(c, "ann", "ann-password")
        c.get("/p/ab/guidelines")
        page = c.get("/p/ab/task").text
        assert 'id="change-last"' not in page  # nothing judged yet
        prompt = re.search(r"Question \d+", page).group(0)
        assert c.post("/p/ab/task", data={**hidden_fields(page), "choice": "A", "reason": "first thought"}).status_code == 303
        page = c.get("/p/ab/task").text
        assert 'href="/p/ab/last"' in page
        edit = c.get("/p/ab/last").text
        assert prompt in edit and 'id="editing"' in edit and 'action="/p/ab/last"' in edit
        assert re.search(r'value="A"[^>]*aria-pressed="true"', edit) and not re.search(r'value="B"[^>]*aria-pressed', edit)
        assert ">first thought</textarea>" in edit and "idempotency_key" not in edit and "skip_reason" not in edit
        fields = hidden_fields(edit)
        r = c.post("/p/ab/last", data={**fields, "choice": "B", "reason": "second thought"})
        assert r.status_code == 303 and r.headers["location"] == "/p/ab/task?changed=1"
        assert "Your last answer was changed." in c.get(r.headers["location"]).text
        with st.sessions() as s:
            j = s.get(Judgment, int(fields["judgment_id"]))
        assert j.answer == {"choice": j.display_order[1]} and j.reason == "second thought"
        backdate(st, Judgment, j.id, EDIT_WINDOW + timedelta(seconds=1))
        assert 'id="change-last"' not in c.get("/p/ab/task").text
        closed = c.get("/p/ab/last")
        assert closed.status_code == 409 and "window to change" in closed.text
        late = c.post("/p/ab/last", data={**fields, "choice": "A", "csrf_token": csrf})
        assert late.status_code == 409 and "closed at" in late.text
        # a rating: the stored scores come back checked
        t = ann.get("/api/projects/lk/next").json()
        assert ann.post("/api/projects/lk/judgments", json={"assignment_id": t["assignment_id"], "idempotency_key": "r1",
                                                            "scores": {"helpfulness": 4, "honesty": 2}}).status_code == 201
        edit = c.get("/p/lk/last").text
        checked = re.findall(r'name="score_(\w+)" value="(\d)" required checked', edit)
        assert sorted(checked) == [("helpfulness", "4"), ("honesty", "2")]
        bad = c.post("/p/lk/last", data={**hidden_fields(edit), "score_helpfulness": "9", "score_honesty": "2"})
        assert bad.status_code == 422 and "must be in [1, 5]" in bad.text and 'id="editing"' in bad.text


# ----------------------------------------------------------------------------- markdown


def test_markdown_renders_with_raw_html_escaped_and_only_safe_links():
    html = str(render_markdown("**bold** and `x<y`\n\n```python\nprint('<b>hi</b>')\n```\n"
                               "[docs](https://example.org) [evil](javascript:alert(1)) [data](data:text/html,x) "
                               "<javascript:alert(2)> ![pixel](https://tracker.example/p.png)\n" + XSS))
    assert "<strong>bold</strong>" in html and "<code>x&lt;y</code>" in html
    assert "<pre><code class=\"language-python\">print('&lt;b&gt;hi&lt;/b&gt;')\n</code></pre>" in html
    assert '<a href="https://example.org" rel="noopener nofollow noreferrer">docs</a>' in html
    assert "javascript:" not in html.replace("[evil](javascript:alert(1))", "").replace("&lt;javascript:alert(2)&gt;", "")
    assert "href=\"data:" not in html and "<img" not in html and "<script" not in html and "<b>" not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert str(render_markdown(["not", "text"])) == "<p>['not', 'text']</p>\n"


def test_task_page_renders_markdown_and_code_blocks(tmp_path):
    st = Setup(str(tmp_path / "md.db"))
    response = "Use **sorted**:\n\n```python\nxs = sorted(xs)  # <b>not bold</b>\n```\n\nSee [the docs](https://docs.python.org)."
    st.project("md", "thumbs", tmp_path, [{"prompt": "How do I sort `xs`? " + XSS, "response": response}])
    st.labeler("ann", password="ann-password", projects=["md"])
    with served(st), web(st) as c:
        login(c, "ann", "ann-password")
        c.get("/p/md/guidelines")
        r = c.get("/p/md/task")
        page = r.text
    assert "How do I sort <code>xs</code>? &lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    assert "<p>Use <strong>sorted</strong>:</p>" in page
    assert '<pre><code class="language-python">xs = sorted(xs)  # &lt;b&gt;not bold&lt;/b&gt;' in page
    assert '<a href="https://docs.python.org" rel="noopener nofollow noreferrer">the docs</a>' in page
    assert "<script>window" not in page and "<b>" not in page
    assert "script-src 'self'" in r.headers["content-security-policy"] and "unsafe-inline" not in r.headers["content-security-policy"]


# ----------------------------------------------------------------------------- deadline


def test_task_page_states_the_deadline_and_warns_before_it(tmp_path):
    st = Setup(str(tmp_path / "ttl.db"))
    st.project("tt", "pairwise", tmp_path, candidate_rows(2))
    st.labeler("ann", password="ann-password", projects=["tt"])
    with served(st), web(st) as c, api(st, "ann") as ann:
        login(c, "ann", "ann-password")
        c.get("/p/tt/guidelines")
        page = c.get("/p/tt/task").text
        a = int(hidden_fields(page)["assignment_id"])
        with st.sessions() as s:
            expires = s.get(Assignment, a).created_at + ASSIGNMENT_TTL
        assert f'<time datetime="{expires.isoformat()}Z">{expires:%H:%M} UTC</time>' in page
        left = int(re.search(r'data-expires-in="(\d+)"', page).group(1))
        assert 1790 <= left <= 1800 and 'data-warn-before="300"' in page
        assert re.search(r'id="expiry-warning" role="alert" hidden>', page)  # not yet
        assert ann.get("/api/projects/tt/next").json()["expires_at"] == expires.isoformat() + "Z"
        backdate(st, Assignment, a, ASSIGNMENT_TTL - timedelta(minutes=3))
        page = c.get("/p/tt/task").text  # the same assignment, 3 minutes before it expires
        assert int(hidden_fields(page)["assignment_id"]) == a
        assert re.search(r'id="expiry-warning" role="alert">This task expires in\s+3 min: submit or skip it soon.', page)


# ----------------------------------------------------------------------------- admin page


def seed_judgments(st: Setup, slug: str, n_labelers: int, overlap: int, seed: int = 0) -> None:
    """``overlap`` judgments of each item by ``n_labelers`` labelers (``lab00``...), written straight to the database."""
    from palate.feedback.auth import add_labeler

    rng = random.Random(seed)
    with st.sessions() as s:
        project = s.scalar(select(Project).where(Project.slug == slug))
        labelers = []
        for i in range(n_labelers):
            lab, st.tokens[f"lab{i:02d}"] = add_labeler(s, f"lab{i:02d}", "labeler", f"g{i % 3}", None, [slug])
            labelers.append(lab)
        s.flush()
        now = utcnow()
        items = s.scalars(select(Item).where(Item.project_id == project.id).order_by(Item.id)).all()
        for k, item in enumerate(items):  # round robin: every labeler gets some when n_items * overlap >= n_labelers
            for lab in (labelers[(k * overlap + j) % n_labelers] for j in range(overlap)):
                order = rng.sample([0, 1], 2)
                s.add(Assignment(project_id=project.id, item_id=item.id, labeler_id=lab.id, display_order=order, done=True, created_at=now))
                s.add(Judgment(project_id=project.id, item_id=item.id, labeler_id=lab.id, idempotency_key=f"{item.id}-{lab.id}",
                               answer={"choice": rng.choice([0, 1, 0, "tie"])}, display_order=order, created_at=now,
                               duration_ms=rng.randint(1000, 9000)))
        s.commit()


def test_admin_project_page_pages_the_labeler_table(tmp_path):
    st = Setup(str(tmp_path / "admin.db"))
    st.project("big", "pairwise", tmp_path, candidate_rows(150), overlap=3)
    seed_judgments(st, "big", n_labelers=60, overlap=3)
    st.labeler("boss", role="admin", password="boss-password")
    with served(st), web(st) as c, api(st, "lab07") as lab07, api(st, "boss") as boss:
        t = lab07.get("/api/projects/big/progress").json()
        assert t["judgments"] == 450 and t["left_for_me"] == 0  # full: every item has its 3 labels
        with st.sessions() as s:  # a skip by lab30, of an item it has no assignment for
            lab = s.scalar(select(Labeler).where(Labeler.name == "lab30"))
            theirs = select(Assignment.item_id).where(Assignment.labeler_id == lab.id)
            item = s.scalar(select(Item).where(Item.id.not_in(theirs)).order_by(Item.id).limit(1))
            s.add(Assignment(project_id=item.project_id, item_id=item.id, labeler_id=lab.id, display_order=[0, 1], done=False,
                             created_at=utcnow(), skipped_at=utcnow(), skip_reason="too long"))
            s.commit()
        full = {x["labeler"]: x for x in boss.get("/api/projects/big/stats").json()["labelers"]}
        assert full["lab30"]["skips"] == 1 and sum(x["skips"] for x in full.values()) == 1
        login(c, "boss", "boss-password")
        rows = {}
        for page, expected in ((1, 25), (2, 25), (3, 10)):
            html = c.get(f"/admin/projects/big?page={page}").text
            table = html.split('id="labelers"')[1].split("</table>")[0]
            found = re.findall(r"<tr><td>(lab\d\d)</td><td>g\d</td><td>(\d+)</td><td>(\d+)</td>", table)
            assert len(found) == expected, (page, found)
            rows.update({name: (int(n), int(skips)) for name, n, skips in found})
            assert f"Page {page} of 3" in html
            assert ('id="page-next" href="?page=%d"' % (page + 1) in html) == (page < 3)
            assert ('id="page-prev" href="?page=%d"' % (page - 1) in html) == (page > 1)
        assert sorted(rows) == sorted(full) == [f"lab{i:02d}" for i in range(60)]  # each labeler on exactly one page
        assert all(rows[n] == (full[n]["judgments"], full[n]["skips"]) for n in rows)
        assert sum(n for n, _ in rows.values()) == 450
        assert c.get("/admin/projects/big?page=4").status_code == 404
        assert c.get("/admin/projects/big?page=0").status_code == 422
