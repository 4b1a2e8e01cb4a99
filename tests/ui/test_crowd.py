"""A crowd on the default set-up: `palate label serve` (a real server process) on SQLite and on PostgreSQL,
four labelers judging at once in real Chromium pages, API labelers posting beside them and anonymous
clients guessing passwords at /login, until the browsers have made at least 200 judgments.

Passes when no request hangs (each is answered within REQUEST_BOUND seconds; a frozen server fails here,
not by timing), and every judgment a browser saw acknowledged (its form post answered by the redirect
to the next task) or an API client saw acknowledged (201/200) is stored exactly once."""

import asyncio
import re
import time
import uuid

import httpx
import pytest
from sqlalchemy import create_engine, select

from palate.feedback.db import Judgment, database_url
from tests.feedback.helpers import ServerProcess, Setup, backend_database, candidate_rows
from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, require_chromium

pytestmark = pytest.mark.slow
BROWSERS, API_LABELERS, GUESSERS = 4, 4, 2
BROWSER_JUDGMENTS = 200  # together
API_QUOTA = 20  # each: the API labelers are fast and would otherwise take the slots the browsers need
REQUEST_BOUND = 60.0  # seconds: every request must be answered within this, on a loaded machine too
RUN_BOUND = 600.0  # the whole crowd must be done by then
KEY = re.compile(r'name="idempotency_key" value="([0-9a-f]+)"')


async def browser_labeler(browser, url: str, name: str, quota: int, acked: list, problems: list):
    ctx = await browser.new_context()
    ctx.set_default_timeout(REQUEST_BOUND * 1000)  # a navigation that takes longer fails the test
    page = await ctx.new_page()
    page.on("pageerror", lambda e: problems.append(f"{name}: page error {e}"))
    await page.goto(f"{url}/login")
    await page.fill("input[name=name]", name)
    await page.fill("input[name=secret]", f"{name}-password")
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    await page.goto(f"{url}/p/crowd/task")  # first visit: the guidelines, then the tasks
    async with page.expect_navigation():
        await page.click("#start")
    for i in range(quota):
        html = await page.content()
        if "All done" in html:
            problems.append(f"{name}: ran out of items after {i}")
            break
        key = KEY.search(html)
        if key is None:
            problems.append(f"{name}: no task form on {page.url}: {(await page.inner_text('main'))[:200]}")
            break
        async with page.expect_response(lambda r: r.request.method == "POST" and "/p/crowd/task" in r.url) as posted:
            async with page.expect_navigation():
                await page.keyboard.press("1" if i % 3 else "2")
        response = await posted.value
        if response.status != 303:
            problems.append(f"{name}: form post answered {response.status}")
            break
        acked.append(key.group(1))
    await ctx.close()


async def api_labeler(url: str, token: str, stop: asyncio.Event, acked: list, problems: list):
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=REQUEST_BOUND) as c:
        while not stop.is_set() and len(acked) < API_QUOTA * API_LABELERS:
            r = await c.get("/api/projects/crowd/next")
            if r.status_code == 204:
                return
            if r.status_code != 200:
                problems.append(f"api next {r.status_code} {r.text[:200]}")
                return
            body = {"assignment_id": r.json()["assignment_id"], "idempotency_key": uuid.uuid4().hex, "choice": "B"}
            r = await c.post("/api/projects/crowd/judgments", json=body)
            if r.status_code != 201:
                problems.append(f"api submit {r.status_code} {r.text[:200]}")
                return
            acked.append(body["idempotency_key"])
            await asyncio.sleep(0.2)  # spread over the browsers' run


async def guesser(url: str, address: str, stop: asyncio.Event, answers: list, problems: list):
    """Wrong passwords from an address of its own (127.0.0.x), so that its throttling is its own."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_BOUND, transport=transport) as c:
        while not stop.is_set():
            form = await c.get("/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
            r = await c.post("/login", data={"name": "boss", "secret": uuid.uuid4().hex, "csrf_token": csrf})
            if r.status_code not in (401, 429):
                problems.append(f"guess answered {r.status_code}")
                return
            answers.append(r.status_code)
            await asyncio.sleep(0.05)


async def crowd(url: str, tokens: dict) -> dict:
    from playwright.async_api import async_playwright

    acked_pages, acked_api, guesses, problems = [], [], [], []
    stop = asyncio.Event()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            side = [asyncio.create_task(api_labeler(url, tokens[f"api{i}"], stop, acked_api, problems))
                    for i in range(API_LABELERS)]
            side += [asyncio.create_task(guesser(url, f"127.0.0.{2 + i}", stop, guesses, problems)) for i in range(GUESSERS)]
            pages = [browser_labeler(browser, url, f"web{i}", BROWSER_JUDGMENTS // BROWSERS, acked_pages, problems)
                     for i in range(BROWSERS)]
            started = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*pages), RUN_BOUND)
            seconds = time.perf_counter() - started
            stop.set()
            await asyncio.wait_for(asyncio.gather(*side), REQUEST_BOUND * 2)
        finally:
            stop.set()
            await browser.close()
    return {"pages": acked_pages, "api": acked_api, "guesses": guesses, "problems": problems, "seconds": seconds}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_four_browsers_api_labelers_and_guessers_at_once(tmp_path, backend):
    require_chromium()
    db = backend_database(backend, tmp_path)
    st = Setup(db)
    st.project("crowd", "pairwise", tmp_path, candidate_rows(160), overlap=2)
    for i in range(BROWSERS):
        st.labeler(f"web{i}", password=f"web{i}-password", projects=["crowd"])
    for i in range(API_LABELERS):
        st.labeler(f"api{i}", password=None, projects=["crowd"])
    st.labeler("boss", role="admin", password="boss-password")
    st.engine.dispose()
    server = ServerProcess(db, tmp_path / "server.log")
    server.start()
    try:
        out = asyncio.run(crowd(server.url, st.tokens))
        still_answers = server.responsive(timeout=REQUEST_BOUND)
    finally:
        stopped = server.stop()
    assert not out["problems"], out["problems"][:5]
    assert still_answers and stopped == "SIGTERM", server.log_tail()
    assert len(out["pages"]) >= BROWSER_JUDGMENTS and out["api"] and len(out["guesses"]) > 10
    assert 429 in out["guesses"]  # the guessers were throttled
    engine = create_engine(database_url(db))
    with engine.connect() as conn:
        stored = conn.execute(select(Judgment.idempotency_key, Judgment.item_id, Judgment.labeler_id)).all()
    engine.dispose()
    keys = [r.idempotency_key for r in stored]
    assert len(keys) == len(set(keys))  # nothing stored twice
    assert sorted(keys) == sorted(out["pages"] + out["api"])  # every acknowledged judgment stored, nothing else
    assert len({(r.item_id, r.labeler_id) for r in stored}) == len(stored)
    print(f"{backend}: {len(out['pages'])} browser + {len(out['api'])} API judgments in {out['seconds']:.1f} s, "
          f"{len(out['guesses'])} guesses ({out['guesses'].count(429)} throttled)")
