"""A model or reward-model name that looks like a local path and is not there fails at once, in one line naming
the path and what to do, before any Hugging Face Hub lookup (issue 28: it used to retry the Hub for 49 s and
print a 60-line traceback). Real Hub names keep resolving to the Hub."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from palate.models.heads import RewardModel, reward_model_meta
from palate.models.load import ModelNotFoundError, load_model, looks_local, resolve

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to reach the Hub fails the test. transformers' hub module is imported first, so the patch is
    undone for later tests (a module imported while patched would keep the refusing function)."""
    import huggingface_hub
    import transformers  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from transformers.utils import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*a, **k):
        raise AssertionError("a Hub lookup was attempted")

    for module in (huggingface_hub, hub):
        for name in ("hf_hub_download", "snapshot_download", "model_info"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


def test_hub_names_stay_hub_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2", "Qwen/Qwen2.5-0.5B-Instruct"):
        assert not looks_local(name)
        assert resolve(name) == ("hub", name)


@pytest.mark.parametrize("name", ["runs/demo-rm", "./runs/x", "../x", "/no/such/model", "~/no-such-model-dir",
                                  "a/b/c", "models\\x", "no.gguf"])
def test_local_looking_names_are_local(name):
    assert looks_local(name)


def test_first_component_that_exists_here_makes_it_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_local("checkpoints/policy")
    (tmp_path / "checkpoints").mkdir()
    assert looks_local("checkpoints/policy")
    with pytest.raises(ModelNotFoundError, match=r"^checkpoints/policy does not exist: "):
        resolve("checkpoints/policy")


def test_missing_model_fails_in_one_line_without_the_hub(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as e:  # no_hub: any Hub lookup would fail the test instead
        load_model("runs/my-sft")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("runs/my-sft does not exist: ") and "Hub name" in msg
    assert isinstance(e.value, FileNotFoundError)  # what the CLI reports as one "error:" line


@pytest.mark.parametrize("load", [RewardModel.load, reward_model_meta])
def test_missing_reward_model_says_how_to_train_it(tmp_path, monkeypatch, no_hub, load):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as e:  # no_hub: any Hub lookup would fail the test instead
        load("runs/demo-rm")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("runs/demo-rm does not exist: train the reward model first")
    assert "palate rm examples/rm_demo.yaml" in msg


@pytest.mark.slow
def test_grpo_without_its_reward_model_prints_one_line(tmp_path):
    """The command a reader meets first: ``palate grpo examples/grpo_demo.yaml`` before ``palate rm``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "palate", "grpo", str(REPO / "examples" / "grpo_demo.yaml"),
                           f"run_dir={tmp_path / 'grpo'}", "model.name=tiny", "log.progress=false"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "runs/demo-rm does not exist" in errors[0]
    assert "palate rm examples/rm_demo.yaml" in errors[0]
    assert "Traceback" not in proc.stderr and "huggingface.co" not in proc.stderr
    # refused before anything else: no run dir, no tokenizer or model loaded (the speed follows; not timed here)
    assert not (tmp_path / "grpo").exists() and "loaded" not in proc.stderr
