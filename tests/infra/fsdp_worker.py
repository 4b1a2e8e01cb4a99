"""Run by tests/infra/test_fsdp.py under ``torchrun --nproc_per_node 2``: shard the tiny model with palate's
FSDP2 path, train two steps, gather the full state dict, save ``final/`` through ``save_model`` and check,
on every process, that the saved directory loads with ``AutoModelForCausalLM`` and equals the gathered
weights and this process's shards. Writes ``rank{r}.json`` (parameter bytes held, checks) into argv[1].

``lora`` as argv[2]: the same with a LoRA adapter applied before sharding; checks that gradients reach the
adapter only, the optimizer holds the adapter only, the base weights stay as loaded, and that the merged
``final/`` (AutoModelForCausalLM) and the adapter-only save (PEFT) equal the gathered weights, and that the
disabled adapter (a live reference) is refused on the sharded model."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from palate.infra import distributed, fsdp
from palate.models.load import load_model, load_tokenizer
from palate.models.lora import save_model


def main(out: Path) -> None:
    distributed.state()  # process group (gloo)
    rank, world = dist.get_rank(), dist.get_world_size()
    tok = load_tokenizer("tiny")
    model = load_model("tiny", dtype="fp32", device="cpu", tokenizer=tok, seed=0)
    full_bytes = fsdp.full_param_bytes(model)
    engine = fsdp.shard(model, torch.device("cpu"), world, "fp32")
    local_bytes = fsdp.local_param_bytes(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.arange(2 * 6).reshape(2, 6) + 100

    def loss_fn(m, x):
        return m(input_ids=x, labels=x).loss

    for _ in range(2):
        engine(loss_fn, ids[rank : rank + 1]).backward()
        opt.step()
        opt.zero_grad()
    gathered = fsdp.full_state_dict(model)  # main process only, CPU
    everywhere = fsdp.full_state_dict(model, everywhere=True)
    same = rank != 0 or (sorted(gathered) == sorted(everywhere)
                         and all(torch.equal(gathered[k], everywhere[k]) for k in everywhere))
    if rank == 0:  # (save_pretrained empties the dict it is given)
        save_model(model, tok, out / "final", state_dict=gathered)
    dist.barrier()

    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out / "final", torch_dtype=torch.float32).state_dict()
    checks = {
        "keys_equal": sorted(everywhere) == sorted(k for k in loaded if k in everywhere),
        "loaded_equals_gathered": all(torch.equal(loaded[k], v) for k, v in everywhere.items()),
        "main_gather_equals_everywhere": same,
        # this process's shard is its slice (dim 0, FSDP2's layout) of the loaded weight
        "shards_match": all(torch.equal(p.to_local(), loaded[n].chunk(world, 0)[rank]) for n, p in model.named_parameters()),
        "trained": not torch.equal(loaded["model.norm.weight"], torch.ones_like(loaded["model.norm.weight"])),
    }
    (out / f"rank{rank}.json").write_text(json.dumps({"local_bytes": local_bytes, "full_bytes": full_bytes, **checks}))
    dist.barrier()


def merge_by_hand(sd: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A PEFT LoRA state dict merged without PEFT: ``W + scale * B @ A`` per adapted linear, plain names."""
    prefix, out = "base_model.model.", {}
    for k, v in sd.items():
        if "lora_" in k:
            continue
        name = k.removeprefix(prefix).replace(".base_layer", "")
        if ".base_layer." in k:
            stem = k.rsplit(".base_layer.", 1)[0]
            if k.endswith("weight"):
                v = v + scale * sd[f"{stem}.lora_B.default.weight"] @ sd[f"{stem}.lora_A.default.weight"]
        out[name] = v
    return out


