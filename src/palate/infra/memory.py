"""Per-device memory estimates for a training configuration (``palate plan``).

Everything here is arithmetic on a model's shape; nothing is loaded. The accounting, per device:

- **trained model** (the policy; the reward model for ``rm``; the critic for ``ppo``), per trainable
  parameter, the mixed-precision accounting of the ZeRO paper (Rajbhandari et al. 2020):
  weights 2 B + gradients 2 B + fp32 master 4 B + AdamW's two fp32 moments 8 B = 16 B in bf16;
  in fp32 weights 4 + gradients 4 + moments 8 = 16 B. Frozen parameters (the base model under LoRA)
  cost their weights only (2 B bf16, 4 B fp32).
- **resident frozen models**: a reference (DPO with ``reference=live`` on a full fine-tune; PPO/GRPO
  unless LoRA, where the disabled adapter is the reference) and a reward model (PPO/GRPO), each its
  weights only, assumed the same shape as the policy.
- **sharding over N devices**: ZeRO-1 divides optimizer states (master + moments) by N, ZeRO-2 also
  gradients, ZeRO-3 / FSDP full-shard also weights, frozen models included. DDP divides nothing.
- **activations** per layer per token, in the compute dtype, for a pre-norm decoder layer with grouped
  attention (hidden ``h``, key/value width ``kv``, MLP width ``i``, gated MLP) and a fused attention
  kernel (no ``seq x seq`` scores kept): the layer input and normed input, q, k, v and the attention
  output (``4h + 2kv``), the MLP's input and normed input, gate and up (``2h + 2i``): ``6h + 2kv + 2i``
  values, with palate's lean SwiGLU backward (:mod:`palate.models.lean_layers`: the activation and the
  product are recomputed). Under LoRA the default ``all-linear`` adapter wraps the down projection and the MLP
  keeps transformers' backward, which also keeps the activation and the product: ``6h + 2kv + 4i``. With
  gradient checkpointing only each layer's input (``h``) is kept, plus one layer's full set while it is
  recomputed.
- **logits**: palate projects only target positions; counted as every token a target, fp32 logits and
  their gradient (8 B x vocab per token).
- **KV cache** for PPO/GRPO rollouts: ``2 x layers x kv`` values per token.

Tokens per micro-batch are ``micro_batch x seq_len`` rows, times 2 for pairwise methods (``rm``,
``dpo``: chosen and rejected in one batch). Estimates leave out the CUDA context and allocator
fragmentation (typically 1-3 GiB); treat a configuration within ~10% of the limit as not fitting.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

GIB = 2**30
METHODS = ("sft", "rm", "dpo", "ppo", "grpo")
STRATEGIES = ("ddp", "zero1", "zero2", "zero3")  # zero3 == FSDP full shard
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's shape (Llama-style: gated MLP, grouped-query attention, no biases)."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied: bool = False
    params_override: float | None = None
    """a stated parameter count (``--params 7B``) instead of the formula"""
    assumed: bool = False
    """the shape was guessed from a parameter count"""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv(self) -> int:
        """Width of the key (or value) projection."""
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """``(in, out)`` of each of a layer's linear maps."""
        h, kv, i = self.hidden, self.kv, self.intermediate
        return {"q": (h, h), "k": (h, kv), "v": (h, kv), "o": (h, h), "gate": (h, i), "up": (h, i), "down": (i, h)}

    def params(self) -> float:
        """Parameter count: per layer the linear maps and two norms; embeddings, final norm, output head."""
        if self.params_override is not None:
            return self.params_override
        per_layer = sum(a * b for a, b in self.linears().values()) + 2 * self.hidden
        head = 0 if self.tied else self.vocab * self.hidden
        return self.layers * per_layer + self.vocab * self.hidden + self.hidden + head

    def lora_params(self, r: int) -> int:
        """LoRA on every linear map of every layer (palate's ``all-linear``): ``r x (in + out)`` each."""
        return self.layers * sum(r * (a + b) for a, b in self.linears().values())


def shape_from_config(cfg: dict) -> Shape:
    """From a transformers ``config.json`` (Llama, Mistral, Qwen, SmolLM, Gemma ... field names)."""
    try:
        hidden = cfg["hidden_size"]
        heads = cfg["num_attention_heads"]
        return Shape(
            layers=cfg["num_hidden_layers"], hidden=hidden,
            intermediate=cfg.get("intermediate_size") or 4 * hidden, vocab=cfg["vocab_size"], heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads, tied=bool(cfg.get("tie_word_embeddings", False)),
        )
    except KeyError as e:
        raise ValueError(f"config.json lacks {e.args[0]!r}; pass --params instead") from None


