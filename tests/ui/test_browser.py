"""The app in real headless Chromium (Playwright) against a real uvicorn server: a labeler logs in, reads
the guidelines and labels pairwise, ranking and Likert tasks with mouse and keyboard; an admin creates
a project by uploading files and exports it; model outputs with HTML stay text. Screenshots go to
tests/ui/artifacts/."""


import pytest
from sqlalchemy import select

from palate.data.readers import read_preferences
from palate.feedback.app import create_app
from palate.feedback.db import Item, Judgment, Project
from palate.feedback.server import BackgroundServer
from tests.feedback.conftest import XSS
from tests.feedback.helpers import Setup, candidate_rows, write_jsonl
from tests.ui.conftest import ARTIFACTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    st = Setup(str(tmp / "ui.db"))
    xss_rows = [{"prompt": "Render this: " + XSS, "response": XSS, "model": "evil"},
                {"prompt": "Render this: " + XSS, "response": "A calm, plain answer.", "model": "nice"}]
    st.project("ab", "pairwise", tmp, xss_rows + candidate_rows(4), title="Which answer is better?", overlap=2,
               guidelines="Pick the response that answers the question best.\n\nUse Tie when they are equally good.")
    st.project("rk", "ranking", tmp, candidate_rows(2, per_prompt=3), title="Rank the answers", k=3)
    st.project("lk", "rating", tmp, candidate_rows(2, per_prompt=1), title="Rate the answer",
               criteria=["helpfulness", "honesty"], scale=(1, 5))
    st.labeler("ann", group="g1", password="ann-password", projects=["ab", "rk", "lk"])
    st.labeler("boss", role="admin", password="boss-password")
    with BackgroundServer(create_app(st.db)) as server:
        st.url = server.url
        st.tmp = tmp
        yield st


def context(browser, **kw):
    ctx = browser.new_context(**kw)
    ctx.set_default_timeout(60_000)  # generous: CI machines are shared
    return ctx


def shot(page, name):
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page, site, name, password):
    page.goto(f"{site.url}/login")
    page.click("input[name=name]")
    page.keyboard.type(name)
    page.fill("input[name=secret]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/")


def test_labeler_reads_guidelines_and_labels_pairwise_with_keyboard_and_mouse(browser, site):
    ctx = context(browser, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page, site, "ann", "ann-password")
    shot(page, "01-home")
    page.click("a[href='/p/ab/task']")
    page.wait_for_url("**/p/ab/guidelines")  # first visit: guidelines first
    assert "Use Tie when they are equally good." in page.inner_text("article")
    shot(page, "02-guidelines")
    page.click("#start")
    page.wait_for_selector("#cand-A")
    shot(page, "03-pairwise")
    expected = []
    for how in ("key-1", "click-B", "key-space", "reason-bothbad", "key-2"):
        page.wait_for_selector("#cand-A")
        texts = {p: page.inner_text(f"#cand-{p} .text") for p in "AB"}
        if "window.__pwned" in texts["A"] + texts["B"]:
            shot(page, "04-pairwise-xss")
        with page.expect_navigation():  # each answer submits the form: wait for the next page, not this one
            if how == "key-1":
                page.keyboard.press("1"); expected.append(("A", texts))
            elif how == "click-B":
                page.click("button[value=B]"); expected.append(("B", texts))
            elif how == "key-space":
                page.keyboard.press(" "); expected.append(("tie", texts))
            elif how == "reason-bothbad":
                page.click("textarea[name=reason]")
                page.keyboard.type("Both ignore the question 1 2")  # digits typed in the box are not shortcuts
                page.click("button[value=both_bad]"); expected.append(("both_bad", texts))
            else:
                page.keyboard.press("2"); expected.append(("B", texts))
    page.wait_for_selector("text=All done")
    assert page.evaluate("window.__pwned") is None and not errors
    with site.sessions() as s:
        js = s.scalars(select(Judgment).join(Project, Project.id == Judgment.project_id).where(Project.slug == "ab")
                       .order_by(Judgment.id)).all()
        items = {j.id: s.get(Item, j.item_id) for j in js}
    assert len(js) == 5
    for j, (choice, texts) in zip(js, expected):
        cands = [c["text"] for c in items[j.id].candidates]
        if choice in ("A", "B"):
            assert cands[j.answer["choice"]] == texts[choice]  # the response shown at that position
        else:
            assert j.answer == {"choice": choice}
        assert j.duration_ms is not None and j.duration_ms >= 0
    assert js[3].reason == "Both ignore the question 1 2"
    ctx.close()


