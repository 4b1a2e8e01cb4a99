"""A real ``palate serve`` app on 127.0.0.1 in a uvicorn thread, for tests (not a mock)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    def __init__(self, app, port: int):
        self.app, self.port = app, port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.server.started:
                return self
            time.sleep(0.02)
        raise RuntimeError(f"server on port {self.port} did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextlib.contextmanager
def running(app, port: int | None = None):
    srv = ServerThread(app, port or free_port()).start()
    try:
        yield srv
    finally:
        srv.stop()


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=5).json()


_TINY = {}


def tiny_lm():
    """The tiny random Llama and its tokenizer, loaded once per test session."""
    if not _TINY:
        from palate.models.load import load_model, load_tokenizer

        tok = load_tokenizer("tiny")
        _TINY["lm"] = (load_model("tiny", tokenizer=tok).eval(), tok)
    return _TINY["lm"]
