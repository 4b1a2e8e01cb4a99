"""Configs: frozen dataclasses filled from YAML plus ``section.key=value`` overrides.

Sections shared by every recipe live here (model, data, training, LoRA); a recipe's config composes
them. Unknown keys and wrongly typed values are errors that name the key, so a typo never silently
falls back to a default. The resolved config is saved as ``config.yaml`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from palate.errors import PalateError


class ConfigError(PalateError, ValueError):
    pass


@dataclass(frozen=True)
class ModelConfig:
    name: str = "bundled"
    """bundled | tiny | run dir | HF dir | .gguf file | hub name"""
    dtype: str = "auto"
    """auto (fp32 on CPU, bf16 on capable GPUs) | fp32 | bf16: the weights' dtype (train.precision says what
    the matmuls run in)"""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""
    trust_remote_code: bool = False
    revision: str | None = None


@dataclass(frozen=True)
class DataConfig:
    path: str = "bundled:demonstrations"
    columns: dict[str, str] | None = None
    """palate name -> column name in the file"""
    split: str = "train"
    eval_path: str | None = None
    """held-out file; else eval_fraction of `path` is held out"""
    eval_fraction: float = 0.05
    max_length: int = 512
    chat_template: bool | None = None
    """None: use the tokenizer's template when it has one"""
    truncate_completion: bool = True
    """cut over-long completions (counted) instead of skipping them"""
    long_prompts: str = "skip"
    """A prompt that leaves its response no room in max_length: skip (counted) | truncate_left (cut from the left,
    earliest turns first, to leave the response room: up to half of max_length; counted). The rule goes with a
    reward model (palate_reward.json) and applies wherever it scores: eval, rm-eval, score, RL."""
    on_error: str = "raise"
    """raise | skip: what a malformed row does"""
    bucket: bool = True
    """group similar lengths to cut padding"""
    packing: bool = False
    """concatenate short examples into full rows"""

    def __post_init__(self):
        if self.long_prompts not in ("skip", "truncate_left"):
            raise ConfigError(f"data.long_prompts must be skip or truncate_left, got {self.long_prompts!r}")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 2e-5
    batch_size: int = 4
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int | None = None
    """optimizer steps; overrides epochs"""
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1
    """cosine decays to lr * min_lr_ratio"""
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    seed: int = 0
    precision: str = "auto"
    """auto | fp32 | bf16 (autocast on fp32 weights); auto is bf16 on capable GPUs and on CPUs with AMX bf16 units
    (Intel Sapphire Rapids and later, ~2x faster there), fp32 on other CPUs and for sharded training on CPU"""
    gradient_checkpointing: bool | None = None
    """None: auto (off on CPU, where memory is rarely the limit)"""
    log_every: int = 1
    eval_every: int = 50
    """0: only at the end"""
    save_every: int = 50
    """0: only after the last step; -1: never (a run that fails starts over)"""
    keep_last: int = 2
    """checkpoints kept (the newest); 0: all"""
    threads: int | None = None
    """torch intra-op threads; None: torch's default (physical cores)"""
    sharding: str | None = None
    """none | ddp | fsdp (PyTorch FSDP2); None: ddp when launched on several processes"""
    cpu_offload: bool = False
    """fsdp: sharded weights, gradients and optimizer states live in CPU memory"""

    def __post_init__(self):
        if self.sharding not in (None, "none", "ddp", "fsdp"):
            raise ConfigError(f"train.sharding must be none, ddp or fsdp, got {self.sharding!r}")
        if self.save_every < -1:
            raise ConfigError(f"train.save_every must be a number of steps, 0 (only after the last) or -1 (never), "
                              f"got {self.save_every}")
        if self.keep_last < 0:
            raise ConfigError(f"train.keep_last must be >= 0 (0 keeps all), got {self.keep_last}")


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    merge: bool = True
    """merge the adapter into the final model (else save the adapter alone)"""


@dataclass(frozen=True)
class LogConfig:
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "palate"
    progress: bool = True


# ----------------------------------------------------------------------------- building


DTYPES = ("auto", "fp32", "bf16", "fp16")
"""what a ``dtype`` key may say (weights to load a model in; auto: the device's choice)"""


def check_dtype(key: str, value: str) -> None:
    """A :class:`ConfigError` naming ``key`` unless ``value`` is one of :data:`DTYPES`."""
    if value not in DTYPES:
        raise ConfigError(f"{key} must be one of {', '.join(DTYPES)}, got {value!r}")


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. train.lr=1e-5)")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def _set(tree: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
    tree[path[-1]] = value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
        return build(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-5 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected text, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], key) for k, v in value.items()}
    raise ConfigError(f"{key}: unsupported type {tp}")


# Keys that were renamed: a config using the old name is told the new one.
RENAMED = {
    "grpo.beta": "grpo.kl_coef (one name for the KL weight, as in ppo.kl_coef)",
    "dpo.desirable_weight": "kto.desirable_weight in a palate kto config (KTO is its own recipe)",
    "dpo.undesirable_weight": "kto.undesirable_weight in a palate kto config (KTO is its own recipe)",
    "dpo.records": "kto.records in a palate kto config (KTO is its own recipe; dpo reads pairs)",
}


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys and bad types name the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    for k in sorted(unknown):
        if prefix + k in RENAMED:
            raise ConfigError(f"{prefix + k} was renamed: use {RENAMED[prefix + k]}")
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in sorted(unknown))}; "
            f"valid keys here: {', '.join(sorted(names))}"
        )
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in values.items()})


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """YAML file (optional) + ``a.b=value`` overrides -> frozen config ``cls``."""
    tree: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        tree = loaded
    for text in overrides or []:
        keys, value = _parse_override(text)
        _set(tree, keys, value)
    return build(cls, tree)


def to_dict(cfg: Any) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


__all__ = [
    "ConfigError", "ModelConfig", "DataConfig", "TrainConfig", "LoraConfig", "LogConfig",
    "build", "load_config", "to_dict", "dump_yaml", "field",
]