def main_lora(out: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from palate.config import ConfigError, LoraConfig
    from palate.infra.optim import adamw
    from palate.models.lora import adapter_disabled, apply_lora

    distributed.state()
    rank, world = dist.get_rank(), dist.get_world_size()
    tok = load_tokenizer("tiny")
    base = load_model("tiny", dtype="fp32", device="cpu", tokenizer=tok, seed=0)
    with torch.no_grad():  # weights that differ between processes are refused on every process
        base.model.norm.weight.add_(rank)
    try:
        fsdp.shard(base, torch.device("cpu"), world, "fp32")
        refused = False
    except RuntimeError as e:
        refused = "the weights differ between processes" in str(e)
    with torch.no_grad():
        base.model.norm.weight.sub_(rank)
    start = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0)
    torch.manual_seed(0)  # the same adapter on every process (session.policy seeds it from train.seed)
    model = apply_lora(base, cfg, task_type="CAUSAL_LM")
    with torch.no_grad():  # PEFT starts B at zero: move it so that the first step has gradients for A too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    full_bytes = fsdp.full_param_bytes(model)
    engine = fsdp.shard(model, torch.device("cpu"), world, "fp32")
    local_bytes = fsdp.local_param_bytes(model)
    try:  # the disabled adapter as a live reference on the sharded policy: refused
        adapter_disabled(model)
        live_refused = False
    except ConfigError as e:
        live_refused = "reference=precompute" in str(e)
    opt = adamw(model, 1e-2, 0.0, (0.9, 0.999))
    ids = torch.arange(2 * 6).reshape(2, 6) + 100
    names = {id(p): n for n, p in model.named_parameters()}

    def loss_fn(m, x):
        return m(input_ids=x, labels=x).loss

    grads_only_adapter = True
    for _ in range(2):
        engine(loss_fn, ids[rank : rank + 1]).backward()
        for n, p in model.named_parameters():
            grads_only_adapter &= (p.grad is not None) == ("lora_" in n) == p.requires_grad
        opt.step()
        opt.zero_grad()
    in_optimizer = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    state_of = [names[id(p)] for p in opt.state]
    everywhere = fsdp.full_state_dict(model, everywhere=True)
    copy = fsdp.gathered(model)
    if rank == 0:
        save_model(copy, tok, out / "adapter", merge=False)
        save_model(copy, tok, out / "final", merge=True)  # merges the copy in place
    dist.barrier()

    expected = merge_by_hand(everywhere, cfg.alpha / cfg.r)
    merged = AutoModelForCausalLM.from_pretrained(out / "final", torch_dtype=torch.float32).state_dict()
    fresh = load_model("tiny", dtype="fp32", device="cpu", tokenizer=tok, seed=0)
    adapter = PeftModel.from_pretrained(fresh, out / "adapter").state_dict()
    close = lambda a, b: torch.allclose(a, b, rtol=0, atol=1e-6)  # noqa: E731
    checks = {
        "different_weights_refused": refused,
        "live_reference_refused": live_refused,
        "grads_only_adapter": grads_only_adapter,
        "optimizer_holds_adapter_only": bool(in_optimizer) and all("lora_" in n for n in in_optimizer)
        and len(in_optimizer) == sum(p.requires_grad for p in model.parameters()),
        "optimizer_state_adapter_only": bool(state_of) and all("lora_" in n for n in state_of),
        "base_unchanged": all(torch.equal(v, start[k.removeprefix("base_model.model.").replace(".base_layer", "")])
                              for k, v in everywhere.items() if "lora_" not in k),
        "adapter_trained": not all(torch.equal(everywhere[k], torch.zeros_like(everywhere[k]))
                                   for k in everywhere if "lora_B" in k),
        "merged_keys": sorted(merged) == sorted(expected),
        "merged_equals_gathered": sorted(merged) == sorted(expected) and all(close(merged[k], expected[k]) for k in expected),
        "merged_moved": not all(torch.equal(merged[k], start[k]) for k in merged),
        "adapter_equals_gathered": sorted(adapter) == sorted(everywhere)
        and all(torch.equal(adapter[k], v) for k, v in everywhere.items()),
    }
    (out / f"rank{rank}.json").write_text(json.dumps({"local_bytes": local_bytes, "full_bytes": full_bytes,
                                                      "max_merge_diff": max((merged[k] - expected[k]).abs().max().item()
                                                                            for k in expected), **checks}))
    dist.barrier()


if __name__ == "__main__":
    (main_lora if sys.argv[2:] == ["lora"] else main)(Path(sys.argv[1]))
