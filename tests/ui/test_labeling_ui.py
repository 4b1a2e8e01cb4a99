"""Skip, change the last answer, markdown and the expiry warning in real headless Chromium against a real
uvicorn server: markdown shows as HTML elements while a ``<script>`` in a model's output stays text and
never runs. Screenshots go to tests/ui/artifacts/."""

import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from palate.feedback.app import create_app
from palate.feedback.assignment import ASSIGNMENT_TTL, EXPIRY_WARNING
from palate.feedback.db import Assignment, Item, Judgment, JudgmentEdit, utcnow
from palate.feedback.server import BackgroundServer
from tests.feedback.conftest import XSS
from tests.feedback.helpers import Setup, candidate_rows
from tests.ui.conftest import ARTIFACTS

pytestmark = pytest.mark.slow
MARKDOWN = ("Sort it with **sorted**:\n\n```python\nxs = sorted(xs)\n```\n\nSee [the docs](https://docs.python.org) "
            "or [this](javascript:window.__pwned=3).\n\n" + XSS)


@pytest.fixture()
def site(tmp_path):
    st = Setup(str(tmp_path / "ui.db"))
    rows = [{"prompt": "How do I sort `xs`?", "response": MARKDOWN}, {"prompt": "How do I sort `xs`?", "response": "I don't know."}]
    st.project("md", "pairwise", tmp_path, rows + candidate_rows(3), title="Markdown answers")
    st.labeler("ann", password="ann-password", projects=["md"])
    with BackgroundServer(create_app(st.db)) as server:
        st.url = server.url
        yield st


def test_skip_change_last_answer_and_markdown_in_chromium(browser, site):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(60_000)
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{site.url}/login")
    page.fill("input[name=name]", "ann")
    page.fill("input[name=secret]", "ann-password")
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/")
    assert re.search(r"you have judged 0 · 4 left for you · project 0 / 4", page.inner_text("main"))
    page.goto(f"{site.url}/p/md/task")
    page.click("#start")
    page.wait_for_selector("#cand-A")

    # markdown became elements; the <script> in the same output is text and did not run
    md = page.locator(".cand .md", has=page.locator("pre"))
    assert md.locator("strong").inner_text() == "sorted"
    assert md.locator("pre > code.language-python").inner_text().strip() == "xs = sorted(xs)"
    assert md.locator("a").count() == 1 and md.locator("a").get_attribute("href") == "https://docs.python.org"
    assert md.locator("a").get_attribute("rel") == "noopener nofollow noreferrer"
    assert "[this](javascript:window.__pwned=3)" in md.inner_text()
    assert "<script>window.__pwned=1</script>" in md.inner_text() and md.locator("script, img, b").count() == 0
    assert page.locator(".prompt code").inner_text() == "xs"
    assert page.inner_text("#left-for-me") == "4" and page.inner_text("#mine") == "0"
    page.screenshot(path=str(ARTIFACTS / "20-markdown.png"), full_page=True)

    # skip it, with a reason: the next item is another one
    page.click("#skip summary")
    page.fill("input[name=skip_reason]", "I cannot run Python")
    with page.expect_navigation():
        page.click("#skip-button")
    page.wait_for_selector("#cand-A")
    assert "sorted(xs)" not in page.inner_text("main")
    assert page.inner_text("#left-for-me") == "3"  # the skipped item is not mine any more
    with site.sessions() as s:
        skipped = s.scalars(select(Assignment).where(Assignment.skipped_at.is_not(None))).all()
        skipped = [(a.skip_reason, MARKDOWN in [c["text"] for c in s.get(Item, a.item_id).candidates]) for a in skipped]
    assert skipped == [("I cannot run Python", True)]

    # judge with the keyboard, then change that answer
    texts = {p: page.inner_text(f"#cand-{p} .text") for p in "AB"}
    with page.expect_navigation():
        page.keyboard.press("1")
    page.wait_for_selector("#change-last")
    assert page.inner_text("#mine") == "1"
    with page.expect_navigation():
        page.click("#change-last")
    page.wait_for_selector("#editing")
    assert {p: page.inner_text(f"#cand-{p} .text") for p in "AB"} == texts  # the same item, as it was shown
    assert page.get_attribute("button[value=A]", "aria-pressed") == "true"
    assert page.get_attribute("button[value=B]", "aria-pressed") is None
    page.screenshot(path=str(ARTIFACTS / "21-change-last-answer.png"), full_page=True)
    with page.expect_navigation():
        page.keyboard.press("2")
    page.wait_for_selector("#changed")
    with site.sessions() as s:
        j = s.scalar(select(Judgment))
        history = s.scalars(select(JudgmentEdit)).all()
        shown_b = s.get(Item, j.item_id).candidates[j.display_order[1]]["text"]
    assert shown_b == texts["B"] and [h.previous_answer for h in history] == [{"choice": j.display_order[0]}]
    assert j.answer == {"choice": j.display_order[1]} and j.edited_at is not None

    # the expiry warning: hidden until EXPIRY_WARNING before the deadline, then shown by app.js
    a = int(page.get_attribute("input[name=assignment_id]", "value"))
    with site.sessions() as s:
        s.execute(update(Assignment).where(Assignment.id == a).values(
            created_at=utcnow() - ASSIGNMENT_TTL + EXPIRY_WARNING + timedelta(seconds=3)))
        s.commit()
    page.reload()
    assert not page.is_visible("#expiry-warning")
    assert "This task is yours until" in page.inner_text("#deadline")
    assert page.get_attribute("#deadline time", "title").endswith(" UTC")  # app.js shows the deadline in local time
    assert re.fullmatch(r"\d\d:\d\d( [AP]M)?", page.inner_text("#deadline time"))
    page.wait_for_selector("#expiry-warning", state="visible", timeout=15_000)
    first = page.inner_text("#expiry-warning")
    assert re.fullmatch(r"This task expires in (5 min 00|4 min [0-5]\d) s: submit or skip it soon\.", first), first
    page.wait_for_function("t => document.getElementById('expiry-warning').textContent !== t", arg=first)  # counting down
    page.screenshot(path=str(ARTIFACTS / "22-expiry-warning.png"), full_page=True)
    assert page.evaluate("window.__pwned") is None and not errors
    ctx.close()