def parse_params(text: str) -> float:
    """``7B``, ``135M``, ``1.5e9``, ``70b`` -> a number of parameters."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kKmMbBtT]?)\s*", text)
    if not m:
        raise ValueError(f"--params {text!r}: expected e.g. 7B, 135M or 1.5e9")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
    return float(m.group(1)) * scale


def shape_from_params(n: float, vocab: int = 32000) -> Shape:
    """A Llama-like shape for ``n`` parameters when only the count is known: ``hidden = 128 x layers``
    (Llama-2 7B: 32 x 4096; 13B: 40 x 5120), MLP width 8/3 x hidden, n ~ 12 x layers x hidden^2."""
    layers = max(1, round((n / (12 * 128**2)) ** (1 / 3)))
    hidden = 128 * layers
    return Shape(layers=layers, hidden=hidden, intermediate=int(8 * hidden / 3), vocab=vocab,
                 heads=max(1, hidden // 128), kv_heads=max(1, hidden // 128), params_override=n, assumed=True)


def load_shape(model: str) -> Shape:
    """A model directory (or run dir) holding ``config.json``, ``bundled``, or a Hub name."""
    path = Path(model)
    if model == "bundled":
        from palate.models.load import bundled_model_dir

        path = Path(bundled_model_dir())
    for candidate in (path / "config.json", path / "final" / "config.json"):
        if candidate.is_file():
            return shape_from_config(json.loads(candidate.read_text()))
    if path.exists():
        raise FileNotFoundError(f"{model}: no config.json in it (nor in {model}/final)")
    from huggingface_hub import hf_hub_download

    return shape_from_config(json.loads(Path(hf_hub_download(model, "config.json")).read_text()))


@dataclass(frozen=True)
class Setup:
    method: str = "sft"
    """sft | rm | dpo | ppo | grpo"""
    lora: bool = False
    lora_r: int = 16
    dtype: str = "bf16"
    """bf16 (mixed precision) | fp32"""
    seq_len: int = 2048
    micro_batch: int = 1
    """rows per device per forward (pairs for rm/dpo)"""
    devices: int = 1
    strategy: str = "ddp"
    """ddp | zero1 | zero2 | zero3 (FSDP full shard)"""
    gradient_checkpointing: bool = False
    reference: str = "precompute"
    """dpo: precompute (no model resident) | live"""


def check(setup: Setup) -> None:
    if setup.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {setup.method!r}")
    if setup.strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {setup.strategy!r}")
    if setup.dtype not in ("bf16", "fp32"):
        raise ValueError(f"dtype must be bf16 or fp32, got {setup.dtype!r}")
    if setup.reference not in ("precompute", "live"):
        raise ValueError(f"reference must be precompute or live, got {setup.reference!r}")
    if min(setup.devices, setup.micro_batch, setup.seq_len) < 1:
        raise ValueError("devices, micro_batch and seq_len must be >= 1")


def estimate(shape: Shape, s: Setup) -> dict[str, float]:
    """Bytes per device by component (see the module docstring for every formula), and ``total``."""
    check(s)
    wb = 2 if s.dtype == "bf16" else 4  # bytes per weight / activation value
    n = s.devices
    stage = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3}[s.strategy]
    P = shape.params()
    trainable = shape.lora_params(s.lora_r) if s.lora else P
    frozen_in_trained = P if s.lora else 0  # the base model under an adapter

    def trained_model() -> dict[str, float]:
        grad_b = wb
        opt_b = 8 + (4 if s.dtype == "bf16" else 0)  # two fp32 moments (+ fp32 master weights in mixed precision)
        return {
            "weights": (trainable + frozen_in_trained) * wb / (n if stage >= 3 else 1),
            "gradients": trainable * grad_b / (n if stage >= 2 else 1),
            "optimizer": trainable * opt_b / (n if stage >= 1 else 1),
        }

    out = {"weights": 0.0, "gradients": 0.0, "optimizer": 0.0, "frozen_models": 0.0}
    trained = 2 if s.method == "ppo" else 1  # PPO: the policy and a critic of the same shape
    for _ in range(trained):
        for k, v in trained_model().items():
            out[k] += v
    frozen = 0
    if s.method == "dpo" and s.reference == "live" and not s.lora:
        frozen += 1  # a frozen copy of the starting weights
    if s.method in ("ppo", "grpo"):
        frozen += 1 + (0 if s.lora else 1)  # the reward model; the reference unless the disabled adapter is it
    out["frozen_models"] = frozen * P * wb / (n if stage >= 3 else 1)

    tokens = s.micro_batch * s.seq_len * (2 if s.method in ("rm", "dpo") else 1)
    mlp_kept = 4 if s.lora else 2  # gate, up (+ activation, product under LoRA): see the module docstring
    per_layer_token = 6 * shape.hidden + 2 * shape.kv + mlp_kept * shape.intermediate  # values kept for backward
    if s.gradient_checkpointing:
        kept = (shape.layers * shape.hidden + per_layer_token) * tokens * wb
    else:
        kept = shape.layers * per_layer_token * tokens * wb
    out["activations"] = kept * trained
    out["logits"] = 0.0 if s.method == "rm" else tokens * shape.vocab * 8
    out["kv_cache"] = 2 * shape.layers * shape.kv * tokens * wb if s.method in ("ppo", "grpo") else 0.0
    out["total"] = sum(out.values())
    return out


def plan(shape: Shape, base: Setup, gpu_memory_gib: float | None = None) -> list[dict]:
    """The table ``palate plan`` prints: every sharding strategy (only DDP on one device) with and without
    gradient checkpointing, per-device GiB by component and whether it fits ``gpu_memory_gib``."""
    rows = []
    strategies = STRATEGIES if base.devices > 1 else ("ddp",)
    for strategy in strategies:
        for gc in (False, True):
            s = replace(base, strategy=strategy, gradient_checkpointing=gc)
            est = estimate(shape, s)
            row = {"strategy": strategy, "gradient_checkpointing": gc, **{k: v / GIB for k, v in est.items()}}
            if gpu_memory_gib is not None:
                row["fits"] = est["total"] / GIB <= gpu_memory_gib
            rows.append(row)
    return rows


COLUMNS = ("weights", "gradients", "optimizer", "frozen_models", "activations", "logits", "kv_cache", "total")


def format_table(shape: Shape, base: Setup, rows: list[dict], gpu_memory_gib: float | None) -> str:
    P = shape.params()
    lines = [
        f"model: {P / 1e9:.3g}B parameters, {shape.layers} layers, hidden {shape.hidden}, MLP {shape.intermediate}, "
        f"vocab {shape.vocab}, kv width {shape.kv}{' (shape assumed from the parameter count)' if shape.assumed else ''}",
        f"method {base.method}, {'LoRA r=' + str(base.lora_r) + f' ({shape.lora_params(base.lora_r) / 1e6:.1f}M trainable)' if base.lora else 'full fine-tune'}, "
        f"{base.dtype}, seq {base.seq_len} x micro-batch {base.micro_batch}, {base.devices} device(s)"
        + (f", DPO reference {base.reference}" if base.method == "dpo" else ""),
        "per-device GiB:",
    ]
    head = ["strategy", "ckpt", *COLUMNS] + (["fits"] if gpu_memory_gib is not None else [])
    table = [head]
    for r in rows:
        cells = [r["strategy"] if r["strategy"] != "zero3" else "zero3/fsdp", "on" if r["gradient_checkpointing"] else "off"]
        cells += [f"{r[c]:.2f}" for c in COLUMNS]
        if gpu_memory_gib is not None:
            cells.append("yes" if r["fits"] else "no")
        table.append(cells)
    widths = [max(len(row[j]) for row in table) for j in range(len(head))]
    for row in table:
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    if gpu_memory_gib is not None:
        fitting = [r for r in rows if r["fits"]]
        lines.append(f"{len(fitting)} of {len(rows)} configurations fit in {gpu_memory_gib:g} GiB"
                     + ("" if fitting else f"; the smallest needs {min(r['total'] for r in rows):.1f} GiB"))
    lines.append("not counted: CUDA context and allocator fragmentation (often 1-3 GiB); "
                 "palate runs ddp and zero3/fsdp (train.sharding=fsdp; zero2 untested), see README")
    return "\n".join(lines)


__all__ = ["Shape", "Setup", "estimate", "plan", "format_table", "load_shape", "shape_from_config",
           "shape_from_params", "parse_params", "PlanConfig", "plan_report"]


@dataclass(frozen=True)
class PlanConfig:
    """``palate plan``'s config (each flag is a shortcut for the key of the same name; ``--lora/--full`` is
    ``lora=true/false``, ``--json`` is ``json=true``)."""

    model: str | None = None
    """model dir, run dir, 'bundled' or hub name (reads config.json)"""
    params: str | None = None
    """a parameter count instead of a model, e.g. 7B (shape assumed)"""
    method: str = "sft"
    """sft | rm | dpo | ppo | grpo"""
    lora: bool = False
    """LoRA on all linear layers (else full fine-tuning)"""
    lora_r: int = 16
    dtype: str = "bf16"
    """bf16 (mixed precision) | fp32"""
    seq_len: int = 2048
    """tokens per row"""
    micro_batch: int = 1
    """rows (pairs for rm/dpo) per device per forward"""
    devices: int = 1
    """data-parallel devices to shard over"""
    reference: str = "precompute"
    """dpo: precompute (no reference model resident) | live"""
    gpu_memory: float | None = None
    """GiB per device: mark which configurations fit"""
    json: bool = False
    """print the table as JSON"""


def plan_report(cfg: PlanConfig) -> str:
    """What ``palate plan`` prints for ``cfg``: the table (or its JSON) of every strategy."""
    if (cfg.model is None) == (cfg.params is None):
        raise ValueError("give a MODEL or --params (one of them)")
    shape = shape_from_params(parse_params(cfg.params)) if cfg.params else load_shape(cfg.model)
    base = Setup(method=cfg.method, lora=cfg.lora, lora_r=cfg.lora_r, dtype=cfg.dtype, seq_len=cfg.seq_len,
                 micro_batch=cfg.micro_batch, devices=cfg.devices, reference=cfg.reference)
    rows = plan(shape, base, cfg.gpu_memory)
    return json.dumps(rows, indent=1) if cfg.json else format_table(shape, base, rows, cfg.gpu_memory)