def test_xss_in_model_output_is_shown_as_text(browser, site):
    ctx = context(browser)
    page = ctx.new_page()
    log_in(page, site, "boss", "boss-password")
    page.goto(f"{site.url}/p/ab/task")  # the admin is no member: no guidelines redirect
    seen_xss = False
    for _ in range(6):
        if page.query_selector("#cand-A") is None:
            break
        body = page.inner_text("main")
        if "<script>window.__pwned=1</script>" in body:
            seen_xss = True
            assert page.query_selector("main img") is None and page.query_selector("main b") is None
            shot(page, "05-xss-as-text")
            break
        with page.expect_navigation():  # the key submits the form: wait for that page, not the current one
            page.keyboard.press(" ")
    assert seen_xss
    assert page.evaluate("window.__pwned") is None
    with page.expect_navigation():
        page.keyboard.press("2")
    page.goto(f"{site.url}/admin/projects/ab")  # ann's and boss's labels side by side
    assert "alpha_nominal" in page.inner_text("#agreement") and "nice" in page.inner_text("#wins")
    shot(page, "12-admin-agreement")
    ctx.close()


def test_ranking_by_clicks_and_keys(browser, site):
    ctx = context(browser, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    log_in(page, site, "ann", "ann-password")
    page.goto(f"{site.url}/p/rk/task")
    page.click("#start")
    page.wait_for_selector(".rankable")
    # item 1 by mouse: click positions 3, 1 (then 2 is implied)
    texts1 = [page.inner_text(f".rankable[data-pos='{p}'] .text") for p in range(3)]
    page.click(".rankable[data-pos='2']")
    page.click(".rankable[data-pos='0']")
    assert page.inner_text(".rankable[data-pos='1'] .badge") == "3"
    shot(page, "06-ranking-clicked")
    with page.expect_navigation():  # a form post: read item 2 from the next page, not this one
        page.click("#submit-rank")
    page.wait_for_selector(".rankable")
    # item 2 by keyboard: 2, 3 (1 implied), undo once, then 2 again, Enter
    texts2 = [page.inner_text(f".rankable[data-pos='{p}'] .text") for p in range(3)]
    page.keyboard.press("2")
    page.keyboard.press("Backspace")
    page.keyboard.press("2")
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=All done")
    with site.sessions() as s:
        js = s.scalars(select(Judgment).join(Project, Project.id == Judgment.project_id).where(Project.slug == "rk").order_by(Judgment.id)).all()
        got = [[s.get(Item, j.item_id).candidates[c]["text"] for c in j.answer["order"]] for j in js]
    assert got == [[texts1[2], texts1[0], texts1[1]], [texts2[1], texts2[2], texts2[0]]]
    ctx.close()


def test_likert_rating_on_a_phone_with_keyboard_and_taps(browser, site):
    ctx = context(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    log_in(page, site, "ann", "ann-password")
    page.goto(f"{site.url}/p/lk/task")
    page.click("#start")
    page.wait_for_selector(".likert")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # nothing wider than the phone
    page.keyboard.press("4")  # helpfulness (highlighted first) ...
    page.keyboard.press("2")  # ... then honesty
    shot(page, "07-likert-phone")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_selector(".likert")
    page.tap("fieldset[data-criterion=helpfulness] label:has-text('5')")
    page.tap("fieldset[data-criterion=honesty] label:has-text('1')")
    page.tap("button[type=submit]")
    page.wait_for_selector("text=All done")
    with site.sessions() as s:
        js = s.scalars(select(Judgment).join(Project, Project.id == Judgment.project_id).where(Project.slug == "lk").order_by(Judgment.id)).all()
    assert [j.answer for j in js] == [{"scores": {"helpfulness": 4, "honesty": 2}}, {"scores": {"helpfulness": 5, "honesty": 1}}]
    page.goto(f"{site.url}/login")
    ctx.close()


def test_pairwise_page_fits_a_phone(browser, site):
    ctx = context(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    log_in(page, site, "boss", "boss-password")
    page.goto(f"{site.url}/p/ab/task")
    page.wait_for_selector("#cand-A")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    box_a, box_b = page.locator("#cand-A").bounding_box(), page.locator("#cand-B").bounding_box()
    assert box_b["y"] > box_a["y"] + box_a["height"] - 1  # stacked, not squeezed side by side
    assert page.locator("button[value=A]").bounding_box()["height"] >= 44  # touch-sized
    shot(page, "08-pairwise-phone")
    ctx.close()


def test_admin_creates_a_project_by_upload_adds_a_labeler_and_exports(browser, site, tmp_path):
    ctx = context(browser, viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    log_in(page, site, "boss", "boss-password")
    page.goto(f"{site.url}/admin/labelers")
    page.fill("#add-labeler input[name=name]", "cat")
    page.fill("#add-labeler input[name=group]", "g2")
    page.fill("#add-labeler input[name=password]", "cat-password")
    page.click("#add-labeler button[type=submit]")
    token = page.inner_text("#new-token")
    assert token.startswith("plt_")
    page.goto(f"{site.url}/admin")
    page.click("#new-project")
    bad = write_jsonl(tmp_path / "broken.jsonl", [{"prompt": "p", "response": "a"}, {"prompt": "p"}])
    page.fill("input[name=slug]", "uploaded")
    page.fill("input[name=title]", "Uploaded pairs")
    page.select_option("select[name=task_type]", "pairwise")
    page.set_input_files("input[name=candidates]", str(bad))
    page.click("#new button[type=submit]")
    error = page.inner_text(".error")
    assert error.startswith("broken.jsonl line 2 field 'response': missing field"), error  # the uploaded file's name, no server path
    shot(page, "09-admin-upload-error")
    good = write_jsonl(tmp_path / "cands.jsonl", candidate_rows(3))
    page.fill("input[name=overlap]", "1")
    page.fill("input[name=labelers]", "cat")
    page.fill("textarea[name=guidelines]", "Be fair.")
    page.set_input_files("input[name=candidates]", str(good))
    page.click("#new button[type=submit]")
    page.wait_for_url("**/admin/projects/uploaded")
    # cat labels it in another browser context
    cat = context(browser).new_page()
    log_in(cat, site, "cat", "cat-password")
    cat.goto(f"{site.url}/p/uploaded/task")
    cat.click("#start")
    for key in ("1", "2", "1"):
        cat.wait_for_selector("#cand-A")
        with cat.expect_navigation():
            cat.keyboard.press(key)
    cat.wait_for_selector("text=All done")
    page.reload()
    assert page.inner_text("#progress") == "100%" and page.inner_text("#complete") == "3 / 3"
    assert "cat" in page.inner_text("#labelers")
    shot(page, "10-admin-project")
    with page.expect_download() as dl:
        page.click("#export-none")
    path = tmp_path / "export.jsonl"
    dl.value.save_as(path)
    prefs = read_preferences(path)
    assert len(prefs) == 3 and {p.meta["labeler_id"] for p in prefs} == {"cat"} and {p.meta["labeler_group"] for p in prefs} == {"g2"}
    page.goto(f"{site.url}/admin")
    shot(page, "11-admin-dashboard")
    ctx.close()