def test_changing_a_ranking_starts_from_the_stored_order(browser, tmp_path):
    st = Setup(str(tmp_path / "rank.db"))
    st.project("rk", "ranking", tmp_path, candidate_rows(2, per_prompt=3), k=3)
    st.labeler("ann", password="ann-password", projects=["rk"])
    with BackgroundServer(create_app(st.db)) as server:
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        ctx.set_default_timeout(60_000)
        page = ctx.new_page()
        page.goto(f"{server.url}/login")
        page.fill("input[name=name]", "ann")
        page.fill("input[name=secret]", "ann-password")
        page.click("button[type=submit]")
        page.wait_for_url(f"{server.url}/")
        page.goto(f"{server.url}/p/rk/task")
        page.click("#start")
        page.wait_for_selector(".rankable")
        texts = [page.inner_text(f".rankable[data-pos='{p}'] .text") for p in range(3)]
        for key in ("3", "1"):  # position 2 best, then 0, then 1 (implied)
            page.keyboard.press(key)
        with page.expect_navigation():
            page.keyboard.press("Enter")
        with page.expect_navigation():
            page.click("#change-last")
        page.wait_for_selector("#editing")
        badges = [page.inner_text(f".rankable[data-pos='{p}'] .badge") for p in range(3)]
        assert badges == ["2", "3", "1"]  # app.js starts from the stored ranking
        page.keyboard.press("Backspace")
        page.keyboard.press("Backspace")
        page.keyboard.press("2")  # now: 2, 1, then 0
        assert [page.inner_text(f".rankable[data-pos='{p}'] .badge") for p in range(3)] == ["3", "2", "1"]
        with page.expect_navigation():
            page.keyboard.press("Enter")
        page.wait_for_selector("#changed")
        ctx.close()
    with st.sessions() as s:
        j = s.scalar(select(Judgment))
        got = [s.get(Item, j.item_id).candidates[c]["text"] for c in j.answer["order"]]
        assert len(s.scalars(select(JudgmentEdit)).all()) == 1
    assert got == [texts[2], texts[1], texts[0]]
