"""Latency and throughput of ``palate serve`` with and without request batching, through the openai client.

    python bench/serve_batching.py                   # bundled model, 8 requests of 32 greedy tokens
    python bench/serve_batching.py --model tiny --requests 16

The server runs in this process (uvicorn thread, 127.0.0.1, free port). Measured: one request alone; the
same N requests one after another; and N sent at once (the batcher gathers them into left-padded
batches). Prints and writes (``--out``) latencies, wall times, tokens/s and the batch sizes the server
saw (``/health``).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from openai import OpenAI

from palate.models.load import load_model, load_tokenizer
from palate.serve.app import create_app

PROMPTS = ["How do I boil an egg?", "Give me one tip for sleeping better.", "What is a haiku?",
           "Name three uses for a paperclip.", "Why is the sky blue?", "Suggest a name for a cat.",
           "How many legs does a spider have?", "Write one sentence about autumn."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_batching.json"))
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    model = load_model(args.model, tokenizer=tok)
    app = create_app(model, tok, model_name=args.model, max_batch=args.requests, batch_wait_ms=args.batch_wait_ms)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)

    def ask(i: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        r = client.chat.completions.create(model=args.model, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                           max_tokens=args.max_tokens, temperature=0)
        return time.perf_counter() - t0, r.usage.completion_tokens

    ask(0)  # warm-up
    alone, _ = ask(1)
    t0 = time.perf_counter()
    seq = [ask(i) for i in range(args.requests)]
    seq_wall = time.perf_counter() - t0
    before = httpx.get(f"{url}/health").json()
    out: list = [None] * args.requests
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, ask(i))) for i in range(args.requests)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    par_wall = time.perf_counter() - t0
    after = httpx.get(f"{url}/health").json()
    server.should_exit = True
    result = {
        "model": args.model, "requests": args.requests, "max_tokens": args.max_tokens, "threads": args.threads,
        "single_request_s": alone,
        "sequential": {"wall_s": seq_wall, "median_latency_s": statistics.median(x for x, _ in seq),
                       "tokens_per_s": sum(n for _, n in seq) / seq_wall},
        "concurrent": {"wall_s": par_wall, "median_latency_s": statistics.median(x for x, _ in out),
                       "tokens_per_s": sum(n for _, n in out) / par_wall,
                       "batches": after["batches"] - before["batches"], "batch_sizes_total": after["batch_sizes"]},
    }
    result["speedup_concurrent_vs_sequential"] = seq_wall / par_wall
    from record import write_result

    write_result("serve_batching", result, path=args.out, metric="palate serve throughput, concurrent requests "
                 "with batching", unit="tokens/s", palate=result["concurrent"]["tokens_per_s"],
                 note=f"{result['speedup_concurrent_vs_sequential']:.2f}x the same {args.requests} requests "
                 f"sent one at a time; no TRL or plain-loop counterpart")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
