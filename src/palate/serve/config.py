"""``palate serve``'s config: one :class:`ServeConfig` (each flag of the command is a shortcut for its key).

The API key is not part of it (a config is printed and saved; a secret should not be): it comes from
``--api-key`` or from the environment variable named by ``api_key_env``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from palate.config import ConfigError, check_dtype

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig:
    model: str | None = None
    """run dir, HF model dir, .gguf file, hub name, 'bundled' or 'tiny'"""
    host: str = "127.0.0.1"
    """interface to listen on (0.0.0.0 exposes it to the network)"""
    port: int = 8000
    api_key_env: str = "PALATE_API_KEY"
    """environment variable holding the key requests must send as Bearer"""
    max_batch: int = 8
    """requests generated together at most"""
    batch_wait_ms: float = 10.0
    """how long the first waiting request waits for others"""
    max_request_bytes: int = 1 << 20
    """larger request bodies get 413"""
    max_tokens_limit: int = 1024
    """largest max_tokens a request may ask for"""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""
    dtype: str = "auto"
    """weights the model answers in: auto (bf16 where the CPU has AMX bf16 units or the GPU bf16, else fp32) | fp32 |
    bf16"""
    safety_classifier: str | None = None
    """guardrail: bundled | palate safety dir | HF classifier[#LABEL]"""
    input_threshold: float | None = None
    """block a request whose P(unsafe) >= this"""
    output_threshold: float | None = None
    """block an answer whose P(unsafe) >= this"""
    refusal: str | None = None
    """what a blocked request or answer gets instead"""
    best_of: int = 1
    """sample N answers, serve the reward model's best"""
    reward_model: str | None = None
    """reward model for best_of"""
    guard_log: str | None = None
    """JSONL log of blocked/replaced answers (default guardrails.jsonl)"""

    def guard(self) -> dict:
        """The :func:`palate.serve.app.load_guardrails` options."""
        return dict(safety_classifier=self.safety_classifier, input_threshold=self.input_threshold,
                    output_threshold=self.output_threshold, refusal=self.refusal, best_of=self.best_of,
                    reward_model=self.reward_model, guard_log=self.guard_log)


def api_key_of(cfg: ServeConfig, given: str | None = None) -> str | None:
    """The key requests must send: ``given`` (``--api-key``), else the environment variable ``cfg.api_key_env``."""
    return given or (os.environ.get(cfg.api_key_env) if cfg.api_key_env else None) or None


def exposed_without_key(cfg: ServeConfig, api_key: str | None) -> bool:
    return cfg.host not in LOCAL_HOSTS and not api_key


def check_serve(cfg: ServeConfig) -> None:
    """What a run needs beyond a config that prints: a model."""
    if cfg.model is None:
        raise ConfigError("serve needs a MODEL (argument or model=...)")
    check_dtype("dtype", cfg.dtype)


def serve_config(cfg: ServeConfig, api_key: str | None) -> None:
    """Serve ``cfg.model`` until interrupted (:func:`palate.serve.app.serve`)."""
    from palate.infra.device import pick_device
    from palate.serve.app import serve

    check_serve(cfg)
    serve(cfg.model, host=cfg.host, port=cfg.port, device=str(pick_device(cfg.device)), dtype=cfg.dtype,
          api_key=api_key, max_batch=cfg.max_batch, batch_wait_ms=cfg.batch_wait_ms,
          max_request_bytes=cfg.max_request_bytes, max_tokens_limit=cfg.max_tokens_limit, guard=cfg.guard())
