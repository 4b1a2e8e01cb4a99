"""palate plan: the memory estimate, checked against numbers worked out by hand for a small shape."""

import json

import pytest
from typer.testing import CliRunner

from palate.infra.memory import Setup, Shape, estimate, parse_params, plan, shape_from_config, shape_from_params

# hidden 64, 2 layers, MLP 128, vocab 1000, 4 heads / 2 kv heads (head dim 16, kv width 32), tied embeddings.
SMALL = Shape(layers=2, hidden=64, intermediate=128, vocab=1000, heads=4, kv_heads=2, tied=True)


def test_parameter_count_by_hand_and_against_the_real_tiny_model(tok):
    # per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 + gate/up/down 3*64*128 + 2 norms * 64 = 36992
    # 2 layers 73984 + embeddings 1000*64 + final norm 64 = 138048 (output head tied)
    assert SMALL.params() == 138048
    assert Shape(**{**SMALL.__dict__, "tied": False}).params() == 138048 + 64000
    # LoRA r=2 on all 7 linear maps: 2*(in+out): 256 + 192 + 192 + 256 + 3*384 = 2048 per layer
    assert SMALL.lora_params(2) == 4096

    from palate.models.load import tiny_model

    model = tiny_model(tok)
    shape = shape_from_config(model.config.to_dict())
    assert shape.params() == sum(p.numel() for p in model.parameters())


def test_sft_full_fp32_on_one_device():
    e = estimate(SMALL, Setup(method="sft", dtype="fp32", seq_len=10, micro_batch=2))
    assert e["weights"] == 138048 * 4 == 552192
    assert e["gradients"] == 552192
    assert e["optimizer"] == 138048 * 8  # two fp32 AdamW moments, no master copy in fp32
    # 20 tokens; per layer per token 6*64 + 2*32 + 2*128 = 704 values of 4 bytes (the lean SwiGLU backward keeps
    # gate and up, not the activation and product); 2 layers
    assert e["activations"] == 2 * 704 * 20 * 4 == 112640
    assert e["logits"] == 20 * 1000 * 8 == 160000
    assert e["total"] == 552192 * 2 + 138048 * 8 + 112640 + 160000 == 2481408
    gc = estimate(SMALL, Setup(method="sft", dtype="fp32", seq_len=10, micro_batch=2, gradient_checkpointing=True))
    assert gc["activations"] == (2 * 64 + 704) * 20 * 4 == 66560  # layer inputs + one layer recomputed


def test_dpo_lora_bf16_sharded_zero3_over_four_devices():
    s = Setup(method="dpo", lora=True, lora_r=2, dtype="bf16", seq_len=8, micro_batch=1, devices=4,
              strategy="zero3", reference="live")
    e = estimate(SMALL, s)
    assert e["weights"] == (138048 + 4096) * 2 / 4 == 71072  # base + adapter in bf16, sharded
    assert e["gradients"] == 4096 * 2 / 4 == 2048
    assert e["optimizer"] == 4096 * 12 / 4 == 12288  # fp32 master + 2 moments
    assert e["frozen_models"] == 0  # live reference under LoRA: the disabled adapter
    # chosen + rejected rows: 16 tokens; under LoRA the MLP keeps 4*128 (its down projection is adapted)
    assert e["activations"] == 2 * (6 * 64 + 2 * 32 + 4 * 128) * 16 * 2 == 61440
    assert e["total"] == 71072 + 2048 + 12288 + 61440 + 128000 == 274848
    full_live = estimate(SMALL, Setup(method="dpo", dtype="bf16", seq_len=8, reference="live"))
    assert full_live["frozen_models"] == 138048 * 2  # a frozen copy of the starting weights
    assert estimate(SMALL, Setup(method="dpo", dtype="bf16", seq_len=8))["frozen_models"] == 0  # precomputed


def test_ppo_full_bf16_zero2_over_two_devices():
    e = estimate(SMALL, Setup(method="ppo", dtype="bf16", seq_len=4, devices=2, strategy="zero2"))
    # policy + critic trained; reward model + reference frozen (not sharded below stage 3)
    assert e["weights"] == 2 * 138048 * 2 == 552192
    assert e["gradients"] == 2 * 138048 * 2 / 2 == 276096
    assert e["optimizer"] == 2 * 138048 * 12 / 2 == 1656576
    assert e["frozen_models"] == 2 * 138048 * 2 == 552192
    assert e["activations"] == 2 * (2 * 704 * 4 * 2) == 22528
    assert e["kv_cache"] == 2 * 2 * 32 * 4 * 2 == 1024
    assert e["total"] == 552192 + 276096 + 1656576 + 552192 + 22528 + 1024 + e["logits"] == 3092608


def test_plan_table_marks_what_fits_and_sharding_only_helps():
    unmarked = plan(SMALL, Setup(method="sft", seq_len=10, devices=4))
    assert "fits" not in unmarked[0]
    limit = (min(r["total"] for r in unmarked) + max(r["total"] for r in unmarked)) / 2
    rows = plan(SMALL, Setup(method="sft", seq_len=10, devices=4), gpu_memory_gib=limit)
    assert [(r["strategy"], r["gradient_checkpointing"]) for r in rows][:2] == [("ddp", False), ("ddp", True)]
    totals = {(r["strategy"], r["gradient_checkpointing"]): r["total"] for r in rows}
    assert totals[("zero3", True)] < totals[("zero2", True)] < totals[("zero1", True)] < totals[("ddp", True)]
    assert [r["fits"] for r in rows] == [r["total"] <= limit for r in rows]
    assert any(r["fits"] for r in rows) and not all(r["fits"] for r in rows)
    assert len(plan(SMALL, Setup(devices=1))) == 2  # one device: DDP only


def test_params_and_assumed_shape():
    assert parse_params("7B") == 7e9 and parse_params("135m") == 135e6 and parse_params("1.5e9") == 1.5e9
    with pytest.raises(ValueError, match="7 billion"):
        parse_params("7 billion")
    s = shape_from_params(7e9)
    assert (s.layers, s.hidden) == (33, 4224) and s.params() == 7e9 and s.assumed
    with pytest.raises(ValueError, match="method"):
        estimate(SMALL, Setup(method="sgd"))


def test_cli_reads_config_json_and_prints_the_table(tmp_path):
    from palate.cli import app

    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 1000,
           "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    runner = CliRunner()
    out = runner.invoke(app, ["plan", str(tmp_path), "--dtype", "fp32", "--seq-len", "10", "--micro-batch", "2",
                              "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert rows[0]["total"] * 2**30 == pytest.approx(2481408)  # test_sft_full_fp32_on_one_device
    table = runner.invoke(app, ["plan", "--params", "7B", "--devices", "8", "--gpu-memory", "80", "--method", "grpo"])
    assert table.exit_code == 0, table.output
    assert "zero3/fsdp" in table.output and "fit in 80 GiB" in table.output
    bad = runner.invoke(app, ["plan", str(tmp_path / "missing-dir-x"), "--params", "1B"])
    assert bad.exit_code == 2 and "one of them" in bad.output
