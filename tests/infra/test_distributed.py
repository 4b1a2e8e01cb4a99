"""Data-parallel training on CPU (gloo): SFT, reward model and DPO launched on 2 processes give the loss
curve of a 1-process run with the same global batch; a 2-process run SIGKILLed after a checkpoint and
rerun continues on the identical numbers. Plus the batch slicing those runs rely on."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from palate.config import load_config
from palate.data.batching import collate, collate_packed, group_batches, pack, shard
from palate.data.tokenize import Example
from tests.conftest import marker_preferences, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240  # seconds: a hung collective must not hang the suite


def examples(lengths, index=None):
    return [Example(tuple(range(1, n + 1)), 1, i if index is None else index) for i, n in enumerate(lengths)]


# ----------------------------------------------------------------------------- slicing (pure)


def test_shards_are_disjoint_cover_the_batch_and_trim_padding():
    b = collate(examples([3, 7, 2, 5, 4]), pad_id=0)
    parts = [shard(b, r, 2) for r in range(2)]
    assert [p.indices for p in parts] == [[0, 1, 2], [3, 4]]  # sizes differ by at most one
    assert torch.equal(parts[0].input_ids, b.input_ids[:3, :7])
    assert parts[1].input_ids.shape == (2, 5)  # padding past the slice's longest row is cut
    assert torch.equal(parts[1].labels, b.labels[3:, :5])
    assert sum(p.n_tokens for p in parts) == b.n_tokens == 21
    assert sum(p.n_targets for p in parts) == b.n_targets
    assert shard(b, 0, 1) is b


def test_shards_keep_comparison_groups_whole_and_an_empty_slice_is_none():
    groups = [examples([3, 4], 0), examples([5, 2], 1), examples([2, 2], 2)]
    (b,) = group_batches(groups, 3, 0, seed=0, epoch=0, bucket=False)
    parts = [shard(b, r, 2) for r in range(2)]
    assert [p.group_sizes for p in parts] == [[2, 2], [2]]
    assert sorted(parts[0].indices + parts[1].indices) == sorted(b.indices)
    assert torch.equal(parts[1].input_ids, b.input_ids[4:6, : int(b.attention_mask[4:6].sum(1).max())])
    one = collate(examples([3]), pad_id=0)
    assert shard(one, 0, 2) is not None and shard(one, 1, 2) is None


def test_packed_rows_shard_with_their_examples():
    rows = pack(examples([5, 4, 3, 3, 2, 1]), width=6)  # [5,1] [4,2] [3,3]
    b = collate_packed(rows, pad_id=0, width=6)
    parts = [shard(b, r, 2) for r in range(2)]
    assert [len(p.indices) for p in parts] == [4, 2]
    assert sorted(parts[0].indices + parts[1].indices) == sorted(b.indices)
    assert [p.n_tokens for p in parts] == [12, 6]
    assert torch.equal(parts[1].position_ids, b.position_ids[2:])


def test_dpo_held_out_watch_is_refused_on_several_processes(monkeypatch):
    from palate.config import ConfigError
    from palate.recipes.dpo import DPOSpec, check

    spec = DPOSpec(watch_prompts=4, gold="panel")
    check(spec)  # one process: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="one process only"):
        check(spec)
    check(DPOSpec())  # without the watch: fine on several


# ----------------------------------------------------------------------------- launching


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fp32(overrides: list[str]) -> list[str]:
    """``overrides`` with ``train.precision=fp32`` unless they name a precision: these tests compare process
    layouts, not precisions, and sharded runs on CPU train fp32 (auto may pick bf16 on one process)."""
    if any(o.startswith("train.precision=") for o in overrides):
        return list(overrides)
    return [*overrides, "train.precision=fp32"]


def command(launcher: str, recipe: str, overrides: list[str]) -> list[str]:
    port = str(free_port())
    if launcher == "torchrun":
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", port]
    else:  # accelerate launch with the shipped DDP config
        head = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "examples/accelerate/ddp.yaml"), "--num_processes", "2", "--main_process_port", port]
    return [*head, "-m", "palate", recipe, *fp32(overrides)]


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}


def launch(launcher, recipe, overrides):
    out = subprocess.run(command(launcher, recipe, overrides), env=child_env(), capture_output=True, text=True,
                         timeout=TIMEOUT, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def kill_at_checkpoint(cmd: list[str], run_dir: Path, step: int = 2) -> Path:
    """Start ``cmd`` (a training run writing ``run_dir``), SIGKILL it and its workers as soon as the checkpoint of
    ``step`` exists, and check it had not finished; the checkpoint's path."""
    ckpt = run_dir / "checkpoints" / f"step-{step:08d}"
    proc = subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + TIMEOUT
        while not ckpt.exists():
            assert proc.poll() is None, "run ended before it could be killed"
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.005)
    finally:
        kill_tree(proc)
    assert not (run_dir / "final").exists(), "the run finished before the kill"
    return ckpt


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and its workers (torchrun starts them in sessions of their own)."""
    import psutil

    procs = [psutil.Process(proc.pid)]
    procs += procs[0].children(recursive=True)
    for p in reversed(procs):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(procs[1:], timeout=30)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def curve(run_dir: Path, keys) -> list[dict]:
    return [{k: m[k] for k in ("step", *keys) if k in m} for m in metrics(run_dir)]


def assert_same_curve(one: Path, two: Path, keys, rel=1e-4):
    a, b = metrics(one), metrics(two)
    assert [m["step"] for m in a] == [m["step"] for m in b]  # rank 0 alone logs: one line per step
    for ma, mb in zip(a, b):
        assert [k for k in keys if k in ma] == [k for k in keys if k in mb]
        for k in (k for k in keys if k in ma):
            if k == "reward_accuracy" and policy_is_reference(ma):
                continue
            assert mb[k] == pytest.approx(ma[k], rel=rel, abs=1e-6), (ma["step"], k, ma[k], mb[k])


def policy_is_reference(m: dict) -> bool:
    """A preference step whose implicit rewards are all zero to rounding (the first step: the policy is its
    reference). Its reward accuracy (chosen reward > rejected) only counts how rounding broke the ties, which
    another process layout breaks differently (seen: 0.0 on one process, 0.125 under FSDP, on an AMD CPU)."""
    return all(abs(m.get(k, 1.0)) <= 1e-6 for k in ("rewards_chosen", "rewards_rejected", "reward_margin"))


def one_process(train_fn, config_cls, overrides):
    return train_fn(load_config(config_cls, None, fp32(overrides)))


SFT = ["model.name=tiny", "train.max_steps=8", "train.batch_size=4", "train.grad_accum=2", "train.lr=1e-3",
       "train.save_every=2", "train.eval_every=4", "train.keep_last=2", "lora.enabled=false", "log.progress=false"]


@pytest.mark.slow
def test_sft_on_two_processes_sigkilled_and_resumed_matches_one_process(tmp_path, arithmetic_jsonl):
    """One 2-process run, SIGKILLed once its step-2 checkpoint exists and rerun: its whole curve (steps
    before the kill from the first launch, after it from the resumed one) is the 1-process curve."""
    from palate.recipes.sft import SFTConfig, train

    common = [*SFT, f"data.path={arithmetic_jsonl}"]
    one_process(train, SFTConfig, [f"run_dir={tmp_path / 'one'}", *common])

    two = tmp_path / "two"
    kill_at_checkpoint(command("torchrun", "sft", [f"run_dir={two}", *common]), two)
    shutil.copytree(two, tmp_path / "two-then-one")
    rerun = launch("torchrun", "sft", [f"run_dir={two}", *common])
    assert "resuming from step-" in rerun.stderr
    assert (two / "final" / "config.json").exists()
    ckpt = torch.load(two / "checkpoints" / "step-00000006" / "state.pt", weights_only=False)
    assert len(ckpt["rng_per_rank"]) == 2  # each process resumes its own RNG

    assert_same_curve(tmp_path / "one", two, ("loss", "grad_norm", "tokens", "targets", "eval_loss"))
    assert [m["lr"] for m in metrics(tmp_path / "one")] == [m["lr"] for m in metrics(two)]

    # the same killed 2-process run resumed on one process: a DDP checkpoint holds the whole state and the
    # global batch does not depend on the number of processes, so the curve is again the 1-process one
    one_process(train, SFTConfig, [f"run_dir={tmp_path / 'two-then-one'}", *common])
    assert_same_curve(tmp_path / "one", tmp_path / "two-then-one", ("loss", "grad_norm", "tokens", "targets",
                                                                    "eval_loss"))


@pytest.mark.slow
def test_reward_model_under_accelerate_launch_matches_one_process(tmp_path):
    from palate.recipes.reward import RewardConfig, train

    # 33 training pairs in batches of 4: the last batch holds one pair, so one process gets no slice of that
    # step and joins the gradient all-reduce with a zero loss.
    data = write_jsonl(tmp_path / "prefs.jsonl", marker_preferences(44))
    common = ["model.name=tiny", f"data.path={data}", "data.eval_fraction=0.25", "train.batch_size=4",
              "train.max_steps=9", "train.lr=3e-3", "train.eval_every=0", "train.save_every=0", "log.progress=false",
              "reward.normalize_samples=16"]
    one_process(train, RewardConfig, [f"run_dir={tmp_path / 'one'}", *common])
    launch("accelerate", "rm", [f"run_dir={tmp_path / 'two'}", *common])
    assert_same_curve(tmp_path / "one", tmp_path / "two", ("loss", "grad_norm", "accuracy", "reward_gap", "tokens"))
    s1, s2 = (json.loads((tmp_path / r / "status.json").read_text())["summary"] for r in ("one", "two"))
    assert s2["eval_accuracy"] == pytest.approx(s1["eval_accuracy"])
    assert (tmp_path / "two" / "eval" / "rm_eval.json").exists()


@pytest.mark.slow
def test_dpo_on_two_processes_matches_one_process(tmp_path):
    from palate.recipes.dpo import DPOConfig, train

    data = write_jsonl(tmp_path / "prefs.jsonl", marker_preferences(40))
    common = ["model.name=tiny", f"data.path={data}", "data.eval_fraction=0.1", "train.batch_size=4",
              "train.grad_accum=2", "train.max_steps=4", "train.lr=2e-3", "train.warmup_ratio=0",
              "train.eval_every=0", "train.save_every=0", "dpo.samples=0", "log.progress=false"]
    one_process(train, DPOConfig, [f"run_dir={tmp_path / 'one'}", *common])
    launch("torchrun", "dpo", [f"run_dir={tmp_path / 'two'}", *common])
    keys = ("loss", "grad_norm", "reward_accuracy", "reward_margin", "logp_chosen", "tokens", "eval_loss")
    assert_same_curve(tmp_path / "one", tmp_path / "two", keys)
    assert metrics(tmp_path / "one")[-1]["loss"] < metrics(tmp_path / "one")[0]["loss"]
