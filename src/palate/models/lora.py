"""LoRA adapters through PEFT, and saving a trained model (merged or adapter-only)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from palate.config import ConfigError, LoraConfig


def apply_lora(model, cfg: LoraConfig, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with a fresh LoRA adapter; only adapter weights stay trainable.

    ``task_type="SEQ_CLS"`` (reward and value models) also trains the new scalar head in full.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    target = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    peft_cfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=target, task_type=task_type
    )
    return get_peft_model(model, peft_cfg)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def _sharded(model) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def save_model(model, tokenizer, target: Path, merge: bool = True, extra_json: dict | None = None,
               state_dict: dict | None = None) -> Path:
    """Save HF-loadable weights and tokenizer to ``target`` atomically (temporary dir, then rename).

    A LoRA model is merged into its base weights in place (``merge=True``: loads with ``AutoModelForCausalLM``) or
    saved as a PEFT adapter (``merge=False``: loads with ``peft.AutoPeftModelForCausalLM``). ``extra_json``
    files (name -> data) are written beside the weights, inside the same atomic rename. ``state_dict``: the
    weights to write instead of the module's own (a sharded model's, gathered).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        if is_peft(model) and merge:
            model.merge_and_unload().save_pretrained(tmp)  # in place: training is over
        elif state_dict is not None:
            model.save_pretrained(tmp, state_dict=state_dict)
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, data in (extra_json or {}).items():  # metadata that travels with the weights
            (tmp / name).write_text(json.dumps(data, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class adapter_disabled:
    """Context: a PEFT model's adapters disabled (its base weights are the reference); a no-op for a plain
    model or when ``enabled`` is False.

    Refused on a model sharded by FSDP (``train.sharding=fsdp``): the disabled adapter as a live reference
    would run the sharded policy outside the training forward (held-out evaluation: its root weights are
    not gathered there) and add a forward, a collective, on the processes that have data this micro-step
    only (one without data runs one dummy forward): the processes' collectives would no longer pair up."""

    def __init__(self, model, enabled: bool = True):
        if enabled and is_peft(model) and _sharded(model):
            raise ConfigError("the disabled LoRA adapter as a live reference (reference=live) is not supported "
                              "with train.sharding=fsdp: the sharded policy cannot run outside the training forward "
                              "or unevenly across processes; use reference=precompute (dpo/kto), train.sharding=ddp, "
                              "or a full fine-tune")
        self.ctx = model.disable_adapter() if enabled and is_peft(model) else None

    def __enter__(self):
        return self.ctx.__enter__() if self.ctx is not None else None

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx is not None else False


@contextlib.contextmanager
def merged_weights(model):
    """The model's current weights as a plain (non-PEFT) model's state dict, LoRA merged in: what a rollout
    engine or worker holding a plain copy loads. The adapter is merged for the duration and unmerged after."""
    peft = is_peft(model)
    if peft:
        model.merge_adapter()
    try:
        base = model.get_base_model() if peft else model
        yield {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
    finally:
        if peft:
            model.unmerge_adapter()
