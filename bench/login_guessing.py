"""What password guessers cost everyone else: the latency of a labeler's ordinary requests (GET /api/me
and GET /api/projects/{p}/next) against `palate label serve` on SQLite, first alone, then while G
anonymous clients post wrong passwords to /login as fast as they are answered (each from its own
127.0.0.x address, the worst case for the per-address throttle: it only slows each one down).

    .venv/bin/python bench/login_guessing.py [--guessers 4] [--seconds 10]

Prints p50/p95 of the labeler's requests in both phases and what the guessers got (401 = a password was
checked, 429 = refused by the throttle before any hashing). Writes bench/results/login_guessing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "bench")]

from record import write_result  # noqa: E402
from tests.feedback.helpers import ServerProcess, Setup, candidate_rows  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[q - 1] if len(xs) > 1 else (xs[0] if xs else float("nan"))


async def labeler(url: str, token: str, stop: asyncio.Event, ms: list[float]):
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=60) as c:
        while not stop.is_set():
            for path in ("/api/me", "/api/projects/bench/next"):
                t0 = time.perf_counter()
                r = await c.get(path)
                ms.append(1000 * (time.perf_counter() - t0))
                r.raise_for_status()
            await asyncio.sleep(0.02)


async def guesser(url: str, address: str, stop: asyncio.Event, codes: Counter):
    async with httpx.AsyncClient(base_url=url, timeout=60, transport=httpx.AsyncHTTPTransport(local_address=address)) as c:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', (await c.get("/login")).text).group(1)
        while not stop.is_set():
            r = await c.post("/login", data={"name": "boss", "secret": uuid.uuid4().hex, "csrf_token": csrf})
            codes[r.status_code] += 1


async def phase(url: str, token: str, guessers: int, seconds: float) -> dict:
    stop, ms, codes = asyncio.Event(), [], Counter()
    tasks = [asyncio.create_task(labeler(url, token, stop, ms))]
    tasks += [asyncio.create_task(guesser(url, f"127.0.0.{2 + i}", stop, codes)) for i in range(guessers)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return {"guessers": guessers, "requests": len(ms), "p50_ms": round(pct(ms, 50), 1), "p95_ms": round(pct(ms, 95), 1),
            "guess_answers": dict(codes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guessers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="palate-guess-"))
    st = Setup(str(tmp / "guess.db"))
    st.project("bench", "pairwise", tmp, candidate_rows(50))
    token = st.labeler("ann", password="ann-password", projects=["bench"])
    st.labeler("boss", role="admin", password="boss-password")
    st.engine.dispose()
    server = ServerProcess(st.db, tmp / "server.log")
    server.start()
    try:
        alone = asyncio.run(phase(server.url, token, 0, args.seconds))
        crowded = asyncio.run(phase(server.url, token, args.guessers, args.seconds))
    finally:
        server.stop()
    rows = [alone, crowded]
    print(f"{'phase':<22}{'requests':>10}{'p50 ms':>10}{'p95 ms':>10}  guesses answered")
    for r in rows:
        print(f"{str(r['guessers']) + ' guessers':<22}{r['requests']:>10}{r['p50_ms']:>10}{r['p95_ms']:>10}  {r['guess_answers']}")
    print(f"p50 ratio with guessers: {crowded['p50_ms'] / alone['p50_ms']:.2f}x")
    write_result("login_guessing", {"phases": rows, "seconds": args.seconds}, metric="labeler p50 latency with guessers",
                 unit="ms", palate=crowded["p50_ms"], higher_is_better=False,
                 note=f"alone {alone['p50_ms']} ms p50; {args.guessers} guessers: {crowded['p50_ms']} ms")


if __name__ == "__main__":
    main()
