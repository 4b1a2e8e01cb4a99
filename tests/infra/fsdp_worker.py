"""Run by tests/infra/test_fsdp.py under ``torchrun --nproc_per_node 2``: shard the tiny model with palate's
FSDP2 path, train two steps, gather the full state dict, save ``final/`` through ``save_model`` and check,
on every process, that the saved directory loads with ``AutoModelForCausalLM`` and equals the gathered
weights and this process's shards. Writes ``rank{r}.json`` (parameter bytes held, checks) into argv[1]."""

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


if __name__ == "__main__":
    main(Path(sys.argv[1]))
